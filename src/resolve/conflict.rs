//! What harmony publishes on the conflicts topic: a record for every detected conflict,
//! resolved or held (`"kind":"conflict"`), and for every value a guard kept out
//! (`"kind":"rejected"`). Deterministic: the same event always gets the same id and the same
//! content, so a replay after a crash republishes an identical record that consumers can
//! deduplicate by id.
//!
//! ```text
//! {"id":"c-5f1e…","kind":"conflict","entity":"product","key":["SKU-1"],"field":"quantity",
//!  "strategy":"sum",
//!  "candidates":[{"system":"shop","value":{"int":95},"dot":["shop",2],"ts_ms":…},
//!                {"system":"wms","value":{"int":98},"dot":["wms",2],"ts_ms":…}],
//!  "winner":null,"resolved":{"int":93},"pending":false,"ts_ms":…}
//! {"id":"r-09a2…","kind":"rejected","entity":"product","key":["SKU-1"],"field":"quantity",
//!  "guard":"value >= 0","system":"shop","dot":["shop",4],"value":{"int":-2},
//!  "sent":{"int":1},"kept":{"int":1},"ts_ms":…}
//! ```

use serde::Serialize;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3Default;

use crate::config::Strategy;
use crate::ingest::internal::FieldRef;
use crate::resolve::engine::{Conflict, SystemInfo};

#[derive(Debug, Serialize)]
pub struct ConflictRecord<'a> {
    pub id: String,
    /// `"conflict"`.
    pub kind: &'static str,
    pub entity: &'a str,
    /// The canonical key, as the JSON array it is.
    pub key: &'a RawValue,
    pub field: &'a str,
    pub strategy: &'static str,
    pub candidates: Vec<CandidateRecord<'a>>,
    /// The winning system; `null` when no single candidate won (`sum`) or none yet (`manual`).
    pub winner: Option<&'a str>,
    pub resolved: FieldRef<'a>,
    /// Held for an operator (`manual`).
    pub pending: bool,
    /// Source commit time of the latest candidate: when the conflict came to exist.
    pub ts_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct CandidateRecord<'a> {
    pub system: &'a str,
    pub value: FieldRef<'a>,
    pub dot: (&'a str, u64),
    pub ts_ms: i64,
}

/// The id of a conflict: its record, field and the dots of its candidates, by system *name*
/// and through a fixed hash (XXH3), so that the id a consumer or `harmony resolve` holds stays
/// the same across Rust releases and configurations that list systems in another order.
pub fn conflict_id(
    systems: &[SystemInfo],
    entity: &str,
    key: &str,
    field: &str,
    conflict: &Conflict,
) -> String {
    stable_id(
        'c',
        [entity, key, field],
        conflict
            .candidates
            .iter()
            .map(|c| (system_name(systems, c.dot.system), c.dot.counter)),
    )
}

/// `<prefix>-` and XXH3 of `parts` and `dots` (system name, counter). Each text is followed by a
/// byte no name or key text contains, so parts cannot run into each other ("ab"+"c" and
/// "a"+"bc" differ).
fn stable_id<'a>(
    prefix: char,
    parts: [&str; 3],
    dots: impl IntoIterator<Item = (&'a str, u64)>,
) -> String {
    let mut h = Xxh3Default::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update(&[0xff]);
    }
    for (system, counter) in dots {
        h.update(system.as_bytes());
        h.update(&[0xff]);
        h.update(&counter.to_le_bytes());
    }
    format!("{prefix}-{:016x}", h.digest())
}

/// A system's name in published records; `?` for an id the configuration does not have.
fn system_name(systems: &[SystemInfo], system: crate::model::clock::SystemId) -> &str {
    systems
        .get(system.0 as usize)
        .map_or("?", |s| s.name.as_str())
}

/// The conflicts-topic record of `conflict`. `key` is the canonical key text (a JSON array).
pub fn conflict_record<'a>(
    systems: &'a [SystemInfo],
    entity: &'a str,
    key: &'a RawValue,
    field: &'a str,
    conflict: &'a Conflict,
) -> ConflictRecord<'a> {
    let name = |s| system_name(systems, s);
    ConflictRecord {
        id: conflict_id(systems, entity, key.get(), field, conflict),
        kind: "conflict",
        entity,
        key,
        field,
        strategy: conflict.strategy.name(),
        candidates: conflict
            .candidates
            .iter()
            .map(|c| CandidateRecord {
                system: name(c.system),
                value: FieldRef::from(&c.value),
                dot: (name(c.dot.system), c.dot.counter),
                ts_ms: c.ts_us.div_euclid(1000),
            })
            .collect(),
        winner: conflict
            .winner
            .and_then(|i| conflict.candidates.get(i))
            .map(|c| name(c.system)),
        resolved: FieldRef::from(&conflict.resolved),
        pending: conflict.strategy == Strategy::Manual,
        ts_ms: conflict
            .candidates
            .iter()
            .map(|c| c.ts_us.div_euclid(1000))
            .max()
            .unwrap_or_default(),
    }
}

