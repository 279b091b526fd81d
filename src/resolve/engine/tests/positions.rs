//! Dedup by source position: replays, re-snapshots, sources that went back, changes of ignored fields only.

use super::*;

#[test]
fn a_redelivered_change_is_a_duplicate_and_changes_nothing() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let fields = [(QUANTITY, int(95))];
    let c = change(&mut src, SHOP, 2_000, &fields);
    assert!(matches!(
        apply(&mut state, &rules, &c),
        Outcome::Applied { .. }
    ));
    let before = state.clone();
    assert_eq!(
        apply(&mut state, &rules, &c),
        Outcome::Duplicate(DuplicateReason::Position)
    );
    assert_eq!(state, before);
}

/// A Postgres change at `[commit_lsn, lsn]`, as Debezium's `sequence` gives it.
fn at_position<'c>(
    s: SystemId,
    (commit_lsn, lsn): (u64, u64),
    ts_ms: i64,
    snapshot: bool,
    fields: &'c [(FieldId, FieldValue)],
) -> Change<'c> {
    Change {
        system: s,
        position: SourcePosition::Postgres { commit_lsn, lsn },
        ts_ms,
        ts_us: ts_ms * 1000,
        snapshot,
        kind: ChangeKind::Upsert,
        fields,
        context: None,
    }
}

#[test]
fn changes_after_a_connector_resnapshot_are_applied_not_dropped_as_replays() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut state = RecordState::default();
    let created = [(NAME, text("Cup")), (PRICE, int(490)), (QUANTITY, int(100))];
    let applied = |o: &Outcome| matches!(o, Outcome::Applied { .. });
    assert!(applied(&apply(
        &mut state,
        &rules,
        &at_position(ERP, (5_000, 5_200), 1_000, false, &created)
    )));
    // The connector's offsets are reset; while it was stopped the price changed. The snapshot
    // read ([null, LSN of the snapshot]) differs from what the erp was known to hold: the
    // erp's current truth, a write.
    let read = [(NAME, text("Cup")), (PRICE, int(510)), (QUANTITY, int(100))];
    assert!(applied(&apply(
        &mut state,
        &rules,
        &at_position(ERP, (0, 9_000), 2_000, true, &read)
    )));
    assert_eq!(value(&state, PRICE), int(510));
    // The first transaction streamed after the restart has no previous commit either.
    let streamed = [(NAME, text("Cup")), (PRICE, int(520)), (QUANTITY, int(100))];
    assert!(applied(&apply(
        &mut state,
        &rules,
        &at_position(ERP, (0, 9_100), 3_000, false, &streamed)
    )));
    assert_eq!(value(&state, PRICE), int(520));
    // Re-read from Kafka, it is a replay.
    assert_eq!(
        apply(
            &mut state,
            &rules,
            &at_position(ERP, (0, 9_100), 3_000, false, &streamed)
        ),
        Outcome::Duplicate(DuplicateReason::Position)
    );
    // So is an older change, re-sent by a connector restart.
    assert_eq!(
        apply(
            &mut state,
            &rules,
            &at_position(ERP, (5_000, 5_200), 1_000, false, &created)
        ),
        Outcome::Duplicate(DuplicateReason::Position)
    );
}

#[test]
fn a_source_restored_from_a_backup_is_not_taken_for_a_replay() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut state = RecordState::default();
    let created = [(NAME, text("Cup")), (PRICE, int(490)), (QUANTITY, int(100))];
    apply(
        &mut state,
        &rules,
        &at_position(ERP, (5_000, 5_200), 1_000, false, &created),
    );
    // The database comes back from last night's backup: its WAL positions are behind, its
    // changes are new.
    let repriced = [(NAME, text("Cup")), (PRICE, int(530)), (QUANTITY, int(100))];
    assert!(matches!(
        apply(
            &mut state,
            &rules,
            &at_position(ERP, (3_000, 3_100), 90_000, false, &repriced)
        ),
        Outcome::Applied { .. }
    ));
    assert_eq!(value(&state, PRICE), int(530));
}

#[test]
fn only_ignored_fields_changing_is_no_new_version() {
    let rules = rules(Strategy::Lww, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let clock = state.clock.clone();
    let fields = [(UPDATED_AT, text("t9"))];
    assert_eq!(
        apply(&mut state, &rules, &change(&mut src, SHOP, 2_000, &fields)),
        Outcome::Duplicate(DuplicateReason::NoChange)
    );
    assert_eq!(state.clock, clock);
}
