//! The one pass over a record's top level: which kind of record it is, and the change it
//! carries (envelope or flattened form).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::row::{image, row, unwrap_key};
use super::source::{decode_source, postgres_position};
use super::{
    ChangeEvent, DecodeError, Decoded, KeyChange, Op, RecordHeaders, Snapshot, Source,
    SourcePosition, TransactionMarker,
};
use crate::ingest::schema::{SchemaCache, ValueSchema};

/// Decodes a record's value text: unwraps the JSON converter's `{"schema", "payload"}`
/// wrapper (the schema parsed once per distinct text), then sorts the record into its kind.
pub(super) fn decode_text<'a>(
    text: &'a str,
    schemas: &mut SchemaCache,
    key: Option<&'a [u8]>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let outer: RawRecord<'_> = serde_json::from_str(text).map_err(|e| {
        if !text.trim_start().starts_with('{') && e.classify() == serde_json::error::Category::Data
        {
            DecodeError::NotAnObject
        } else {
            DecodeError::json(e)
        }
    })?;
    // After the value: when both are broken, the value's error is the one worth reporting.
    let key = key.map(unwrap_key).transpose()?.flatten();
    match (outer.schema, outer.payload) {
        (Some(schema), Some(payload)) if outer.op.is_none() && outer.source.is_none() => {
            if payload.get() == "null" {
                return Ok(Decoded::Tombstone);
            }
            let record: RawRecord<'_> =
                serde_json::from_str(payload.get()).map_err(DecodeError::json)?;
            let schema = if schema.get() == "null" {
                None
            } else {
                Some(
                    schemas
                        .get_or_parse(schema.get())
                        .map_err(DecodeError::Schema)?,
                )
            };
            classify(
                record,
                payload.get(),
                schema.as_ref(),
                key,
                headers,
                max_depth,
            )
        }
        _ => classify(outer, text, None, key, headers, max_depth),
    }
}

/// Decodes a record's payload, its schema given: the text an Avro record was written into.
pub(super) fn decode_payload<'a>(
    text: &'a str,
    schema: Option<&Arc<ValueSchema>>,
    key: Option<&'a [u8]>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let record: RawRecord<'_> = serde_json::from_str(text).map_err(DecodeError::json)?;
    let key = key.map(unwrap_key).transpose()?.flatten();
    classify(record, text, schema, key, headers, max_depth)
}

