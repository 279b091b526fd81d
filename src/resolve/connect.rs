//! Kafka Connect's JSON converter format (`JsonConverter` with `schemas.enable=true`): each
//! key and value as `{"schema": …, "payload": …}`. It is what Debezium's connectors emit by
//! default and what its JDBC sink needs: without a schema the sink cannot bind a column.
//!
//! Types come from the values harmony holds, which keep the type their source had: integers
//! as `int64`, exact decimals as Connect's `Decimal` logical type (scale in the schema, the
//! unscaled value as big-endian two's complement bytes in base64, the converter's default
//! `decimal.format`), documents as Debezium's `io.debezium.data.Json`.

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value as Json};

use num_bigint::BigInt;

use crate::model::temporal::{Date, TimeOfDay, Timestamp, Unit, FINER};
use crate::model::value::{wide_decimal_parts, ColumnType, Decimal, FieldRef, Semantic, Temporal};
use crate::resolve::jsontext::{self, Members};

/// Why a value cannot go to a target's column: converting it would change it (a microsecond
/// into a `datetime(3)`, three decimal places into `numeric(10, 2)`), or it is not that kind of
/// value at all. Never a silent truncation (ARCHITECTURE.md §2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{value}` cannot be written exactly as {target}: {reason}")]
pub struct Unrepresentable {
    pub value: String,
    pub target: ColumnType,
    pub reason: &'static str,
}

/// The type a value goes out as where its target column's type is not known (a target that is
/// not also a source, before its type is declared or captured): its own, exactly.
pub fn own_type(value: &FieldRef<'_>) -> ColumnType {
    match value {
        FieldRef::Null | FieldRef::Text(_) => ColumnType::String,
        FieldRef::Bool(_) => ColumnType::Boolean,
        FieldRef::Int(_) => ColumnType::Integer,
        FieldRef::Float(_) => ColumnType::Float,
        FieldRef::Decimal(d) => ColumnType::Decimal { scale: d.scale },
        FieldRef::WideDecimal(t) => ColumnType::Decimal {
            scale: wide_decimal_parts(t).map_or(0, |(_, scale)| scale),
        },
        FieldRef::Json(_) => ColumnType::Composite,
        FieldRef::Bytes(_) => ColumnType::Bytes,
        FieldRef::Date(_) => ColumnType::Semantic(Semantic::Date),
        FieldRef::Time(t) if t.count(Unit::Micros).is_some() => {
            ColumnType::Semantic(Semantic::TimeMicros)
        }
        FieldRef::Time(_) => ColumnType::Semantic(Semantic::TimeNanos),
        // An instant with an offset of any precision: no reading of it loses anything.
        FieldRef::Timestamp(_) => ColumnType::Semantic(Semantic::ZonedTimestamp),
    }
}

/// One row column: its schema into `schema`'s field list, its value into `image`, as the
/// target column's type says (`target`), or as the value's own where the type is not known.
/// The schema depends on the type alone (and for a JSON column on whether the value is an
/// array), so it does not change from record to record, and a null is typed.
pub fn field(
    schema: &mut Members,
    image: &mut Members,
    column: &str,
    value: &FieldRef<'_>,
    target: Option<&ColumnType>,
    optional: bool,
) -> Result<(), Unrepresentable> {
    let own;
    let target = match target {
        Some(target) => target,
        None => {
            own = own_type(value);
            &own
        }
    };
    let items = match (target, value) {
        (ColumnType::Composite, FieldRef::Json(text)) => array_items_type(text),
        _ => None,
    };
    let mut field = Members::object(schema.item());
    field_type(&mut field, target, value, items);
    jsontext::raw(
        field.key("optional"),
        if optional { "true" } else { "false" },
    );
    jsontext::string(field.key("field"), column);
    field.end();
    payload(image.key(column), value, target, items.is_some())
}

