//! Stage 2 (ARCHITECTURE.md §4): one record change from one system, applied to the record's state —
//! dedup, echo suppression, causal context, per-field conflict detection, resolution by the
//! field's strategy, and which targets must be sent the result. Pure and deterministic: the
//! same changes in the same order give the same state, and for every strategy but `manual`
//! concurrent changes give the same state in any order.

pub mod fingerprint;
mod orset;
pub mod position;
mod rules;
mod state;
mod strategy;

pub use crate::model::value::FieldValue;
pub use rules::entity_rules;
pub use state::{Delivery, FieldState, RecordState, SystemState};

use crate::config::{DeleteConflict, RegressionPolicy, Strategy};
use crate::ingest::envelope::SourcePosition;
use crate::ingest::mapping::{ChangeKind, FieldId};
use crate::model::clock::{Dot, SystemId, VersionVector};
use position::{Applied, PositionVerdict};

/// Deliveries kept for a target that sends none back (it is no source of the entity, or its
/// window is 0: nothing echoes), whose deliveries can therefore be forgotten; and, in content
/// mode, the least number of overtaken deliveries (`superseded`) kept per target. A target that
/// echoes keeps every pending delivery: its window bounds them.
const MAX_PENDING_DELIVERIES: usize = 32;

/// Exact mode: deliveries seen back (or overtaken) kept per target, to know a sink writing them
/// again for late echoes, with their values. A restarted Kafka Connect sink writes again what it
/// wrote since its last commit; of a record changing faster than that, the oldest writes name
/// versions no longer kept, and are known for the sink's by their version alone (see
/// `forgotten_echo` in `apply_change`).
const SEEN_BACK_KEPT: usize = 8;

/// A system as resolution sees it.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub name: String,
    pub rank: i32,
    /// What a change from it whose position went backwards means.
    pub on_position_regression: RegressionPolicy,
}

/// How one field of an entity is resolved.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub strategy: Strategy,
    /// For `priority`: most authoritative first.
    pub priority: Vec<SystemId>,
    /// Not compared when deciding what changed (e.g. `updated_at`).
    pub ignored: bool,
    /// Rejects a value before it is written.
    pub guard: Option<crate::config::guard::Guard>,
    /// The field name's [`fingerprint::name`]: content fingerprints go by name, so they survive
    /// a configuration that declares fields in another order.
    pub name_hash: u64,
}

/// Everything resolution needs to know about one entity.
#[derive(Debug, Clone)]
pub struct EntityRules {
    /// By system id.
    pub systems: Vec<SystemInfo>,
    /// By field id.
    pub fields: Vec<FieldRule>,
    /// By system id: the fields that system's table holds, sorted.
    pub held_fields: Vec<Vec<FieldId>>,
    /// By system id: the fields without which that system's table cannot create a row.
    pub required_fields: Vec<Vec<FieldId>>,
    /// Systems that receive this entity.
    pub targets: Vec<SystemId>,
    /// By system id: its delivery window for this entity (0: none). A target that is also a
    /// source is sent at most that many versions of a record not yet seen back; further ones
    /// wait, coalesced into the latest, until an echo frees a place. Forgetting a delivery would
    /// make its echo look like a fresh write of stale values (under `sum`, a movement counted
    /// again), whose resolution is delivered and echoed in turn — a loop that feeds itself once
    /// harmony lags behind a busy record (a backlog after downtime). The window also spares the
    /// sinks every intermediate version of such a backlog.
    pub windows: Vec<usize>,
    pub on_delete_conflict: DeleteConflict,
    /// harmony's own name in version vectors ([`crate::model::clock::OPERATOR`]): the author of
    /// manual resolutions, and of re-sends (see [`apply`]'s late echo).
    pub operator: SystemId,
}

impl EntityRules {
    /// Whether `target` is also a source of the entity: its capture shows it applying what it
    /// is sent (the echo), so its deliveries can be seen arriving.
    pub fn echoes(&self, target: SystemId) -> bool {
        self.held_fields
            .get(target.0 as usize)
            .is_some_and(|f| !f.is_empty())
    }
}

