//! Deletes: against concurrent updates, final everywhere and erased, never sent twice.

use super::*;

fn delete<'c>(src: &mut Source, s: SystemId, ts_ms: i64) -> Change<'c> {
    Change {
        kind: ChangeKind::Delete,
        ..change(src, s, ts_ms, &[])
    }
}

/// The shop deletes the product while the warehouse concurrently updates its quantity.
fn delete_against_update(on_delete_conflict: DeleteConflict, delete_first: bool) -> RecordState {
    let mut rules = rules(Strategy::Lww, vec![]);
    rules.on_delete_conflict = on_delete_conflict;
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let update = [(QUANTITY, int(97))];
    if delete_first {
        apply(&mut state, &rules, &delete(&mut src, SHOP, 2_000));
        apply(&mut state, &rules, &change(&mut src, WMS, 2_001, &update));
    } else {
        apply(&mut state, &rules, &change(&mut src, WMS, 2_001, &update));
        apply(&mut state, &rules, &delete(&mut src, SHOP, 2_000));
    }
    state
}

#[test]
fn a_delete_final_everywhere_erases_the_values_and_a_replayed_creation_stays_a_duplicate() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    // The erp's creation, kept to be re-sent later as a connector restart would.
    let initial = [
        (NAME, text("Cup")),
        (PRICE, int(490)),
        (QUANTITY, int(100)),
        (UPDATED_AT, text("t0")),
    ];
    let creation = change(&mut Source { next: [0; 3] }, ERP, 1_000, &initial);
    let mut state = synced(&rules, &mut src);
    let deleted = apply(&mut state, &rules, &delete(&mut src, ERP, 2_000));
    assert!(
        matches!(deleted, Outcome::Applied { ref deliver_to, .. } if deliver_to == &vec![SHOP, WMS])
    );
    assert!(
        !erase_if_gone(&mut state, &rules),
        "the shop and the warehouse still hold it"
    );
    apply(&mut state, &rules, &delete(&mut src, SHOP, 2_001));
    assert!(
        !erase_if_gone(&mut state, &rules),
        "the warehouse still holds it"
    );
    apply(&mut state, &rules, &delete(&mut src, WMS, 2_002));
    assert!(erase_if_gone(&mut state, &rules));
    assert!(state.fields.is_empty());
    assert!(state
        .systems
        .iter()
        .all(|(_, s)| s.held.is_empty() && s.pending.is_empty()));
    assert!(!erase_if_gone(&mut state, &rules), "nothing left to erase");
    // Before: the values stayed in the state and its changelog value for ever.
    assert_eq!(
        apply(&mut state, &rules, &creation),
        Outcome::Duplicate(DuplicateReason::Position)
    );
    assert!(state.deleted.is_some());
    // A new product under the same key is created afresh.
    let again = [(NAME, text("Mug")), (PRICE, int(300)), (QUANTITY, int(5))];
    assert!(matches!(
        apply(&mut state, &rules, &change(&mut src, ERP, 3_000, &again)),
        Outcome::Applied { .. }
    ));
    assert!(state.deleted.is_none());
    assert_eq!(value(&state, NAME), text("Mug"));
}

/// The shop changes the record before its sink applies the erp's delete. The delete holds; the
/// shop, with a delete already on its way, and the erp, which deleted the row itself, are sent
/// nothing more: deleting a deleted row changes nothing, so no echo would ever answer such a
/// delivery. Found by the tombstone test on the real stack: before, both were sent the delete
/// again, those deliveries stayed pending for good, the delete was never final, the record
/// never erased nor tombstoned, and both targets out of sync for ever.
#[test]
fn a_target_holding_a_record_deleted_is_sent_no_second_delete() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    apply(&mut state, &rules, &delete(&mut src, ERP, 2_000));
    let repriced = [(PRICE, int(500))];
    apply(
        &mut state,
        &rules,
        &change(&mut src, SHOP, 2_001, &repriced),
    );
    assert!(state.deleted.is_some(), "the delete holds");
    let pending = |state: &RecordState, s| state.system(s).map_or(0, |s| s.pending.len());
    assert_eq!(
        (
            pending(&state, ERP),
            pending(&state, SHOP),
            pending(&state, WMS)
        ),
        (0, 1, 1)
    );
    assert!(matches!(
        apply(&mut state, &rules, &delete(&mut src, SHOP, 2_002)),
        Outcome::Echo { .. }
    ));
    apply(&mut state, &rules, &delete(&mut src, WMS, 2_003));
    assert!(
        erase_if_gone(&mut state, &rules),
        "the delete is final everywhere"
    );
}

/// Two deletes on their way to one target (as state written before the rule above can hold):
/// the one delete its sink makes answers both.
#[test]
fn one_delete_seen_back_answers_every_delete_sent_before_it_in_a_row() {
    let rules = rules(Strategy::Sum, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    apply(&mut state, &rules, &delete(&mut src, ERP, 2_000));
    let shop = state.system_mut(SHOP);
    let again = shop.pending.back().cloned().unwrap();
    shop.pending.push_back(again);
    assert!(matches!(
        apply(&mut state, &rules, &delete(&mut src, SHOP, 2_001)),
        Outcome::Echo { .. }
    ));
    assert!(state.system(SHOP).unwrap().pending.is_empty());
}

#[test]
fn delete_wins_over_a_concurrent_update_in_either_order() {
    for delete_first in [true, false] {
        let state = delete_against_update(DeleteConflict::DeleteWins, delete_first);
        assert!(state.deleted.is_some(), "delete first: {delete_first}");
    }
}

#[test]
fn update_wins_over_a_concurrent_delete_in_either_order() {
    for delete_first in [true, false] {
        let state = delete_against_update(DeleteConflict::UpdateWins, delete_first);
        assert!(state.deleted.is_none(), "delete first: {delete_first}");
        assert_eq!(value(&state, QUANTITY), int(97));
    }
}

#[test]
fn a_delete_seen_by_all_is_final_and_a_later_insert_revives_the_record() {
    let rules = rules(Strategy::Lww, vec![]);
    let mut src = Source { next: [0; 3] };
    let mut state = synced(&rules, &mut src);
    let Outcome::Applied { deliver_to, .. } =
        apply(&mut state, &rules, &delete(&mut src, SHOP, 2_000))
    else {
        panic!()
    };
    assert_eq!(
        deliver_to,
        vec![ERP, WMS],
        "the delete goes to the other systems"
    );
    assert!(state.deleted.is_some());
    // The erp, having applied the delete (its echo), creates the product again.
    let sent = state.system(ERP).unwrap().pending.back().cloned().unwrap();
    let mut gone = delete(&mut src, ERP, 2_100);
    gone.fields = &[];
    assert!(sent.deleted);
    assert_eq!(
        apply(&mut state, &rules, &gone),
        Outcome::Echo { deliver_to: vec![] }
    );
    let again = [
        (NAME, text("Cup v2")),
        (PRICE, int(500)),
        (QUANTITY, int(10)),
        (UPDATED_AT, text("t3")),
    ];
    apply(&mut state, &rules, &change(&mut src, ERP, 3_000, &again));
    assert!(state.deleted.is_none());
    assert_eq!(value(&state, NAME), text("Cup v2"));
}
