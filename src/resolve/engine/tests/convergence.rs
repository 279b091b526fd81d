//! Every non-manual strategy converges over permutations and interleavings of concurrent changes.

use super::*;

/// Up to three concurrent changes (one per system) to price and/or quantity.
/// One system's change: who, when, which fields.
type TestChange = (SystemId, i64, Vec<(FieldId, FieldValue)>);

fn arb_changes() -> impl Generator<Value = Vec<TestChange>> {
    let one = (
        0i64..5,
        proptest::option::of(0i64..300),
        proptest::option::of(0i64..300),
    );
    proptest::collection::vec(one, 3).prop_map(|changes| {
        changes
            .into_iter()
            .enumerate()
            .map(|(s, (ts, price, quantity))| {
                let mut fields = Vec::new();
                if let Some(p) = price {
                    fields.push((PRICE, int(p)));
                }
                if let Some(q) = quantity {
                    fields.push((QUANTITY, int(q)));
                }
                (SystemId(s as u16), 2_000 + ts, fields)
            })
            .filter(|(_, _, fields)| !fields.is_empty())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For every strategy but `manual`, the resolved record after a set of concurrent changes
    /// from three systems is the same whatever order they arrive in. Exact mode: each change
    /// names the version it was based on (the synced one), so no write is taken for an echo.
    #[test]
    fn resolution_converges_over_every_permutation(strategy in arb_strategy(), changes in arb_changes()) {
        let rules = {
            let mut r = rules(strategy, if strategy == Strategy::Priority { vec![WMS, ERP] } else { vec![] });
            r.fields[PRICE.0 as usize].strategy = strategy;
            r.fields[PRICE.0 as usize].priority = r.fields[QUANTITY.0 as usize].priority.clone();
            r
        };
        let mut results = Vec::new();
        for order in permutations(changes.len()) {
            let mut src = Source { next: [0; 3] };
            let mut state = synced(&rules, &mut src);
            let base = state.clock.clone();
            for &i in &order {
                let (s, ts, fields) = &changes[i];
                apply(&mut state, &rules, &exact(&mut src, *s, *ts, fields, &base));
            }
            results.push((value(&state, PRICE), value(&state, QUANTITY), state.clock.clone()));
        }
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
        // Under sum, every movement counts once.
        if strategy == Strategy::Sum {
            let moved: i64 = changes.iter().flat_map(|(_, _, f)| f).filter(|(f, _)| *f == QUANTITY)
                .map(|(_, v)| match v { FieldValue::Int(q) => q - 100, _ => 0 }).sum();
            prop_assert_eq!(&results[0].1, &int(100 + moved));
        }
    }

    /// Content mode converges too as long as no two systems concurrently write the very
    /// content harmony is sending the other (then that write is read as an echo: the one
    /// ambiguity of content matching, ARCHITECTURE.md §4 step 3).
    #[test]
    fn content_mode_converges_when_writes_are_distinguishable(strategy in arb_strategy(), changes in arb_changes()) {
        let rules = {
            let mut r = rules(strategy, if strategy == Strategy::Priority { vec![WMS, ERP] } else { vec![] });
            r.fields[PRICE.0 as usize].strategy = strategy;
            r.fields[PRICE.0 as usize].priority = r.fields[QUANTITY.0 as usize].priority.clone();
            r
        };
        // Distinguishable: a system's write never equals what resolving the *other* systems'
        // writes can produce. Each system moves a field by 1, 2 or 4 (mod 8) from its initial
        // value: no other system's value, and no sum of the others' movements, has its residue.
        let changes: Vec<_> = changes
            .into_iter()
            .map(|(s, ts, fields)| {
                let step = [1, 2, 4][usize::from(s.0)];
                let fields = fields.into_iter().map(|(f, v)| match v {
                    FieldValue::Int(x) => {
                        let initial = if f == PRICE { 490 } else { 100 };
                        (f, int(initial + 8 * x + step))
                    }
                    other => (f, other),
                }).collect::<Vec<_>>();
                (s, ts, fields)
            })
            .collect();
        let mut results = Vec::new();
        for order in permutations(changes.len()) {
            let mut src = Source { next: [0; 3] };
            let mut state = synced(&rules, &mut src);
            for &i in &order {
                let (s, ts, fields) = &changes[i];
                apply(&mut state, &rules, &change(&mut src, *s, *ts, fields));
            }
            results.push((value(&state, PRICE), value(&state, QUANTITY), state.clock.clone()));
        }
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
    }

    /// Any change delivered twice changes nothing the second time.
    #[test]
    fn dedup_is_idempotent(strategy in arb_strategy(), changes in arb_changes()) {
        let rules = rules(strategy, vec![WMS]);
        let mut src = Source { next: [0; 3] };
        let mut state = synced(&rules, &mut src);
        for (s, ts, fields) in &changes {
            let c = change(&mut src, *s, *ts, fields);
            apply(&mut state, &rules, &c);
            let once = state.clone();
            prop_assert_eq!(apply(&mut state, &rules, &c), Outcome::Duplicate(DuplicateReason::Position));
            prop_assert_eq!(&state, &once);
        }
    }
}

/// The erp deletes the record and inserts it again (its original values) while the shop
/// changes the price and the warehouse the name: every interleaving that keeps each system's
/// own order ends in the same record and counts every change. The re-inserted row is new, so
/// all its values are fresh writes, not just those differing from what the erp held before
/// the delete (which made the outcome depend on whether the shop's price came first).
#[test]
fn a_delete_and_re_insert_against_concurrent_updates_converges_in_every_interleaving() {
    let rules = rules(Strategy::Lww, vec![]);
    let reinsert = [(NAME, text("Cup")), (PRICE, int(490)), (QUANTITY, int(100))];
    let price = [(PRICE, int(4063))];
    let name = [(NAME, text("Mug"))];
    for (price_ts, name_ts) in [(1_500, 1_600), (2_500, 2_600), (1_500, 2_600)] {
        let mut results = Vec::new();
        // Events 0 and 1 are the erp's delete and re-insert, in that order.
        for order in interleavings(4) {
            let mut src = Source { next: [0; 3] };
            let mut state = synced(&rules, &mut src);
            let base = state.clock.clone();
            for &i in &order {
                let c = match i {
                    0 => Change {
                        kind: ChangeKind::Delete,
                        ..exact(&mut src, ERP, 2_000, &[], &base)
                    },
                    1 => exact(&mut src, ERP, 2_001, &reinsert, &base),
                    2 => exact(&mut src, SHOP, price_ts, &price, &base),
                    _ => exact(&mut src, WMS, name_ts, &name, &base),
                };
                let outcome = apply(&mut state, &rules, &c);
                assert!(
                    matches!(outcome, Outcome::Applied { .. }),
                    "{order:?}: change {i} was not applied: {outcome:?}"
                );
            }
            results.push((
                order,
                value(&state, NAME),
                value(&state, PRICE),
                state.deleted.is_some(),
                state.clock.clone(),
            ));
        }
        for r in &results[1..] {
            assert_eq!(
                (&r.1, &r.2, r.3, &r.4),
                (&results[0].1, &results[0].2, results[0].3, &results[0].4),
                "{:?} vs {:?} (price at {price_ts}, name at {name_ts})",
                r.0,
                results[0].0
            );
        }
    }
}