/// A column's Connect type, name and parameters.
fn field_type(
    field: &mut Members<'_>,
    target: &ColumnType,
    value: &FieldRef<'_>,
    items: Option<&str>,
) {
    let plain = match target {
        ColumnType::Boolean => "boolean",
        ColumnType::Integer => "int64",
        ColumnType::Float => "double",
        ColumnType::String => "string",
        ColumnType::Bytes => "bytes",
        ColumnType::Decimal { scale } => return decimal_field(field, *scale),
        ColumnType::VariableScaleDecimal => {
            jsontext::string(field.key("type"), "struct");
            jsontext::string(field.key("name"), "io.debezium.data.VariableScaleDecimal");
            jsontext::raw(
                field.key("fields"),
                r#"[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}]"#,
            );
            return;
        }
        // A set (`merge`), or any array: a Connect array, which sinks write to an array
        // column (Postgres `text[]`, `int[]`).
        ColumnType::Composite => match (items, value) {
            (Some(items), _) => {
                jsontext::string(field.key("type"), "array");
                let mut item = Members::object(field.key("items"));
                jsontext::string(item.key("type"), items);
                jsontext::raw(item.key("optional"), "false");
                item.end();
                return;
            }
            (None, FieldRef::Json(_)) => {
                semantic_field(field, Semantic::Json);
                return;
            }
            // No value to go by: a null string binds to any column type.
            (None, _) => "string",
        },
        ColumnType::Semantic(semantic) => return semantic_field(field, *semantic),
        ColumnType::Bits { length } => {
            jsontext::string(field.key("type"), "bytes");
            jsontext::string(field.key("name"), "io.debezium.data.Bits");
            jsontext::raw(field.key("version"), "1");
            if let Some(length) = length {
                numeric_parameter(field, "length", *length);
            }
            return;
        }
    };
    jsontext::string(field.key("type"), plain);
}

fn semantic_field(field: &mut Members<'_>, semantic: Semantic) {
    jsontext::string(field.key("type"), semantic.carrier());
    jsontext::string(field.key("name"), semantic.name());
    jsontext::raw(field.key("version"), "1");
}

/// Connect's `Decimal` logical type at `scale`.
fn decimal_field(field: &mut Members<'_>, scale: u32) {
    jsontext::string(field.key("type"), "bytes");
    jsontext::string(field.key("name"), "org.apache.kafka.connect.data.Decimal");
    jsontext::raw(field.key("version"), "1");
    numeric_parameter(field, "scale", scale);
}

/// A schema's `parameters` holding one number, as Connect writes it: as a string.
fn numeric_parameter(field: &mut Members<'_>, name: &str, value: u32) {
    let mut parameters = Members::object(field.key("parameters"));
    let key = parameters.key(name);
    key.push(b'"');
    jsontext::uint(key, value.into());
    key.push(b'"');
    parameters.end();
}

/// A string column's schema: harmony's own columns (the exact echo mode's version).
pub fn string_field(schema: &mut Members, column: &str) {
    let mut field = Members::object(schema.item());
    jsontext::string(field.key("type"), "string");
    jsontext::raw(field.key("optional"), "true");
    jsontext::string(field.key("field"), column);
    field.end();
}