/// A value a field's guard kept out: the field kept its value, and the system that sent the
/// change is sent the record back.
#[derive(Debug, Serialize)]
pub struct RejectionRecord<'a> {
    pub id: String,
    /// `"rejected"`.
    pub kind: &'static str,
    pub entity: &'a str,
    pub key: &'a RawValue,
    pub field: &'a str,
    /// The guard's expression.
    pub guard: &'a str,
    /// The system whose change was refused, and the change's dot.
    pub system: &'a str,
    pub dot: (&'a str, u64),
    /// The value refused: what the field's strategy made of the change (under `sum`, the
    /// new total).
    pub value: FieldRef<'a>,
    /// What the system itself wrote into the field, when its change carried it.
    pub sent: Option<FieldRef<'a>>,
    /// The value the field kept; `null` if it had none.
    pub kept: Option<FieldRef<'a>>,
    /// Source commit time of the refused change.
    pub ts_ms: i64,
}

/// The rejection of `value` for `field` of record `key` (canonical key text, a JSON array).
#[allow(clippy::too_many_arguments)]
pub fn rejection_record<'a>(
    systems: &'a [SystemInfo],
    entity: &'a str,
    key: &'a RawValue,
    (field, guard): (&'a str, &'a str),
    dot: crate::model::clock::Dot,
    value: &'a crate::model::value::FieldValue,
    sent: Option<&'a crate::model::value::FieldValue>,
    kept: Option<&'a crate::model::value::FieldValue>,
    ts_ms: i64,
) -> RejectionRecord<'a> {
    let system = system_name(systems, dot.system);
    RejectionRecord {
        id: stable_id('r', [entity, key.get(), field], [(system, dot.counter)]),
        kind: "rejected",
        entity,
        key,
        field,
        guard,
        system,
        dot: (system, dot.counter),
        value: FieldRef::from(value),
        sent: sent.map(FieldRef::from),
        kept: kept.map(FieldRef::from),
        ts_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::mapping::FieldId;
    use crate::model::clock::{Dot, SystemId};
    use crate::resolve::engine::{Candidate, FieldValue};

    fn systems() -> Vec<SystemInfo> {
        ["erp", "shop", "wms"]
            .iter()
            .enumerate()
            .map(|(i, n)| SystemInfo {
                name: (*n).into(),
                rank: i as i32,
                on_position_regression: crate::config::RegressionPolicy::Accept,
            })
            .collect()
    }

    fn conflict(strategy: Strategy, winner: Option<usize>) -> Conflict {
        let candidate = |s: u16, v: i64, ts: i64| Candidate {
            system: SystemId(s),
            value: FieldValue::Int(v),
            dot: Dot {
                system: SystemId(s),
                counter: 2,
            },
            ts_us: ts * 1000,
        };
        Conflict {
            field: FieldId(2),
            strategy,
            candidates: vec![candidate(1, 95, 2_000), candidate(2, 98, 2_001)],
            resolved: FieldValue::Int(if strategy == Strategy::Sum { 93 } else { 98 }),
            winner,
        }
    }

    #[test]
    fn a_sum_conflict_record_names_both_candidates_and_no_winner() {
        let sum = conflict(Strategy::Sum, None);
        let systems = systems();
        let key = RawValue::from_string(r#"["SKU-1"]"#.into()).unwrap();
        let record = conflict_record(&systems, "product", &key, "quantity", &sum);
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(json["key"], serde_json::json!(["SKU-1"]));
        assert_eq!(json["strategy"], "sum");
        assert_eq!(json["winner"], serde_json::Value::Null);
        assert_eq!(json["resolved"], serde_json::json!({"int": 93}));
        assert_eq!(json["candidates"][0]["system"], "shop");
        assert_eq!(json["candidates"][1]["dot"], serde_json::json!(["wms", 2]));
        assert_eq!(json["ts_ms"], 2_001);
        assert_eq!(json["pending"], false);
    }

    #[test]
    fn ids_are_deterministic_and_distinguish_conflicts() {
        let c = conflict(Strategy::Lww, Some(1));
        let systems = systems();
        let id =
            |key, field, systems: &[SystemInfo], c| conflict_id(systems, "product", key, field, c);
        let a = id(r#"["SKU-1"]"#, "quantity", &systems, &c);
        assert_eq!(a, id(r#"["SKU-1"]"#, "quantity", &systems, &c));
        assert_eq!(
            a, "c-6424f87430241bba",
            "pinned: ids are published and looked up by operators"
        );
        assert_ne!(a, id(r#"["SKU-2"]"#, "quantity", &systems, &c));
        assert_ne!(a, id(r#"["SKU-1"]"#, "price", &systems, &c));
        // Another configuration order gives the systems other ids: the same conflict, by name.
        let reordered: Vec<SystemInfo> = ["wms", "shop", "erp"]
            .iter()
            .map(|n| SystemInfo {
                name: (*n).into(),
                rank: 0,
                on_position_regression: crate::config::RegressionPolicy::Accept,
            })
            .collect();
        let mut same = c.clone();
        for candidate in &mut same.candidates {
            candidate.dot.system = SystemId(2 - candidate.dot.system.0);
            candidate.system = candidate.dot.system;
        }
        assert_eq!(a, id(r#"["SKU-1"]"#, "quantity", &reordered, &same));
        let key = RawValue::from_string(r#"["SKU-1"]"#.into()).unwrap();
        let record = conflict_record(&systems, "product", &key, "quantity", &c);
        assert_eq!(record.winner, Some("wms"));
        let manual_conflict = conflict(Strategy::Manual, None);
        let manual = conflict_record(&systems, "product", &key, "quantity", &manual_conflict);
        assert!(manual.pending);
    }
}