/// One record change from one system, in entity terms.
#[derive(Debug, Clone)]
pub struct Change<'c> {
    pub system: SystemId,
    pub position: SourcePosition,
    /// Source commit time.
    pub ts_ms: i64,
    /// Source commit time in microseconds, as fine as the source gives it (`ts_us`, else
    /// `ts_ms` × 1000): what `lww`, `fww` and `merge` compare.
    pub ts_us: i64,
    pub snapshot: bool,
    pub kind: ChangeKind,
    /// Fields the change carries, sorted by id; a field absent here was not sent.
    pub fields: &'c [(FieldId, FieldValue)],
    /// An explicit causal context (exact mode); `None` uses what the system is known to have seen.
    pub context: Option<&'c VersionVector>,
}

/// A candidate value in a conflict.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub system: SystemId,
    pub value: FieldValue,
    pub dot: Dot,
    /// Source commit time in microseconds.
    pub ts_us: i64,
}

/// A detected conflict on one field and how it was resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub field: FieldId,
    pub strategy: Strategy,
    pub candidates: Vec<Candidate>,
    /// The resolved value; for `manual`, the value held until an operator decides.
    pub resolved: FieldValue,
    /// `None` for `manual` (pending) and for `sum` (both candidates count).
    pub winner: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateReason {
    /// At or behind the system's applied position, committed no later: a replay.
    Position,
    /// A snapshot read of content the system is already known to hold.
    SnapshotContent,
    /// Only ignored fields (or nothing) changed.
    NoChange,
}

impl DuplicateReason {
    /// As metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            DuplicateReason::Position => "position",
            DuplicateReason::SnapshotContent => "snapshot_content",
            DuplicateReason::NoChange => "no_change",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Duplicate(DuplicateReason),
    /// The system applied a delivery of harmony's: no new version. Output only when that frees
    /// a place in a full delivery window: the system is then sent the latest version.
    Echo {
        deliver_to: Vec<SystemId>,
    },
    /// The system applied a delivery older than one it already echoed: no new version; it is
    /// sent the current record again when nothing newer is on its way to it.
    LateEcho {
        deliver_to: Vec<SystemId>,
    },
    Applied {
        dot: Dot,
        conflicts: Vec<Conflict>,
        /// Values a guard kept out, by field: the field kept its value, and the system that
        /// sent them is sent the record back.
        rejected: Vec<(FieldId, FieldValue)>,
        /// Targets whose content changed and must be sent the record.
        deliver_to: Vec<SystemId>,
    },
}

/// Applies `change` to `state` under `rules`.
pub fn apply(state: &mut RecordState, rules: &EntityRules, change: &Change<'_>) -> Outcome {
    let outcome = apply_change(state, rules, change);
    // The row's version column as now captured (not for a replay of an older capture).
    if let (Some(version), false) = (
        change.context,
        outcome == Outcome::Duplicate(DuplicateReason::Position),
    ) {
        let system = state.system_mut(change.system);
        if system.row_version.as_ref() != Some(version) {
            system.row_version = Some(version.clone());
        }
    }
    outcome
}

