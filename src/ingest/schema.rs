//! The Kafka Connect schema that the JSON converter sends with every record when
//! `schemas.enable=true`, reduced to what decoding needs: the declared type of each column.
//!
//! A topic's schema repeats verbatim in every record and changes only with the table, so
//! [`SchemaCache`] parses each distinct schema text once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::model::value::{ColumnType, Semantic};

/// Column types of a row struct, in the schema's field order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RowSchema {
    pub columns: Vec<(String, ColumnType)>,
}

impl RowSchema {
    /// The declared type of `column`, looked up from `hint` on (rows list their columns in
    /// schema order, so the hint is almost always the answer).
    pub fn column_type(&self, column: &str, hint: usize) -> Option<&ColumnType> {
        if let Some((name, t)) = self.columns.get(hint) {
            if name == column {
                return Some(t);
            }
        }
        self.columns
            .iter()
            .find(|(n, _)| n == column)
            .map(|(_, t)| t)
    }
}

/// What a record's value schema declares, by its shape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ValueSchema {
    /// The row struct: `before`/`after` of an envelope, or the flattened row itself.
    pub row: RowSchema,
}

#[derive(Deserialize)]
struct ConnectSchema<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    field: Option<Cow<'a, str>>,
    #[serde(default)]
    fields: Vec<ConnectSchema<'a>>,
    #[serde(borrow, default)]
    parameters: Option<HashMap<Cow<'a, str>, Cow<'a, str>>>,
}

fn column_type(schema: &ConnectSchema<'_>) -> ColumnType {
    connect_column_type(&schema.kind, schema.name.as_deref(), |name| {
        schema.parameters.as_ref()?.get(name)?.parse().ok()
    })
}

/// A Connect schema's type (`int32`, `struct`, …), name and numeric parameters → the column
/// type harmony reads its values as. Shared by the JSON converter's schemas and the Avro
/// converter's (which carry the same in `connect.name` and `connect.parameters`).
pub(crate) fn connect_column_type(
    kind: &str,
    name: Option<&str>,
    parameter: impl Fn(&str) -> Option<u32>,
) -> ColumnType {
    if name == Some("io.debezium.data.Bits") {
        return ColumnType::Bits {
            length: parameter("length"),
        };
    }
    if let Some(semantic) = name.and_then(Semantic::from_name) {
        return ColumnType::Semantic(semantic);
    }
    match (kind, name) {
        (_, Some("org.apache.kafka.connect.data.Decimal")) => ColumnType::Decimal {
            scale: parameter("scale").unwrap_or(0),
        },
        (_, Some("io.debezium.data.VariableScaleDecimal")) => ColumnType::VariableScaleDecimal,
        ("int8" | "int16" | "int32" | "int64", _) => ColumnType::Integer,
        // The JSON converter names Connect's FLOAT32 and FLOAT64 `float` and `double`.
        ("float" | "double" | "float32" | "float64", _) => ColumnType::Float,
        ("boolean", _) => ColumnType::Boolean,
        ("string", _) => ColumnType::String,
        ("bytes", _) => ColumnType::Bytes,
        _ => ColumnType::Composite,
    }
}

