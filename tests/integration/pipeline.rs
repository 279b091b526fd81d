//! The pipeline from the three source databases to harmony's output topic, including a crash
//! between publish and commit, and input that cannot be decoded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, create_topic, produce_raw, psql, unique, Harmony, Record, TopicReader};

const WAIT: Duration = Duration::from_secs(60);

/// The outputs of one source row, identified by its key's `sku`.
fn outputs_for<'r>(records: &'r [Record], system: &str, sku: &str) -> Vec<&'r Record> {
    records
        .iter()
        .filter(|r| r.headers.get("harmony.system").map(String::as_str) == Some(system))
        .filter(|r| {
            r.key
                .as_deref()
                .and_then(|k| serde_json::from_str::<Value>(k).ok())
                .is_some_and(|k| k["sku"] == sku || k["item_sku"] == sku)
        })
        .collect()
}

fn ops(records: &[&Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.json()["op"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn inserts_updates_and_deletes_in_three_databases_reach_the_output_topic() {
    let Some(options) = support::on_stack("e2e-crud") else {
        return;
    };
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("CRUD");

    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Tamper 58 mm', 39.90, 10)")).unwrap();
    psql(
        "erp",
        &format!("UPDATE products SET quantity = 7, price = 41.50 WHERE sku = '{sku}'"),
    )
    .unwrap();
    psql("erp", &format!("DELETE FROM products WHERE sku = '{sku}'")).unwrap();
    psql("shop", &format!("INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Tamper', 44.00, 3)")).unwrap();
    psql(
        "shop",
        &format!("UPDATE items SET active = false WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    psql(
        "shop",
        &format!("DELETE FROM items WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    psql(
        "wms",
        &format!("INSERT INTO stock (sku, location, quantity) VALUES ('{sku}', 'Z-99-1', 25)"),
    )
    .unwrap();
    psql(
        "wms",
        &format!("UPDATE stock SET quantity = 24, reserved = 1 WHERE sku = '{sku}'"),
    )
    .unwrap();
    psql("wms", &format!("DELETE FROM stock WHERE sku = '{sku}'")).unwrap();

    let mut reader = TopicReader::new(&harmony.output_topic).unwrap();
    let complete = reader
        .read_until(WAIT, |records| {
            ["erp", "shop", "wms"]
                .iter()
                .all(|s| outputs_for(records, s, &sku).len() >= 3)
        })
        .unwrap();
    let records = &reader.records;
    assert!(
        complete,
        "not every change arrived; got {:?}\nlog:\n{}",
        records.iter().map(Record::json).collect::<Vec<_>>(),
        harmony.log()
    );

    // erp: schema-wrapped JSON, REPLICA IDENTITY FULL, decimals as strings.
    let erp = outputs_for(records, "erp", &sku);
    assert_eq!(ops(&erp), ["c", "u", "d"]);
    let (c, u, d) = (erp[0].json(), erp[1].json(), erp[2].json());
    assert_eq!(
        erp[0].key.as_deref(),
        Some(format!(r#"{{"sku":"{sku}"}}"#).as_str())
    );
    assert_eq!(c["after"]["name"], "Tamper 58 mm");
    assert_eq!(c["after"]["price"], "39.90");
    assert_eq!(c["after"]["quantity"], 10);
    assert_eq!(c["before"], Value::Null);
    assert_eq!(
        u["before"]["quantity"], 10,
        "full replica identity carries the before image"
    );
    assert_eq!(u["after"]["quantity"], 7);
    assert_eq!(u["after"]["price"], "41.50");
    assert_eq!(d["after"], Value::Null);
    assert_eq!(d["before"]["sku"], sku.as_str());
    assert_eq!(c["source"]["table"], "products");
    assert_eq!(c["harmony"]["system"], "erp");
    assert_eq!(c["harmony"]["origin"]["topic"], "erp.public.products");

    // shop: schemaless JSON, default replica identity (no before image on update).
    let shop = outputs_for(records, "shop", &sku);
    assert_eq!(ops(&shop), ["c", "u", "d"]);
    assert_eq!(shop[0].json()["after"]["title"], "Tamper");
    assert_eq!(shop[1].json()["after"]["active"], false);
    assert_eq!(shop[1].json()["before"], Value::Null);
    assert_eq!(shop[2].json()["before"]["item_sku"], sku.as_str());

    // wms: composite key (sku, location).
    let wms = outputs_for(records, "wms", &sku);
    assert_eq!(ops(&wms), ["c", "u", "d"]);
    let key: Value = serde_json::from_str(wms[0].key.as_deref().unwrap()).unwrap();
    assert_eq!(key, json!({"sku": sku, "location": "Z-99-1"}));
    assert_eq!(wms[1].json()["after"]["quantity"], 24);
    assert_eq!(wms[1].json()["after"]["reserved"], 1);

    // Every change of one row is on one partition, so its order is kept.
    for rows in [&erp, &shop, &wms] {
        assert!(rows.iter().all(|r| r.partition == rows[0].partition));
        assert!(rows.windows(2).all(|w| w[0].offset < w[1].offset));
    }

    // The operator's endpoints reflect the run.
    let address = harmony
        .http_address()
        .expect("harmony logged its HTTP address");
    assert_eq!(support::http_get(&address, "/health").unwrap().0, 200);
    assert_eq!(support::http_get(&address, "/ready").unwrap().0, 200);
    let (status, metrics) = support::http_get(&address, "/metrics").unwrap();
    assert_eq!(status, 200);
    let published = metric_value(
        &metrics,
        &format!(
            r#"harmony_outputs_published_total{{topic="{}"}}"#,
            harmony.output_topic
        ),
    );
    assert!(published >= 9.0, "published {published}\n{metrics}");
    assert!(
        metric_value(
            &metrics,
            r#"harmony_events_consumed_total{op="u",system="wms",topic="wms.public.stock"}"#
        ) >= 1.0
    );

    let status = harmony.terminate(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}; log:\n{}",
        harmony.log()
    );
    assert!(harmony.log().contains("harmony stopped cleanly"));
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// SIGKILL after outputs were published but before their offsets were committed: the restart
/// reads those events again (duplicates are allowed), and no change is lost.
#[test]
fn restart_after_sigkill_between_publish_and_commit_loses_nothing() {
    let Some(mut options) = support::on_stack("e2e-kill") else {
        return;
    };
    options.systems.truncate(1); // erp only
                                 // Nothing is committed for a minute: the kill below certainly falls between publish and commit.
    options.commit_interval = "60s";
    let mut harmony = Harmony::start(&options).unwrap();
    let prefix = unique("KILL");
    let rows = 300;
    let insert = |from: usize, to: usize| {
        psql(
            "erp",
            &format!(
                "INSERT INTO products (sku, name, price, quantity) \
                 SELECT '{prefix}-' || lpad(i::text, 4, '0'), 'Item ' || i, 1.00 + i, i FROM generate_series({from}, {to}) AS i"
            ),
        )
        .unwrap();
    };
    let ours = |records: &[Record]| -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for r in records {
            let v = r.json();
            if let Some(sku) = v["after"]["sku"]
                .as_str()
                .filter(|s| s.starts_with(&prefix))
            {
                *seen.entry(sku.to_owned()).or_insert(0) += 1;
            }
        }
        seen
    };

    // Half the rows arrive while the first process runs; it is killed once they are out.
    for batch in 0..5 {
        insert(batch * 30 + 1, batch * 30 + 30);
    }
    let mut reader = TopicReader::new(&harmony.output_topic).unwrap();
    assert!(
        reader.read_until(WAIT, |r| ours(r).len() >= 150).unwrap(),
        "first half did not arrive:\n{}",
        harmony.log()
    );
    harmony.kill_hard().unwrap();

    // The other half is written while no worker runs.
    for batch in 5..10 {
        insert(batch * 30 + 1, batch * 30 + 30);
    }
    harmony.spawn().unwrap();
    let all = reader.read_until(WAIT, |r| ours(r).len() == rows).unwrap();
    // Give late duplicates a moment, so the count below is not cut short.
    reader.read_for(Duration::from_secs(2)).unwrap();
    let seen = ours(&reader.records);
    assert!(
        all,
        "lost changes: {} of {rows} arrived\nlog:\n{}",
        seen.len(),
        harmony.log()
    );
    let missing: Vec<String> = (1..=rows)
        .map(|i| format!("{prefix}-{i:04}"))
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    // The first half was published but never committed, so it was read and published again:
    // proof the kill landed between publish and commit.
    let redelivered = seen.values().filter(|&&n| n > 1).count();
    assert!(
        redelivered >= 150,
        "expected the uncommitted first half again, saw {redelivered} duplicates"
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
    // A clean stop commits exactly what was processed: the end of every input partition,
    // never one past it (which a crash would turn into a skipped record).
    for (partition, committed, end) in
        support::committed_and_end(&options.group_id, "erp.public.products").unwrap()
    {
        assert_eq!(
            committed,
            rdkafka::Offset::Offset(end),
            "partition {partition}"
        );
    }
}

/// Bytes that are not a Debezium record go to the dead-letter topic, untouched and with the
/// reason, and the records after them still come out.
#[test]
fn undecodable_records_are_dead_lettered_and_the_partition_moves_on() {
    let Some(mut options) = support::on_stack("e2e-poison") else {
        return;
    };
    let source = unique("e2e-poison-src");
    create_topic(&source, 1).unwrap();
    options.systems = vec![("erp".into(), vec![source.clone()])];
    let mut harmony = Harmony::start(&options).unwrap();

    let valid = |n: u32| {
        format!(
            r#"{{"before":null,"after":{{"sku":"P-{n}","quantity":{n}}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"products","ts_ms":1700000000000,"sequence":"[null,\"{n}\"]"}},"op":"c","ts_ms":1700000000001}}"#
        )
    };
    let (v1, v2) = (valid(1), valid(2));
    // Not starting with byte 0, which would make it Avro in Confluent's wire format.
    let poison: &[u8] = b"\x01\x02 definitely not json";
    // Avro (magic byte 0, schema id 7) reaching a harmony with no schema registry.
    let avro: &[u8] = b"\x00\x00\x00\x00\x07\x02";
    let unknown_op = br#"{"op":"z","after":{"sku":"P-x"},"source":{"ts_ms":1}}"#;
    produce_raw(
        &source,
        &[
            (Some(br#"{"sku":"P-1"}"#), Some(v1.as_bytes())),
            (Some(b"k-poison"), Some(poison)),
            (None, Some(unknown_op)),
            (None, Some(avro)),
            (Some(br#"{"sku":"P-2"}"#), Some(v2.as_bytes())),
        ],
    )
    .unwrap();

    let mut outputs = TopicReader::new(&harmony.output_topic).unwrap();
    assert!(
        outputs.read_until(WAIT, |r| r.len() >= 2).unwrap(),
        "valid records missing:\n{}",
        harmony.log()
    );
    // Two keys may sit on two partitions of the output topic: compare as a set.
    let mut skus: Vec<String> = outputs
        .records
        .iter()
        .map(|r| {
            r.json()["after"]["sku"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    skus.sort();
    assert_eq!(skus, ["P-1", "P-2"]);

    let mut dlq = TopicReader::new(&harmony.dead_letter_topic).unwrap();
    assert!(dlq.read_until(WAIT, |r| r.len() >= 3).unwrap());
    // The dead-letter topic has several partitions: find each copy by its reason.
    let by_kind = |kind: &str| {
        dlq.records
            .iter()
            .find(|r| r.headers["harmony.error.kind"] == kind)
            .unwrap()
            .clone()
    };
    let unreadable = by_kind("avro_without_registry");
    assert_eq!(unreadable.value.as_deref(), Some(avro));
    assert!(
        unreadable.headers["harmony.error.message"].contains("schema_registry.url"),
        "{:?}",
        unreadable.headers
    );
    let first = &by_kind("invalid_json");
    assert_eq!(
        first.value.as_deref(),
        Some(poison),
        "original bytes, untouched"
    );
    assert_eq!(first.key.as_deref(), Some("k-poison"));
    assert_eq!(first.headers["harmony.error.kind"], "invalid_json");
    assert_eq!(first.headers["harmony.source.topic"], source);
    assert_eq!(first.headers["harmony.source.partition"], "0");
    assert_eq!(first.headers["harmony.source.offset"], "1");
    assert!(first.headers.contains_key("harmony.source.timestamp"));
    let second = &by_kind("unknown_op");
    assert_eq!(second.headers["harmony.source.offset"], "2");
    assert!(second.headers["harmony.error.message"].contains("unknown op `z`"));
    assert_eq!(second.key, None);

    let status = harmony.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success());
}
