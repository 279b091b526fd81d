//! Bytes of a Debezium record → a typed [`Decoded`] record, in one place.
//!
//! Everything a Debezium connector writes to Kafka is recognised here:
//!
//! ```text
//! {"schema": {...}, "payload": {"before": …, "after": …, "op": "u", "source": {...}}}   envelope, schema-wrapped
//! {"before": …, "after": …, "op": "u", "source": {...}}                                 envelope, schemaless
//! {"id": 7, "name": "…", "__op": "u", "__source_ts_ms": …, "__deleted": "false"}        flattened (ExtractNewRecordState)
//! null                                                                                  tombstone after a delete
//! {"ts_ms": 1700000000000}                                                              heartbeat
//! {"status": "BEGIN", "id": "571:53195832", "event_count": null, …}                     transaction marker
//! {"source": {...}, "databaseName": "shop", "ddl": "ALTER TABLE …", "tableChanges": […]}  schema change
//! ```
//!
//! Row images are decoded column by column into exact [`Value`]s, using the record's schema
//! where it has one; strings and nested values borrow from the message buffer.
//!
//! Invariants enforced here, so nothing downstream re-checks them: `c`, `r` and `u` carry an
//! `after` row; `d` carries a `before` row or a key; every change has a source timestamp. A
//! record that breaks one is a [`DecodeError`], which is permanent: the same bytes can never
//! decode, so the caller dead-letters them and moves on. Cost is bounded before parsing:
//! records over [`Limits::max_record_bytes`] are refused unread, and nesting deeper than
//! serde_json's recursion limit (128) fails without recursing further.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::schema::{RowSchema, SchemaCache, ValueSchema};
use crate::value::{decode_value, Value};

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
    /// The record carries no position harmony understands.
    Unknown,
}

/// Whether a record comes from a snapshot (`op = r`, or any snapshot marker) or the stream.
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
    /// Postgres `txId`, MySQL/MariaDB `gtid` is kept raw in `source_raw`.
    pub tx_id: Option<i64>,
}

/// One row image, column by column, and its JSON verbatim for passing on.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub raw: &'a RawValue,
    pub columns: Vec<(Cow<'a, str>, Value<'a>)>,
}

impl<'a> Row<'a> {
    pub fn get(&self, column: &str) -> Option<&Value<'a>> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v)
    }
}

/// How a record's key relates to a primary-key change (`UPDATE … SET id = …`), which Debezium
/// emits as a delete of the old key and a create of the new one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyChange<'a> {
    None,
    /// This delete is the old half; the row lives on under this key.
    MovedTo(&'a [u8]),
    /// This create is the new half; the row was known under this key.
    MovedFrom(&'a [u8]),
}

/// The `transaction` block a connector adds with `provide.transaction.metadata=true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransactionBlock<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub total_order: u64,
    pub data_collection_order: u64,
}

/// One decoded change.
#[derive(Debug)]
pub struct ChangeEvent<'a> {
    pub op: Op,
    /// The key's payload, without the converter's schema wrapper. `None` for truncates.
    pub key: Option<&'a RawValue>,
    pub before: Option<Row<'a>>,
    pub after: Option<Row<'a>>,
    pub source: Source<'a>,
    /// The `source` block verbatim, for passing on; `None` in the flattened form.
    pub source_raw: Option<&'a RawValue>,
    /// When the connector processed the change (not when the database committed it).
    pub connector_ts_ms: Option<i64>,
    pub transaction: Option<TransactionBlock<'a>>,
    pub key_change: KeyChange<'a>,
    /// `op = m`: the logical message (`{"prefix": …, "content": base64}`) verbatim.
    pub message: Option<&'a RawValue>,
    /// Decoded from the flattened form of `ExtractNewRecordState`.
    pub flattened: bool,
}

