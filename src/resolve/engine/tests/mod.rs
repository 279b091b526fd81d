//! The engine on the seed scenarios of the sync issue, and its laws over permutations, by
//! theme; the shared vocabulary (systems, fields, rules, changes) here.

use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig};
use proptest::strategy::Strategy as Generator;

use super::*;
use crate::model::clock::SystemId;

mod closed_loop;
mod convergence;
mod deletes;
mod echoes;
mod positions;
mod strategies;

const ERP: SystemId = SystemId(0);
const SHOP: SystemId = SystemId(1);
const WMS: SystemId = SystemId(2);
const NAME: FieldId = FieldId(0);
const PRICE: FieldId = FieldId(1);
const QUANTITY: FieldId = FieldId(2);
const UPDATED_AT: FieldId = FieldId(3);

fn rules(quantity: Strategy, priority: Vec<SystemId>) -> EntityRules {
    let field = |name, strategy, priority, ignored| FieldRule {
        strategy,
        priority,
        ignored,
        guard: None,
        name_hash: fingerprint::name(name),
    };
    EntityRules {
        systems: vec![
            SystemInfo {
                name: "erp".into(),
                rank: 3,
                on_position_regression: crate::config::RegressionPolicy::Accept,
            },
            SystemInfo {
                name: "shop".into(),
                rank: 1,
                on_position_regression: crate::config::RegressionPolicy::Accept,
            },
            SystemInfo {
                name: "wms".into(),
                rank: 2,
                on_position_regression: crate::config::RegressionPolicy::Accept,
            },
        ],
        fields: vec![
            field("name", Strategy::Lww, vec![], false),
            field("price", Strategy::Lww, vec![], false),
            field("quantity", quantity, priority, false),
            field("updated_at", Strategy::Lww, vec![], true),
        ],
        held_fields: vec![vec![NAME, PRICE, QUANTITY, UPDATED_AT]; 3],
        required_fields: vec![vec![]; 3],
        targets: vec![ERP, SHOP, WMS],
        windows: vec![WINDOW; 3],
        on_delete_conflict: DeleteConflict::DeleteWins,
        operator: SystemId(3),
    }
}

/// The default delivery window of a target.
const WINDOW: usize = 32;

/// Positions grow per system as a connector's would.
struct Source {
    next: [u64; 3],
}

impl Source {
    fn position(&mut self, s: SystemId) -> SourcePosition {
        self.next[s.0 as usize] += 10;
        SourcePosition::Postgres {
            commit_lsn: 0,
            lsn: self.next[s.0 as usize],
        }
    }
}

fn change<'c>(
    src: &mut Source,
    s: SystemId,
    ts_ms: i64,
    fields: &'c [(FieldId, FieldValue)],
) -> Change<'c> {
    Change {
        system: s,
        position: src.position(s),
        ts_ms,
        ts_us: ts_ms * 1000,
        snapshot: false,
        kind: ChangeKind::Upsert,
        fields,
        context: None,
    }
}

/// The same change in exact mode: it names the version it was based on.
fn exact<'c>(
    src: &mut Source,
    s: SystemId,
    ts_ms: i64,
    fields: &'c [(FieldId, FieldValue)],
    context: &'c VersionVector,
) -> Change<'c> {
    Change {
        context: Some(context),
        ..change(src, s, ts_ms, fields)
    }
}

fn int(i: i64) -> FieldValue {
    FieldValue::Int(i)
}

fn text(t: &str) -> FieldValue {
    FieldValue::Text(t.into())
}

/// A record created in the erp and applied by the shop and the warehouse (each echo seen
/// back), so all three systems hold the same version: the start of every scenario.
fn synced(rules: &EntityRules, src: &mut Source) -> RecordState {
    let mut state = RecordState::default();
    let initial = [
        (NAME, text("Cup")),
        (PRICE, int(490)),
        (QUANTITY, int(100)),
        (UPDATED_AT, text("t0")),
    ];
    let outcome = apply(&mut state, rules, &change(src, ERP, 1_000, &initial));
    assert!(
        matches!(&outcome, Outcome::Applied { deliver_to, conflicts, .. } if conflicts.is_empty() && deliver_to == &vec![SHOP, WMS])
    );
    for s in [SHOP, WMS] {
        // The sink writes the row; Debezium captures it with the system's own updated_at.
        let echo = [
            (NAME, text("Cup")),
            (PRICE, int(490)),
            (QUANTITY, int(100)),
            (UPDATED_AT, text("t-sink")),
        ];
        assert_eq!(
            apply(&mut state, rules, &change(src, s, 1_001, &echo)),
            Outcome::Echo { deliver_to: vec![] }
        );
    }
    state
}

fn value(state: &RecordState, field: FieldId) -> FieldValue {
    state.field(field).unwrap().value.clone()
}

/// Applies the shop's and the warehouse's concurrent quantity changes in both orders.
fn both_orders(
    quantity: Strategy,
    priority: Vec<SystemId>,
    shop_ts: i64,
    wms_ts: i64,
) -> (FieldValue, FieldValue, Vec<Conflict>) {
    let rules = rules(quantity, priority);
    let run = |shop_first: bool| {
        let mut src = Source { next: [0; 3] };
        let mut state = synced(&rules, &mut src);
        let shop_change = [(QUANTITY, int(95))];
        let wms_change = [(QUANTITY, int(98))];
        let mut conflicts = Vec::new();
        let order = if shop_first { [SHOP, WMS] } else { [WMS, SHOP] };
        for s in order {
            let (fields, ts) = if s == SHOP {
                (&shop_change[..], shop_ts)
            } else {
                (&wms_change[..], wms_ts)
            };
            if let Outcome::Applied { conflicts: c, .. } =
                apply(&mut state, &rules, &change(&mut src, s, ts, fields))
            {
                conflicts.extend(c);
            }
        }
        (value(&state, QUANTITY), conflicts)
    };
    let (a, conflicts) = run(true);
    let (b, _) = run(false);
    (a, b, conflicts)
}

fn arb_strategy() -> impl Generator<Value = Strategy> {
    prop_oneof![
        Just(Strategy::Lww),
        Just(Strategy::Fww),
        Just(Strategy::Priority),
        Just(Strategy::Max),
        Just(Strategy::Min),
        Just(Strategy::Sum),
    ]
}

/// The orders of `n` changes in which change 0 comes before change 1 (one system's two
/// changes, which reach harmony in the order that system made them).
fn interleavings(n: usize) -> Vec<Vec<usize>> {
    permutations(n)
        .into_iter()
        .filter(|o| o.iter().position(|&i| i == 0) < o.iter().position(|&i| i == 1))
        .collect()
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}
