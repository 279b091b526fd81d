//! Debezium records written by Kafka Connect's Avro converter, in Confluent's wire format:
//!
//! ```text
//! 0x00 | schema id (4 bytes, big-endian) | Avro binary datum of the writer's schema
//! ```
//!
//! The writer schema is fetched from the registry by id (`runtime::registry`) before stage 1
//! sees the record, and kept here. A datum is read through serde against that schema and
//! streamed, with no tree between, into the text Kafka Connect's JSON converter writes for the
//! same record without schemas: bytes and decimals as base64, non-finite floats as strings. The
//! Connect types the Avro schema carries (`connect.name`, `connect.parameters`) become the
//! record's [`ValueSchema`], so the rest of stage 1 reads an Avro record exactly as it reads
//! the schema-wrapped JSON of the same change.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value as Json;
use thiserror::Error;

use crate::ingest::schema::{connect_column_type, RowSchema, ValueSchema};
use crate::model::value::ColumnType;

/// Confluent's magic byte. No JSON text starts with it, so it tells the formats apart.
pub const MAGIC: u8 = 0;

/// The schema id and the datum of a record in Confluent's wire format.
pub fn framed(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, datum @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => None,
    }
}

self_cell::self_cell!(
    /// A parsed writer schema and the datum reader that borrows it (its named types resolved
    /// once, not per record).
    struct Reader {
        owner: Schema,
        #[not_covariant]
        dependent: DatumReader,
    }
);

type DatumReader<'s> = GenericDatumReader<'s>;

/// One writer schema, ready to read data with.
pub struct WriterSchema {
    pub id: u32,
    reader: Reader,
    /// What the schema declares of the row, as the JSON converter's schema would.
    pub value: Arc<ValueSchema>,
}

impl std::fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSchema")
            .field("id", &self.id)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum AvroError {
    #[error("schema {id} is not an Avro schema harmony can read: {reason}")]
    Schema { id: u32, reason: String },
    #[error("datum does not match its writer schema {id}: {reason}")]
    Datum { id: u32, reason: String },
}

impl WriterSchema {
    /// Parses the schema text the registry serves for `id`.
    pub fn parse(id: u32, text: &str) -> Result<Self, AvroError> {
        let refused = |reason: String| AvroError::Schema { id, reason };
        let schema = Schema::parse_str(text).map_err(|e| refused(e.to_string()))?;
        let json: Json = serde_json::from_str(text).map_err(|e| refused(e.to_string()))?;
        let reader = Reader::try_new(schema, |schema| {
            GenericDatumReader::builder(schema)
                .human_readable(false)
                .build()
        })
        .map_err(|e| refused(e.to_string()))?;
        Ok(Self {
            id,
            reader,
            value: Arc::new(value_schema(&json)),
        })
    }

    /// Writes `datum` as the JSON converter's schemaless text into `out` (replaced).
    pub fn to_json(&self, datum: &[u8], out: &mut Vec<u8>) -> Result<(), AvroError> {
        let failed = |reason: String| AvroError::Datum {
            id: self.id,
            reason,
        };
        SPARE.set(std::mem::take(out));
        let mut rest = datum;
        let ConnectJson(text) = self
            .reader
            .with_dependent(|_, reader| reader.read_deser::<ConnectJson>(&mut rest))
            .map_err(|e| failed(e.to_string()))?;
        *out = text;
        if !rest.is_empty() {
            return Err(failed(format!("{} bytes left after the datum", rest.len())));
        }
        Ok(())
    }
}

thread_local! {
    /// The caller's buffer, lent to the deserializer: `read_deser` builds its result from the
    /// data alone, and this keeps every record's text in one reused allocation.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A datum as the JSON converter's text, written while it is read.
struct ConnectJson(Vec<u8>);

impl<'de> Deserialize<'de> for ConnectJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut text = SPARE.take();
        text.clear();
        JsonText { out: &mut text }.deserialize(d)?;
        Ok(ConnectJson(text))
    }
}

/// Writes the value it is handed as JSON, the way Kafka Connect's JSON converter writes the
/// same Connect value: bytes (and so decimals) as base64 text, NaN and infinities as strings.
/// A serializer could not do this: serde_json writes every non-finite float as `null`.
struct JsonText<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn written<E: serde::de::Error>(result: std::io::Result<()>) -> Result<(), E> {
    result.map_err(E::custom)
}

impl<'de> Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Avro datum")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        written(CompactFormatter.write_i64(self.out, v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        written(CompactFormatter.write_u64(self.out, v))
    }

    fn visit_f32<E: serde::de::Error>(self, v: f32) -> Result<(), E> {
        match non_finite(f64::from(v)) {
            Some(text) => written(std::io::Write::write_all(self.out, text)),
            // Shortest f32 text: what Java prints for the float, not its widened double.
            None => written(CompactFormatter.write_f32(self.out, v)),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match non_finite(v) {
            Some(text) => written(std::io::Write::write_all(self.out, text)),
            None => written(CompactFormatter.write_f64(self.out, v)),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        serde_json::to_writer(&mut *self.out, v).map_err(E::custom)
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        use base64::Engine;
        self.out.push(b'"');
        let start = self.out.len();
        let engine = &base64::engine::general_purpose::STANDARD;
        self.out.resize(start + v.len().div_ceil(3) * 4, 0);
        let encoded = engine
            .encode_slice(v, &mut self.out[start..])
            .map_err(E::custom)?;
        self.out.truncate(start + encoded);
        self.out.push(b'"');
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(JsonText { out: self.out })?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if map.next_key_seed(JsonText { out: self.out })?.is_none() {
                self.out.truncate(mark);
                break;
            }
            self.out.push(b':');
            map.next_value_seed(JsonText { out: self.out })?;
            first = false;
        }
        self.out.push(b'}');
        Ok(())
    }

    /// An Avro enum: its symbol, as the JSON converter writes Connect's string.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let ((), variant) = data.variant_seed(JsonText { out: self.out })?;
        variant.unit_variant()
    }
}