/// A BEGIN or END record of the transaction metadata topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionMarker<'a> {
    pub begin: bool,
    pub id: Cow<'a, str>,
    /// On END: the number of change events the transaction produced.
    pub event_count: Option<u64>,
    pub ts_ms: Option<i64>,
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
    Heartbeat {
        ts_ms: i64,
    },
    Transaction(TransactionMarker<'a>),
    /// A DDL record of the MySQL/MariaDB schema change topic.
    SchemaChange,
}

impl Decoded<'_> {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Decoded::Change(c) => c.op.code(),
            Decoded::Tombstone => "tombstone",
            Decoded::Heartbeat { .. } => "heartbeat",
            Decoded::Transaction(_) => "transaction",
            Decoded::SchemaChange => "schema_change",
        }
    }
}

/// Why a record could not be decoded. Always permanent.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("value nests deeper than the decoder's limit")]
    TooDeep,
    #[error("value is not UTF-8")]
    NotUtf8,
    #[error("value is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("key is not valid JSON: {0}")]
    KeyJson(#[source] serde_json::Error),
    #[error("value is not a JSON object")]
    NotAnObject,
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
    Source(String),
    #[error("schema: {0}")]
    Schema(#[source] serde_json::Error),
    #[error("column `{column}`: {message}")]
    Column { column: String, message: String },
}

impl DecodeError {
    /// A bounded label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep => "too_deep",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::KeyJson(_) => "invalid_key",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::UnknownOp(_) => "unknown_op",
            DecodeError::MissingImage { .. } => "missing_image",
            DecodeError::Source(_) => "invalid_source",
            DecodeError::Schema(_) => "invalid_schema",
            DecodeError::Column { .. } => "invalid_value",
        }
    }

    fn json(e: serde_json::Error) -> Self {
        // serde_json stops at its recursion limit instead of overflowing the stack.
        if e.to_string().starts_with("recursion limit exceeded") {
            DecodeError::TooDeep
        } else {
            DecodeError::Json(e)
        }
    }
}

/// Bounds on what the decoder reads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_record_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a column value. serde_json bounds the
    /// recursion of what it parses, but the column values harmony passes on raw are skipped
    /// iteratively and would reach downstream consumers, whose parsers may recurse.
    pub max_nesting_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Kafka's default message.max.bytes is 1 MiB; Debezium rows near it are rare
            // and legitimate, so the default leaves room.
            max_record_bytes: 8 * 1024 * 1024,
            max_nesting_depth: 64,
        }
    }
}

/// Whether `bytes` nests arrays and objects deeper than `max`. A value with no more opening
/// brackets than `max` cannot, and that count is a single vectorisable pass; only the rare
/// value with more is scanned with string awareness.
fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let openers = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if openers <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What the decoder reads besides key and value: the PK-change headers Debezium sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordHeaders<'a> {
    /// `__debezium.newkey`, on the delete half of a primary-key change.
    pub new_key: Option<&'a [u8]>,
    /// `__debezium.oldkey`, on the create half.
    pub old_key: Option<&'a [u8]>,
}

impl<'a> RecordHeaders<'a> {
    pub const NEW_KEY: &'static str = "__debezium.newkey";
    pub const OLD_KEY: &'static str = "__debezium.oldkey";

    /// Picks the headers the decoder reads from any (name, value) sequence.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let mut headers = Self::default();
        for (name, value) in pairs {
            match name {
                Self::NEW_KEY => headers.new_key = value,
                Self::OLD_KEY => headers.old_key = value,
                _ => {}
            }
        }
        headers
    }
}

