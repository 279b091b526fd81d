//! Whether a change is new, a replay of one already applied, or comes from a source whose
//! positions went backwards (restored from a backup, a promoted replica with another history,
//! a binlog reset). Only the record's own last applied change from the same system is compared:
//! a row's changes are serialised by the database, so their positions grow (see
//! [`SourcePosition::order_to`]).
//!
//! A replay repeats what the source already said, with the commit time it had then; a source
//! that went back says something new, now. So a position behind the applied one is a replay
//! when its commit time is not later than the applied change's, and a regression when it is:
//!
//! ```text
//! applied: lsn 500 at 10:00:00   incoming: lsn 480 at 09:59:58  → replay (duplicate)
//! applied: lsn 500 at 10:00:00   incoming: lsn 480 at 10:07:12  → regression (policy decides)
//! ```
//!
//! Binlog coordinates of two different servers cannot be compared at all; the commit time alone
//! then tells a replay (a failover re-sending what the old primary had sent) from new changes.

use std::cmp::Ordering;

use crate::ingest::envelope::SourcePosition;
use crate::ingest::mapping::ChangeKind;

/// The last change applied from one system to one record: where it sat and when it committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub position: SourcePosition,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionVerdict {
    /// Ahead of what was applied, or not comparable with it and nothing says otherwise.
    Fresh,
    /// Already applied (a connector restart, a re-read of the internal topic).
    Replay,
    /// Behind what was applied, yet committed later: the source's positions went backwards.
    Regressed,
}

/// How a change at `position`, committed at `ts_ms`, stands to what its system last applied to
/// the record. `snapshot`: a snapshot read, which shares its position with the whole snapshot
/// and is deduplicated by content instead; `kind` and `held_deleted` tell the two halves of a
/// primary-key change apart (a delete and a create at one position, in that order).
pub fn verdict(
    applied: Option<Applied>,
    position: SourcePosition,
    ts_ms: i64,
    snapshot: bool,
    kind: ChangeKind,
    held_deleted: bool,
) -> PositionVerdict {
    let Some(applied) = applied else {
        return PositionVerdict::Fresh;
    };
    if position == SourcePosition::Unknown || applied.position == SourcePosition::Unknown {
        return PositionVerdict::Fresh;
    }
    let later = ts_ms > applied.ts_ms;
    match position.order_to(&applied.position) {
        Some(Ordering::Greater) => PositionVerdict::Fresh,
        Some(Ordering::Equal) if snapshot => PositionVerdict::Fresh,
        Some(Ordering::Equal) if kind == ChangeKind::Upsert && held_deleted => {
            PositionVerdict::Fresh
        }
        Some(Ordering::Equal) => PositionVerdict::Replay,
        Some(Ordering::Less) | None if later => PositionVerdict::Regressed,
        Some(Ordering::Less) | None => PositionVerdict::Replay,
    }
}

/// [`verdict`] of `change` against what its system last applied to the record.
pub fn verdict_of(sys: &super::SystemState, change: &super::Change<'_>) -> PositionVerdict {
    verdict(
        sys.applied,
        change.position,
        change.ts_ms,
        change.snapshot,
        change.kind,
        sys.held_deleted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(commit_lsn: u64, lsn: u64) -> SourcePosition {
        SourcePosition::Postgres { commit_lsn, lsn }
    }

    fn at(position: SourcePosition, ts_ms: i64) -> Option<Applied> {
        Some(Applied { position, ts_ms })
    }

    const UPSERT: ChangeKind = ChangeKind::Upsert;

    #[test]
    fn a_null_commit_lsn_after_a_resnapshot_is_not_behind() {
        // Before the fix the pair compared as a whole: [0, 900] < [500, 520], a replay.
        let applied = at(pg(500, 520), 1_000);
        assert_eq!(
            verdict(applied, pg(0, 900), 2_000, false, UPSERT, false),
            PositionVerdict::Fresh
        );
        // The snapshot read itself ([null, LSN of the snapshot]) is fresh too.
        assert_eq!(
            verdict(applied, pg(0, 880), 1_500, true, UPSERT, false),
            PositionVerdict::Fresh
        );
    }

    #[test]
    fn behind_and_not_later_is_a_replay_behind_and_later_a_regression() {
        let applied = at(pg(500, 520), 1_000);
        assert_eq!(
            verdict(applied, pg(400, 410), 900, false, UPSERT, false),
            PositionVerdict::Replay
        );
        assert_eq!(
            verdict(applied, pg(500, 520), 1_000, false, UPSERT, false),
            PositionVerdict::Replay
        );
        assert_eq!(
            verdict(applied, pg(10, 40), 5_000, false, UPSERT, false),
            PositionVerdict::Regressed
        );
        // A snapshot of a restored database: behind, and taken later.
        assert_eq!(
            verdict(applied, pg(0, 40), 5_000, true, UPSERT, false),
            PositionVerdict::Regressed
        );
    }

    #[test]
    fn the_create_half_of_a_key_change_follows_its_delete_at_one_position() {
        let applied = at(pg(500, 520), 1_000);
        assert_eq!(
            verdict(applied, pg(500, 520), 1_000, false, UPSERT, true),
            PositionVerdict::Fresh
        );
        assert_eq!(
            verdict(
                applied,
                pg(500, 520),
                1_000,
                false,
                ChangeKind::Delete,
                true
            ),
            PositionVerdict::Replay
        );
    }

    #[test]
    fn another_servers_binlog_is_told_apart_by_commit_time() {
        let mysql = |server_id, file, pos| SourcePosition::MySql {
            server_id,
            file,
            pos,
            row: 0,
        };
        let applied = at(mysql(1, 7, 900), 1_000);
        assert_eq!(
            verdict(applied, mysql(1, 7, 1200), 1_000, false, UPSERT, false),
            PositionVerdict::Fresh
        );
        // A binlog reset on the same server: file 1 again, later.
        assert_eq!(
            verdict(applied, mysql(1, 1, 4), 2_000, false, UPSERT, false),
            PositionVerdict::Regressed
        );
        // A promoted replica: other coordinates; what it re-sends has the old commit times.
        assert_eq!(
            verdict(applied, mysql(2, 40, 4), 1_000, false, UPSERT, false),
            PositionVerdict::Replay
        );
        assert_eq!(
            verdict(applied, mysql(2, 40, 4), 3_000, false, UPSERT, false),
            PositionVerdict::Regressed
        );
        // Snapshot reads carry server 0: comparable with any server.
        assert_eq!(
            verdict(applied, mysql(0, 7, 950), 900, true, UPSERT, false),
            PositionVerdict::Fresh
        );
    }

    #[test]
    fn without_positions_nothing_is_a_replay() {
        assert_eq!(
            verdict(
                at(SourcePosition::Unknown, 1_000),
                pg(0, 1),
                1,
                false,
                UPSERT,
                false
            ),
            PositionVerdict::Fresh
        );
        assert_eq!(
            verdict(None, pg(0, 1), 1, false, UPSERT, false),
            PositionVerdict::Fresh
        );
    }
}