/// `value` converted to `target`'s form, exactly, as [`field`] declares it.
fn payload(
    out: &mut Vec<u8>,
    value: &FieldRef<'_>,
    target: &ColumnType,
    array: bool,
) -> Result<(), Unrepresentable> {
    let refuse = |reason| Unrepresentable {
        value: describe(value),
        target: target.clone(),
        reason,
    };
    match (target, value) {
        (_, FieldRef::Null) => jsontext::raw(out, "null"),
        (ColumnType::Semantic(semantic), _) if semantic.temporal().is_some() => {
            temporal_payload(out, value, *semantic).map_err(refuse)?
        }
        (ColumnType::Semantic(Semantic::Year), FieldRef::Int(i)) => jsontext::int(out, *i),
        (ColumnType::Semantic(Semantic::Year), _) => return Err(refuse("not a year")),
        (ColumnType::Semantic(Semantic::DurationMicros), FieldRef::Int(i)) => {
            jsontext::int(out, *i)
        }
        (ColumnType::Decimal { scale }, _) => {
            match value.as_decimal().map(|d| d.rescaled(*scale)) {
                // Within 38 digits, no big integer: the common case allocates nothing.
                Some(Ok(Some(d))) => decimal_base64(out, &d),
                Some(Err(_)) => return Err(refuse(MORE_PLACES)),
                _ => {
                    let (unscaled, _) = rescaled(value, *scale).map_err(refuse)?;
                    bytes_base64(out, &unscaled);
                }
            }
        }
        // At the value's own scale; within 38 digits without a big integer.
        (ColumnType::VariableScaleDecimal, _) => {
            let mut members = Members::object(out);
            match value.as_decimal() {
                Some(d) => {
                    jsontext::uint(members.key("scale"), d.scale.into());
                    decimal_base64(members.key("value"), &d);
                }
                None => {
                    let (unscaled, scale) =
                        value.as_wide().ok_or_else(|| refuse("not a number"))?;
                    jsontext::uint(members.key("scale"), scale.into());
                    bytes_base64(members.key("value"), &unscaled);
                }
            }
            members.end();
        }
        (ColumnType::Integer, FieldRef::Int(i)) => jsontext::int(out, *i),
        (ColumnType::Integer, _) => {
            let n = match value.as_decimal().map(|d| d.rescaled(0)) {
                Some(Ok(Some(d))) => i64::try_from(d.unscaled).ok(),
                Some(Err(_)) => return Err(refuse(MORE_PLACES)),
                _ => i64::try_from(&rescaled(value, 0).map_err(refuse)?.0).ok(),
            };
            jsontext::int(out, n.ok_or_else(|| refuse("beyond a 64-bit integer"))?);
        }
        // Float columns are approximate by nature: the nearest double.
        (ColumnType::Float, FieldRef::Float(f)) => jsontext::float(out, *f),
        (ColumnType::Float, _) => {
            let f = match value {
                FieldRef::WideDecimal(t) => t.parse().ok(),
                other => other.as_decimal().map(Decimal::to_f64),
            };
            jsontext::float(out, f.ok_or_else(|| refuse("not a number"))?);
        }
        (ColumnType::Boolean, FieldRef::Bool(b)) => {
            jsontext::raw(out, if *b { "true" } else { "false" })
        }
        (ColumnType::Boolean, _) => return Err(refuse("not a boolean")),
        (ColumnType::Composite, FieldRef::Json(text)) if array => jsontext::raw(out, text.trim()),
        (ColumnType::Bits { length }, FieldRef::Bytes(base64)) => {
            if length.is_some_and(|bits| base64_len(base64) > bits.div_ceil(8) as usize) {
                return Err(refuse("more bits than the column holds"));
            }
            jsontext::string(out, base64);
        }
        (ColumnType::Bits { .. }, _) => return Err(refuse("not bits")),
        (ColumnType::Semantic(Semantic::DurationMicros), _) => {
            return Err(refuse("not a duration in microseconds"))
        }
        // Text of any kind: the value's own text, ISO 8601 for dates and times.
        _ => text_payload(out, value),
    }
    Ok(())
}

/// Whether `value` can go to a column of type `target` exactly; `scratch` is written over.
pub fn check(
    value: &FieldRef<'_>,
    target: &ColumnType,
    scratch: &mut Vec<u8>,
) -> Result<(), Unrepresentable> {
    scratch.clear();
    let items = match (target, value) {
        (ColumnType::Composite, FieldRef::Json(text)) => array_items_type(text),
        _ => None,
    };
    payload(scratch, value, target, items.is_some())
}

/// A value as text: strings as they are, numbers as their exact digits, dates and times in
/// ISO 8601, booleans as `true`/`false`.
fn text_payload(out: &mut Vec<u8>, value: &FieldRef<'_>) {
    match value {
        FieldRef::Text(t) | FieldRef::Json(t) | FieldRef::WideDecimal(t) | FieldRef::Bytes(t) => {
            jsontext::string(out, t)
        }
        FieldRef::Null => jsontext::raw(out, "null"),
        FieldRef::Bool(b) => jsontext::string(out, if *b { "true" } else { "false" }),
        FieldRef::Int(i) => iso_text(out, i),
        FieldRef::Float(f) => iso_text(out, f),
        FieldRef::Decimal(d) => iso_text(out, d),
        FieldRef::Date(d) => iso_text(out, d),
        FieldRef::Time(t) => iso_text(out, t),
        FieldRef::Timestamp(t) => iso_text(out, t),
    }
}