fn apply_change(state: &mut RecordState, rules: &EntityRules, change: &Change<'_>) -> Outcome {
    let s = change.system;
    // Borrowed, never cloned: a system's state holds its pending deliveries with their values.
    let never_seen = SystemState::default();
    let sys = state.system(s).unwrap_or(&never_seen);

    // 1. Dedup by position (a position behind but committed later is no replay: the source
    // went back, and the resolver applies the system's policy before this is called); snapshot
    // reads share one position and are deduplicated by content.
    let applied = Applied {
        position: change.position,
        ts_ms: change.ts_ms,
    };
    if position::verdict_of(sys, change) == PositionVerdict::Replay {
        return Outcome::Duplicate(DuplicateReason::Position);
    }
    if change.snapshot
        && change_fingerprint(rules, sys, change) == held_content_fingerprint(rules, s, sys)
    {
        state.system_mut(s).applied = Some(applied);
        return Outcome::Duplicate(DuplicateReason::SnapshotContent);
    }

    // 2. Echo: the content of a pending delivery means the system applied it. With an explicit
    // context (exact mode) the version must match too, so a local write that happens to equal
    // a pending delivery is not mistaken for its echo. Columns the delivery did not set (a
    // default the target's table filled in) do not stop the match: they are the residue below.
    let is_echo = |d: &Delivery| {
        change.context.is_none_or(|ctx| *ctx == d.clock)
            && if d.deleted {
                change.kind == ChangeKind::Delete
            } else {
                change.kind == ChangeKind::Upsert && delivered_values_match(change, sys, d)
            }
    };
    // Deleting a deleted row changes nothing, so of deletes sent one after another only the
    // first is ever seen back: its echo answers the rest of them too.
    let pending_at = sys.pending.iter().position(is_echo).map(|i| {
        let deletes_after = || sys.pending.range(i + 1..).take_while(|d| d.deleted).count();
        if sys.pending[i].deleted {
            i + deletes_after()
        } else {
            i
        }
    });
    // Exact mode also remembers the deliveries it saw echoed (below). Only a sink changes a
    // row's version column, so a change whose version differs from the one the row was last
    // captured with was written by the sink: an older delivery written again (its restart
    // before it committed, or an at-least-once duplicate) is a late echo, the latest one
    // included. With the version unchanged, the application wrote the row (perhaps back to a
    // delivery's very values): no late echo. (A sink writing again only the version the row
    // already carries cannot be told from that.)
    let sink_wrote = change
        .context
        .is_some_and(|ctx| sys.row_version.as_ref() != Some(ctx));
    let history_at = (change.context.is_none() || sink_wrote)
        .then(|| sys.superseded.iter().position(is_echo))
        .flatten();
    let echoed_at = pending_at;
    let late_at = history_at.filter(|_| echoed_at.is_none());
    // Exact mode, streaming: capture sees each of the sink's writes whole, under the version it
    // wrote. A version the row did not carry that names no delivery still remembered is the
    // sink writing one older than those (a restart that reads back further than
    // `SEEN_BACK_KEPT` deliveries of a busy record): a late echo all the same, whose values are
    // the row's. Taken for the application's, it would count as a change and, under `sum`,
    // move the record back. Not for a snapshot read, which may fold the application's writes
    // in after the sink's; nor when the row's last version is unknown (restored from a
    // changelog format before 3).
    let forgotten_echo = echoed_at.is_none()
        && late_at.is_none()
        && !change.snapshot
        && change
            .context
            .is_some_and(|ctx| sys.row_version.as_ref().is_some_and(|row| row != ctx));
    let mut echoed = false;
    if let Some(i) = echoed_at {
        let system = state.system_mut(s);
        // Versions sent before this one and not seen back: the sink still writes them
        // (in order, before this one) unless this "echo" was in truth a local write that
        // happened to equal it. Remembered, so that their late arrival is known for what
        // it is rather than taken for a fresh change of stale values.
        // Exact mode: the echoed delivery itself is remembered too. A sink that reads its
        // topic again (a restart before it committed, or harmony's at-least-once replay after a
        // crash publishing a version twice) writes it again after newer ones; its version
        // column names it, so the write is known as the late echo it is — taken for a fresh
        // change it would move the record back (under `sum`, count the difference as a
        // movement). Content mode cannot tell such a write from a local one that returns to
        // an earlier state (a sale and its return), so there only overtaken deliveries are
        // remembered; run a closed loop in content mode exactly once.
        let drained = system.pending.drain(..=i);
        system
            .superseded
            .extend(drained.map(|d| Delivery { ts_ms: 0, ..d }));
        if change.context.is_some() {
            echoed = hold_kept(system, system.superseded.len() - 1, true);
        } else if let Some(delivery) = system.superseded.pop_back() {
            system.seen = delivery.clock;
            system.held_deleted = delivery.deleted;
            for (field, value) in delivery.values {
                system.set_held(field, value);
            }
            echoed = true;
        }
        // Content mode: as many as a window can hold, the versions its sink may still write.
        // Exact mode: the last few seen back, for a sink writing them again — each is held
        // with its values, and a record's state and changelog value carry them.
        let kept = if change.context.is_some() {
            SEEN_BACK_KEPT
        } else {
            rules
                .windows
                .get(s.0 as usize)
                .map_or(MAX_PENDING_DELIVERIES, |&w| w.max(MAX_PENDING_DELIVERIES))
        };
        while system.superseded.len() > kept {
            system.superseded.pop_front();
        }
        system.applied = Some(applied);
    } else if late_at.is_some() || forgotten_echo {
        // A version older than one the system already echoed: its sink catching up, or
        // (content mode) a local write equal to it — the ambiguity exact mode removes.
        // Either way no new version: the system holds those values now, and is sent the
        // record again unless a newer delivery is already on its way to it.
        let system = state.system_mut(s);
        // Exact mode keeps what it saw echoed: a sink restarted twice writes it all again twice.
        let held_late = match late_at {
            Some(i) if change.context.is_some() => hold_kept(system, i, false),
            Some(i) => {
                let late = system.superseded.drain(..=i).next_back();
                late.is_some_and(|late| {
                    system.held_deleted = late.deleted;
                    for (field, value) in late.values {
                        system.set_held(field, value);
                    }
                    true
                })
            }
            None => false,
        };
        if !held_late {
            // A forgotten one: the row holds what the sink wrote.
            system.held_deleted = change.kind == ChangeKind::Delete;
            for (field, value) in change.fields {
                if !rules.fields[field.0 as usize].ignored {
                    system.set_held(*field, value.clone());
                }
            }
        }
        system.applied = Some(applied);
        // Exact mode: the re-send is a new version, under harmony's own name, so that its sink
        // writing it changes the row's version column and is known for its echo — with the
        // version of the delivery just written again, a write of the application's could pass
        // for it, and the re-send's own write then for the application's.
        let resend = change
            .context
            .is_some()
            .then(|| state.clock.increment(rules.operator));
        let deliver_to = deliver(state, rules, &[s], change.ts_ms);
        if let (Some(dot), true) = (resend, deliver_to.is_empty()) {
            state.clock.set(rules.operator, dot.counter - 1);
        }
        return Outcome::LateEcho { deliver_to };
    }
    let sys = state.system(s).unwrap_or(&never_seen);

    // 3. Causal context, 4. what changed.
    let context = match change.context {
        // A system has seen every change of its own, whatever version its row names.
        Some(explicit) => {
            let mut context = explicit.clone();
            context.set(s, context.get(s).max(state.clock.get(s)));
            context
        }
        None => sys.seen.clone(),
    };
    let changed: Vec<&(FieldId, FieldValue)> = change
        .fields
        .iter()
        .filter(|(f, v)| {
            !rules.fields[f.0 as usize].ignored
                && sys
                    .held(*f)
                    .is_none_or(|held| held.fingerprint() != v.fingerprint())
        })
        .collect();
    // What the system held of each changed field: `sum`'s base and the evidence of having seen
    // the current value. Copied, as the state changes below, but only for the changed fields.
    let bases: Vec<Option<FieldValue>> =
        changed.iter().map(|(f, _)| sys.held(*f).cloned()).collect();
    let existence_changes = match change.kind {
        ChangeKind::Delete => state.deleted.is_none(),
        ChangeKind::Upsert => state.deleted.is_some(),
    };
    if changed.is_empty() && !existence_changes {
        if echoed {
            return Outcome::Echo {
                deliver_to: deliver(state, rules, &[s], change.ts_ms),
            };
        }
        let system = state.system_mut(s);
        system.applied = Some(applied);
        for (field, value) in change.fields {
            system.set_held(*field, value.clone());
        }
        return Outcome::Duplicate(DuplicateReason::NoChange);
    }

    // 7 (first half). The change's own dot.
    let dot = state.clock.increment(s);
    let mut conflicts = Vec::new();
    let mut rejected = Vec::new();

    // Existence: a delete or an upsert after a delete.
    match change.kind {
        ChangeKind::Delete => {
            let concurrent_update = state.fields.iter().any(|(_, f)| !context.covers(f.dot));
            if !concurrent_update || rules.on_delete_conflict == DeleteConflict::DeleteWins {
                state.deleted = Some(dot);
            }
        }
        ChangeKind::Upsert => {
            if let Some(deleted_by) = state.deleted {
                if context.covers(deleted_by)
                    || rules.on_delete_conflict == DeleteConflict::UpdateWins
                {
                    state.deleted = None;
                }
            }
        }
    }

    // 5–6. Per changed field: a plain update when the system had seen the current value,
    // a conflict resolved by the field's strategy when it had not.
    for (&&(field, ref value), base) in changed.iter().zip(&bases) {
        let rule = &rules.fields[field.0 as usize];
        let base = base.as_ref();
        let incoming = Candidate {
            system: s,
            value: value.clone(),
            dot,
            ts_us: change.ts_us,
        };
        if rule.strategy == Strategy::Merge {
            let current = state.field(field);
            let merged = orset::merge(
                current.map(|c| (&c.tags, &c.value, c.dot)),
                base,
                value,
                dot,
                &context,
            );
            // Not a set (a JSON array): resolved below like `lww`.
            if let Some(tags) = merged {
                let merged_value = orset::value_of(&tags);
                if let Some(current) = current.filter(|c| {
                    !context.covers(c.dot)
                        && base.is_none_or(|b| b.fingerprint() != c.value.fingerprint())
                        && merged_value.fingerprint() != value.fingerprint()
                }) {
                    conflicts.push(Conflict {
                        field,
                        strategy: Strategy::Merge,
                        candidates: vec![
                            Candidate {
                                system: current.dot.system,
                                value: current.value.clone(),
                                dot: current.dot,
                                ts_us: current.ts_us,
                            },
                            incoming.clone(),
                        ],
                        resolved: merged_value.clone(),
                        winner: None,
                    });
                }
                if rule
                    .guard
                    .as_ref()
                    .is_some_and(|g| !g.admits(&merged_value))
                {
                    rejected.push((field, merged_value));
                    continue;
                }
                state.set_field(
                    field,
                    FieldState {
                        value: merged_value,
                        dot,
                        ts_us: change.ts_us,
                        tags,
                    },
                );
                continue;
            }
        }
        let current_value = state.field(field).map(|f| f.value.clone());
        // Whether the change had seen the current value: it then settles a manual conflict the
        // field held (the operator's resolution is such a change).
        let mut settles = false;
        let resolved = match state.field(field) {
            None => strategy::plain(rule.strategy, None, base, &incoming),
            // The system had seen the write: its change supersedes the current value. Without
            // a causal context from the source (content mode), holding the very value (two
            // snapshot reads of one row, say) is the best evidence of having seen it; with one,
            // it is not: another system may have written that value concurrently, and taking
            // it as seen would let the arrival order pick the winner.
            Some(current)
                if context.covers(current.dot)
                    || (change.context.is_none()
                        && base
                            .is_some_and(|b| b.fingerprint() == current.value.fingerprint())) =>
            {
                settles = true;
                strategy::plain(rule.strategy, Some(&current.value), base, &incoming)
            }
            Some(current) => {
                let current = Candidate {
                    system: current.dot.system,
                    value: current.value.clone(),
                    dot: current.dot,
                    ts_us: current.ts_us,
                };
                let (resolution, winner) =
                    strategy::resolve(rule, &rules.systems, &current, &incoming, base);
                let resolved = match &resolution {
                    strategy::Resolution::Write(v) => v.clone(),
                    strategy::Resolution::Keep => current_value.clone().unwrap_or(FieldValue::Null),
                };
                // Concurrent writes of the same value agree: no conflict to report, though the
                // strategy still picks whose dot and timestamp the value carries (`lww` must
                // remember the later one). Not under `sum` once the system has a base: two
                // sales of 5 from 100 each end at 95, and both count.
                let agree = current.value.fingerprint() == incoming.value.fingerprint()
                    && (rule.strategy != Strategy::Sum || base.is_none());
                if !agree {
                    if rule.strategy == Strategy::Manual {
                        state.unsettle(field, change.ts_ms);
                    }
                    conflicts.push(Conflict {
                        field,
                        strategy: rule.strategy,
                        candidates: vec![current, incoming.clone()],
                        resolved,
                        winner,
                    });
                }
                resolution
            }
        };
        if let strategy::Resolution::Write(value) = resolved {
            if rule.guard.as_ref().is_some_and(|g| !g.admits(&value)) {
                rejected.push((field, value));
                continue;
            }
            state.set_field(
                field,
                FieldState {
                    value,
                    dot,
                    ts_us: change.ts_us,
                    tags: Vec::new(),
                },
            );
            if settles {
                state.settle(field);
            }
        }
    }

    // 7 (second half). What the system now has seen and holds.
    {
        let system = state.system_mut(s);
        let mut seen = context;
        seen.merge(&VersionVector::from_dot(dot));
        system.seen = seen;
        system.held_deleted = change.kind == ChangeKind::Delete;
        system.applied = Some(applied);
        for (field, value) in change.fields {
            system.set_held(*field, value.clone());
        }
    }

    let deliver_to = deliver(state, rules, &rules.targets, change.ts_ms);
    Outcome::Applied {
        dot,
        conflicts,
        rejected,
        deliver_to,
    }
}