/// Every top-level field harmony may look at, across all record shapes, read in one pass; the
/// columns of a flattened row are collected in a second pass only when the record is one.
#[derive(Default)]
struct RawRecord<'a> {
    // The JSON converter's wrapper.
    schema: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    // The envelope.
    before: Option<&'a RawValue>,
    after: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    op: Option<Cow<'a, str>>,
    ts_ms: Option<i64>,
    transaction: Option<&'a RawValue>,
    message: Option<&'a RawValue>,
    // The transaction metadata topic.
    status: Option<Cow<'a, str>>,
    id: Option<&'a RawValue>,
    event_count: Option<u64>,
    // The schema change topic.
    ddl: bool,
    // ExtractNewRecordState's added fields (`add.fields`, `__deleted`).
    flat_op: Option<Cow<'a, str>>,
    flat_deleted: Option<&'a RawValue>,
    flat_source_ts_ms: Option<i64>,
    flat_ts_ms: Option<i64>,
    flat_table: Option<Cow<'a, str>>,
    flat_db: Option<Cow<'a, str>>,
    flat_lsn: Option<u64>,
    flat_sequence: Option<Cow<'a, str>>,
    any_flat_marker: bool,
    /// Keys none of the above claims; a heartbeat has none.
    other_keys: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawRecord<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Fields<'a> {
            type Value = RawRecord<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Debezium record object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord<'a>, A::Error> {
                let mut r = RawRecord::default();
                while let Some(key) = map.next_key::<Cow<'a, str>>()? {
                    match key.as_ref() {
                        "schema" => r.schema = Some(map.next_value()?),
                        "payload" => r.payload = Some(map.next_value()?),
                        "before" => r.before = Some(map.next_value()?),
                        "after" => r.after = Some(map.next_value()?),
                        "source" => r.source = Some(map.next_value()?),
                        "op" => r.op = map.next_value()?,
                        "ts_ms" => r.ts_ms = map.next_value()?,
                        "transaction" => r.transaction = Some(map.next_value()?),
                        "message" => r.message = Some(map.next_value()?),
                        "status" => r.status = map.next_value()?,
                        "id" => r.id = Some(map.next_value()?),
                        "event_count" => r.event_count = map.next_value()?,
                        "ddl" | "tableChanges" => {
                            map.next_value::<IgnoredAny>()?;
                            r.ddl = true;
                        }
                        "__op" => r.flat_op = map.next_value()?,
                        "__deleted" => r.flat_deleted = Some(map.next_value()?),
                        "__source_ts_ms" => r.flat_source_ts_ms = map.next_value()?,
                        "__ts_ms" => r.flat_ts_ms = map.next_value()?,
                        "__table" | "__source_table" => r.flat_table = map.next_value()?,
                        "__db" | "__source_db" => r.flat_db = map.next_value()?,
                        "__lsn" | "__source_lsn" => r.flat_lsn = map.next_value()?,
                        "__source_sequence" => r.flat_sequence = map.next_value()?,
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            if other.starts_with("__") {
                                r.any_flat_marker = true;
                            } else {
                                r.other_keys += 1;
                            }
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

impl RawRecord<'_> {
    fn is_flattened(&self) -> bool {
        self.any_flat_marker
            || self.flat_op.is_some()
            || self.flat_deleted.is_some()
            || self.flat_source_ts_ms.is_some()
            || self.flat_ts_ms.is_some()
            || self.flat_table.is_some()
            || self.flat_db.is_some()
            || self.flat_lsn.is_some()
            || self.flat_sequence.is_some()
    }

    /// Neither wrapper nor envelope fields: a heartbeat, marker, DDL or flattened row.
    fn has_no_envelope_fields(&self) -> bool {
        self.op.is_none()
            && self.source.is_none()
            && self.after.is_none()
            && self.before.is_none()
            && self.schema.is_none()
            && self.payload.is_none()
    }
}

/// Sorts a parsed record into its kind. `text` is the record's own JSON, re-read only for a
/// flattened row.
fn classify<'a>(
    record: RawRecord<'a>,
    text: &'a str,
    schema: Option<&Arc<ValueSchema>>,
    key: Option<&'a RawValue>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    if let Some(op) = &record.op {
        let op =
            Op::from_code(op).ok_or_else(|| DecodeError::UnknownOp(op.clone().into_owned()))?;
        return change_from_envelope(record, op, schema, key, headers, max_depth);
    }
    if record.ddl {
        return Ok(Decoded::SchemaChange);
    }
    if let (Some(status), Some(id)) = (&record.status, record.id) {
        if status == "BEGIN" || status == "END" {
            let id: Cow<'_, str> = serde_json::from_str(id.get())
                .map_err(|e| DecodeError::Source(format!("transaction id: {e}")))?;
            return Ok(Decoded::Transaction(TransactionMarker {
                begin: status == "BEGIN",
                id,
                event_count: record.event_count,
                ts_ms: record.ts_ms,
            }));
        }
    }
    if record.is_flattened() {
        return change_from_flattened(record, text, schema, key, headers, max_depth);
    }
    if let (Some(ts_ms), true) = (
        record.ts_ms,
        record.other_keys == 0 && record.has_no_envelope_fields() && record.status.is_none(),
    ) {
        return Ok(Decoded::Heartbeat { ts_ms });
    }
    // An object with none of the markers: not something a Debezium connector writes.
    Err(DecodeError::MissingField("op"))
}