/// A date, time of day or timestamp in the unit or text its semantic type carries it in.
fn temporal_payload(
    out: &mut Vec<u8>,
    value: &FieldRef<'_>,
    semantic: Semantic,
) -> Result<(), &'static str> {
    let Some(kind) = semantic.temporal() else {
        return Err("not a date or time");
    };
    let parsed;
    let value = match value {
        // Text a schemaless source carried: its ISO reading.
        FieldRef::Text(text) => {
            parsed = match kind {
                Temporal::Date => Date::parse(text).map(FieldRef::Date),
                Temporal::Time(_) => TimeOfDay::parse(text).map(FieldRef::Time),
                Temporal::Timestamp(_) | Temporal::Zoned => {
                    Timestamp::parse(text).map(FieldRef::Timestamp)
                }
            }
            .ok_or("not ISO 8601 text")?;
            &parsed
        }
        other => other,
    };
    match (kind, value) {
        (Temporal::Date, FieldRef::Date(d)) => jsontext::int(out, d.0.into()),
        (Temporal::Date, FieldRef::Timestamp(t)) => {
            let date = t
                .as_date()
                .ok_or("a timestamp past midnight is not a date")?;
            jsontext::int(out, date.0.into());
        }
        (Temporal::Time(unit), FieldRef::Time(t)) => {
            jsontext::int(out, t.count(unit).ok_or(FINER)?);
        }
        (Temporal::Timestamp(unit), FieldRef::Timestamp(t)) => {
            jsontext::int(out, t.count(unit)?);
        }
        (Temporal::Timestamp(unit), FieldRef::Date(d)) => {
            jsontext::int(out, Timestamp::from_date(*d).count(unit)?);
        }
        (Temporal::Zoned, FieldRef::Timestamp(t)) => iso_text(out, t),
        (Temporal::Zoned, FieldRef::Date(d)) => iso_text(out, &Timestamp::from_date(*d)),
        (Temporal::Date, _) => return Err("not a date"),
        (Temporal::Time(_), _) => return Err("not a time of day"),
        (Temporal::Timestamp(_) | Temporal::Zoned, _) => return Err("not a timestamp"),
    }
    Ok(())
}

/// A value's text as a JSON string, written in place: numbers and ISO 8601 text need no
/// escaping.
fn iso_text(out: &mut Vec<u8>, value: &impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = write!(out, "\"{value}\"");
}

/// A decimal within 38 digits as Connect's base64 bytes, a JSON string.
fn decimal_base64(out: &mut Vec<u8>, d: &Decimal) {
    let mut buffer = [0; DECIMAL_BASE64];
    out.push(b'"');
    out.extend_from_slice(decimal_bytes(d, &mut buffer));
    out.push(b'"');
}

const MORE_PLACES: &str = "more decimal places than the column keeps";

/// A number as an unscaled integer at `scale`, if it has no more decimal places.
fn rescaled(value: &FieldRef<'_>, scale: u32) -> Result<(BigInt, u32), &'static str> {
    let (unscaled, own) = value.as_wide().ok_or("not a number")?;
    // Normalized first: `4.50` fits a scale of 1.
    let (mut unscaled, mut own) = (unscaled, own);
    let ten = BigInt::from(10);
    while own > scale && (&unscaled % &ten).sign() == num_bigint::Sign::NoSign {
        unscaled /= &ten;
        own -= 1;
    }
    if own > scale {
        return Err(MORE_PLACES);
    }
    Ok((unscaled * ten.pow(scale - own), scale))
}

/// An unscaled integer in the fewest big-endian two's-complement bytes, base64: what
/// `java.math.BigInteger.toByteArray` gives and Connect's `Decimal.toLogical` reads.
fn bytes_base64(out: &mut Vec<u8>, unscaled: &BigInt) {
    use base64::Engine;
    out.push(b'"');
    let bytes = unscaled.to_signed_bytes_be();
    let mut buffer = [0u8; DECIMAL_BASE64];
    if bytes.len() <= 16 {
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&bytes, &mut buffer)
            .unwrap_or(0);
        out.extend_from_slice(&buffer[..written]);
    } else {
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes(),
        );
    }
    out.push(b'"');
}

/// How many bytes base64 text decodes to.
fn base64_len(text: &str) -> usize {
    let text = text.trim_end_matches('=');
    text.len() * 3 / 4
}

/// A value as an error message shows it.
fn describe(value: &FieldRef<'_>) -> String {
    let mut out = Vec::new();
    text_payload(&mut out, value);
    String::from_utf8_lossy(&out).trim_matches('"').to_owned()
}

/// `value` as schemaless JSON holds it: exact decimals as text, as Debezium's
/// `decimal.handling.mode=string` renders them, dates and times as ISO 8601 text, JSON
/// documents as themselves.
pub fn plain_payload(out: &mut Vec<u8>, value: &FieldRef<'_>) {
    match value {
        FieldRef::Null => jsontext::raw(out, "null"),
        FieldRef::Bool(b) => jsontext::raw(out, if *b { "true" } else { "false" }),
        FieldRef::Int(i) => jsontext::int(out, *i),
        FieldRef::Float(f) => jsontext::float(out, *f),
        FieldRef::Json(text) if serde_json::from_str::<&RawValue>(text).is_ok() => {
            jsontext::raw(out, text.trim())
        }
        other => text_payload(out, other),
    }
}

