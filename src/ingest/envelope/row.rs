//! Row images column by column, the key's payload, and the nesting bound on raw values.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodeError, Row};
use crate::ingest::schema::RowSchema;
use crate::model::value::{decode_value, Value};

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

/// One `before`/`after` image, or `None` when it is absent or null.
pub(super) fn image<'a>(
    raw: Option<&'a RawValue>,
    schema: Option<&RowSchema>,
    max_depth: usize,
) -> Result<Option<Row<'a>>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if !r.get().starts_with('{') => Err(DecodeError::RowImage),
        Some(r) => row(r, schema, false, max_depth).map(Some),
    }
}

/// Decodes a row object column by column. `skip_meta` leaves out `__`-prefixed fields, which
/// ExtractNewRecordState adds to the row it flattens.
pub(super) fn row<'a>(
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
                Err(error) => {
                    *self.column_error = Some(DecodeError::Column {
                        column: name.into_owned(),
                        error,
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
pub(super) fn unwrap_key(key: &[u8]) -> Result<Option<&RawValue>, DecodeError> {
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
