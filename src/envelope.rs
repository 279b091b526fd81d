//! Bytes of a Debezium record → a typed [`ChangeEvent`], in one place.
//!
//! Pure and allocation-light: the event borrows the record's row images (`before`, `after`,
//! key) as raw JSON slices of the message buffer, so an event that is passed on is never
//! rebuilt as a `serde_json::Value`. Both JSON converter modes are accepted for key and value:
//!
//! ```text
//! {"schema": {...}, "payload": {"before": …, "after": …, "op": "u", "source": {...}}}
//! {"before": …, "after": …, "op": "u", "source": {...}}
//! ```
//!
//! Invariants enforced here, so nothing downstream re-checks them: `c`, `r` and `u` carry an
//! `after` object; `d` carries a `before` object or a key; every change has a `source` block with
//! `ts_ms`. A record that breaks one is a [`DecodeError`], which is permanent: retrying the same
//! bytes cannot succeed, so the caller dead-letters it and moves on.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

/// What a change did to its row, from Debezium's `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read: the row as it was when the connector took its snapshot.
    Read,
    Truncate,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "m" => Op::Message,
            _ => return None,
        })
    }
}

/// Where a change sits in its source database's own total order. Comparable only between
/// changes of the same source; never a bare LSN or transaction id, which several rows share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourcePosition {
    /// Postgres: `sequence` = `[last commit LSN, LSN]`. The commit LSN orders transactions,
    /// the LSN orders the rows within one.
    Postgres { commit_lsn: u64, lsn: u64 },
    /// MySQL/MariaDB: binlog file number, position of the event, row within the event.
    MySql { file: u64, pos: u64, row: u64 },
    /// The source block carries no position harmony understands.
    Unknown,
}

/// How a snapshot marks a record; streamed changes are `No`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    No,
    /// Any snapshot read (`true`, `first`, `last`, `incremental`, …).
    Yes,
}

/// The parts of Debezium's `source` block that harmony acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Source<'a> {
    pub connector: Cow<'a, str>,
    /// The connector's `topic.prefix`.
    pub name: Cow<'a, str>,
    pub db: Cow<'a, str>,
    pub schema: Option<Cow<'a, str>>,
    pub table: Option<Cow<'a, str>>,
    /// When the change was committed in the source database.
    pub ts_ms: i64,
    pub snapshot: Snapshot,
    pub position: SourcePosition,
}

/// One decoded change.
#[derive(Debug)]
pub struct ChangeEvent<'a> {
    pub op: Op,
    /// The key's payload, without the converter's schema wrapper. `None` for truncates.
    pub key: Option<&'a RawValue>,
    pub before: Option<&'a RawValue>,
    pub after: Option<&'a RawValue>,
    pub source: Source<'a>,
    /// The `source` block verbatim, for passing on without re-encoding.
    pub source_raw: &'a RawValue,
    /// When the connector processed the change (not when the database committed it).
    pub connector_ts_ms: Option<i64>,
}

/// A Kafka record from a Debezium topic.
// Returned by value once per record and consumed at once: boxing the change would cost an
// allocation per event to save stack bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded<'a> {
    Change(ChangeEvent<'a>),
    /// A null value after a delete: tells log compaction to drop the key; no change of its own.
    Tombstone,
}

/// Why a record could not be decoded. Always permanent.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("value is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("key is not valid JSON: {0}")]
    KeyJson(#[source] serde_json::Error),
    #[error("envelope has no `{0}` field")]
    MissingField(&'static str),
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    #[error("op `{op}` needs an `{image}` object")]
    MissingImage {
        op: &'static str,
        image: &'static str,
    },
    #[error("source block: {0}")]
    Source(#[source] serde_json::Error),
    #[error("source block: {0}")]
    Position(String),
}

impl DecodeError {
    /// A bounded label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "invalid_json",
            DecodeError::KeyJson(_) => "invalid_key",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::UnknownOp(_) => "unknown_op",
            DecodeError::MissingImage { .. } => "missing_image",
            DecodeError::Source(_) | DecodeError::Position(_) => "invalid_source",
        }
    }
}