/// Erases a deleted record's values once its delete is final everywhere: every system whose
/// table the entity maps is seen holding it deleted (or never held it), and nothing is on its
/// way to any. What stays is what tells a replay of the record's past from a new record with
/// its key — the clock, the deleting dot, each system's applied position and context — so an
/// old creation re-sent by a connector restart is still a duplicate, not a resurrection.
/// Returns whether it erased anything.
///
/// ```text
/// erp deletes SKU-1 → shop and wms delete it (their echoes seen) → fields, held copies: gone
/// ```
pub fn erase_if_gone(state: &mut RecordState, rules: &EntityRules) -> bool {
    if state.deleted.is_none() {
        return false;
    }
    let final_everywhere = state.systems.iter().all(|(s, sys)| {
        !rules.echoes(*s) || (sys.pending.is_empty() && (sys.held_deleted || sys.held.is_empty()))
    });
    if !final_everywhere || !holds_values(state) {
        return false;
    }
    state.fields.clear();
    state.unsettled.clear();
    for (_, sys) in &mut state.systems {
        sys.held.clear();
        // Deliveries to targets that send nothing back (they were never to be seen again).
        sys.pending.clear();
        sys.superseded.clear();
    }
    true
}

/// Exact mode: what `system` holds becomes its kept delivery `i`'s values (and, with
/// `seen_too`, what it has seen becomes that delivery's version), copied value by value: the
/// delivery stays kept for a sink writing it again. Whether there was such a delivery.
fn hold_kept(system: &mut SystemState, i: usize, seen_too: bool) -> bool {
    let SystemState {
        superseded,
        seen,
        held,
        held_deleted,
        ..
    } = system;
    let Some(delivery) = superseded.get(i) else {
        return false;
    };
    if seen_too {
        // Reuses the room `seen` has.
        seen.clone_from(&delivery.clock);
    }
    *held_deleted = delivery.deleted;
    for (field, value) in &delivery.values {
        state::hold(held, *field, value.clone());
    }
    true
}