fn row_schema(fields: &[ConnectSchema<'_>]) -> RowSchema {
    RowSchema {
        columns: fields
            .iter()
            .map(|f| {
                (
                    f.field.as_deref().unwrap_or_default().to_owned(),
                    column_type(f),
                )
            })
            .collect(),
    }
}

/// Reads a value schema: an envelope's (whose `after`, or else `before`, struct is the row) or
/// a flattened row's.
pub fn parse_value_schema(text: &str) -> Result<ValueSchema, serde_json::Error> {
    let schema: ConnectSchema<'_> = serde_json::from_str(text)?;
    let image = schema
        .fields
        .iter()
        .find(|f| f.field.as_deref() == Some("after"))
        .or_else(|| {
            schema
                .fields
                .iter()
                .find(|f| f.field.as_deref() == Some("before"))
        });
    let is_envelope = image.is_some()
        && schema
            .fields
            .iter()
            .any(|f| f.field.as_deref() == Some("op"));
    let row = match image {
        Some(image) if is_envelope => row_schema(&image.fields),
        _ => row_schema(&schema.fields),
    };
    Ok(ValueSchema { row })
}

/// Parsed schemas by their text. Looked up by length, then compared byte for byte: hashing a
/// 5 KB schema costs more than comparing it, and distinct schemas of one pipeline rarely share
/// a length. Bounded: a producer that sends a new schema with every record would otherwise
/// grow it without end.
#[derive(Debug, Default)]
pub struct SchemaCache {
    by_length: HashMap<usize, Vec<CachedSchema>>,
    entries: usize,
}

/// A schema's text and what it parsed to.
type CachedSchema = (Box<str>, Arc<ValueSchema>);

const MAX_CACHED_SCHEMAS: usize = 1024;

impl SchemaCache {
    pub fn get_or_parse(&mut self, text: &str) -> Result<Arc<ValueSchema>, serde_json::Error> {
        if let Some(candidates) = self.by_length.get(&text.len()) {
            if let Some((_, schema)) = candidates.iter().find(|(t, _)| t.as_ref() == text) {
                return Ok(Arc::clone(schema));
            }
        }
        let schema = Arc::new(parse_value_schema(text)?);
        if self.entries >= MAX_CACHED_SCHEMAS {
            self.by_length.clear();
            self.entries = 0;
        }
        self.by_length
            .entry(text.len())
            .or_default()
            .push((text.into(), Arc::clone(&schema)));
        self.entries += 1;
        Ok(schema)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &str = r#"{"type":"struct","fields":[{"type":"struct","fields":[{"type":"string","optional":false,"field":"sku"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"},{"type":"int32","optional":false,"field":"quantity"},{"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],"optional":true,"name":"io.debezium.data.VariableScaleDecimal","field":"ratio"}],"optional":true,"name":"erp.public.products.Value","field":"before"},{"type":"struct","fields":[{"type":"string","optional":false,"field":"sku"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"},{"type":"int32","optional":false,"field":"quantity"},{"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],"optional":true,"name":"io.debezium.data.VariableScaleDecimal","field":"ratio"}],"optional":true,"name":"erp.public.products.Value","field":"after"},{"type":"string","optional":false,"field":"op"}],"optional":false,"name":"erp.public.products.Envelope","version":2}"#;

    #[test]
    fn envelope_schema_yields_the_row_columns() {
        let schema = parse_value_schema(ENVELOPE).unwrap();
        assert_eq!(
            schema.row.columns,
            vec![
                ("sku".to_owned(), ColumnType::String),
                ("price".to_owned(), ColumnType::Decimal { scale: 2 }),
                ("quantity".to_owned(), ColumnType::Integer),
                ("ratio".to_owned(), ColumnType::VariableScaleDecimal),
            ]
        );
        assert_eq!(
            schema.row.column_type("quantity", 2),
            Some(&ColumnType::Integer)
        );
        assert_eq!(
            schema.row.column_type("quantity", 0),
            Some(&ColumnType::Integer)
        );
        assert_eq!(schema.row.column_type("nope", 0), None);
    }

    /// The columns of `every_type` (scripts/sql/fixtures.sql) as Debezium 3.6's Postgres
    /// connector declared them in a capture, semantic names and all.
    #[test]
    fn semantic_names_are_read_into_semantic_types() {
        const EVERY_TYPE: &str = r#"{"type":"struct","fields":[{"type":"int32","optional":true,"field":"id"},{"type":"int16","optional":true,"field":"small"},{"type":"bytes","optional":true,"field":"money_col","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2"}},{"type":"float","optional":true,"field":"real_col"},{"type":"int32","optional":true,"field":"day","name":"io.debezium.time.Date"},{"type":"int32","optional":true,"field":"clock","name":"io.debezium.time.Time"},{"type":"int64","optional":true,"field":"clock_us","name":"io.debezium.time.MicroTime"},{"type":"string","optional":true,"field":"clock_tz","name":"io.debezium.time.ZonedTime"},{"type":"int64","optional":true,"field":"moment_ms","name":"io.debezium.time.Timestamp"},{"type":"int64","optional":true,"field":"moment_us","name":"io.debezium.time.MicroTimestamp"},{"type":"string","optional":true,"field":"moment_tz","name":"io.debezium.time.ZonedTimestamp"},{"type":"int64","optional":true,"field":"span","name":"io.debezium.time.MicroDuration"},{"type":"string","optional":true,"field":"ident","name":"io.debezium.data.Uuid"},{"type":"string","optional":true,"field":"doc_json","name":"io.debezium.data.Json"},{"type":"bytes","optional":true,"field":"raw"},{"type":"string","optional":true,"field":"state","name":"io.debezium.data.Enum","parameters":{"allowed":"calm,busy"}},{"type":"bytes","optional":true,"field":"flags","name":"io.debezium.data.Bits","parameters":{"length":"8"}},{"type":"array","optional":true,"field":"ints","items":{"type":"int32","optional":true}},{"type":"string","optional":true,"field":"address"},{"type":"string","optional":true,"field":"markup","name":"io.debezium.data.Xml"}],"optional":false,"name":"fx_schema.public.every_type.Value"}"#;
        let schema = parse_value_schema(EVERY_TYPE).unwrap();
        let of = |column| schema.row.column_type(column, 0).cloned();
        let semantic = |s| Some(ColumnType::Semantic(s));
        assert_eq!(of("small"), Some(ColumnType::Integer));
        assert_eq!(of("money_col"), Some(ColumnType::Decimal { scale: 2 }));
        assert_eq!(of("day"), semantic(Semantic::Date));
        assert_eq!(of("clock"), semantic(Semantic::TimeMillis));
        assert_eq!(of("clock_us"), semantic(Semantic::TimeMicros));
        assert_eq!(of("clock_tz"), semantic(Semantic::ZonedTime));
        assert_eq!(of("moment_ms"), semantic(Semantic::TimestampMillis));
        assert_eq!(of("moment_us"), semantic(Semantic::TimestampMicros));
        assert_eq!(of("moment_tz"), semantic(Semantic::ZonedTimestamp));
        assert_eq!(of("span"), semantic(Semantic::DurationMicros));
        assert_eq!(of("ident"), semantic(Semantic::Uuid));
        assert_eq!(of("doc_json"), semantic(Semantic::Json));
        assert_eq!(of("raw"), Some(ColumnType::Bytes));
        assert_eq!(of("state"), semantic(Semantic::Enum));
        assert_eq!(of("flags"), Some(ColumnType::Bits { length: Some(8) }));
        assert_eq!(of("ints"), Some(ColumnType::Composite));
        assert_eq!(of("address"), Some(ColumnType::String));
        assert_eq!(of("markup"), semantic(Semantic::Xml));
        // Written back under Debezium's own name.
        for s in Semantic::ALL {
            assert_eq!(Semantic::from_name(s.name()), Some(s));
        }
        assert_eq!(
            Semantic::from_name("org.apache.kafka.connect.data.Timestamp"),
            Some(Semantic::TimestampMillis)
        );
    }

    #[test]
    fn flattened_row_schema_is_the_row() {
        let flat = r#"{"type":"struct","fields":[{"type":"int64","field":"id"},{"type":"string","field":"__op"}],"name":"x.Value"}"#;
        let schema = parse_value_schema(flat).unwrap();
        assert_eq!(
            schema.row.columns[0],
            ("id".to_owned(), ColumnType::Integer)
        );
    }

    #[test]
    fn cache_parses_each_schema_once() {
        let mut cache = SchemaCache::default();
        let a = cache.get_or_parse(ENVELOPE).unwrap();
        let b = cache.get_or_parse(ENVELOPE).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
    }
}