/// Decodes one record of a Debezium table topic.
pub fn decode<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
) -> Result<Decoded<'a>, DecodeError> {
    let Some(value) = value else {
        return Ok(Decoded::Tombstone);
    };
    let envelope = unwrap_envelope(value)?;
    let op_code = envelope.op.ok_or(DecodeError::MissingField("op"))?;
    let op = Op::from_code(&op_code).ok_or_else(|| DecodeError::UnknownOp(op_code.into_owned()))?;
    let source_raw = envelope.source.ok_or(DecodeError::MissingField("source"))?;
    let source = decode_source(source_raw)?;
    let key = key.map(unwrap_key).transpose()?.flatten();

    let is_object = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('{'));
    match op {
        Op::Create | Op::Read | Op::Update if !is_object(envelope.after) => {
            return Err(DecodeError::MissingImage {
                op: op.code(),
                image: "after",
            })
        }
        Op::Delete if !is_object(envelope.before) && key.is_none() => {
            return Err(DecodeError::MissingImage {
                op: op.code(),
                image: "before",
            })
        }
        _ => {}
    }
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before: envelope.before,
        after: envelope.after,
        source,
        source_raw,
        connector_ts_ms: envelope.ts_ms,
    }))
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_ms: Option<i64>,
    // Present only in the schema-wrapped form.
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    schema: Option<IgnoredAny>,
}

fn unwrap_envelope(value: &[u8]) -> Result<RawEnvelope<'_>, DecodeError> {
    let outer: RawEnvelope<'_> = serde_json::from_slice(value).map_err(DecodeError::Json)?;
    match (outer.schema.is_some(), outer.payload, outer.op.is_some()) {
        (true, Some(payload), false) => {
            if payload.get() == "null" {
                // A schema-wrapped tombstone: `{"schema": null, "payload": null}`.
                return Err(DecodeError::MissingField("op"));
            }
            serde_json::from_str(payload.get()).map_err(DecodeError::Json)
        }
        _ => Ok(outer),
    }
}

#[derive(Deserialize)]
struct KeyWrapper<'a> {
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    schema: Option<IgnoredAny>,
}

/// The key's payload. A key is schema-wrapped when it has both `schema` and `payload` (a bare
/// key of a table with exactly those two columns would be misread: a documented limitation of
/// the JSON converter's format, which has no marker of its own).
fn unwrap_key(key: &[u8]) -> Result<Option<&RawValue>, DecodeError> {
    let raw: &RawValue = serde_json::from_slice(key).map_err(DecodeError::KeyJson)?;
    if raw.get().starts_with('{') {
        if let Ok(KeyWrapper {
            payload: Some(payload),
            schema: Some(_),
        }) = serde_json::from_str::<KeyWrapper<'_>>(raw.get())
        {
            return Ok((payload.get() != "null").then_some(payload));
        }
    }
    Ok((raw.get() != "null").then_some(raw))
}

#[derive(Deserialize)]
struct RawSource<'a> {
    #[serde(borrow, default)]
    connector: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    db: Cow<'a, str>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    ts_ms: i64,
    #[serde(default, deserialize_with = "snapshot_marker")]
    snapshot: Option<Snapshot>,
    // Postgres
    #[serde(borrow, default)]
    sequence: Option<Cow<'a, str>>,
    #[serde(default)]
    lsn: Option<u64>,
    // MySQL / MariaDB
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    row: Option<u64>,
}

fn decode_source(raw: &RawValue) -> Result<Source<'_>, DecodeError> {
    let src: RawSource<'_> = serde_json::from_str(raw.get()).map_err(DecodeError::Source)?;
    let position = match (&src.sequence, src.lsn, &src.file) {
        (Some(sequence), _, _) => postgres_position(sequence)?,
        (None, Some(lsn), _) => SourcePosition::Postgres { commit_lsn: 0, lsn },
        (None, None, Some(file)) => SourcePosition::MySql {
            file: binlog_file_number(file)?,
            pos: src.pos.unwrap_or(0),
            row: src.row.unwrap_or(0),
        },
        _ => SourcePosition::Unknown,
    };
    Ok(Source {
        connector: src.connector,
        name: src.name,
        db: src.db,
        schema: src.schema,
        table: src.table,
        ts_ms: src.ts_ms,
        snapshot: src.snapshot.unwrap_or(Snapshot::No),
        position,
    })
}