/// When a record's values were erased ([`erase_if_gone`]): the source commit time of the last
/// change applied to it, or `None` while it exists or still holds anything. A record erased
/// long enough ago in source time is taken off the state topic by a tombstone; after that, a
/// change of its key starts a new record.
pub fn erased_at(state: &RecordState) -> Option<i64> {
    if state.deleted.is_none() || holds_values(state) {
        return None;
    }
    state
        .systems
        .iter()
        .filter_map(|(_, sys)| sys.applied.as_ref().map(|a| a.ts_ms))
        .max()
}

/// Whether a record holds values: its own, a system's copies, deliveries on their way.
fn holds_values(state: &RecordState) -> bool {
    !state.fields.is_empty()
        || !state.unsettled.is_empty()
        || state.systems.iter().any(|(_, sys)| {
            !sys.held.is_empty() || !sys.pending.is_empty() || !sys.superseded.is_empty()
        })
}

/// Step 8: queues a delivery to each of `targets` whose content differs from what it holds or was
/// last sent; returns those targets. `ts_ms`: the source commit time of the change that caused it.
fn deliver(
    state: &mut RecordState,
    rules: &EntityRules,
    targets: &[SystemId],
    ts_ms: i64,
) -> Vec<SystemId> {
    let mut deliver_to = Vec::new();
    for &t in targets {
        // A row the target could not create waits until the record has what it needs; a
        // record it already holds (its own, or delivered) it can always update.
        let empty = SystemState::default();
        let target_state = state.system(t).unwrap_or(&empty);
        let holds_row = !target_state.held.is_empty() || !target_state.pending.is_empty();
        let incomplete = rules
            .required_fields
            .get(t.0 as usize)
            .is_some_and(|required| required.iter().any(|f| state.field(*f).is_none()));
        if incomplete && !holds_row && state.deleted.is_none() {
            continue;
        }
        let window = rules.windows.get(t.0 as usize).copied().unwrap_or(0);
        // Sent when an echo frees a place (see EntityRules::windows).
        if window > 0 && rules.echoes(t) && target_state.pending.len() >= window {
            continue;
        }
        let deleted = state.deleted.is_some();
        // A row deleted has no content to bring up to date: a target that holds the record
        // deleted, or has a delete on its way, is sent nothing more of it (its sink would
        // delete nothing, and no echo would ever answer that delivery).
        let last_deleted = target_state
            .pending
            .back()
            .map_or(target_state.held_deleted, |d| d.deleted);
        if deleted && last_deleted {
            continue;
        }
        let fingerprint = record_fingerprint(rules, t, state);
        let last = target_state.pending.back().map_or_else(
            || held_content_fingerprint(rules, t, target_state),
            |d| d.fingerprint,
        );
        if fingerprint != last {
            // Copied only for a delivery that is made: most changes leave most targets as
            // they were.
            let values = compared_fields(rules, t)
                .filter_map(|f| state.field(f).map(|s| (f, s.value.clone())))
                .collect();
            let clock = state.clock.clone();
            let target = state.system_mut(t);
            target.pending.push_back(Delivery {
                clock,
                fingerprint,
                values,
                deleted,
                ts_ms,
            });
            // Never forgotten when they come back: the window (at most that many) bounds them.
            // Forgetting one would make its echo a fresh write of stale values.
            let echoed_back = window > 0 && rules.echoes(t);
            if !echoed_back && target.pending.len() > MAX_PENDING_DELIVERIES {
                target.pending.pop_front();
            }
            deliver_to.push(t);
        }
    }
    deliver_to
}

