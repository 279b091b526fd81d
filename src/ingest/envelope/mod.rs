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
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::ingest::avro::{self, AvroError, AvroSchemas, Lookup, WriterSchema};
use crate::ingest::schema::SchemaCache;
use crate::model::value::Value;

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

/// Where a change sits in its source database's own order. Compared only between two changes
/// of one record from one system ([`SourcePosition::order_to`]): that is all dedup needs, and
/// there the order is simple — a row's successive changes are serialised by its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePosition {
    /// Postgres: `sequence` = `[last commit LSN, LSN]`; a null element reads as 0.
    ///
    /// The commit LSN is the *previous* transaction's commit as the connector saw it: null
    /// after a snapshot or a connector restart, so it cannot order anything on its own. The
    /// LSN of the row's change can: a second change of the same row waits for the first's
    /// commit, so it is written to the WAL after it, and a snapshot read carries the LSN the
    /// snapshot was consistent at.
    Postgres { commit_lsn: u64, lsn: u64 },
    /// MySQL/MariaDB: the server that wrote the binlog (0: unknown, as in snapshot reads), the
    /// binlog file number, the position of the event, the row within the event.
    MySql {
        server_id: u64,
        file: u64,
        pos: u64,
        row: u64,
    },
    /// The record carries no position harmony understands.
    Unknown,
}

impl SourcePosition {
    /// How this position stands to `applied`, the last one applied from the same system for the
    /// same record: `None` when the two cannot be compared (no position, another connector
    /// kind, binlogs of two different servers).
    ///
    /// ```text
    /// Postgres [null,"120"] vs [90,"100"]  → Greater   (a null commit LSN after a re-snapshot)
    /// MySQL server 1, file 3 vs server 2, file 9 → None (another server's binlog coordinates)
    /// ```
    pub fn order_to(&self, applied: &SourcePosition) -> Option<std::cmp::Ordering> {
        match (self, applied) {
            (SourcePosition::Postgres { lsn: a, .. }, SourcePosition::Postgres { lsn: b, .. }) => {
                Some(a.cmp(b))
            }
            (
                SourcePosition::MySql {
                    server_id: sa,
                    file: fa,
                    pos: pa,
                    row: ra,
                },
                SourcePosition::MySql {
                    server_id: sb,
                    file: fb,
                    pos: pb,
                    row: rb,
                },
            ) if *sa == 0 || *sb == 0 || sa == sb => Some((fa, pa, ra).cmp(&(fb, pb, rb))),
            _ => None,
        }
    }
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
    /// The same in microseconds (`ts_us`, or `ts_ns` / 1000), where the connector sends it
    /// (Debezium 2.6 and later).
    pub ts_us: Option<i64>,
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
    /// What the record's schema declares (schema-wrapped JSON); `None` when schemaless.
    pub schema: Option<std::sync::Arc<crate::ingest::schema::ValueSchema>>,
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
    // The cause is part of the message (dead-letter headers carry `Display` alone), so it is
    // not also a `#[source]` that a chain printer would repeat.
    #[error("value is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("key is not valid JSON: {0}")]
    KeyJson(serde_json::Error),
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
    Schema(serde_json::Error),
    #[error(
        "record is Avro in Confluent's wire format (schema id {id}) and no schema registry is configured (`schema_registry.url`)"
    )]
    AvroWithoutRegistry { id: u32 },
    #[error("schema id {id}: {reason}")]
    UnknownSchema { id: u32, reason: Arc<str> },
    #[error("{0}")]
    Avro(AvroError),
    #[error("column `(row image)`: is not an object")]
    RowImage,
    #[error("column `{column}`: {error}")]
    Column {
        column: String,
        error: crate::model::value::ValueError,
    },
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
            DecodeError::Column { .. } | DecodeError::RowImage => "invalid_value",
            DecodeError::AvroWithoutRegistry { .. } => "avro_without_registry",
            DecodeError::UnknownSchema { .. } => "unknown_schema",
            DecodeError::Avro(AvroError::Schema { .. }) => "invalid_avro_schema",
            DecodeError::Avro(AvroError::Datum { .. }) => "invalid_avro",
        }
    }

    pub(crate) fn json(e: serde_json::Error) -> Self {
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
            max_record_bytes: crate::config::DEFAULT_MAX_RECORD_BYTES,
            max_nesting_depth: crate::config::DEFAULT_MAX_NESTING_DEPTH,
        }
    }
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

