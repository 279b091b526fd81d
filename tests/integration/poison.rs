//! A poison corpus through the running worker against the real broker: malformed records of
//! every kind interleaved with valid ones. Every valid change must come out, every malformed
//! record must land in the dead-letter topic with its original bytes, and the worker must
//! neither restart nor stall.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    self, create_topic, create_topic_with, produce_raw, produce_raw_with, unique, Harmony,
    HarmonyOptions, RawRecord, TopicReader,
};

fn valid(n: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!(r#"{{"n":{n}}}"#).into_bytes();
    let value = format!(
        r#"{{"before":null,"after":{{"n":{n},"name":"item {n}","price":"{n}.25","big":{}}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"poison","ts_ms":1700000000000,"sequence":"[null,\"{}\"]"}},"op":"c","ts_ms":1700000000001}}"#,
        9_007_199_254_740_993u64 + n as u64,
        1000 + n
    )
    .into_bytes();
    (key, value)
}

/// Malformed record number `n`: cycles through every way a record can be broken.
fn malformed(n: usize) -> (Vec<u8>, &'static str) {
    let (_, good) = valid(n);
    let good = String::from_utf8(good).unwrap();
    match n % 12 {
        0 => (b"not json at all".to_vec(), "invalid_json"),
        1 => (vec![0xff, 0xfe, 0x00, 0x7b, 0x7d, n as u8], "not_utf8"),
        2 => (
            good.replace(r#""op":"c""#, r#""op":"q""#).into_bytes(),
            "unknown_op",
        ),
        3 => (
            good.replace(r#""after":{"#, r#""after":null,"x":{"#)
                .into_bytes(),
            "missing_image",
        ),
        4 => (
            format!(r#"{{"op":"c","after":{{"n":{n}}}}}"#).into_bytes(),
            "missing_field",
        ),
        5 => (
            good.replace(r#""sequence":"[null,"#, r#""sequence":"[oops,"#)
                .into_bytes(),
            "invalid_source",
        ),
        6 => (good.as_bytes()[..good.len() / 2].to_vec(), "invalid_json"),
        7 => (
            format!(
                r#"{{"op":"c","after":{{"a":{}1{}}},"source":{{"ts_ms":1}}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
            "too_deep",
        ),
        8 => (
            format!(
                r#"{{"op":"c","after":{{"a":"{}"}},"source":{{"ts_ms":1}}}}"#,
                "x".repeat(70_000)
            )
            .into_bytes(),
            "too_large",
        ),
        9 => (b"[1,2,3]".to_vec(), "not_an_object"),
        10 => (
            format!(r#"{{"id":{n},"name":"flattened without a timestamp","__op":"c"}}"#)
                .into_bytes(),
            "missing_field",
        ),
        _ => (
            good.replace(r#""after":{"#, r#""after":["#)
                .replacen("},\"source\"", "],\"source\"", 1)
                .into_bytes(),
            "invalid_json",
        ),
    }
}

#[test]
fn poison_corpus_is_dead_lettered_while_every_valid_change_comes_out() {
    const VALID: usize = 300;
    const POISON: usize = 240;
    let Some(mut options) = support::on_stack("e2e-poison-corpus") else {
        return;
    };
    let source = unique("e2e-poison-corpus");
    create_topic(&source, 3).unwrap();
    options.systems = vec![("erp".into(), vec![source.clone()])];
    options.extra_toml = "[input]\nmax_record_bytes = 65536\n".into();
    let mut harmony = Harmony::start(&options).unwrap();

    // Interleave: after every valid record, a malformed one while any remain, plus a
    // tombstone and a heartbeat now and then (valid, no output).
    type OwnedRecord = (Option<Vec<u8>>, Option<Vec<u8>>);
    let mut owned: Vec<OwnedRecord> = Vec::new();
    let mut expected_kinds = Vec::new();
    for n in 0..VALID {
        let (k, v) = valid(n);
        owned.push((Some(k), Some(v)));
        if n < POISON {
            let (bad, kind) = malformed(n);
            owned.push((Some(format!(r#"{{"poison":{n}}}"#).into_bytes()), Some(bad)));
            expected_kinds.push(kind);
        }
        if n % 50 == 0 {
            owned.push((Some(format!(r#"{{"n":{n}}}"#).into_bytes()), None));
            owned.push((
                Some(br#"{"serverName":"erp"}"#.to_vec()),
                Some(br#"{"ts_ms":1700000000000}"#.to_vec()),
            ));
        }
    }
    let records: Vec<RawRecord<'_>> = owned
        .iter()
        .map(|(k, v)| (k.as_deref(), v.as_deref()))
        .collect();
    produce_raw(&source, &records).unwrap();

    let mut outputs = TopicReader::new(&harmony.output_topic).unwrap();
    let mut dlq = TopicReader::new(&harmony.dead_letter_topic).unwrap();
    let outputs_done = outputs
        .read_until(Duration::from_secs(90), |r| r.len() >= VALID)
        .unwrap();
    let dlq_done = dlq
        .read_until(Duration::from_secs(30), |r| r.len() >= POISON)
        .unwrap();
    outputs.read_for(Duration::from_secs(1)).unwrap();
    dlq.read_for(Duration::from_secs(1)).unwrap();
    eprintln!(
        "poison corpus: produced {} records ({VALID} valid changes, {POISON} malformed, {} tombstones/heartbeats); \
         outputs {} , dead-lettered {}",
        owned.len(),
        owned.len() - VALID - POISON,
        outputs.records.len(),
        dlq.records.len()
    );
    assert!(
        outputs_done && dlq_done,
        "stalled: {} outputs, {} dead letters\n{}",
        outputs.records.len(),
        dlq.records.len(),
        harmony.log()
    );

    let out: BTreeSet<i64> = outputs
        .records
        .iter()
        .map(|r| r.json()["after"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        out,
        (0..VALID as i64).collect(),
        "every valid change exactly once"
    );
    assert_eq!(
        outputs.records.len(),
        VALID,
        "no duplicates without a failure"
    );
    // Exact 64-bit values survived the trip.
    let r0 = outputs
        .records
        .iter()
        .find(|r| r.json()["after"]["n"] == 0)
        .unwrap();
    assert!(String::from_utf8_lossy(r0.value.as_deref().unwrap()).contains("9007199254740993"));

    assert_eq!(dlq.records.len(), POISON);
    for r in &dlq.records {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let n = key["poison"].as_u64().unwrap() as usize;
        let (bytes, kind) = malformed(n);
        assert_eq!(
            r.value.as_deref(),
            Some(bytes.as_slice()),
            "poison-{n}: original bytes"
        );
        assert_eq!(
            r.headers["harmony.error.kind"], kind,
            "poison-{n}: {}",
            r.headers["harmony.error.message"]
        );
        assert_eq!(r.headers["harmony.source.topic"], source);
    }

    // One process throughout, and it stops cleanly.
    assert_eq!(harmony.log().matches("harmony starting").count(), 1);
    let status = harmony.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success());
    let mut kinds: Vec<&str> = expected_kinds.clone();
    kinds.sort_unstable();
    kinds.dedup();
    eprintln!("poison kinds covered: {kinds:?}");
}

/// A change whose output is larger than the producer may send (the broker accepted the input
/// under a larger topic limit): the input is dead-lettered — here without its bytes, which are
/// too large for the dead-letter topic as well — and the partition moves on.
#[test]
fn an_output_too_large_to_publish_is_dead_lettered_and_the_partition_moves_on() {
    let Some(mut options) = support::on_stack("e2e-oversize") else {
        return;
    };
    let source = unique("e2e-oversize-src");
    create_topic_with(&source, 1, &[("max.message.bytes", "4000000")]).unwrap();
    options.systems = vec![("erp".into(), vec![source.clone()])];
    let mut harmony = Harmony::start(&options).unwrap();

    let (k0, v0) = valid(0);
    let (k2, v2) = valid(2);
    let huge = String::from_utf8(valid(1).1).unwrap().replace(
        r#""name":"item 1""#,
        &format!(r#""name":"{}""#, "x".repeat(1_500_000)),
    );
    produce_raw_with(
        &source,
        &[
            (Some(k0.as_slice()), Some(v0.as_slice())),
            (Some(br#"{"n":1}"#.as_slice()), Some(huge.as_bytes())),
            (Some(k2.as_slice()), Some(v2.as_slice())),
        ],
        &[("message.max.bytes", "4000000")],
    )
    .unwrap();

    let mut outputs = TopicReader::new(&harmony.output_topic).unwrap();
    assert!(
        outputs
            .read_until(Duration::from_secs(60), |r| r.len() >= 2)
            .unwrap(),
        "{}",
        harmony.log()
    );
    // Two keys, possibly two partitions of the output topic: compare as a set.
    let mut ns: Vec<i64> = outputs
        .records
        .iter()
        .map(|r| r.json()["after"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, [0, 2]);
    let mut dlq = TopicReader::new(&harmony.dead_letter_topic).unwrap();
    assert!(
        dlq.read_until(Duration::from_secs(30), |r| !r.is_empty())
            .unwrap(),
        "{}",
        harmony.log()
    );
    let dead = &dlq.records[0];
    assert_eq!(dead.headers["harmony.error.kind"], "output_too_large");
    assert_eq!(dead.headers["harmony.source.offset"], "1");
    assert_eq!(
        dead.headers["harmony.error.payload_dropped"],
        huge.len().to_string()
    );
    assert!(dead.value.is_none());
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// A Debezium change of `public.poison` row `n` from the connector of `system`, setting `column`.
fn column_change(system: &str, n: usize, column: &str, value: &str, lsn: u64) -> Vec<u8> {
    format!(
        r#"{{"before":null,"after":{{"n":{n},"{column}":"{value}"}},"source":{{"connector":"postgresql","name":"{system}","db":"{system}","schema":"public","table":"poison","ts_ms":{},"sequence":"[null,\"{lsn}\"]"}},"op":"u","ts_ms":1700000000001}}"#,
        1_700_000_000_000 + lsn
    )
    .into_bytes()
}

/// With entities declared, a change whose record state or target record would be larger than
/// the producer takes is dead-lettered (kind `output_too_large`), the record's state stays as it
/// was, and the partition moves on. Before, the worker exited on the refused record and, started
/// again, stopped on it again: the partition never moved.
#[test]
fn a_record_grown_too_large_for_the_producer_is_dead_lettered_in_stage_2_and_the_partition_moves_on(
) {
    if !support::stack_available("oversize-entities") {
        return;
    }
    let (erp, shop, wms) = (
        unique("e2e-big-erp"),
        unique("e2e-big-shop"),
        unique("e2e-big-wms"),
    );
    let target = unique("e2e-big-target");
    for topic in [&erp, &shop, &wms, &target] {
        create_topic(topic, 1).unwrap();
    }
    let mut options = HarmonyOptions::stack(unique("e2e-big"));
    options.systems = vec![
        ("erp".into(), vec![erp.clone()]),
        ("shop".into(), vec![shop.clone()]),
        ("wms".into(), vec![wms.clone()]),
    ];
    options.extra_toml = format!(
        r#"
[kafka.producer]
"message.max.bytes" = "200000"

[[entities]]
name = "item"
key = ["n"]

  [[entities.sources]]
  system = "erp"
  table = "public.poison"
  columns = {{ n = "n", name = "name" }}

  [[entities.sources]]
  system = "shop"
  table = "public.poison"
  columns = {{ n = "n", description = "description" }}

  # A target receives the record in its own table's columns.
  [[entities.sources]]
  system = "wms"
  table = "public.poison"
  columns = {{ n = "n", name = "name", description = "description" }}

[[targets]]
system = "wms"
entities = ["item"]
topic = "{target}"
"#
    );
    let mut harmony = Harmony::start(&options).unwrap();
    let name = "n".repeat(40_000);
    let key = br#"{"n":1}"#.as_slice();
    let named = column_change("erp", 1, "name", &name, 100);
    produce_raw(&erp, &[(Some(key), Some(named.as_slice()))]).unwrap();
    let mut outputs = TopicReader::new(&target).unwrap();
    assert!(
        outputs
            .read_until(Duration::from_secs(60), |r| !r.is_empty())
            .unwrap(),
        "{}",
        harmony.log()
    );
    // Each 40 kB alone fits; the record holding both (with what each system holds and what is
    // on its way to the warehouse) does not.
    let described = column_change("shop", 1, "description", &"d".repeat(40_000), 200);
    let short = column_change("shop", 1, "description", "short", 300);
    produce_raw(
        &shop,
        &[
            (Some(key), Some(described.as_slice())),
            (Some(key), Some(short.as_slice())),
        ],
    )
    .unwrap();
    assert!(
        outputs
            .read_until(Duration::from_secs(60), |r| r.len() >= 2)
            .unwrap(),
        "{}",
        harmony.log()
    );
    let latest = outputs.records[1].json();
    let after = &latest["payload"]["after"];
    assert_eq!(after["description"], "short", "{}", harmony.log());
    assert_eq!(after["name"].as_str().map(str::len), Some(40_000));
    let mut dlq = TopicReader::new(&harmony.dead_letter_topic).unwrap();
    assert!(
        dlq.read_until(Duration::from_secs(30), |r| !r.is_empty())
            .unwrap(),
        "{}",
        harmony.log()
    );
    let dead = &dlq.records[0];
    assert_eq!(dead.headers["harmony.error.kind"], "output_too_large");
    assert!(
        dead.headers["harmony.error.message"].contains("message.max.bytes of 200000"),
        "{:?}",
        dead.headers
    );
    assert!(dead.value.is_some(), "the internal record, whole");
    assert!(harmony.exited().is_none(), "{}", harmony.log());
    // Only the two changes that fit reached the warehouse.
    std::thread::sleep(Duration::from_secs(2));
    outputs
        .read_until(Duration::from_secs(1), |r| r.len() > 2)
        .unwrap();
    assert_eq!(outputs.records.len(), 2);
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}
