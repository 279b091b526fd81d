//! The record stage 1 writes to the internal topic and stage 2 reads back (ARCHITECTURE.md §1): one
//! change of one logical record, keyed `entity:canonical-key` so that every system's changes
//! to the record reach the same partition.
//!
//! ```text
//! key:   product:["SKU-1"]
//! value: {"v":1,"entity":"product","key":"[\"SKU-1\"]","system":"shop","kind":"upsert",
//!         "ts_ms":1700000000000,"snapshot":false,"position":{"postgres":[0,4242]},
//!         "fields":[["quantity",{"int":95}],["name",{"text":"Cup"}]],
//!         "origin":{"topic":"shop.public.items","partition":0,"offset":17}}
//! ```
//!
//! Values keep their exact type (integers as JSON integers, decimals as decimal strings), so a
//! record read back is the record written. Field and system *names* are written, not indices:
//! the internal topic outlives a configuration change.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::ingest::envelope::{ChangeEvent, Snapshot, SourcePosition};
use crate::ingest::mapping::{Catalog, ChangeKind, MappedChange};
pub use crate::model::value::FieldRef;

/// A field and its source column's type name. Stage 1 keeps them per schema, and stage 2
/// compares them with the types it has, so neither borrows them from the record.
pub type FieldType = (Cow<'static, str>, Cow<'static, str>);

fn no_types(types: &[FieldType]) -> bool {
    types.is_empty()
}

/// Version of the encoding; a reader refuses versions it does not know.
pub const FORMAT_VERSION: u8 = 1;

/// Borrows from the decoded input when stage 1 writes it, and from the message buffer where it
/// can when stage 2 reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InternalChange<'a> {
    pub v: u8,
    #[serde(borrow)]
    pub entity: Cow<'a, str>,
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow)]
    pub system: Cow<'a, str>,
    pub kind: ChangeKind,
    pub ts_ms: i64,
    /// The commit time in microseconds, where the source gives it finer than `ts_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_us: Option<i64>,
    pub snapshot: bool,
    pub position: Position,
    #[serde(borrow)]
    pub fields: Vec<(Cow<'a, str>, FieldRef<'a>)>,
    /// Exact mode: the version (JSON object, system name → count) the row was based on, from
    /// its version column. Absent in content mode.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Cow<'a, str>>,
    /// The source's column types of the fields (field → type name, `ColumnType`'s text), as its
    /// captured schema declares them: how the system is sent the fields as a target. Empty
    /// for schemaless input. Stage 1 lends them from its cache of each schema's types.
    #[serde(default, skip_serializing_if = "no_types")]
    pub types: Cow<'a, [FieldType]>,
    #[serde(borrow)]
    pub origin: Origin<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Postgres([u64; 2]),
    /// File, position, row, from a server that did not say who it is (older writers).
    Mysql([u64; 3]),
    Unknown,
    /// Server id, file, position, row.
    MysqlServer([u64; 4]),
}

impl From<SourcePosition> for Position {
    fn from(p: SourcePosition) -> Self {
        match p {
            SourcePosition::Postgres { commit_lsn, lsn } => Position::Postgres([commit_lsn, lsn]),
            SourcePosition::MySql {
                server_id: 0,
                file,
                pos,
                row,
            } => Position::Mysql([file, pos, row]),
            SourcePosition::MySql {
                server_id,
                file,
                pos,
                row,
            } => Position::MysqlServer([server_id, file, pos, row]),
            SourcePosition::Unknown => Position::Unknown,
        }
    }
}

impl From<Position> for SourcePosition {
    fn from(p: Position) -> Self {
        match p {
            Position::Postgres([commit_lsn, lsn]) => SourcePosition::Postgres { commit_lsn, lsn },
            Position::Mysql([file, pos, row]) => SourcePosition::MySql {
                server_id: 0,
                file,
                pos,
                row,
            },
            Position::MysqlServer([server_id, file, pos, row]) => SourcePosition::MySql {
                server_id,
                file,
                pos,
                row,
            },
            Position::Unknown => SourcePosition::Unknown,
        }
    }
}

/// Why an internal record cannot be read; never retriable (the record is dead-lettered). The
/// cause is part of the message, not also a `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("internal record version {0} is not {FORMAT_VERSION}")]
    Version(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    pub partition: i32,
    pub offset: i64,
}

/// A record's key wherever it is keyed — the internal topic, the changelog, the conflicts
/// topic: `entity:canonical key`.
pub fn record_key(entity: &str, key: &str) -> String {
    format!("{entity}:{key}")
}