/// Decodes records; keeps the parsed schemas of schema-wrapped records between calls.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    schemas: SchemaCache,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            schemas: SchemaCache::default(),
        }
    }

    pub fn decode<'a>(
        &mut self,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: RecordHeaders<'a>,
    ) -> Result<Decoded<'a>, DecodeError> {
        let Some(value) = value else {
            return Ok(Decoded::Tombstone);
        };
        for bytes in [Some(value), key].into_iter().flatten() {
            if bytes.len() > self.limits.max_record_bytes {
                return Err(DecodeError::TooLarge {
                    size: bytes.len(),
                    limit: self.limits.max_record_bytes,
                });
            }
        }
        let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
        let outer: RawRecord<'_> = serde_json::from_str(text).map_err(|e| {
            if !text.trim_start().starts_with('{')
                && e.classify() == serde_json::error::Category::Data
            {
                DecodeError::NotAnObject
            } else {
                DecodeError::json(e)
            }
        })?;
        let key = key.map(unwrap_key).transpose()?.flatten();
        match (outer.schema, outer.payload) {
            // The JSON converter's wrapper: `{"schema": …, "payload": …}`.
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
                        self.schemas
                            .get_or_parse(schema.get())
                            .map_err(DecodeError::Schema)?,
                    )
                };
                classify(
                    record,
                    payload.get(),
                    schema.as_deref(),
                    key,
                    headers,
                    self.limits.max_nesting_depth,
                )
            }
            _ => classify(
                outer,
                text,
                None,
                key,
                headers,
                self.limits.max_nesting_depth,
            ),
        }
    }
}

/// Decodes one record with a throwaway decoder (no schema cache); for tests and tools.
pub fn decode<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
) -> Result<Decoded<'a>, DecodeError> {
    Decoder::default().decode(key, value, RecordHeaders::default())
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
    schema: Option<&ValueSchema>,
    key: Option<&'a RawValue>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    if let Some(op) = &record.op {
        let op =
            Op::from_code(op).ok_or_else(|| DecodeError::UnknownOp(op.clone().into_owned()))?;
        return change_from_envelope(record, op, schema.map(|s| &s.row), key, headers, max_depth);
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
        return change_from_flattened(
            record,
            text,
            schema.map(|s| &s.row),
            key,
            headers,
            max_depth,
        );
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
    row_schema: Option<&RowSchema>,
    key: Option<&'a RawValue>,
    headers: RecordHeaders<'a>,
    max_depth: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let source_raw = record.source.ok_or(DecodeError::MissingField("source"))?;
    let source = decode_source(source_raw)?;
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
    }))
}

fn change_from_flattened<'a>(
    record: RawRecord<'a>,
    text: &'a str,
    row_schema: Option<&RowSchema>,
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
    let row = row(raw, row_schema, true, max_depth)?;
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
    }))
}

/// One `before`/`after` image, or `None` when it is absent or null.
fn image<'a>(
    raw: Option<&'a RawValue>,
    schema: Option<&RowSchema>,
    max_depth: usize,
) -> Result<Option<Row<'a>>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if !r.get().starts_with('{') => Err(DecodeError::Column {
            column: "(row image)".into(),
            message: "is not an object".into(),
        }),
        Some(r) => row(r, schema, false, max_depth).map(Some),
    }
}

/// Decodes a row object column by column. `skip_meta` leaves out `__`-prefixed fields, which
/// ExtractNewRecordState adds to the row it flattens.
fn row<'a>(
    raw: &'a RawValue,
    schema: Option<&RowSchema>,
    skip_meta: bool,
    max_depth: usize,
) -> Result<Row<'a>, DecodeError> {
    let mut column_error = None;
    let seed = RowSeed {
        schema,
        skip_meta,
        max_depth,
        column_error: &mut column_error,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let columns = de::DeserializeSeed::deserialize(seed, &mut de);
    match (columns, column_error) {
        (_, Some(error)) => Err(error),
        (Ok(columns), None) => Ok(Row { raw, columns }),
        (Err(e), None) => Err(DecodeError::json(e)),
    }
}

/// Reads a row object in one pass, decoding each column as it comes: no intermediate list of
/// raw entries. A column that cannot be decoded is reported through `column_error`, so its
/// kind survives serde's error type.
struct RowSeed<'s> {
    schema: Option<&'s RowSchema>,
    skip_meta: bool,
    /// Nested column values (arrays, structs, JSON) are passed on raw, unparsed: their depth
    /// is checked here, since serde_json skips them without its recursion limit.
    max_depth: usize,
    column_error: &'s mut Option<DecodeError>,
}

