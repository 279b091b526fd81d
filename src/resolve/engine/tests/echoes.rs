//! Echoes: a target seen applying what it was sent, a sink writing a delivery again, rows a
//! target cannot create yet.

use super::*;

#[test]
fn an_overridden_origin_is_sent_the_resolution_and_its_echo_ends_the_loop() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let shop = [(QUANTITY, int(95))];
    let wms = [(QUANTITY, int(98))];
    apply(&mut state, &rules, &change(&mut src, SHOP, 2_000, &shop));
    let Outcome::Applied { deliver_to, .. } =
        apply(&mut state, &rules, &change(&mut src, WMS, 2_001, &wms))
    else {
        panic!()
    };
    // 93 goes to everyone, the warehouse included: it holds 98.
    assert_eq!(deliver_to, vec![ERP, SHOP, WMS]);
    // Each system applies every version it was sent, in order; each is an echo.
    for s in [ERP, SHOP, WMS] {
        let sent: Vec<Delivery> = state.system(s).unwrap().pending.iter().cloned().collect();
        for d in sent {
            let mut fields = d.values.clone();
            fields.push((UPDATED_AT, text("sink")));
            fields.sort_by_key(|(f, _)| *f);
            assert_eq!(
                apply(&mut state, &rules, &change(&mut src, s, 3_000, &fields)),
                Outcome::Echo { deliver_to: vec![] },
                "{s:?}"
            );
        }
        assert!(state.system(s).unwrap().pending.is_empty());
    }
    assert_eq!(value(&state, QUANTITY), int(93));
    // The loop is quiet: every system has seen the current version.
    for s in [ERP, SHOP, WMS] {
        assert_eq!(state.system(s).unwrap().seen, state.clock);
    }
}

#[test]
fn exact_mode_knows_a_sink_writing_an_older_delivery_again_for_a_late_echo() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let delivered =
        |state: &RecordState| state.system(SHOP).unwrap().pending.back().cloned().unwrap();
    // The erp receives twice: two deliveries to the shop.
    let mut sent = Vec::new();
    for (n, q) in [(1, 105), (2, 108)] {
        let fields = [(QUANTITY, int(q))];
        apply(
            &mut state,
            &rules,
            &change(&mut src, ERP, 2_000 + n, &fields),
        );
        sent.push(delivery_row(&delivered(&state)));
    }
    // The shop's sink writes both; then, restarted before it committed, writes both again:
    // late echoes, the latest too (its version column moved), with the current record re-sent.
    for (round, expected) in [(0, [true, true]), (1, [false, false])] {
        for (i, (row, version)) in sent.iter().enumerate() {
            let out = apply(
                &mut state,
                &rules,
                &exact(&mut src, SHOP, 3_000 + round, row, version),
            );
            let echo = matches!(out, Outcome::Echo { .. });
            let late = matches!(out, Outcome::LateEcho { .. });
            assert!(echo || late, "round {round}, delivery {i}: {out:?}");
            assert_eq!(echo, expected[i], "round {round}, delivery {i}: {out:?}");
        }
    }
    // Then the re-send itself, under a version of harmony's own: its echo.
    let resent = delivery_row(&delivered(&state));
    assert_eq!(resent.0, sent[1].0);
    assert_ne!(resent.1, sent[1].1);
    assert!(matches!(
        apply(
            &mut state,
            &rules,
            &exact(&mut src, SHOP, 3_100, &resent.0, &resent.1)
        ),
        Outcome::Echo { .. }
    ));
    // Before: the older delivery written again was a fresh write of 105 — under `sum`, the shop
    // "selling" 3 — and the stock fell to 105.
    assert_eq!(value(&state, QUANTITY), int(108));
    assert_eq!(
        state.clock.get(SHOP),
        0,
        "no change of the shop's was accepted"
    );
    // The shop then sells one, on top of the version its row carries: the re-send's.
    let (row, version) = &resent;
    let mut sold = row.clone();
    for (field, value) in &mut sold {
        if *field == QUANTITY {
            *value = int(107);
        }
    }
    assert!(matches!(
        apply(
            &mut state,
            &rules,
            &exact(&mut src, SHOP, 4_000, &sold, version)
        ),
        Outcome::Applied { .. }
    ));
    assert_eq!(value(&state, QUANTITY), int(107));
}

/// What a sink writes for `delivery`: its values, and its version in the version column.
fn delivery_row(delivery: &Delivery) -> (Vec<(FieldId, FieldValue)>, VersionVector) {
    (delivery.values.clone(), delivery.clock.clone())
}

