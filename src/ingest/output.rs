//! What harmony publishes: a Debezium-shaped envelope, so that any consumer that reads
//! Debezium's JSON (including its JDBC sink, with `ExtractNewRecordState` or without) reads
//! harmony's output unchanged, plus a `harmony` block that says where the change came from.
//!
//! ```text
//! {"before": {...}|null, "after": {...}|null, "op": "u", "source": {…Debezium's…},
//!  "ts_ms": 1795932223600,
//!  "harmony": {"system": "erp", "table": "products",
//!              "origin": {"topic": "erp.public.products", "partition": 0, "offset": 42}}}
//! ```
//!
//! Pure: the record is written into a caller-owned buffer, which the caller reuses across
//! events; row images are copied from the input as raw JSON, never re-parsed.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::ingest::envelope::ChangeEvent;

/// Where in Kafka an input record was read.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Serialize)]
struct OutputRecord<'a> {
    before: Option<&'a RawValue>,
    after: Option<&'a RawValue>,
    op: &'static str,
    source: Option<&'a RawValue>,
    ts_ms: i64,
    harmony: HarmonyBlock<'a>,
}

#[derive(Serialize)]
struct HarmonyBlock<'a> {
    system: &'a str,
    table: Option<&'a str>,
    origin: Origin<'a>,
}

/// Writes the output value for `event` into `buf` (cleared first).
pub fn encode_change(
    buf: &mut Vec<u8>,
    event: &ChangeEvent<'_>,
    system: &str,
    origin: Origin<'_>,
    now_ms: i64,
) {
    buf.clear();
    let record = OutputRecord {
        before: event.before.as_ref().map(|r| r.raw),
        after: event.after.as_ref().map(|r| r.raw),
        op: event.op.code(),
        source: event.source_raw,
        ts_ms: now_ms,
        harmony: HarmonyBlock {
            system,
            table: event.source.table.as_deref(),
            origin,
        },
    };
    // Serialising borrowed raw JSON and plain fields into a Vec cannot fail.
    serde_json::to_writer(buf, &record).expect("in-memory JSON serialisation");
}

/// The output key: the source row's key payload, so every change of one row lands on one
/// partition of the output topic, in order.
pub fn output_key<'a>(event: &ChangeEvent<'a>) -> Option<&'a [u8]> {
    event.key.map(|k| k.get().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::envelope::{decode, Decoded};

    #[test]
    fn output_is_a_debezium_envelope_with_a_harmony_block() {
        let value = br#"{"before":null,"after":{"sku":"SKU-1","price":"4.90"},"source":{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"products","ts_ms":17,"sequence":"[null,\"9\"]"},"op":"c","ts_ms":18}"#;
        let Decoded::Change(ev) = decode(Some(br#"{"sku":"SKU-1"}"#), Some(value)).unwrap() else {
            panic!("tombstone")
        };
        let mut buf = b"stale bytes".to_vec();
        let origin = Origin {
            topic: "erp.public.products",
            partition: 2,
            offset: 41,
        };
        encode_change(&mut buf, &ev, "erp", origin, 99);
        let out: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(out["op"], "c");
        assert_eq!(out["before"], serde_json::Value::Null);
        assert_eq!(out["after"]["price"], "4.90");
        assert_eq!(out["source"]["ts_ms"], 17);
        assert_eq!(out["ts_ms"], 99);
        assert_eq!(out["harmony"]["system"], "erp");
        assert_eq!(out["harmony"]["table"], "products");
        assert_eq!(out["harmony"]["origin"]["offset"], 41);
        assert_eq!(output_key(&ev), Some(&br#"{"sku":"SKU-1"}"#[..]));
    }
}