impl<'de, 's> de::DeserializeSeed<'de> for RowSeed<'s> {
    type Value = Vec<(Cow<'de, str>, Value<'de>)>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for RowSeed<'s> {
    type Value = Vec<(Cow<'de, str>, Value<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let capacity = self.schema.map_or(16, |s| s.columns.len());
        let mut columns = Vec::with_capacity(capacity);
        let mut index = 0;
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let raw: &'de RawValue = map.next_value()?;
            if self.skip_meta && name.starts_with("__") {
                continue;
            }
            let declared = self.schema.and_then(|s| s.column_type(&name, index));
            index += 1;
            match decode_value(raw, declared) {
                Ok(Value::Raw(nested))
                    if nests_deeper_than(nested.get().as_bytes(), self.max_depth) =>
                {
                    *self.column_error = Some(DecodeError::TooDeep);
                    return Err(de::Error::custom("nesting"));
                }
                Ok(value) => columns.push((name, value)),
                Err(message) => {
                    *self.column_error = Some(DecodeError::Column {
                        column: name.into_owned(),
                        message,
                    });
                    return Err(de::Error::custom("column"));
                }
            }
        }
        Ok(columns)
    }
}

/// The key's payload. A key is schema-wrapped when it has both `schema` and `payload` (a bare
/// key of a table with exactly those two columns would be misread: a documented limitation of
/// the JSON converter's format, which has no marker of its own).
fn unwrap_key(key: &[u8]) -> Result<Option<&RawValue>, DecodeError> {
    #[derive(Deserialize)]
    struct KeyWrapper<'a> {
        #[serde(borrow, default)]
        payload: Option<&'a RawValue>,
        #[serde(default)]
        schema: Option<IgnoredAny>,
    }
    let raw: &RawValue = serde_json::from_slice(key).map_err(DecodeError::KeyJson)?;
    // The JSON converter writes `schema` first; only such a key is worth a second look.
    if raw.get().starts_with("{\"schema\"") {
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
    #[serde(default, rename = "txId")]
    tx_id: Option<i64>,
    // MySQL / MariaDB
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    row: Option<u64>,
}

fn decode_source(raw: &RawValue) -> Result<Source<'_>, DecodeError> {
    let src: RawSource<'_> =
        serde_json::from_str(raw.get()).map_err(|e| DecodeError::Source(e.to_string()))?;
    let position = match (&src.sequence, src.lsn, &src.file) {
        (Some(sequence), _, _) => postgres_position(sequence)?,
        (None, Some(lsn), _) => SourcePosition::Postgres { commit_lsn: 0, lsn },
        (None, None, Some(file)) if !file.is_empty() => SourcePosition::MySql {
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
        tx_id: src.tx_id,
    })
}

/// `"[\"24023928\",\"24023984\"]"`: last commit LSN and LSN as decimal strings, either null.
fn postgres_position(sequence: &str) -> Result<SourcePosition, DecodeError> {
    let parts: [Option<Cow<'_, str>>; 2] = serde_json::from_str(sequence)
        .map_err(|e| DecodeError::Source(format!("`sequence` is not a pair of LSNs: {e}")))?;
    let lsn = |part: &Option<Cow<'_, str>>| -> Result<u64, DecodeError> {
        part.as_deref().map_or(Ok(0), |s| {
            s.parse().map_err(|_| {
                DecodeError::Source(format!("`sequence` holds a non-numeric LSN `{s}`"))
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
        .ok_or_else(|| DecodeError::Source(format!("binlog file `{file}` has no numeric suffix")))
}

/// `snapshot` is a string enum in current Debezium (`"true"`, `"last"`, `"false"`, …) and a
/// boolean in older releases; both mean the same.
fn snapshot_marker<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Snapshot>, D::Error> {
    struct Marker;
    impl<'de> Visitor<'de> for Marker {
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
