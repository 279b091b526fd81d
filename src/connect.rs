//! Kafka Connect's JSON converter format (`JsonConverter` with `schemas.enable=true`): each
//! key and value as `{"schema": …, "payload": …}`. It is what Debezium's connectors emit by
//! default and what its JDBC sink needs: without a schema the sink cannot bind a column.
//!
//! Types come from the values harmony holds, which keep the type their source had: integers
//! as `int64`, exact decimals as Connect's `Decimal` logical type (scale in the schema, the
//! unscaled value as big-endian two's complement bytes in base64, the converter's default
//! `decimal.format`), documents as Debezium's `io.debezium.data.Json`.

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::engine::FieldValue;
use crate::value::Decimal;

/// The schema of one optional struct field holding `value`.
pub fn field_schema(name: &str, value: &FieldValue) -> Json {
    let mut schema = match value {
        // No value, no type: a null string binds to any column type.
        FieldValue::Null | FieldValue::Text(_) => json!({"type": "string"}),
        FieldValue::Bool(_) => json!({"type": "boolean"}),
        FieldValue::Int(_) => json!({"type": "int64"}),
        FieldValue::Float(_) => json!({"type": "double"}),
        FieldValue::Decimal(d) => decimal_schema(d),
        FieldValue::Json(text) => match array_items_type(text) {
            // A set (`merge`), or any array: a Connect array, which sinks write to an array
            // column (Postgres `text[]`, `int[]`).
            Some(items) => json!({"type": "array", "items": {"type": items, "optional": false}}),
            None => json!({"type": "string", "name": "io.debezium.data.Json", "version": 1}),
        },
    };
    if let Json::Object(map) = &mut schema {
        map.insert("optional".into(), Json::Bool(true));
        map.insert("field".into(), Json::String(name.to_owned()));
    }
    schema
}

fn decimal_schema(d: &Decimal) -> Json {
    json!({
        "type": "bytes",
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": d.scale.to_string()},
    })
}

/// The Connect type of a JSON array's items when they share one (`string`, `int64`,
/// `double`, `boolean`); `None` for anything else, which then travels as JSON text.
fn array_items_type(text: &str) -> Option<&'static str> {
    let Ok(Json::Array(items)) = serde_json::from_str::<Json>(text) else {
        return None;
    };
    let kind = |item: &Json| match item {
        Json::String(_) => Some("string"),
        Json::Number(n) if n.is_i64() => Some("int64"),
        Json::Number(_) => Some("double"),
        Json::Bool(_) => Some("boolean"),
        _ => None,
    };
    let mut kinds = items.iter().map(kind);
    // An empty array has no item type to go by; strings are the common case of sets.
    let first = kinds.next().unwrap_or(Some("string"))?;
    kinds.all(|k| k == Some(first)).then_some(first)
}

/// The payload of `value` as the schema of [`field_schema`] declares it.
pub fn field_payload(value: &FieldValue) -> Json {
    match value {
        FieldValue::Json(text) if array_items_type(text).is_some() => {
            serde_json::from_str(text).unwrap_or(Json::Null)
        }
        FieldValue::Null => Json::Null,
        FieldValue::Bool(b) => Json::Bool(*b),
        FieldValue::Int(i) => Json::from(*i),
        FieldValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        FieldValue::Decimal(d) => Json::String(decimal_bytes(d)),
        FieldValue::Text(t) | FieldValue::Json(t) => Json::String(t.clone()),
    }
}

/// The unscaled value in the fewest big-endian two's-complement bytes, base64: what
/// `java.math.BigInteger.toByteArray` gives and Connect's `Decimal.toLogical` reads.
fn decimal_bytes(d: &Decimal) -> String {
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
    base64::engine::general_purpose::STANDARD.encode(&bytes[start..])
}

/// The schema of a key column from its JSON value (canonical keys are strings or integers).
pub fn key_field_schema(name: &str, value: &Json) -> Json {
    let kind = match value {
        Json::Number(n) if n.is_i64() || n.is_u64() => "int64",
        Json::Number(_) => "double",
        Json::Bool(_) => "boolean",
        _ => "string",
    };
    json!({"type": kind, "optional": false, "field": name})
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

/// The schema of harmony's change event on `topic` whose row has `row_fields`: Debezium's
/// envelope (`before`, `after`, `op`, `source`, `ts_ms`) plus the `harmony` block. The sink
/// recognises a change event by an `…Envelope` schema name, as Debezium names its own.
pub fn envelope_schema(topic: &str, row_fields: Vec<Json>) -> Json {
    let row = struct_schema(Some(&format!("{topic}.Value")), true, row_fields);
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

/// The converter's envelope.
pub fn wrap(schema: Json, payload: Json) -> Json {
    json!({"schema": schema, "payload": payload})
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
            let text = decimal_bytes(&Decimal { unscaled, scale: 2 });
            assert_eq!(text, expected, "{unscaled}");
            assert_eq!(unscaled_back(&text), unscaled);
        }
    }

    proptest::proptest! {
        #[test]
        fn decimal_bytes_round_trip(unscaled in proptest::num::i128::ANY) {
            let text = decimal_bytes(&Decimal { unscaled, scale: 3 });
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
            field_schema("price", &price),
            json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                   "parameters": {"scale": "2"}, "optional": true, "field": "price"})
        );
        assert_eq!(field_payload(&price), json!("Aeo="));
        assert_eq!(
            field_schema("stock", &FieldValue::Int(93))["type"],
            json!("int64")
        );
        assert_eq!(
            field_schema("doc", &FieldValue::Json("{}".into()))["name"],
            json!("io.debezium.data.Json")
        );
        let tags = FieldValue::Json(r#"["new","sale"]"#.into());
        assert_eq!(
            field_schema("tags", &tags),
            json!({"type": "array", "items": {"type": "string", "optional": false},
                   "optional": true, "field": "tags"})
        );
        assert_eq!(field_payload(&tags), json!(["new", "sale"]));
        let mixed = FieldValue::Json(r#"[1,"a"]"#.into());
        assert_eq!(
            field_schema("m", &mixed)["name"],
            json!("io.debezium.data.Json")
        );
        assert_eq!(field_payload(&mixed), json!(r#"[1,"a"]"#));
        assert_eq!(key_field_schema("id", &json!(7))["type"], json!("int64"));
        assert_eq!(
            key_field_schema("sku", &json!("A"))["type"],
            json!("string")
        );
    }
}