fn key_change<'a>(op: Op, headers: RecordHeaders<'a>) -> KeyChange<'a> {
    match (op, headers.new_key, headers.old_key) {
        (Op::Delete, Some(new_key), _) => KeyChange::MovedTo(new_key),
        (Op::Create, _, Some(old_key)) => KeyChange::MovedFrom(old_key),
        _ => KeyChange::None,
    }
}

fn change_from_envelope<'a>(
    record: RawRecord<'a>,
    op: Op,
    schema: Option<&Arc<ValueSchema>>,
    key: Option<&'a RawValue>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let source_raw = record.source.ok_or(DecodeError::MissingField("source"))?;
    let source = decode_source(source_raw)?;
    let row_schema = schema.map(|s| &s.row);
    let before = image(record.before, row_schema, max_depth)?;
    let after = image(record.after, row_schema, max_depth)?;
    match op {
        Op::Create | Op::Read | Op::Update if after.is_none() => {
            return Err(DecodeError::MissingImage {
                op: op.code(),
                image: "after",
            })
        }
        Op::Delete if before.is_none() && key.is_none() => {
            return Err(DecodeError::MissingImage {
                op: op.code(),
                image: "before",
            })
        }
        _ => {}
    }
    let message = record.message.filter(|m| m.get() != "null");
    if op == Op::Message && message.is_none() {
        return Err(DecodeError::MissingField("message"));
    }
    let transaction = match record.transaction {
        Some(t) if t.get() != "null" => Some(
            serde_json::from_str(t.get())
                .map_err(|e| DecodeError::Source(format!("transaction block: {e}")))?,
        ),
        _ => None,
    };
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source,
        source_raw: Some(source_raw),
        connector_ts_ms: record.ts_ms,
        transaction,
        key_change: key_change(op, headers),
        message,
        flattened: false,
        schema: schema.cloned(),
    }))
}

fn change_from_flattened<'a>(
    record: RawRecord<'a>,
    text: &'a str,
    schema: Option<&Arc<ValueSchema>>,
    key: Option<&'a RawValue>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let deleted = record
        .flat_deleted
        .is_some_and(|d| d.get() == "true" || d.get() == r#""true""#);
    let op = match record.flat_op.as_deref() {
        Some(code) => Op::from_code(code).ok_or_else(|| DecodeError::UnknownOp(code.to_owned()))?,
        None if deleted => Op::Delete,
        // Without `__op` the flattened form cannot tell a create from an update; both mean
        // "the row is now this", which is how harmony treats an update.
        None => Op::Update,
    };
    let ts_ms = record
        .flat_source_ts_ms
        .or(record.flat_ts_ms)
        .ok_or(DecodeError::MissingField("__source_ts_ms"))?;
    let position = match (&record.flat_sequence, record.flat_lsn) {
        (Some(sequence), _) => postgres_position(sequence)?,
        (None, Some(lsn)) => SourcePosition::Postgres { commit_lsn: 0, lsn },
        _ => SourcePosition::Unknown,
    };
    // The flattened record *is* the row (plus `__` fields): read it again, column by column.
    let raw: &RawValue = serde_json::from_str(text).map_err(DecodeError::json)?;
    let row = row(raw, schema.map(|s| &s.row), true, max_depth)?;
    let (before, after) = if op == Op::Delete {
        (Some(row), None)
    } else {
        (None, Some(row))
    };
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source: Source {
            connector: Cow::Borrowed(""),
            name: Cow::Borrowed(""),
            db: record.flat_db.unwrap_or_default(),
            schema: None,
            table: record.flat_table,
            ts_ms,
            ts_us: None,
            snapshot: if op == Op::Read {
                Snapshot::Yes
            } else {
                Snapshot::No
            },
            position,
            tx_id: None,
        },
        source_raw: None,
        connector_ts_ms: record.flat_ts_ms,
        transaction: None,
        key_change: key_change(op, headers),
        message: None,
        flattened: true,
        schema: schema.cloned(),
    }))
}