impl<'a> InternalChange<'a> {
    /// Stage 1's record for one mapped change. Columns Debezium did not send (unchanged
    /// TOAST) are left out: absent means "not sent", never "now null".
    pub fn from_mapped(
        catalog: &'a Catalog,
        mapped: &'a MappedChange<'_, '_>,
        system: &'a str,
        event: &ChangeEvent<'_>,
        types: &'a [FieldType],
        origin: Origin<'a>,
    ) -> Self {
        let fields = mapped
            .fields
            .iter()
            .filter_map(|&(field, value)| {
                let name = catalog.field_name(mapped.entity, field);
                FieldRef::from_value(value).map(|v| (Cow::Borrowed(name), v))
            })
            .collect();
        InternalChange {
            v: FORMAT_VERSION,
            entity: Cow::Borrowed(catalog.entity_name(mapped.entity)),
            key: Cow::Borrowed(&mapped.key),
            system: Cow::Borrowed(system),
            kind: mapped.kind,
            ts_ms: event.source.ts_ms,
            ts_us: event
                .source
                .ts_us
                .filter(|&us| us.div_euclid(1000) == event.source.ts_ms && us % 1000 != 0),
            snapshot: event.source.snapshot == Snapshot::Yes,
            position: event.source.position.into(),
            fields,
            context: mapped.context.map(Cow::Borrowed),
            types: Cow::Borrowed(types),
            origin,
        }
    }

    /// The internal topic's record key: every change of one record on one partition.
    pub fn record_key(&self) -> String {
        record_key(&self.entity, &self.key)
    }

    /// [`Self::record_key`] appended to `buf`, the same text without a `String` of its own.
    pub fn write_record_key(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.entity.as_bytes());
        buf.push(b':');
        buf.extend_from_slice(self.key.as_bytes());
    }

    /// [`Self::encode`] appended to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        // In-memory serialisation of plain data cannot fail.
        serde_json::to_writer(buf, self).expect("in-memory JSON serialisation");
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &'a [u8]) -> Result<Self, InternalError> {
        let change: InternalChange<'a> =
            serde_json::from_slice(bytes).map_err(InternalError::Json)?;
        if change.v != FORMAT_VERSION {
            return Err(InternalError::Version(change.v));
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::{Decimal, FieldValue};
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            Just(FieldValue::Null),
            any::<bool>().prop_map(FieldValue::Bool),
            any::<i64>().prop_map(FieldValue::Int),
            (any::<i64>(), 0u32..12).prop_map(|(u, scale)| FieldValue::Decimal(Decimal {
                unscaled: i128::from(u),
                scale
            })),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(FieldValue::Float),
            ".{0,20}".prop_map(FieldValue::Text),
            "-?[1-9][0-9]{38,45}(\\.[0-9]{0,9}[1-9])?".prop_map(FieldValue::WideDecimal),
        ]
    }

    proptest! {
        /// What stage 1 writes, stage 2 reads back unchanged, exact values included.
        #[test]
        fn internal_records_round_trip(values in proptest::collection::vec(arb_value(), 0..6), lsn in any::<u64>(), ts in any::<i64>()) {
            let change = InternalChange {
                v: FORMAT_VERSION,
                entity: "product".into(),
                key: r#"["SKU-1"]"#.into(),
                system: "shop".into(),
                kind: ChangeKind::Upsert,
                ts_ms: ts,
                ts_us: None,
                snapshot: false,
                position: Position::Postgres([lsn / 2, lsn]),
                fields: values.iter().enumerate().map(|(i, v)| (Cow::Owned(format!("f{i}")), FieldRef::from(v))).collect(),
                context: (lsn % 2 == 0).then(|| Cow::Owned(format!(r#"{{"erp":{ts}}}"#))),
                types: Cow::Borrowed(&[]),
                origin: Origin { topic: "shop.public.items".into(), partition: 0, offset: 17 },
            };
            let bytes = change.encode();
            let back = InternalChange::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &change);
            let restored: Vec<FieldValue> = back.fields.into_iter().map(|(_, t)| FieldValue::from(t)).collect();
            prop_assert_eq!(restored, values);
            prop_assert_eq!(SourcePosition::from(back.position), SourcePosition::Postgres { commit_lsn: lsn / 2, lsn });
        }
    }

    #[test]
    fn unknown_versions_and_bad_decimals_are_refused() {
        let mut bytes = String::from_utf8(
            InternalChange {
                v: FORMAT_VERSION,
                entity: "e".into(),
                key: "[1]".into(),
                system: "s".into(),
                kind: ChangeKind::Delete,
                ts_ms: 1,
                ts_us: None,
                snapshot: false,
                position: Position::Unknown,
                fields: vec![],
                context: None,
                types: Cow::Borrowed(&[]),
                origin: Origin {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                },
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(
            InternalChange::decode(bytes.as_bytes())
                .unwrap()
                .record_key(),
            "e:[1]"
        );
        bytes = bytes.replacen(r#""v":1"#, r#""v":9"#, 1);
        assert!(InternalChange::decode(bytes.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        // A decimal is its exact text in JSON, and nothing else passes for one.
        let decimal: FieldRef<'_> = serde_json::from_str(r#"{"decimal":"4.950"}"#).unwrap();
        assert_eq!(decimal, FieldRef::Decimal(Decimal::parse("4.950").unwrap()));
        assert_eq!(
            serde_json::to_string(&decimal).unwrap(),
            r#"{"decimal":"4.950"}"#
        );
        assert!(serde_json::from_str::<FieldRef<'_>>(r#"{"decimal":"1,5"}"#).is_err());
    }
}
