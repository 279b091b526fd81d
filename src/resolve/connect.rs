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

use crate::model::value::FieldValue;
use crate::model::value::{wide_decimal_parts, Decimal};
use crate::resolve::jsontext::{self, Members};

/// One row column: its schema into `schema`'s field list, its value into `image`, decided
/// together because a JSON array's shape decides both.
pub fn field(schema: &mut Members, image: &mut Members, column: &str, value: &FieldValue) {
    let items = match value {
        FieldValue::Json(text) => array_items_type(text),
        _ => None,
    };
    let mut field = Members::object(schema.item());
    match (value, items) {
        // A set (`merge`), or any array: a Connect array, which sinks write to an array
        // column (Postgres `text[]`, `int[]`).
        (FieldValue::Json(_), Some(items)) => {
            jsontext::string(field.key("type"), "array");
            let mut item = Members::object(field.key("items"));
            jsontext::string(item.key("type"), items);
            jsontext::raw(item.key("optional"), "false");
            item.end();
        }
        (FieldValue::Json(_), None) => {
            jsontext::string(field.key("type"), "string");
            jsontext::string(field.key("name"), "io.debezium.data.Json");
            jsontext::raw(field.key("version"), "1");
        }
        (FieldValue::Decimal(d), _) => decimal_field(&mut field, d.scale),
        (FieldValue::WideDecimal(t), _) => decimal_field(
            &mut field,
            wide_decimal_parts(t).map_or(0, |(_, scale)| scale),
        ),
        // No value, no type: a null string binds to any column type.
        (FieldValue::Null | FieldValue::Text(_), _) => {
            jsontext::string(field.key("type"), "string")
        }
        (FieldValue::Bool(_), _) => jsontext::string(field.key("type"), "boolean"),
        (FieldValue::Int(_), _) => jsontext::string(field.key("type"), "int64"),
        (FieldValue::Float(_), _) => jsontext::string(field.key("type"), "double"),
    }
    jsontext::raw(field.key("optional"), "true");
    jsontext::string(field.key("field"), column);
    field.end();

    payload(image.key(column), value, items.is_some());
}

/// Connect's `Decimal` logical type at `scale`.
fn decimal_field(field: &mut Members<'_>, scale: u32) {
    jsontext::string(field.key("type"), "bytes");
    jsontext::string(field.key("name"), "org.apache.kafka.connect.data.Decimal");
    jsontext::raw(field.key("version"), "1");
    let mut parameters = Members::object(field.key("parameters"));
    let key = parameters.key("scale");
    key.push(b'"');
    jsontext::uint(key, scale.into());
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

/// `value` as [`field`] declares it: a JSON `array` as itself, any other JSON as its text.
pub fn payload(out: &mut Vec<u8>, value: &FieldValue, array: bool) {
    match value {
        FieldValue::Json(text) if array => jsontext::raw(out, text.trim()),
        FieldValue::Null => jsontext::raw(out, "null"),
        FieldValue::Bool(b) => jsontext::raw(out, if *b { "true" } else { "false" }),
        FieldValue::Int(i) => jsontext::int(out, *i),
        FieldValue::Float(f) => jsontext::float(out, *f),
        FieldValue::Decimal(d) => {
            let mut buffer = [0; DECIMAL_BASE64];
            out.push(b'"');
            out.extend_from_slice(decimal_bytes(d, &mut buffer));
            out.push(b'"');
        }
        FieldValue::WideDecimal(t) => {
            use base64::Engine;
            let bytes = wide_decimal_parts(t)
                .map(|(unscaled, _)| unscaled.to_signed_bytes_be())
                .unwrap_or_default();
            jsontext::string(
                out,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        FieldValue::Text(t) | FieldValue::Json(t) => jsontext::string(out, t),
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

/// One key column (canonical keys are strings or integers), as `value` is JSON text: its
/// schema into `schema`'s field list.
pub fn key_field(schema: &mut Members, column: &str, value: &str) {
    let kind = match value.as_bytes().first() {
        Some(b'-' | b'0'..=b'9')
            if value.parse::<i64>().is_ok() || value.parse::<u64>().is_ok() =>
        {
            "int64"
        }
        Some(b'-' | b'0'..=b'9') => "double",
        Some(b't' | b'f') => "boolean",
        _ => "string",
    };
    let mut field = Members::object(schema.item());
    jsontext::string(field.key("type"), kind);
    jsontext::raw(field.key("optional"), "false");
    jsontext::string(field.key("field"), column);
    field.end();
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

    /// The schema and the payload `field` writes for one column.
    fn written(column: &str, value: &FieldValue) -> (Json, Json) {
        let (mut schema, mut image) = (Vec::new(), Vec::new());
        let mut fields = Members::array(&mut schema);
        let mut row = Members::object(&mut image);
        field(&mut fields, &mut row, column, value);
        fields.end();
        row.end();
        let schema: Json = serde_json::from_slice(&schema).unwrap();
        let image: Json = serde_json::from_slice(&image).unwrap();
        (schema[0].clone(), image[column].clone())
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
            let mut schema = Vec::new();
            let mut fields = Members::array(&mut schema);
            key_field(&mut fields, "id", value);
            fields.end();
            serde_json::from_slice::<Json>(&schema).unwrap()[0]["type"].clone()
        };
        assert_eq!(key_type("7"), json!("int64"));
        assert_eq!(key_type("18446744073709551615"), json!("int64"));
        assert_eq!(key_type("7.5"), json!("double"));
        assert_eq!(key_type(r#""A""#), json!("string"));
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