fn hash_content<'v>(
    rules: &EntityRules,
    fields: impl Iterator<Item = (FieldId, Option<&'v FieldValue>)>,
    deleted: bool,
) -> u64 {
    content_fingerprint(
        fields
            .filter_map(|(field, value)| Some((rules.fields[field.0 as usize].name_hash, value?))),
        deleted,
    )
}

/// The fingerprint of a delivery that sent `values` (every field it sent, with a value) and
/// `deleted`: what [`Delivery::fingerprint`] holds. For state read from a changelog written
/// before fingerprints were fixed ([`fingerprint`]).
pub fn delivery_fingerprint(
    values: &[(FieldId, FieldValue)],
    deleted: bool,
    name_hash: impl Fn(FieldId) -> u64,
) -> u64 {
    content_fingerprint(values.iter().map(|(f, v)| (name_hash(*f), v)), deleted)
}

/// Content by field-name hash and value; a field without a value adds nothing.
fn content_fingerprint<'v>(
    fields: impl Iterator<Item = (u64, &'v FieldValue)>,
    deleted: bool,
) -> u64 {
    let mut content = fingerprint::Content::new(deleted);
    for (name_hash, value) in fields {
        content.add(name_hash, value.fingerprint());
    }
    content.finish()
}

fn compared_fields<'r>(
    rules: &'r EntityRules,
    system: SystemId,
) -> impl Iterator<Item = FieldId> + 'r {
    rules
        .held_fields
        .get(system.0 as usize)
        .into_iter()
        .flatten()
        .copied()
        .filter(|f| !rules.fields[f.0 as usize].ignored)
}