/// The Connect type of a JSON array's items when they share one (`string`, `int64`,
/// `double`, `boolean`); `None` for anything else, which then travels as JSON text.
fn array_items_type(text: &str) -> Option<&'static str> {
    // Items are classified by their first bytes, without building them.
    let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    let kind = |item: &&RawValue| {
        let text = item.get();
        match text.as_bytes().first()? {
            b'"' => Some("string"),
            b't' | b'f' => Some("boolean"),
            b'-' | b'0'..=b'9' if text.contains(['.', 'e', 'E']) => Some("double"),
            b'-' | b'0'..=b'9' => text.parse::<i64>().ok().map(|_| "int64").or(Some("double")),
            _ => None,
        }
    };
    let mut kinds = items.iter().map(kind);
    // An empty array has no item type to go by; strings are the common case of sets.
    let first = kinds.next().unwrap_or(Some("string"))?;
    kinds.all(|k| k == Some(first)).then_some(first)
}

/// Base64 of at most 16 bytes.
const DECIMAL_BASE64: usize = 24;

/// The unscaled value in the fewest big-endian two's-complement bytes, base64: what
/// `java.math.BigInteger.toByteArray` gives and Connect's `Decimal.toLogical` reads.
fn decimal_bytes<'b>(d: &Decimal, buffer: &'b mut [u8; DECIMAL_BASE64]) -> &'b [u8] {
    let bytes = d.unscaled.to_be_bytes();
    let negative = d.unscaled < 0;
    let pad = if negative { 0xff } else { 0x00 };
    // Drop leading sign-extension bytes while the next byte still carries the sign.
    let mut start = 0;
    while start < bytes.len() - 1
        && bytes[start] == pad
        && (bytes[start + 1] & 0x80 != 0) == negative
    {
        start += 1;
    }
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(&bytes[start..], buffer)
        .unwrap_or(0);
    &buffer[..written]
}

/// A canonical key's value (JSON text: a string, or a number) as a field value.
pub fn key_value(text: &str) -> FieldRef<'_> {
    let text = text.trim();
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len().saturating_sub(1).max(1)];
            if inner.contains('\\') {
                serde_json::from_str::<String>(text)
                    .map_or(FieldRef::Null, |s| FieldRef::Text(s.into()))
            } else {
                FieldRef::Text(inner.into())
            }
        }
        Some(b'-' | b'0'..=b'9') => text
            .parse::<i64>()
            .map(FieldRef::Int)
            .ok()
            .or_else(|| Decimal::parse(text).map(FieldRef::Decimal))
            .unwrap_or_else(|| FieldRef::WideDecimal(text.into())),
        Some(b't') => FieldRef::Bool(true),
        Some(b'f') => FieldRef::Bool(false),
        _ => FieldRef::Null,
    }
}

/// A struct schema from its fields' schemas.
pub fn struct_schema(name: Option<&str>, optional: bool, fields: Vec<Json>) -> Json {
    let mut schema = Map::new();
    schema.insert("type".into(), "struct".into());
    schema.insert("fields".into(), Json::Array(fields));
    schema.insert("optional".into(), Json::Bool(optional));
    if let Some(name) = name {
        schema.insert("name".into(), name.into());
    }
    Json::Object(schema)
}

/// A field schema renamed: the same struct schema under another field name.
fn named_field(mut schema: Json, field: &str) -> Json {
    if let Json::Object(map) = &mut schema {
        map.insert("field".into(), Json::String(field.to_owned()));
    }
    schema
}

/// The schema of harmony's change event on `topic`: Debezium's envelope (`before`, `after`,
/// `op`, `source`, `ts_ms`) plus the `harmony` block, with the row's field lists left empty
/// for [`SchemaText`] to fill. The sink recognises a change event by an `…Envelope` schema
/// name, as Debezium names its own.
pub fn envelope_schema(topic: &str) -> Json {
    let row = struct_schema(Some(&format!("{topic}.Value")), true, Vec::new());
    let required =
        |kind: &str, field: &str| json!({"type": kind, "optional": false, "field": field});
    let source = struct_schema(
        Some("dev.harmony.Source"),
        false,
        ["connector", "name", "db", "table"]
            .iter()
            .map(|f| required("string", f))
            .chain(std::iter::once(required("int64", "ts_ms")))
            .collect(),
    );
    let harmony = struct_schema(
        Some("dev.harmony.Provenance"),
        false,
        vec![
            required("string", "entity"),
            required("string", "key"),
            json!({"type": "map", "keys": {"type": "string", "optional": false},
                   "values": {"type": "int64", "optional": false}, "optional": false, "field": "version"}),
            required("string", "origin"),
            json!({"type": "array", "items": {"type": "string", "optional": false},
                   "optional": false, "field": "conflicts"}),
        ],
    );
    struct_schema(
        Some(&format!("{topic}.Envelope")),
        false,
        vec![
            named_field(row.clone(), "before"),
            named_field(row, "after"),
            required("string", "op"),
            named_field(source, "source"),
            json!({"type": "int64", "optional": true, "field": "ts_ms"}),
            named_field(harmony, "harmony"),
        ],
    )
}