/// The JSON converter writes these strings where serde_json would write `null`.
fn non_finite(value: f64) -> Option<&'static [u8]> {
    if value.is_nan() {
        Some(b"\"NaN\"")
    } else if value == f64::INFINITY {
        Some(b"\"Infinity\"")
    } else if value == f64::NEG_INFINITY {
        Some(b"\"-Infinity\"")
    } else {
        None
    }
}

/// What an Avro value schema declares, by its shape: an envelope's (whose `after`, or else
/// `before`, record is the row) or a flattened row's.
fn value_schema(schema: &Json) -> ValueSchema {
    let mut named = HashMap::new();
    collect_named(schema, &mut named);
    let fields = fields_of(schema);
    let field = |name: &str| fields.iter().find(|f| f["name"] == name);
    let image = field("after").or_else(|| field("before"));
    let row = match image {
        Some(image) if field("op").is_some() => resolve(&image["type"], &named)
            .map(fields_of)
            .unwrap_or_default(),
        _ => fields,
    };
    ValueSchema {
        row: RowSchema {
            columns: row
                .iter()
                .map(|f| {
                    let name = f["name"].as_str().unwrap_or_default().to_owned();
                    let column =
                        resolve(&f["type"], &named).map_or(ColumnType::Composite, column_type);
                    (name, column)
                })
                .collect(),
        },
    }
}

fn fields_of(schema: &Json) -> &[Json] {
    schema["fields"].as_array().map_or(&[], Vec::as_slice)
}

/// Named types (records, enums, fixed) by their name as written and their full name, so that
/// a later reference (`"type": "Value"`) finds its definition.
fn collect_named<'j>(json: &'j Json, named: &mut HashMap<String, &'j Json>) {
    match json {
        Json::Object(object) => {
            let is_named = matches!(
                object.get("type").and_then(Json::as_str),
                Some("record" | "enum" | "fixed")
            );
            if let (true, Some(name)) = (is_named, object.get("name").and_then(Json::as_str)) {
                named.insert(name.to_owned(), json);
                if let Some(namespace) = object.get("namespace").and_then(Json::as_str) {
                    named.insert(format!("{namespace}.{name}"), json);
                }
            }
            object.values().for_each(|v| collect_named(v, named));
        }
        Json::Array(items) => items.iter().for_each(|v| collect_named(v, named)),
        _ => {}
    }
}

/// A field's type with an optional field's union (`["null", T]`) and references resolved.
/// `None` for a union of several types, which Connect never writes.
fn resolve<'j>(json: &'j Json, named: &HashMap<String, &'j Json>) -> Option<&'j Json> {
    match json {
        Json::Array(branches) => {
            let mut present = branches.iter().filter(|b| *b != "null");
            match (present.next(), present.next()) {
                (Some(only), None) => resolve(only, named),
                _ => None,
            }
        }
        Json::String(name) if !is_primitive(name) => named
            .get(name.as_str())
            .or_else(|| named.get(name.rsplit('.').next().unwrap_or(name)))
            .copied(),
        Json::Object(object) if object.get("type").is_some_and(|t| !t.is_string()) => {
            resolve(&object["type"], named)
        }
        other => Some(other),
    }
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string"
    )
}

/// A resolved Avro type → the column type of the Connect schema it was written from.
fn column_type(json: &Json) -> ColumnType {
    let avro = json
        .as_str()
        .or_else(|| json["type"].as_str())
        .unwrap_or_default();
    // Avro's names for Connect's types.
    let kind = match avro {
        "int" => "int32",
        "long" => "int64",
        "float" => "float32",
        "double" => "float64",
        "bytes" | "fixed" => "bytes",
        "record" => "struct",
        "enum" => "string",
        other => other,
    };
    let name = json["connect.name"].as_str();
    let parameters = &json["connect.parameters"];
    connect_column_type(kind, name, |parameter| match &parameters[parameter] {
        Json::String(s) => s.parse().ok(),
        // Avro's own decimal logical type, without Connect's parameters.
        _ if parameter == "scale" => json["scale"].as_u64().and_then(|s| s.try_into().ok()),
        _ => None,
    })
}

/// What the registry answered for a schema id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<WriterSchema>),
    /// Unknown to the registry, or not a schema harmony can read: the records written with it
    /// are dead-lettered with this reason.
    Refused(Arc<str>),
}

/// The writer schemas read so far, by id, shared by the worker's stages. An id names one
/// immutable schema for the registry's life, so nothing is ever evicted: like Confluent's own
/// clients, harmony holds every schema its topics were written with.
#[derive(Debug, Default)]
pub struct AvroSchemas {
    by_id: RwLock<HashMap<u32, Lookup>>,
}

impl AvroSchemas {
    pub fn get(&self, id: u32) -> Option<Lookup> {
        self.lock_read().get(&id).cloned()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.lock_read().contains_key(&id)
    }

    pub fn insert(&self, id: u32, lookup: Lookup) {
        self.by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, lookup);
    }

    /// The ids of `key` and `value` (either in Confluent's wire format) not looked up yet.
    pub fn missing(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> impl Iterator<Item = u32> {
        let ids = [key, value].map(|b| b.and_then(framed).map(|(id, _)| id));
        let missing = ids.map(|id| id.filter(|&id| !self.contains(id)));
        let [key, value] = missing;
        key.into_iter().chain(value.filter(|v| Some(*v) != key))
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Lookup>> {
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