/// The content a change says its system now holds: sent fields, and for fields not sent,
/// what the system held before.
fn change_fingerprint(rules: &EntityRules, sys: &SystemState, change: &Change<'_>) -> u64 {
    let sent = |f: FieldId| {
        change
            .fields
            .binary_search_by_key(&f, |(id, _)| *id)
            .ok()
            .map(|i| &change.fields[i].1)
    };
    hash_content(
        rules,
        compared_fields(rules, change.system).map(|f| (f, sent(f).or_else(|| sys.held(f)))),
        change.kind == ChangeKind::Delete,
    )
}

/// Whether the change leaves its system holding every value the delivery sent.
fn delivered_values_match(change: &Change<'_>, sys: &SystemState, delivery: &Delivery) -> bool {
    delivery.values.iter().all(|(field, value)| {
        let now = change
            .fields
            .binary_search_by_key(field, |(id, _)| *id)
            .ok()
            .map(|i| &change.fields[i].1)
            .or_else(|| sys.held(*field));
        now.is_some_and(|v| v.fingerprint() == value.fingerprint())
    })
}

fn held_content_fingerprint(rules: &EntityRules, system: SystemId, sys: &SystemState) -> u64 {
    hash_content(
        rules,
        compared_fields(rules, system).map(|f| (f, sys.held(f))),
        sys.held_deleted,
    )
}

/// The record's content as target `t` would hold it, and the values of that content.
fn record_fingerprint(rules: &EntityRules, t: SystemId, state: &RecordState) -> u64 {
    hash_content(
        rules,
        compared_fields(rules, t).map(|f| (f, state.field(f).map(|s| &s.value))),
        state.deleted.is_some(),
    )
}

#[cfg(test)]
mod tests;