/// The erp creates a record whose shop table has a column nobody else holds (`active`, filled
/// by the table's default when the sink inserts the row).
fn rules_with_shop_only_field() -> (EntityRules, FieldId) {
    let mut rules = rules(Strategy::Sum, vec![]);
    let active = FieldId(4);
    rules.fields.push(FieldRule {
        strategy: Strategy::Lww,
        priority: vec![],
        ignored: false,
        guard: None,
        name_hash: fingerprint::name("active"),
    });
    rules.held_fields[SHOP.0 as usize].push(active);
    (rules, active)
}

#[test]
fn an_echo_carrying_a_default_column_is_an_echo_plus_that_column_and_no_conflict() {
    let (rules, active) = rules_with_shop_only_field();
    let mut src = Source { next: [0; 3] };
    let mut state = RecordState::default();
    let initial = [(NAME, text("Cup")), (PRICE, int(490)), (QUANTITY, int(100))];
    apply(&mut state, &rules, &change(&mut src, ERP, 1_000, &initial));
    // The shop's sink inserted the delivered row; its table added `active = true`.
    let echo = [
        (NAME, text("Cup")),
        (PRICE, int(490)),
        (QUANTITY, int(100)),
        (active, FieldValue::Bool(true)),
    ];
    let outcome = apply(&mut state, &rules, &change(&mut src, SHOP, 1_001, &echo));
    let Outcome::Applied {
        conflicts,
        deliver_to,
        ..
    } = &outcome
    else {
        panic!("the new column is news: {outcome:?}")
    };
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert!(
        deliver_to.is_empty(),
        "no other system holds `active`, the shop has it"
    );
    assert_eq!(value(&state, active), FieldValue::Bool(true));
    assert!(
        state.system(SHOP).unwrap().seen.covers(Dot {
            system: ERP,
            counter: 1
        }),
        "the shop applied the erp's version"
    );
    // Seen again (a second capture of the same row), it changes nothing.
    let again = apply(&mut state, &rules, &change(&mut src, SHOP, 1_002, &echo));
    assert_eq!(again, Outcome::Duplicate(DuplicateReason::NoChange));
}

#[test]
fn a_target_that_cannot_create_the_row_waits_for_its_required_fields() {
    let mut rules = rules(Strategy::Sum, vec![]);
    // The shop's table needs a name and a price to create a row.
    rules.required_fields[SHOP.0 as usize] = vec![NAME, PRICE];
    rules.held_fields[WMS.0 as usize] = vec![QUANTITY];
    let mut src = Source { next: [0; 3] };
    let mut state = RecordState::default();
    // The warehouse knows the product first, by its count alone.
    let counted = [(QUANTITY, int(40))];
    let outcome = apply(&mut state, &rules, &change(&mut src, WMS, 1_000, &counted));
    assert!(
        matches!(&outcome, Outcome::Applied { deliver_to, .. } if deliver_to == &vec![ERP]),
        "the shop cannot create a row without name and price: {outcome:?}"
    );
    let named = [(NAME, text("Cup")), (PRICE, int(490))];
    let outcome = apply(&mut state, &rules, &change(&mut src, ERP, 1_001, &named));
    assert!(
        matches!(&outcome, Outcome::Applied { deliver_to, .. } if deliver_to.contains(&SHOP) && !deliver_to.contains(&WMS)),
        "complete now, and the warehouse holds no name or price: {outcome:?}"
    );
}

/// Without a window (a target whose topic nothing writes back), every version is sent.
#[test]
fn a_window_above_32_keeps_every_pending_delivery_and_knows_its_echo() {
    let mut rules = rules(Strategy::Sum, vec![]);
    rules.windows = vec![64; 3];
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    // The erp reprices 40 times before the shop's sink writes anything back.
    for price in 1..=40 {
        let fields = [(PRICE, int(500 + price))];
        let out = apply(
            &mut state,
            &rules,
            &change(&mut src, ERP, 2_000 + price, &fields),
        );
        assert!(matches!(out, Outcome::Applied { .. }), "{price}: {out:?}");
    }
    assert_eq!(state.system(SHOP).unwrap().pending.len(), 40);
    // The sink writes the first version: its echo, not the shop repricing to a stale price.
    // With the pending deliveries cut at 32, the first eight were forgotten and this was taken
    // for a fresh write (and sent to everyone).
    let first = [
        (NAME, text("Cup")),
        (PRICE, int(501)),
        (QUANTITY, int(100)),
        (UPDATED_AT, text("t-sink")),
    ];
    assert_eq!(
        apply(&mut state, &rules, &change(&mut src, SHOP, 3_000, &first)),
        Outcome::Echo { deliver_to: vec![] }
    );
    assert_eq!(value(&state, PRICE), int(540));
}