/// The schema of a target topic's keys, its field list left empty for [`SchemaText`].
pub fn key_schema(topic: &str) -> Json {
    struct_schema(Some(&format!("{topic}.Key")), false, Vec::new())
}

/// A schema serialized once per target, around the struct field lists that depend on the
/// record (its columns' types): each empty `"fields":[]` is filled with the same list.
#[derive(Debug, Clone)]
pub struct SchemaText {
    parts: Vec<String>,
}

const EMPTY_FIELDS: &str = r#""fields":[]"#;

impl SchemaText {
    pub fn new(schema: &Json) -> Self {
        let text = schema.to_string();
        Self {
            parts: text.split(EMPTY_FIELDS).map(str::to_owned).collect(),
        }
    }

    /// The converter's envelope `{"schema": …, "payload": …}` around `payload`, with
    /// `fields` (a JSON array of field schemas) in each struct left open.
    pub fn wrap(&self, out: &mut Vec<u8>, fields: &[u8], payload: &[u8]) {
        out.extend_from_slice(br#"{"schema":"#);
        let mut parts = self.parts.iter();
        if let Some(first) = parts.next() {
            out.extend_from_slice(first.as_bytes());
        }
        for part in parts {
            out.extend_from_slice(br#""fields":"#);
            out.extend_from_slice(fields);
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(payload);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::FieldValue;

    fn unscaled_back(text: &str) -> i128 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let pad = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
        let mut full = [pad; 16];
        full[16 - bytes.len()..].copy_from_slice(&bytes);
        i128::from_be_bytes(full)
    }

    fn base64_of(d: &Decimal) -> String {
        let mut buffer = [0; DECIMAL_BASE64];
        String::from_utf8(decimal_bytes(d, &mut buffer).to_vec()).unwrap()
    }

    /// The schema and the payload `field` writes for one column of no known type.
    fn written(column: &str, value: &FieldValue) -> (Json, Json) {
        written_as(column, &FieldRef::from(value), None).unwrap()
    }

    /// The schema and the payload `field` writes for one column of type `target`.
    fn written_as(
        column: &str,
        value: &FieldRef<'_>,
        target: Option<&ColumnType>,
    ) -> Result<(Json, Json), Unrepresentable> {
        let (mut schema, mut image) = (Vec::new(), Vec::new());
        let mut fields = Members::array(&mut schema);
        let mut row = Members::object(&mut image);
        field(&mut fields, &mut row, column, value, target, true)?;
        fields.end();
        row.end();
        let schema: Json = serde_json::from_slice(&schema).unwrap();
        let image: Json = serde_json::from_slice(&image).unwrap();
        Ok((schema[0].clone(), image[column].clone()))
    }

    fn typed(name: &str) -> ColumnType {
        ColumnType::parse(name).unwrap()
    }

    #[test]
    fn a_value_goes_out_in_its_target_columns_form() {
        let moment = Timestamp::parse("2024-02-29T11:34:56.789012Z").unwrap();
        let value = FieldRef::Timestamp(moment);
        // The same instant to Postgres timestamptz, timestamp(6), and MariaDB datetime(3).
        let (schema, payload) = written_as("m", &value, Some(&typed("timestamptz"))).unwrap();
        assert_eq!(schema["name"], "io.debezium.time.ZonedTimestamp");
        assert_eq!(schema["type"], "string");
        assert_eq!(payload, json!("2024-02-29T11:34:56.789012Z"));
        let (schema, payload) = written_as("m", &value, Some(&typed("timestamp_us"))).unwrap();
        assert_eq!(schema["name"], "io.debezium.time.MicroTimestamp");
        assert_eq!(schema["type"], "int64");
        assert_eq!(payload, json!(1_709_206_496_789_012_i64));
        let error = written_as("m", &value, Some(&typed("timestamp_ms"))).unwrap_err();
        assert_eq!(error.reason, FINER, "a microsecond is not dropped silently");
        let millis = FieldRef::Timestamp(Timestamp::parse("2024-02-29T11:34:56.789Z").unwrap());
        let (_, payload) = written_as("m", &millis, Some(&typed("timestamp_ms"))).unwrap();
        assert_eq!(payload, json!(1_709_206_496_789_i64));
        // A null is typed by its column, not by its (absent) value.
        let (schema, payload) =
            written_as("m", &FieldRef::Null, Some(&typed("timestamp_us"))).unwrap();
        assert_eq!(schema["name"], "io.debezium.time.MicroTimestamp");
        assert_eq!(payload, Json::Null);
        // Dates: days; to a timestamp column, midnight; a timestamp past midnight is no date.
        let day = FieldRef::Date(Date::parse("0001-01-01").unwrap());
        let (schema, payload) = written_as("d", &day, Some(&typed("date"))).unwrap();
        assert_eq!(
            (schema["type"].clone(), payload),
            (json!("int32"), json!(-719_162))
        );
        assert!(written_as("d", &value, Some(&typed("date"))).is_err());
        // Times of day in the column's unit.
        let time = FieldRef::Time(TimeOfDay::parse("23:59:59.999").unwrap());
        let (schema, payload) = written_as("t", &time, Some(&typed("time_ms"))).unwrap();
        assert_eq!(
            (schema["type"].clone(), payload),
            (json!("int32"), json!(86_399_999))
        );
        // Decimals at the column's scale, whatever scale the value came with.
        let price = FieldRef::Decimal(Decimal {
            unscaled: 49,
            scale: 1,
        });
        let (schema, payload) = written_as("p", &price, Some(&typed("decimal(2)"))).unwrap();
        assert_eq!(schema["parameters"]["scale"], "2");
        assert_eq!(unscaled_back(payload.as_str().unwrap()), 490);
        let fine = FieldRef::Decimal(Decimal {
            unscaled: 4901,
            scale: 3,
        });
        assert!(written_as("p", &fine, Some(&typed("decimal(2)"))).is_err());
        let (schema, payload) = written_as("p", &fine, Some(&typed("decimal"))).unwrap();
        assert_eq!(schema["name"], "io.debezium.data.VariableScaleDecimal");
        assert_eq!(payload["scale"], 3);
        // A uuid keeps its semantic name, which the JDBC sink binds as `uuid`.
        let id = FieldRef::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into());
        let (schema, payload) = written_as("id", &id, Some(&typed("uuid"))).unwrap();
        assert_eq!(schema["name"], "io.debezium.data.Uuid");
        assert_eq!(payload, json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        // Integers: exact or refused.
        assert!(written_as("n", &price, Some(&typed("int"))).is_err());
        let whole = FieldRef::Decimal(Decimal {
            unscaled: 4200,
            scale: 2,
        });
        assert_eq!(
            written_as("n", &whole, Some(&typed("int"))).unwrap().1,
            json!(42)
        );
        // Bits with their length, which Debezium's JDBC sink binds a `bit(n)` by; no more
        // bytes than the length holds.
        let flags = FieldRef::Bytes("pQ==".into());
        let (schema, payload) = written_as("f", &flags, Some(&typed("bits(8)"))).unwrap();
        assert_eq!(
            (
                schema["name"].clone(),
                schema["parameters"].clone(),
                payload
            ),
            (
                json!("io.debezium.data.Bits"),
                json!({"length": "8"}),
                json!("pQ==")
            )
        );
        let wide = FieldRef::Bytes("pQE=".into());
        assert!(written_as("f", &wide, Some(&typed("bits(8)"))).is_err());
        assert!(written_as("f", &wide, Some(&typed("bits(16)"))).is_ok());
        // Where the column's type is not known, a timestamp goes out with its offset.
        assert_eq!(
            written_as("m", &value, None).unwrap().0["name"],
            "io.debezium.time.ZonedTimestamp"
        );
    }

    #[test]
    fn decimals_are_minimal_twos_complement_like_big_integer() {
        // BigInteger.valueOf(n).toByteArray() for these n, as Connect writes them.
        for (unscaled, expected) in [
            (490, "Aeo="),
            (0, "AA=="),
            (127, "fw=="),
            (128, "AIA="),
            (-1, "/w=="),
            (-128, "gA=="),
            (-129, "/38="),
            (12_900, "MmQ="),
        ] {
            let text = base64_of(&Decimal { unscaled, scale: 2 });
            assert_eq!(text, expected, "{unscaled}");
            assert_eq!(unscaled_back(&text), unscaled);
        }
    }

    proptest::proptest! {
        #[test]
        fn decimal_bytes_round_trip(unscaled in proptest::num::i128::ANY) {
            let text = base64_of(&Decimal { unscaled, scale: 3 });
            proptest::prop_assert_eq!(unscaled_back(&text), unscaled);
        }
    }

    #[test]
    fn field_schemas_carry_the_value_type() {
        let price = FieldValue::Decimal(Decimal {
            unscaled: 490,
            scale: 2,
        });
        assert_eq!(
            written("price", &price),
            (
                json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                       "parameters": {"scale": "2"}, "optional": true, "field": "price"}),
                json!("Aeo=")
            )
        );
        // Beyond 38 digits: the same logical type, the bytes as long as they need to be.
        let text = "-1234567890123456789012345678901234567890.0123456789";
        let (schema, payload) = written("wide", &FieldValue::WideDecimal(text.into()));
        assert_eq!(schema["parameters"], json!({"scale": "10"}));
        assert_eq!(schema["name"], "org.apache.kafka.connect.data.Decimal");
        let raw = serde_json::value::RawValue::from_string(payload.to_string()).unwrap();
        let back = crate::model::value::decode_value(
            &raw,
            Some(&crate::model::value::ColumnType::Decimal { scale: 10 }),
        );
        assert_eq!(
            back.unwrap(),
            crate::model::value::Value::WideDecimal(text.into())
        );
        assert_eq!(
            written("stock", &FieldValue::Int(93)).0["type"],
            json!("int64")
        );
        assert_eq!(written("stock", &FieldValue::Int(93)).1, json!(93));
        assert_eq!(written("f", &FieldValue::Float(f64::NAN)).1, Json::Null);
        assert_eq!(
            written("doc", &FieldValue::Json("{}".into())),
            (
                json!({"type": "string", "name": "io.debezium.data.Json", "version": 1,
                       "optional": true, "field": "doc"}),
                json!("{}")
            )
        );
        let tags = FieldValue::Json(r#" ["new","sale"]"#.into());
        assert_eq!(
            written("tags", &tags),
            (
                json!({"type": "array", "items": {"type": "string", "optional": false},
                       "optional": true, "field": "tags"}),
                json!(["new", "sale"])
            )
        );
        for (array, items) in [
            ("[1,-2]", Some("int64")),
            ("[1.5,2]", None),
            ("[1.5,2e3]", Some("double")),
            ("[18446744073709551615]", Some("double")),
            ("[true,false]", Some("boolean")),
            ("[]", Some("string")),
            ("[null]", None),
            ("[[1]]", None),
            ("{}", None),
            ("[1,", None),
        ] {
            assert_eq!(array_items_type(array), items, "{array}");
        }
        let mixed = FieldValue::Json(r#"[1,"a"]"#.into());
        assert_eq!(
            written("m", &mixed),
            (
                json!({"type": "string", "name": "io.debezium.data.Json", "version": 1,
                       "optional": true, "field": "m"}),
                json!(r#"[1,"a"]"#)
            )
        );
        let key_type = |value: &str| {
            let value = key_value(value);
            written_as("id", &value, None).unwrap().0["type"].clone()
        };
        assert_eq!(key_type("7"), json!("int64"));
        // Beyond 64 bits, and with a fraction: exact decimals.
        assert_eq!(key_type("18446744073709551615"), json!("bytes"));
        assert_eq!(key_type("7.5"), json!("bytes"));
        assert_eq!(key_type(r#""A""#), json!("string"));
        assert_eq!(key_value(r#""a\"b""#), FieldRef::Text("a\"b".into()));
    }

    #[test]
    fn schema_text_fills_each_row_struct() {
        let text = SchemaText::new(&envelope_schema("t"));
        let mut out = Vec::new();
        text.wrap(
            &mut out,
            br#"[{"type":"int64","optional":true,"field":"n"}]"#,
            b"{}",
        );
        let wrapped: Json = serde_json::from_slice(&out).unwrap();
        let fields = &wrapped["schema"]["fields"];
        for (i, name) in ["before", "after"].into_iter().enumerate() {
            assert_eq!(fields[i]["field"], name);
            assert_eq!(fields[i]["name"], "t.Value");
            assert_eq!(fields[i]["fields"][0]["field"], "n");
        }
        assert_eq!(
            fields[3]["fields"].as_array().unwrap().len(),
            5,
            "source untouched"
        );
        assert_eq!(wrapped["payload"], json!({}));
    }
}