/// Decodes records; keeps the parsed schemas of schema-wrapped records between calls, and
/// reads Avro records with the writer schemas the registry gave.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    schemas: SchemaCache,
    avro: Option<Arc<AvroSchemas>>,
}

/// Where an Avro record's key and value are written as JSON text: the decoded record borrows
/// them, and the caller reuses them for the next record.
#[derive(Debug, Default)]
pub struct Transcoded {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            schemas: SchemaCache::default(),
            avro: None,
        }
    }

    /// Reads Avro records (Confluent's wire format) with the writer schemas in `schemas`,
    /// which the caller fills from the registry before it hands a record over.
    pub fn with_avro(mut self, schemas: Arc<AvroSchemas>) -> Self {
        self.avro = Some(schemas);
        self
    }

    /// Decodes a JSON record; an Avro one is refused as [`DecodeError::AvroWithoutRegistry`].
    pub fn decode<'a>(
        &mut self,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: RecordHeaders<'a>,
    ) -> Result<Decoded<'a>, DecodeError> {
        // No buffer for an Avro record's text: `decode_any` refuses one before it reads it.
        self.decode_any(key, value, headers, &mut None)
    }

    /// Decodes a JSON or Avro record; an Avro record's text is written into `scratch`.
    pub fn decode_with<'a>(
        &mut self,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: RecordHeaders<'a>,
        scratch: &'a mut Transcoded,
    ) -> Result<Decoded<'a>, DecodeError> {
        self.decode_any(key, value, headers, &mut Some(scratch))
    }

    fn decode_any<'a>(
        &mut self,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: RecordHeaders<'a>,
        scratch: &mut Option<&'a mut Transcoded>,
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
        let value_frame = avro::framed(value);
        let key_frame = key.and_then(avro::framed);
        if value_frame.is_none() && key_frame.is_none() {
            let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
            return decode_text(
                text,
                &mut self.schemas,
                key,
                headers,
                self.limits.max_nesting_depth,
            );
        }
        let Some(Transcoded {
            key: key_text,
            value: value_text,
        }) = scratch.take()
        else {
            let (id, _) = value_frame.or(key_frame).expect("one is framed");
            return Err(DecodeError::AvroWithoutRegistry { id });
        };
        let key = match key_frame {
            Some((id, datum)) => {
                self.writer(id)?
                    .to_json(datum, key_text)
                    .map_err(DecodeError::Avro)?;
                Some(&key_text[..])
            }
            None => key,
        };
        let depth = self.limits.max_nesting_depth;
        match value_frame {
            Some((id, datum)) => {
                let writer = self.writer(id)?;
                writer
                    .to_json(datum, value_text)
                    .map_err(DecodeError::Avro)?;
                let value_text: &'a Vec<u8> = value_text;
                // serde_json writes UTF-8 only.
                let text = std::str::from_utf8(value_text).map_err(|_| DecodeError::NotUtf8)?;
                decode_payload(text, Some(&writer.value), key, headers, depth)
            }
            None => {
                let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
                decode_text(text, &mut self.schemas, key, headers, depth)
            }
        }
    }

    fn writer(&self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        let Some(schemas) = &self.avro else {
            return Err(DecodeError::AvroWithoutRegistry { id });
        };
        match schemas.get(id) {
            Some(Lookup::Found(writer)) => Ok(writer),
            Some(Lookup::Refused(reason)) => Err(DecodeError::UnknownSchema { id, reason }),
            None => Err(DecodeError::UnknownSchema {
                id,
                reason: "not fetched from the registry".into(),
            }),
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

mod record;
mod row;
mod source;

use record::{decode_payload, decode_text};