/// `"[\"24023928\",\"24023984\"]"`: last commit LSN and LSN as decimal strings, either null.
fn postgres_position(sequence: &str) -> Result<SourcePosition, DecodeError> {
    let parts: [Option<Cow<'_, str>>; 2] = serde_json::from_str(sequence)
        .map_err(|e| DecodeError::Position(format!("`sequence` is not a pair of LSNs: {e}")))?;
    let lsn = |part: &Option<Cow<'_, str>>| -> Result<u64, DecodeError> {
        part.as_deref().map_or(Ok(0), |s| {
            s.parse().map_err(|_| {
                DecodeError::Position(format!("`sequence` holds a non-numeric LSN `{s}`"))
            })
        })
    };
    Ok(SourcePosition::Postgres {
        commit_lsn: lsn(&parts[0])?,
        lsn: lsn(&parts[1])?,
    })
}

/// `mysql-bin.000042` → 42: binlog files are numbered in the order the server writes them.
fn binlog_file_number(file: &str) -> Result<u64, DecodeError> {
    file.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| DecodeError::Position(format!("binlog file `{file}` has no numeric suffix")))
}

/// `snapshot` is a string enum in current Debezium (`"true"`, `"last"`, `"false"`, …) and a
/// boolean in older releases; both mean the same.
fn snapshot_marker<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
    struct Marker;
    impl<'de> de::Visitor<'de> for Marker {
        type Value = Option<Snapshot>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a snapshot marker: boolean, string or null")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(if v { Snapshot::Yes } else { Snapshot::No }))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(if v == "false" {
                Snapshot::No
            } else {
                Snapshot::Yes
            }))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes as the Postgres connector of the local stack emits them (abridged schema).
    const WRAPPED_UPDATE: &str = r#"{"schema":{"type":"struct","fields":[],"optional":false,"name":"erp.public.products.Envelope"},"payload":{"before":{"sku":"SKU-1","name":"Cup","price":"4.90","quantity":120},"after":{"sku":"SKU-1","name":"Cup","price":"4.90","quantity":95},"source":{"version":"3.6.1.Final","connector":"postgresql","name":"erp","ts_ms":1795932223496,"snapshot":"false","db":"erp","sequence":"[\"35073800\",\"35074120\"]","schema":"public","table":"products","txId":745,"lsn":35074120,"xmin":null},"transaction":null,"op":"u","ts_ms":1795932223594}}"#;
    const WRAPPED_KEY: &str = r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"sku"}],"optional":false,"name":"erp.public.products.Key"},"payload":{"sku":"SKU-1"}}"#;
    const BARE_READ: &str = r#"{"before":null,"after":{"sku":"SKU-4","location":"D-02-2","quantity":400},"source":{"version":"3.6.1.Final","connector":"postgresql","name":"wms","ts_ms":1795932223496,"snapshot":"last","db":"wms","sequence":"[null,\"35073800\"]","schema":"public","table":"stock","txId":741,"lsn":35073800},"transaction":null,"op":"r","ts_ms":1795932223594}"#;

    fn change<'a>(key: Option<&'a str>, value: &'a str) -> ChangeEvent<'a> {
        match decode(key.map(str::as_bytes), Some(value.as_bytes())).unwrap() {
            Decoded::Change(c) => c,
            Decoded::Tombstone => panic!("unexpected tombstone"),
        }
    }

    #[test]
    fn schema_wrapped_update_borrows_images_and_orders_by_sequence() {
        let ev = change(Some(WRAPPED_KEY), WRAPPED_UPDATE);
        assert_eq!(ev.op, Op::Update);
        assert_eq!(ev.key.unwrap().get(), r#"{"sku":"SKU-1"}"#);
        assert!(ev.before.unwrap().get().contains(r#""quantity":120"#));
        assert!(ev.after.unwrap().get().contains(r#""quantity":95"#));
        assert_eq!(ev.source.table.as_deref(), Some("products"));
        assert_eq!(ev.source.db, "erp");
        assert_eq!(ev.source.ts_ms, 1795932223496);
        assert_eq!(ev.source.snapshot, Snapshot::No);
        assert_eq!(
            ev.source.position,
            SourcePosition::Postgres {
                commit_lsn: 35073800,
                lsn: 35074120
            }
        );
        assert_eq!(ev.connector_ts_ms, Some(1795932223594));
    }

    #[test]
    fn bare_snapshot_read_with_composite_key() {
        let ev = change(Some(r#"{"sku":"SKU-4","location":"D-02-2"}"#), BARE_READ);
        assert_eq!(ev.op, Op::Read);
        assert_eq!(ev.source.snapshot, Snapshot::Yes);
        assert_eq!(
            ev.key.unwrap().get(),
            r#"{"sku":"SKU-4","location":"D-02-2"}"#
        );
        assert!(ev.before.is_none());
        assert_eq!(
            ev.source.position,
            SourcePosition::Postgres {
                commit_lsn: 0,
                lsn: 35073800
            }
        );
    }

    #[test]
    fn boolean_snapshot_marker_of_older_connectors() {
        let value = BARE_READ.replace(r#""snapshot":"last""#, r#""snapshot":true"#);
        assert_eq!(change(None, &value).source.snapshot, Snapshot::Yes);
        let value = BARE_READ.replace(r#""snapshot":"last""#, r#""snapshot":false"#);
        assert_eq!(change(None, &value).source.snapshot, Snapshot::No);
    }

    #[test]
    fn delete_with_key_only_before_image_is_accepted() {
        let value = BARE_READ
            .replace(
                r#""before":null,"after":{"sku":"SKU-4","location":"D-02-2","quantity":400}"#,
                r#""before":{"sku":"SKU-4","location":"D-02-2","quantity":0},"after":null"#,
            )
            .replace(r#""op":"r""#, r#""op":"d""#);
        let ev = change(None, &value);
        assert_eq!(ev.op, Op::Delete);
        assert!(ev.after.is_none());
    }

    #[test]
    fn null_value_is_a_tombstone() {
        assert!(matches!(
            decode(Some(b"{\"sku\":\"x\"}"), None),
            Ok(Decoded::Tombstone)
        ));
    }

    #[test]
    fn mysql_position_orders_by_file_then_pos_then_row() {
        let value = r#"{"before":null,"after":{"id":1},"source":{"connector":"mysql","name":"shop","ts_ms":1,"db":"shop","table":"t","server_id":1,"file":"mysql-bin.000003","pos":154,"row":2},"op":"c"}"#;
        let ev = change(None, value);
        assert_eq!(
            ev.source.position,
            SourcePosition::MySql {
                file: 3,
                pos: 154,
                row: 2
            }
        );
        assert!(
            SourcePosition::MySql {
                file: 3,
                pos: 154,
                row: 2
            } < SourcePosition::MySql {
                file: 4,
                pos: 4,
                row: 0
            }
        );
    }

    #[test]
    fn broken_records_are_permanent_errors_with_a_kind() {
        let cases: &[(&str, &str)] = &[
            ("not json", "invalid_json"),
            (r#"{"after":{"a":1},"source":{"ts_ms":1}}"#, "missing_field"),
            (
                r#"{"op":"x","after":{"a":1},"source":{"ts_ms":1}}"#,
                "unknown_op",
            ),
            (
                r#"{"op":"u","after":null,"source":{"ts_ms":1}}"#,
                "missing_image",
            ),
            (r#"{"op":"c","after":{"a":1}}"#, "missing_field"),
            (
                r#"{"op":"c","after":{"a":1},"source":{}}"#,
                "invalid_source",
            ),
            (
                r#"{"op":"c","after":{"a":1},"source":{"ts_ms":1,"sequence":"[\"x\",null]"}}"#,
                "invalid_source",
            ),
            (
                r#"{"op":"d","before":null,"source":{"ts_ms":1}}"#,
                "missing_image",
            ),
        ];
        for (value, kind) in cases {
            let err = decode(None, Some(value.as_bytes())).unwrap_err();
            assert_eq!(err.kind(), *kind, "{value}: {err}");
        }
        let err = decode(Some(b"{bad"), Some(BARE_READ.as_bytes())).unwrap_err();
        assert_eq!(err.kind(), "invalid_key");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(key in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                       value in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(Some(&key), Some(&value));
        }

        #[test]
        fn truncated_records_never_panic(cut in 0usize..WRAPPED_UPDATE.len()) {
            let _ = decode(Some(WRAPPED_KEY.as_bytes()), Some(&WRAPPED_UPDATE.as_bytes()[..cut]));
        }
    }
}
