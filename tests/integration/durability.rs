//! Stage 2's record state outlives its worker: written to the changelog after the outputs it
//! vouches for, restored on assignment before any change of the partition is applied. The
//! proof: a worker killed with SIGKILL and started again still recognises a system applying a
//! delivery it made before the kill — with the state lost, the same row would be a fresh
//! change, re-delivered to every other system.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ingest::product;
use crate::support::{self, http_get, psql, unique, Harmony, HarmonyOptions, Record, TopicReader};

fn count_for(reader: &mut TopicReader, sku: &str) -> usize {
    reader.read_for(Duration::from_millis(300)).unwrap();
    reader.records.iter().filter(|r| r.keyed_by(sku)).count()
}

#[test]
fn record_state_survives_a_sigkill_and_an_echo_after_restart_is_still_an_echo() {
    let Some(mut options) = support::on_stack("e2e-state") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(&group, &["erp", "shop", "wms"], "");
    options.extra_toml = format!("{}{targets}", product());
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("DUR");

    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Scale', 24.90, 30)")).unwrap();
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();
    assert!(
        shop.read_until(Duration::from_secs(60), |rs| rs
            .iter()
            .any(|r| r.key.as_deref().is_some_and(|k| k.contains(&sku))))
            .unwrap(),
        "{}",
        harmony.log()
    );
    // The state behind that delivery is on the changelog, keyed like the record.
    let mut state = TopicReader::new(&format!("harmony.{group}.state")).unwrap();
    let key = format!(r#"product:["{sku}"]"#);
    let ours = |r: &Record| r.key.as_deref() == Some(key.as_str());
    assert!(
        state
            .read_until(Duration::from_secs(30), |rs| rs.iter().any(ours))
            .unwrap(),
        "no changelog record for {key}\n{}",
        harmony.log()
    );
    // Past a commit interval, so the restart resumes after the insert rather than replaying it.
    std::thread::sleep(Duration::from_secs(3));
    harmony.kill_hard().unwrap();
    harmony.spawn().unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        let metrics = harmony
            .http_address()
            .and_then(|a| http_get(&a, "/metrics").ok())
            .map(|(_, body)| body)
            .unwrap_or_default();
        let ready = harmony
            .http_address()
            .and_then(|a| http_get(&a, "/ready").ok())
            .is_some_and(|(code, _)| code == 200);
        let restored: f64 = metrics
            .lines()
            .find(|l| l.starts_with("harmony_state_restored_records_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if ready && restored >= 1.0 {
            break restored;
        }
        assert!(
            Instant::now() < deadline,
            "not restored and ready\n{}",
            harmony.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(restored >= 1.0);
    assert!(
        harmony.log().contains("partition state restored"),
        "the restore is logged"
    );

    let mut erp = TopicReader::new(&format!("{group}.erp.product")).unwrap();
    let mut wms = TopicReader::new(&format!("{group}.wms.product")).unwrap();
    let mut conflicts = TopicReader::new(&format!("harmony.{group}.conflicts")).unwrap();
    let before = (
        count_for(&mut erp, &sku),
        count_for(&mut shop, &sku),
        count_for(&mut wms, &sku),
        count_for(&mut conflicts, &sku),
    );
    // The shop's sink applies what harmony sent it before the kill.
    psql("shop", &format!("INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Scale', 24.90, 30)")).unwrap();
    // And the shop then sells 4: a plain update the others must get.
    std::thread::sleep(Duration::from_secs(1));
    psql(
        "shop",
        &format!("UPDATE items SET stock = 26 WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    let sold = |r: &Record| {
        let v: Value = r.json();
        v["payload"]["after"]["quantity"] == 26 && v["payload"]["after"]["sku"] == sku.as_str()
    };
    assert!(
        erp.read_until(Duration::from_secs(60), |rs| rs.iter().any(sold))
            .unwrap(),
        "{}",
        harmony.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = (
        count_for(&mut erp, &sku),
        count_for(&mut shop, &sku),
        count_for(&mut wms, &sku),
        count_for(&mut conflicts, &sku),
    );
    // Exactly one new delivery each to the erp and the warehouse (the sale); none for the
    // echo; no conflict: the restored state knew the shop had been sent that row.
    assert_eq!(
        after,
        (before.0 + 1, before.1, before.2 + 1, before.3),
        "(erp, shop, wms, conflicts) records before {before:?}\n{}",
        harmony.log()
    );

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// Partitions move between workers of one group: the new owner restores their state before
/// applying any change of them, so echoes stay echoes and sales stay single deliveries — first
/// when a second worker joins, then when the first is killed and the second takes over all.
#[test]
fn state_follows_partitions_across_rebalances_between_workers() {
    let Some(mut options) = support::on_stack("e2e-rebalance") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(&group, &["erp", "shop", "wms"], "");
    options.extra_toml = format!("{}{targets}", product());
    let mut first = Harmony::start(&options).unwrap();
    let prefix = unique("RB");
    let skus: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
    for sku in &skus {
        psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Mill', 9.90, 50)")).unwrap();
    }
    let mut state = TopicReader::new(&format!("harmony.{group}.state")).unwrap();
    assert!(
        state
            .read_until(Duration::from_secs(60), |rs| skus.iter().all(|sku| rs
                .iter()
                .any(|r| r
                    .key
                    .as_deref()
                    .is_some_and(|k| k.contains(sku.as_str())))))
            .unwrap(),
        "{}",
        first.log()
    );
    std::thread::sleep(Duration::from_secs(3));

    // A second worker joins: it is given some partitions and restores their records.
    let mut second = first.another_worker("second").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.metric("harmony_state_restored_records_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the second worker restored nothing\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A partition's state series are exported by its owner only: the first worker removed
    // those of the partitions it gave up.
    let owned = |w: &Harmony| -> Vec<String> {
        let held = w.metric_labels("harmony_state_records", "partition");
        for name in [
            "harmony_state_bytes",
            "harmony_target_out_of_sync_records",
            "harmony_manual_conflicts_pending",
        ] {
            assert_eq!(w.metric_labels(name, "partition"), held, "{name}");
        }
        held
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (owned(&first), owned(&second));
        let mut all: Vec<&String> = a.iter().chain(&b).collect();
        all.sort();
        if !a.is_empty() && !b.is_empty() && all == ["0", "1", "2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state series overlap or are missing: first {a:?}, second {b:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let mut erp = TopicReader::new(&format!("{group}.erp.product")).unwrap();
    let mut wms = TopicReader::new(&format!("{group}.wms.product")).unwrap();
    let mut conflicts = TopicReader::new(&format!("harmony.{group}.conflicts")).unwrap();
    let counts = |erp: &mut TopicReader, wms: &mut TopicReader, conflicts: &mut TopicReader| {
        skus.iter()
            .map(|sku| {
                (
                    count_for(erp, sku),
                    count_for(wms, sku),
                    count_for(conflicts, sku),
                )
            })
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    };
    let before = counts(&mut erp, &mut wms, &mut conflicts);
    // The shop's sink applies every product harmony sent it: echoes, whoever owns them now.
    for sku in &skus {
        psql("shop", &format!("INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Mill', 9.90, 50)")).unwrap();
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        counts(&mut erp, &mut wms, &mut conflicts),
        before,
        "echoes re-delivered\nfirst:\n{}\nsecond:\n{}",
        first.log(),
        second.log()
    );

    // The first worker dies; the second takes every partition over and restores the rest.
    first.kill_hard().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.metric("harmony_state_records") < skus.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "the second worker did not take over\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for sku in &skus {
        psql(
            "shop",
            &format!("UPDATE items SET stock = 49 WHERE item_sku = '{sku}'"),
        )
        .unwrap();
    }
    // Ours only: the group resolves every product of the shared tables, other tests' too.
    let sold = |r: &Record| {
        let v = r.json();
        v["payload"]["after"]["quantity"] == 49
            && v["payload"]["after"]["sku"]
                .as_str()
                .is_some_and(|s| s.starts_with(&prefix))
    };
    assert!(
        erp.read_until(Duration::from_secs(60), |rs| rs
            .iter()
            .filter(|r| sold(r))
            .count()
            >= skus.len())
            .unwrap(),
        "{}",
        second.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let n = skus.len();
    assert_eq!(
        counts(&mut erp, &mut wms, &mut conflicts),
        (before.0 + n, before.1 + n, before.2),
        "one delivery per sale to the erp and the warehouse, no conflict\n{}",
        second.log()
    );
    assert!(second.terminate(Duration::from_secs(30)).unwrap().success());
}

/// Internal partition p is restored from state partition p: a state topic with fewer partitions
/// than the internal topic is refused at start, naming the key, instead of failing on the first
/// changelog write to a partition that does not exist.
#[test]
fn a_state_topic_with_too_few_partitions_is_refused_at_start() {
    if !support::stack_available("state partitions") {
        return;
    }
    let group = unique("e2e-statep");
    support::create_topic(&format!("harmony.{group}.state"), 1).unwrap();
    let mut options = HarmonyOptions::stack(group.clone());
    options.extra_toml = format!(
        "{}{}",
        product(),
        support::product_targets(&group, &["erp", "shop", "wms"], "")
    );
    let Err(error) = Harmony::start(&options) else {
        panic!("harmony started with a 1-partition state topic");
    };
    let log = error.to_string();
    assert!(
        log.contains("output.state_topic") && log.contains("has 1 partitions, fewer than the 3"),
        "{log}"
    );
}

/// Settings of harmony's own topics under which the broker would drop its data: refused at
/// start with the setting named. Before, harmony ran on them.
#[test]
fn topics_whose_settings_would_lose_data_are_refused_at_start() {
    if !support::stack_available("topic-settings") {
        return;
    }
    let cases = [
        (
            "state",
            ("cleanup.policy", "delete"),
            "cleanup.policy=delete",
        ),
        (
            "changes",
            ("retention.ms", "3600000"),
            "retention.ms=3600000",
        ),
        (
            "changes",
            ("cleanup.policy", "compact"),
            "cleanup.policy=compact",
        ),
    ];
    for (topic, setting, named) in cases {
        let group = unique("e2e-settings");
        let mut settings = vec![setting];
        if topic == "state" {
            settings.push(("segment.ms", "3600000"));
        }
        support::create_topic_with(&format!("harmony.{group}.{topic}"), 3, &settings).unwrap();
        let mut options = HarmonyOptions::stack(group);
        options.extra_toml = product();
        let refused = Harmony::start(&options)
            .err()
            .unwrap_or_else(|| panic!("harmony started on {topic} with {setting:?}"))
            .to_string();
        assert!(refused.contains(named), "{named}: {refused}");
        assert!(
            refused.contains(&format!(
                "output.{}_topic",
                if topic == "state" {
                    "state"
                } else {
                    "internal"
                }
            )),
            "{refused}"
        );
    }
}

/// The state topic deleted while stage 2's offsets remain: harmony refuses to start (every
/// record would begin afresh and be re-delivered as new) until asked to rebuild it, and then
/// rebuilds it from the internal topic. Before, it started on an empty state.
#[test]
fn a_lost_state_topic_is_refused_and_rebuilt_on_request() {
    let Some(mut options) = support::on_stack("e2e-lost") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(&group, &["shop"], "");
    options.extra_toml = format!("{}{targets}", product());
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("LOST");
    psql(
        "erp",
        &format!(
            "INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Lamp', 12.50, 3)"
        ),
    )
    .unwrap();
    let state_topic = format!("harmony.{group}.state");
    let key = format!(r#"product:["{sku}"]"#);
    let has_state = |timeout| {
        let mut state = TopicReader::new(&state_topic).unwrap();
        state
            .read_until(timeout, |rs| {
                rs.iter().any(|r| r.key.as_deref() == Some(key.as_str()))
            })
            .unwrap()
    };
    assert!(has_state(Duration::from_secs(60)), "{}", harmony.log());
    // Past a commit interval: stage 2's offsets are committed.
    std::thread::sleep(Duration::from_secs(3));
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());

    support::delete_topic(&state_topic).unwrap();
    let refused = harmony.spawn().unwrap_err().to_string();
    assert!(
        refused.contains("has no records") && refused.contains("--rebuild-state"),
        "{refused}"
    );

    harmony.args = vec!["--rebuild-state".into()];
    harmony.spawn().unwrap();
    assert!(has_state(Duration::from_secs(60)), "{}", harmony.log());
    assert!(harmony.log().contains("rebuilding the record state"));
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// A record deleted everywhere leaves the state topic once `processing.deleted_retention` has
/// passed in source time: a tombstone follows its erased state, a restarted worker does not
/// restore it, and the key inserted again starts a new record (its version counts one change,
/// not three). Before, the erased state stayed on the changelog for good.
#[test]
fn a_deleted_record_is_tombstoned_on_the_state_topic_after_its_retention() {
    let Some(mut options) = support::on_stack("e2e-tomb") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(&group, &["shop"], "");
    options.extra_toml = format!("{}{targets}", product());
    options.extra_processing = "deleted_retention = \"2s\"\n".into();
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("TOMB");
    let key = format!(r#"product:["{sku}"]"#);
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();
    let mut sent_to_shop = |deleted: bool| {
        let sent = |r: &Record| r.keyed_by(&sku) && (r.json()["payload"]["op"] == "d") == deleted;
        assert!(
            shop.read_until(Duration::from_secs(60), |rs| rs.iter().any(sent))
                .unwrap(),
            "{}",
            harmony.log()
        );
    };
    // The shop's sink is played by hand: the erp's insert and delete applied, so the delete
    // is final everywhere.
    psql(
        "erp",
        &format!(
            "INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Vase', 30.00, 2)"
        ),
    )
    .unwrap();
    sent_to_shop(false);
    psql(
        "shop",
        &format!(
            "INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Vase', 30.00, 2)"
        ),
    )
    .unwrap();
    psql("erp", &format!("DELETE FROM products WHERE sku = '{sku}'")).unwrap();
    sent_to_shop(true);
    psql(
        "shop",
        &format!("DELETE FROM items WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    let state_topic = format!("harmony.{group}.state");
    let mut state = TopicReader::new(&state_topic).unwrap();
    let values_of = |records: &[Record]| -> Vec<bool> {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_str()))
            .map(|r| r.value.is_some())
            .collect()
    };
    assert!(
        state
            .read_until(Duration::from_secs(60), |rs| values_of(rs).len() >= 4)
            .unwrap(),
        "the insert, the delete and the shop's echo on the changelog\n{}",
        harmony.log()
    );
    // Within the retention, changes of other records leave it be.
    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}-early', 'Vase', 30.00, 2)")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    state.read_for(Duration::from_secs(1)).unwrap();
    assert_eq!(values_of(&state.records), [true; 4], "{}", harmony.log());
    // Past it: the next change of a record on the same partition takes it off. Thirty
    // records, so that one of them shares its partition (of three) all but surely.
    let inserts: String = (0..30)
        .map(|i| format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}-{i}', 'Vase', 30.00, 2);"))
        .collect();
    psql("erp", &inserts).unwrap();
    assert!(
        state
            .read_until(Duration::from_secs(60), |rs| values_of(rs).last()
                == Some(&false))
            .unwrap(),
        "no tombstone for {key}: {:?}\n{}",
        values_of(&state.records),
        harmony.log()
    );
    // Past a commit interval, so the restart resumes after the inserts.
    std::thread::sleep(Duration::from_secs(3));
    harmony.kill_hard().unwrap();
    harmony.spawn().unwrap();
    psql(
        "erp",
        &format!(
            "INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Vase', 31.00, 7)"
        ),
    )
    .unwrap();
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();
    let again = |r: &Record| r.keyed_by(&sku) && r.json()["payload"]["after"]["stock"] == 7;
    assert!(
        shop.read_until(Duration::from_secs(60), |rs| rs.iter().any(again))
            .unwrap(),
        "{}",
        harmony.log()
    );
    let record = shop.records.iter().rev().find(|r| again(r)).unwrap().json();
    assert_eq!(
        record["payload"]["harmony"]["version"],
        serde_json::json!({"erp": 1}),
        "a new record, not the deleted one's bookkeeping"
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// A rebalance takes partitions from a worker whose outputs are still in its producer (a long
/// `linger.ms` holds them there): the revocation flushes them, stores the offsets of the
/// events now acknowledged, and commits them before the partitions are released. Their next
/// owners then read nothing again. Before, the acknowledgements that arrived during the
/// revocation's flush were never turned into offsets: every such event was published twice.
#[test]
fn a_revoked_partition_commits_its_acknowledged_work_before_release() {
    const N: usize = 300;
    let Some(mut options) = support::on_stack("e2e-revoke") else {
        return;
    };
    let group = options.group_id.clone();
    let input = format!("{group}.in");
    support::create_topic(&input, 2).unwrap();
    options.systems = vec![("erp".into(), vec![input.clone()])];
    options.extra_toml = "[kafka.producer]\n\"linger.ms\" = \"4000\"\n".into();
    let first = Harmony::start(&options).unwrap();
    support::wait_until(Duration::from_secs(30), "the first assignment", || {
        Ok(first.log().contains("partition assigned"))
    })
    .unwrap();
    let records: Vec<(String, String)> = (0..N)
        .map(|n| {
            (
                format!(r#"{{"n":{n}}}"#),
                format!(
                    r#"{{"before":null,"after":{{"n":{n}}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"t","ts_ms":1700000000000,"sequence":"[null,\"{}\"]"}},"op":"c"}}"#,
                    100 + n
                ),
            )
        })
        .collect();
    let raw: Vec<_> = records
        .iter()
        .map(|(k, v)| (Some(k.as_bytes()), Some(v.as_bytes())))
        .collect();
    support::produce_raw(&input, &raw).unwrap();
    // Every event read and handed to the producer, none acknowledged yet (lingering).
    support::wait_until(Duration::from_secs(3), "every event read", || {
        Ok(first.metric("harmony_events_consumed_total") >= N as f64)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", first.log()));
    let second = first.another_worker("second").unwrap();
    support::wait_until(Duration::from_secs(30), "the rebalance", || {
        Ok(second.log().contains("partition assigned"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));

    let mut out = TopicReader::new(&first.output_topic).unwrap();
    let origin = |r: &Record| {
        let origin = &r.json()["harmony"]["origin"];
        Some((origin["partition"].as_i64()?, origin["offset"].as_i64()?))
    };
    out.read_until(Duration::from_secs(60), |records| {
        records
            .iter()
            .filter_map(origin)
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= N
    })
    .unwrap();
    // Whatever is read again arrives after the first copies: give it the time to.
    out.read_for(Duration::from_secs(8)).unwrap();
    let published = out.records.len();
    assert_eq!(
        published,
        N,
        "{} events published again after the rebalance\nfirst:\n{}\nsecond:\n{}",
        published.saturating_sub(N),
        first.log(),
        second.log()
    );
}
