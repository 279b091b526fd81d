//! Column values as Debezium carries them, decoded exactly.
//!
//! The traps this module exists for:
//! * 64-bit integers never pass through `f64` (`ts_ns` and `bigint` ids exceed 2^53);
//! * decimals are exact: `"12.3400"` (string mode), base64 two's-complement bytes with the
//!   scale from the schema (precise mode), `{"scale":2,"value":"…"}` (variable scale);
//! * `__debezium_unavailable_value` means "this column did not change and Debezium does not
//!   have it" (TOAST, LOB): [`Value::Unavailable`], never a new value;
//! * integers that arrive as JSON strings when the schema says they are integers.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::model::temporal::{Date, TimeOfDay, Timestamp, Unit};

/// Why a column's JSON is not the value its declared type says. Never retriable: the same
/// bytes decode the same way every time. The cause is part of the message (a dead-letter
/// header carries `Display` alone), so none is also a `#[source]`.
#[derive(Debug, Error)]
pub enum ValueError {
    #[error("{what} is not base64: {error}")]
    NotBase64 {
        what: &'static str,
        error: base64::DecodeError,
    },
    #[error("{what} column holds `{text}`")]
    Unparsable { what: &'static str, text: String },
    #[error("{what} `{value}` is beyond the years 0000 to 9999 or not a {what}")]
    OutOfRange { what: &'static str, value: String },
    #[error("{what}: {error}")]
    Json {
        what: &'static str,
        error: serde_json::Error,
    },
}

/// Debezium's placeholder for a column value it does not have (unchanged TOAST or LOB).
pub const UNAVAILABLE_PLACEHOLDER: &str = "__debezium_unavailable_value";
/// The same placeholder in a binary column, base64-encoded by the JSON converter.
const UNAVAILABLE_PLACEHOLDER_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// One column value.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(Decimal),
    /// A decimal beyond [`Decimal`]'s 38 digits, as its exact normalized text (`-12.5`).
    WideDecimal(String),
    Text(Cow<'a, str>),
    /// Dates, times of day and timestamps in their canonical form (`model::temporal`).
    Date(Date),
    Time(TimeOfDay),
    Timestamp(Timestamp),
    /// Binary (Connect `bytes`), as the JSON converter's base64 text.
    Bytes(Cow<'a, str>),
    /// Structs, arrays, maps, and anything harmony passes through without interpreting.
    Raw(&'a RawValue),
    /// The column did not change; its value is not in this event.
    Unavailable,
}

impl Value<'_> {
    /// The value as an exact number, whichever way the connector rendered it (precise bytes,
    /// string mode, JSON number, integer).
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self {
            Value::Decimal(d) => Some(d.normalized()),
            Value::Int(i) => Some(Decimal {
                unscaled: i128::from(*i),
                scale: 0,
            }),
            Value::Text(t) => Decimal::parse(t).map(Decimal::normalized),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            other => other.as_decimal().map(Decimal::to_f64),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Text, or binary as its base64 text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) | Value::Bytes(t) => Some(t),
            _ => None,
        }
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) | (Unavailable, Unavailable) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (Decimal(a), Decimal(b)) => a == b,
            (WideDecimal(a), WideDecimal(b)) => a == b,
            (Text(a), Text(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            // Raw JSON compares by its text: the same value written the same way.
            (Raw(a), Raw(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

/// A decimal with more decimal places than a scale keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MorePlaces;

/// An exact decimal: `unscaled × 10^-scale`. 38 significant digits, which covers every SQL
/// `DECIMAL`/`NUMERIC` with a declared precision up to 38.
///
/// Aligned to 8 bytes rather than `i128`'s 16: every value the state holds (a field, what each
/// system holds, each pending delivery) is a [`FieldValue`], which this keeps
/// at 32 bytes instead of 48. Fields are read by copy (`{ d.unscaled }`), never by reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, packed(8))]
pub struct Decimal {
    pub unscaled: i128,
    pub scale: u32,
}

impl Decimal {
    /// Parses `-12.340`, `12`, and the exponent form Debezium's `double` mode can produce
    /// (`1.23456781234E7`), exactly.
    pub fn parse(text: &str) -> Option<Self> {
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let plain = Self::parse_plain(mantissa)?;
        let scale = i64::from(plain.scale) - i64::from(exponent);
        if scale >= 0 {
            Some(Self {
                unscaled: plain.unscaled,
                scale: u32::try_from(scale).ok()?,
            })
        } else {
            let factor = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
            Some(Self {
                unscaled: plain.unscaled.checked_mul(factor)?,
                scale: 0,
            })
        }
    }

    fn parse_plain(text: &str) -> Option<Self> {
        let (negative, digits) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let mut unscaled: i128 = 0;
        for b in int_part.bytes().chain(frac_part.bytes()) {
            if !b.is_ascii_digit() {
                return None;
            }
            unscaled = unscaled
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        Some(Self {
            unscaled: if negative { -unscaled } else { unscaled },
            scale: u32::try_from(frac_part.len()).ok()?,
        })
    }

    /// The same number with trailing fractional zeros removed: `10.5000` → `10.5`, so that
    /// equal numbers compare equal whatever scale their column declared.
    pub fn normalized(self) -> Self {
        let mut d = self;
        while d.scale > 0 && d.unscaled % 10 == 0 {
            d.unscaled /= 10;
            d.scale -= 1;
        }
        d
    }

    /// Both numbers at the larger scale, or `None` if that overflows.
    fn aligned(&self, other: &Self) -> Option<(i128, i128, u32)> {
        let scale = self.scale.max(other.scale);
        let up = |d: &Self| d.unscaled.checked_mul(10i128.checked_pow(scale - d.scale)?);
        Some((up(self)?, up(other)?, scale))
    }

    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        let (a, b, scale) = self.aligned(other)?;
        Some(Self {
            unscaled: a.checked_add(b)?,
            scale,
        })
    }

    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        let (a, b, scale) = self.aligned(other)?;
        Some(Self {
            unscaled: a.checked_sub(b)?,
            scale,
        })
    }

    /// Numeric order, whatever the scales (`1.50` = `1.5` < `2`). Numbers too large to align
    /// compare by their float value.
    /// The same number at `scale`: `Err(MorePlaces)` if it has more decimal places than that
    /// (after its trailing zeros), `Ok(None)` if the unscaled value would pass 38 digits.
    pub fn rescaled(self, scale: u32) -> Result<Option<Self>, MorePlaces> {
        let d = self.normalized();
        let (unscaled, own) = (d.unscaled, d.scale);
        if own > scale {
            return Err(MorePlaces);
        }
        Ok(10i128
            .checked_pow(scale - own)
            .and_then(|factor| unscaled.checked_mul(factor))
            .map(|unscaled| Decimal { unscaled, scale }))
    }

    pub fn cmp_value(&self, other: &Self) -> std::cmp::Ordering {
        match self.aligned(other) {
            Some((a, b, _)) => a.cmp(&b),
            None => self
                .to_f64()
                .partial_cmp(&other.to_f64())
                .unwrap_or(std::cmp::Ordering::Equal),
        }
    }

    pub fn to_f64(self) -> f64 {
        self.unscaled as f64 / 10f64.powi(self.scale as i32)
    }

    /// Kafka Connect's `Decimal` logical type: big-endian two's-complement bytes.
    pub fn from_be_bytes(bytes: &[u8], scale: u32) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > 16 {
            return None;
        }
        let fill = if bytes[0] & 0x80 != 0 { 0xFF } else { 0x00 };
        let mut buf = [fill; 16];
        buf[16 - bytes.len()..].copy_from_slice(bytes);
        Some(Self {
            unscaled: i128::from_be_bytes(buf),
            scale,
        })
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.unsigned_abs().to_string();
        write_scaled(f, self.unscaled < 0, &digits, self.scale as usize)
    }
}

/// An unscaled magnitude's `digits` at `scale`, as decimal text: `12345` at 2 is `123.45`.
fn write_scaled(
    out: &mut impl fmt::Write,
    negative: bool,
    digits: &str,
    scale: usize,
) -> fmt::Result {
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        return write!(out, "{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    write!(out, "{sign}{int_part}.{frac_part}")
}

/// What the connector's schema says a column is, where a schema is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Integer,
    Float,
    String,
    /// Connect `bytes`, base64 in JSON.
    Bytes,
    /// `org.apache.kafka.connect.data.Decimal` with its scale.
    Decimal {
        scale: u32,
    },
    /// `io.debezium.data.VariableScaleDecimal`: `{"scale": s, "value": base64}`.
    VariableScaleDecimal,
    /// Struct, array, map: passed through.
    Composite,
    /// `io.debezium.data.Bits`: base64 bytes, least significant byte first, with the
    /// `length` parameter (bits) where known, which Debezium's JDBC sink needs to bind a
    /// `bit(n)` column.
    Bits {
        length: Option<u32>,
    },
    /// A Debezium or Connect logical type: what the connector's schema names the column's
    /// value, over the plain type it is carried in.
    Semantic(Semantic),
}

impl ColumnType {
    /// A column type by the name a configuration (`sources.types`) and the internal record
    /// give it: `boolean`, `int`, `float`, `string`, `bytes`, `decimal(2)` (a fixed scale),
    /// `decimal` (variable scale), `composite`, or a semantic type by its short name
    /// ([`Semantic::short_name`]) or Debezium's full name.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        Some(match name {
            "boolean" | "bool" => ColumnType::Boolean,
            "int" | "integer" | "int8" | "int16" | "int32" | "int64" => ColumnType::Integer,
            "float" | "double" | "float32" | "float64" => ColumnType::Float,
            "string" | "text" => ColumnType::String,
            "bytes" => ColumnType::Bytes,
            "decimal" => ColumnType::VariableScaleDecimal,
            "composite" => ColumnType::Composite,
            "bits" | "io.debezium.data.Bits" => ColumnType::Bits { length: None },
            _ => {
                // `bits(8)`, `decimal(2)`: the name and its one parameter.
                if let Some((kind, parameter)) =
                    name.strip_suffix(')').and_then(|rest| rest.split_once('('))
                {
                    let parameter = parameter.trim().parse().ok()?;
                    return match kind.trim() {
                        "bits" => Some(ColumnType::Bits {
                            length: Some(parameter),
                        }),
                        "decimal" => Some(ColumnType::Decimal { scale: parameter }),
                        _ => None,
                    };
                }
                let semantic = Semantic::ALL
                    .into_iter()
                    .find(|s| s.short_name() == name)
                    .or_else(|| Semantic::from_name(name))?;
                ColumnType::Semantic(semantic)
            }
        })
    }
}

impl ColumnType {
    /// What its values are, whatever unit or carrier holds them.
    pub fn kind(&self) -> ValueKind {
        match self {
            ColumnType::Boolean => ValueKind::Boolean,
            ColumnType::Integer
            | ColumnType::Float
            | ColumnType::Decimal { .. }
            | ColumnType::VariableScaleDecimal
            | ColumnType::Semantic(Semantic::Year) => ValueKind::Number,
            ColumnType::String => ValueKind::Text,
            ColumnType::Bytes | ColumnType::Bits { .. } => ValueKind::Bytes,
            ColumnType::Composite => ValueKind::Composite,
            ColumnType::Semantic(semantic) => match semantic.temporal() {
                Some(Temporal::Date | Temporal::Timestamp(_) | Temporal::Zoned) => {
                    ValueKind::Instant
                }
                Some(Temporal::Time(_)) => ValueKind::TimeOfDay,
                None => match semantic {
                    Semantic::ZonedTime => ValueKind::TimeOfDay,
                    Semantic::DurationMicros | Semantic::Interval => ValueKind::Duration,
                    _ => ValueKind::Text,
                },
            },
        }
    }

    /// Whether a column captured as `self` can be read as a field of type `canonical`
    /// ([`as_declared`]): the same kind of value, or text that parses into it (Debezium's
    /// `decimal.handling.mode=string`, a date kept in a `varchar`), or MySQL's `tinyint(1)`
    /// as a boolean.
    pub fn reads_as(&self, canonical: &ColumnType) -> bool {
        use ValueKind::*;
        match (self.kind(), canonical.kind()) {
            (a, b) if a == b => true,
            (Text, Instant | TimeOfDay) => true,
            (Text, Number) => matches!(
                canonical,
                ColumnType::Integer | ColumnType::Decimal { .. } | ColumnType::VariableScaleDecimal
            ),
            (Number, Boolean) => matches!(self, ColumnType::Integer),
            _ => false,
        }
    }
}

/// What a column's values are, whatever unit or carrier a connector gives them: two systems'
/// columns of one field hold the same kind (a `timestamp(3)` and a `timestamptz` both hold
/// instants; `numeric(12,2)` and `bigint` both numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Boolean,
    Number,
    Text,
    Bytes,
    /// Dates and timestamps: a date is its midnight.
    Instant,
    TimeOfDay,
    Duration,
    Composite,
}

impl ValueKind {
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::Boolean => "a boolean",
            ValueKind::Number => "a number",
            ValueKind::Text => "text",
            ValueKind::Bytes => "bytes",
            ValueKind::Instant => "a date or timestamp",
            ValueKind::TimeOfDay => "a time of day",
            ValueKind::Duration => "a duration",
            ValueKind::Composite => "a struct, array or map",
        }
    }
}

/// The name [`ColumnType::parse`] reads back.
impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Integer => f.write_str("int"),
            ColumnType::Float => f.write_str("float"),
            ColumnType::String => f.write_str("string"),
            ColumnType::Bytes => f.write_str("bytes"),
            ColumnType::Decimal { scale } => write!(f, "decimal({scale})"),
            ColumnType::VariableScaleDecimal => f.write_str("decimal"),
            ColumnType::Composite => f.write_str("composite"),
            ColumnType::Bits { length: None } => f.write_str("bits"),
            ColumnType::Bits {
                length: Some(length),
            } => write!(f, "bits({length})"),
            ColumnType::Semantic(s) => f.write_str(s.short_name()),
        }
    }
}

/// The logical types Debezium's connectors name in a schema, each with how its value is
/// carried in JSON. Read from the schema's `name`; written back under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    /// Days since the epoch (`int32`): `io.debezium.time.Date`, Connect's `Date`.
    Date,
    /// Time of day in milliseconds (`int32`): `io.debezium.time.Time`, Connect's `Time`.
    TimeMillis,
    /// Time of day in microseconds (`int64`): `io.debezium.time.MicroTime`.
    TimeMicros,
    /// Time of day in nanoseconds (`int64`): `io.debezium.time.NanoTime`.
    TimeNanos,
    /// Local date-time, milliseconds since the epoch (`int64`): `io.debezium.time.Timestamp`,
    /// Connect's `Timestamp`.
    TimestampMillis,
    /// Local date-time in microseconds (`int64`): `io.debezium.time.MicroTimestamp`.
    TimestampMicros,
    /// Local date-time in nanoseconds (`int64`): `io.debezium.time.NanoTimestamp`.
    TimestampNanos,
    /// An instant with its offset, ISO 8601 text: `io.debezium.time.ZonedTimestamp`.
    ZonedTimestamp,
    /// A time of day with its offset, ISO 8601 text: `io.debezium.time.ZonedTime`.
    ZonedTime,
    /// A duration in microseconds (`int64`): `io.debezium.time.MicroDuration`.
    DurationMicros,
    /// A year (`int32`): `io.debezium.time.Year`, MySQL's and MariaDB's `year`.
    Year,
    /// A duration as ISO 8601 text: `io.debezium.time.Interval`.
    Interval,
    Uuid,
    /// JSON text: `io.debezium.data.Json`.
    Json,
    Enum,
    EnumSet,
    Xml,
}

impl Semantic {
    pub const ALL: [Semantic; 17] = [
        Semantic::Date,
        Semantic::TimeMillis,
        Semantic::TimeMicros,
        Semantic::TimeNanos,
        Semantic::TimestampMillis,
        Semantic::TimestampMicros,
        Semantic::TimestampNanos,
        Semantic::ZonedTimestamp,
        Semantic::ZonedTime,
        Semantic::DurationMicros,
        Semantic::Year,
        Semantic::Interval,
        Semantic::Uuid,
        Semantic::Json,
        Semantic::Enum,
        Semantic::EnumSet,
        Semantic::Xml,
    ];

    /// The semantic type a Connect schema's `name` stands for, if harmony knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => Semantic::Date,
            "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => Semantic::TimeMillis,
            "io.debezium.time.MicroTime" => Semantic::TimeMicros,
            "io.debezium.time.NanoTime" => Semantic::TimeNanos,
            "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
                Semantic::TimestampMillis
            }
            "io.debezium.time.MicroTimestamp" => Semantic::TimestampMicros,
            "io.debezium.time.NanoTimestamp" => Semantic::TimestampNanos,
            "io.debezium.time.ZonedTimestamp" => Semantic::ZonedTimestamp,
            "io.debezium.time.ZonedTime" => Semantic::ZonedTime,
            "io.debezium.time.MicroDuration" => Semantic::DurationMicros,
            "io.debezium.time.Year" => Semantic::Year,
            "io.debezium.time.Interval" => Semantic::Interval,
            "io.debezium.data.Uuid" => Semantic::Uuid,
            "io.debezium.data.Json" => Semantic::Json,
            "io.debezium.data.Enum" => Semantic::Enum,
            "io.debezium.data.EnumSet" => Semantic::EnumSet,
            "io.debezium.data.Xml" => Semantic::Xml,
            _ => return None,
        })
    }

    /// Whether and how it carries a date or a time.
    pub fn temporal(self) -> Option<Temporal> {
        Some(match self {
            Semantic::Date => Temporal::Date,
            Semantic::TimeMillis => Temporal::Time(Unit::Millis),
            Semantic::TimeMicros => Temporal::Time(Unit::Micros),
            Semantic::TimeNanos => Temporal::Time(Unit::Nanos),
            Semantic::TimestampMillis => Temporal::Timestamp(Unit::Millis),
            Semantic::TimestampMicros => Temporal::Timestamp(Unit::Micros),
            Semantic::TimestampNanos => Temporal::Timestamp(Unit::Nanos),
            Semantic::ZonedTimestamp => Temporal::Zoned,
            _ => return None,
        })
    }

    /// Its name in a configuration: the SQL type it stands for, with the unit a connector
    /// counts it in where there are several.
    pub fn short_name(self) -> &'static str {
        match self {
            Semantic::Date => "date",
            Semantic::TimeMillis => "time_ms",
            Semantic::TimeMicros => "time_us",
            Semantic::TimeNanos => "time_ns",
            Semantic::TimestampMillis => "timestamp_ms",
            Semantic::TimestampMicros => "timestamp_us",
            Semantic::TimestampNanos => "timestamp_ns",
            Semantic::ZonedTimestamp => "timestamptz",
            Semantic::ZonedTime => "timetz",
            Semantic::DurationMicros => "duration_us",
            Semantic::Year => "year",
            Semantic::Interval => "interval",
            Semantic::Uuid => "uuid",
            Semantic::Json => "json",
            Semantic::Enum => "enum",
            Semantic::EnumSet => "enum_set",
            Semantic::Xml => "xml",
        }
    }

    /// The Connect type Debezium carries it in.
    pub fn carrier(self) -> &'static str {
        match self {
            Semantic::Date | Semantic::TimeMillis | Semantic::Year => "int32",
            Semantic::TimeMicros
            | Semantic::TimeNanos
            | Semantic::TimestampMillis
            | Semantic::TimestampMicros
            | Semantic::TimestampNanos
            | Semantic::DurationMicros => "int64",
            Semantic::ZonedTimestamp
            | Semantic::ZonedTime
            | Semantic::Interval
            | Semantic::Uuid
            | Semantic::Json
            | Semantic::Enum
            | Semantic::EnumSet
            | Semantic::Xml => "string",
        }
    }

    /// Debezium's name for it, as a target's schema declares it.
    pub fn name(self) -> &'static str {
        match self {
            Semantic::Date => "io.debezium.time.Date",
            Semantic::TimeMillis => "io.debezium.time.Time",
            Semantic::TimeMicros => "io.debezium.time.MicroTime",
            Semantic::TimeNanos => "io.debezium.time.NanoTime",
            Semantic::TimestampMillis => "io.debezium.time.Timestamp",
            Semantic::TimestampMicros => "io.debezium.time.MicroTimestamp",
            Semantic::TimestampNanos => "io.debezium.time.NanoTimestamp",
            Semantic::ZonedTimestamp => "io.debezium.time.ZonedTimestamp",
            Semantic::ZonedTime => "io.debezium.time.ZonedTime",
            Semantic::DurationMicros => "io.debezium.time.MicroDuration",
            Semantic::Year => "io.debezium.time.Year",
            Semantic::Interval => "io.debezium.time.Interval",
            Semantic::Uuid => "io.debezium.data.Uuid",
            Semantic::Json => "io.debezium.data.Json",
            Semantic::Enum => "io.debezium.data.Enum",
            Semantic::EnumSet => "io.debezium.data.EnumSet",
            Semantic::Xml => "io.debezium.data.Xml",
        }
    }
}

/// Decodes one column's raw JSON, with its declared type when the record has a schema.
pub fn decode_value<'a>(
    raw: &'a RawValue,
    declared: Option<&ColumnType>,
) -> Result<Value<'a>, ValueError> {
    match declared {
        Some(ColumnType::Semantic(semantic)) => canonical(decode_plain(raw, None)?, *semantic),
        _ => decode_plain(raw, declared),
    }
}

/// A value as its column's semantic type says to hold it: dates, times of day and timestamps
/// in their canonical form (`model::temporal`), from the number or text the connector carried
/// them in; every other semantic type keeps its plain value. Also applied to schemaless input
/// whose column types a configuration declares.
pub fn canonical(value: Value<'_>, semantic: Semantic) -> Result<Value<'_>, ValueError> {
    let Some(kind) = semantic.temporal() else {
        return Ok(value);
    };
    let converted = match (kind, &value) {
        // Already read: a field's declared type applied over a schema's.
        (_, Value::Null | Value::Unavailable)
        | (Temporal::Time(_), Value::Time(_))
        | (Temporal::Date | Temporal::Timestamp(_) | Temporal::Zoned, Value::Date(_))
        | (Temporal::Date | Temporal::Timestamp(_) | Temporal::Zoned, Value::Timestamp(_)) => {
            return Ok(value)
        }
        (Temporal::Date, Value::Int(days)) => Date::new(*days).map(Value::Date),
        (Temporal::Date, Value::Text(text)) => Date::parse(text).map(Value::Date),
        (Temporal::Time(unit), Value::Int(count)) => {
            TimeOfDay::from_count(*count, unit).map(Value::Time)
        }
        (Temporal::Time(_), Value::Text(text)) => TimeOfDay::parse(text).map(Value::Time),
        (Temporal::Timestamp(unit), Value::Int(count)) => {
            Timestamp::from_count(*count, unit).map(Value::Timestamp)
        }
        (Temporal::Timestamp(_) | Temporal::Zoned, Value::Text(text)) => {
            Timestamp::parse(text).map(Value::Timestamp)
        }
        _ => None,
    };
    converted.ok_or_else(|| ValueError::OutOfRange {
        what: kind.what(),
        value: match value {
            Value::Int(n) => n.to_string(),
            Value::Text(t) => t.into_owned(),
            other => format!("{other:?}"),
        },
    })
}

/// A value of a schemaless record as its column's declared type reads it: a semantic type as
/// [`canonical`] does; a decimal from Connect's base64 bytes (`decimal.handling.mode=precise`)
/// or its text (`string`); an integer from its text. Anything else is left as it came.
pub fn as_declared<'a>(value: Value<'a>, declared: &ColumnType) -> Result<Value<'a>, ValueError> {
    match (declared, value) {
        (ColumnType::Semantic(semantic), value) => canonical(value, *semantic),
        (ColumnType::Decimal { scale }, Value::Text(text)) => match Decimal::parse(&text) {
            Some(d) => Ok(Value::Decimal(d)),
            None if text.contains('.') => Ok(wide_text(&text).unwrap_or(Value::Text(text))),
            None => decimal_of_base64(&text, *scale),
        },
        (ColumnType::VariableScaleDecimal, Value::Text(text)) => Ok(match Decimal::parse(&text) {
            Some(d) => Value::Decimal(d),
            None => wide_text(&text).unwrap_or(Value::Text(text)),
        }),
        (ColumnType::Bytes | ColumnType::Bits { .. }, Value::Text(text)) => Ok(Value::Bytes(text)),
        (ColumnType::Integer, Value::Text(text)) => text
            .parse()
            .map(Value::Int)
            .map_err(|_| unparsable("integer", &text)),
        // MySQL's `tinyint(1)`, as Debezium captures it.
        (ColumnType::Boolean, Value::Int(n @ (0 | 1))) => Ok(Value::Bool(n == 1)),
        (ColumnType::Boolean, Value::Int(n)) => Err(unparsable("boolean", &n.to_string())),
        (_, value) => Ok(value),
    }
}

/// A value a schema-wrapped record carried, as its field's declared type reads it
/// (`entities.fields.<f>.type`): text in a number's place parsed as the number it writes (never
/// as base64 bytes, which only schemaless `precise` decimals are), else as [`as_declared`].
pub fn as_canonical<'a>(value: Value<'a>, canonical: &ColumnType) -> Result<Value<'a>, ValueError> {
    match (canonical.kind(), value) {
        (ValueKind::Number, Value::Text(text)) => {
            if let Some(d) = Decimal::parse(&text) {
                Ok(match canonical {
                    ColumnType::Integer => {
                        let d = d.normalized();
                        let whole = (d.scale == 0).then_some(d.unscaled);
                        Value::Int(
                            whole
                                .and_then(|n| i64::try_from(n).ok())
                                .ok_or_else(|| unparsable("integer", &text))?,
                        )
                    }
                    _ => Value::Decimal(d),
                })
            } else if *canonical == ColumnType::Integer {
                Err(unparsable("integer", &text))
            } else {
                wide_text(&text).ok_or_else(|| unparsable("number", &text))
            }
        }
        (_, value) => as_declared(value, canonical),
    }
}

/// Decimal text beyond 38 digits, normalized.
fn wide_text(text: &str) -> Option<Value<'static>> {
    let (unscaled, scale) = wide_decimal_parts(text.trim_start_matches('+'))?;
    Some(Value::WideDecimal(wide_decimal_text(&unscaled, scale)))
}

/// How a semantic type carries a date or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    Date,
    Time(Unit),
    Timestamp(Unit),
    /// ISO 8601 text with an offset.
    Zoned,
}

impl Temporal {
    fn what(self) -> &'static str {
        match self {
            Temporal::Date => "date",
            Temporal::Time(_) => "time of day",
            Temporal::Timestamp(_) | Temporal::Zoned => "timestamp",
        }
    }
}

fn decode_plain<'a>(
    raw: &'a RawValue,
    declared: Option<&ColumnType>,
) -> Result<Value<'a>, ValueError> {
    let text = raw.get();
    let first = text.as_bytes().first().copied().unwrap_or(b'n');
    if text == "null" {
        return Ok(Value::Null);
    }
    match (declared, first) {
        (Some(ColumnType::Decimal { scale }), b'"') => {
            let encoded = string_of(raw)?;
            if encoded == UNAVAILABLE_PLACEHOLDER_BASE64 || encoded == UNAVAILABLE_PLACEHOLDER {
                return Ok(Value::Unavailable);
            }
            decimal_of_base64(&encoded, *scale)
        }
        (Some(ColumnType::VariableScaleDecimal), b'{') => variable_scale_decimal(raw),
        (Some(ColumnType::Integer), b'"') => {
            let s = string_of(raw)?;
            s.parse()
                .map(Value::Int)
                .map_err(|_| unparsable("integer", &s))
        }
        (Some(ColumnType::Float), b'"') => {
            // Connect's JSON converter writes NaN and infinities as strings.
            let s = string_of(raw)?;
            s.parse()
                .map(Value::Float)
                .map_err(|_| unparsable("float", &s))
        }
        (Some(ColumnType::Composite), _) => Ok(Value::Raw(raw)),
        (Some(ColumnType::Bytes | ColumnType::Bits { .. }), b'"') => {
            let s = string_of(raw)?;
            if s == UNAVAILABLE_PLACEHOLDER_BASE64 || s == UNAVAILABLE_PLACEHOLDER {
                Ok(Value::Unavailable)
            } else {
                Ok(Value::Bytes(s))
            }
        }
        (_, b'"') => {
            let s = string_of(raw)?;
            if s == UNAVAILABLE_PLACEHOLDER || s == UNAVAILABLE_PLACEHOLDER_BASE64 {
                Ok(Value::Unavailable)
            } else {
                Ok(Value::Text(s))
            }
        }
        (_, b't') => Ok(Value::Bool(true)),
        (_, b'f') => Ok(Value::Bool(false)),
        (Some(ColumnType::Float), _) => text
            .parse()
            .map(Value::Float)
            .map_err(|_| unparsable("float", text)),
        (_, b'-' | b'0'..=b'9') => Ok(number(text)),
        (_, b'[') if text.contains(UNAVAILABLE_PLACEHOLDER) => Ok(Value::Unavailable),
        _ => Ok(Value::Raw(raw)),
    }
}

/// Connect's decimal bytes in base64, as the JSON converter writes them, at `scale`.
fn decimal_of_base64(encoded: &str, scale: u32) -> Result<Value<'static>, ValueError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|error| ValueError::NotBase64 {
            what: "decimal",
            error,
        })?;
    Ok(decimal_of_bytes(&bytes, scale))
}

/// Connect's decimal bytes (the unscaled value, big-endian two's complement) at `scale`: a
/// [`Decimal`] when it fits 38 digits, its exact text otherwise.
fn decimal_of_bytes(bytes: &[u8], scale: u32) -> Value<'static> {
    match Decimal::from_be_bytes(bytes, scale) {
        Some(d) => Value::Decimal(d),
        None => Value::WideDecimal(wide_decimal_text(
            &num_bigint::BigInt::from_signed_bytes_be(bytes),
            scale,
        )),
    }
}

/// An unscaled integer at `scale` as decimal text, trailing fractional zeros removed (so that
/// equal numbers are equal text).
pub fn wide_decimal_text(unscaled: &num_bigint::BigInt, scale: u32) -> String {
    let mut digits = unscaled.magnitude().to_string();
    let mut scale = scale as usize;
    if digits == "0" {
        scale = 0;
    }
    while scale > 0 && digits.ends_with('0') {
        digits.pop();
        scale -= 1;
    }
    let negative = unscaled.sign() == num_bigint::Sign::Minus;
    let mut text = String::with_capacity(digits.len() + scale + 2);
    // Writing into a String cannot fail.
    let _ = write_scaled(&mut text, negative, &digits, scale);
    text
}

/// A wide decimal's text as Connect's unscaled bytes and scale.
pub fn wide_decimal_parts(text: &str) -> Option<(num_bigint::BigInt, u32)> {
    let (int_part, frac_part) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{int_part}{frac_part}");
    let unscaled: num_bigint::BigInt = digits.parse().ok()?;
    Some((unscaled, u32::try_from(frac_part.len()).ok()?))
}

/// A JSON number by its text: an integer if it is one that fits, else an exact decimal (the
/// text is what the connector wrote; reading it through f64 would change it), else a float.
fn number(text: &str) -> Value<'_> {
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(d) = Decimal::parse(text) {
        return Value::Decimal(d);
    }
    text.parse().map_or(Value::Float(f64::NAN), Value::Float)
}

/// The text of a JSON string literal: borrowed as it stands when it has no escapes (the
/// common case), unescaped by serde_json otherwise.
fn string_of(raw: &RawValue) -> Result<Cow<'_, str>, ValueError> {
    let text = raw.get();
    if text.len() >= 2 && !text.contains('\\') {
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<Cow<'_, str>>(text).map_err(|error| ValueError::Json {
        what: "string",
        error,
    })
}

fn unparsable(what: &'static str, text: &str) -> ValueError {
    ValueError::Unparsable {
        what,
        text: text.to_owned(),
    }
}

fn variable_scale_decimal(raw: &RawValue) -> Result<Value<'_>, ValueError> {
    #[derive(serde::Deserialize)]
    struct Vsd<'a> {
        scale: u32,
        #[serde(borrow)]
        value: Cow<'a, str>,
    }
    const WHAT: &str = "variable-scale decimal";
    let v: Vsd<'_> =
        serde_json::from_str(raw.get()).map_err(|error| ValueError::Json { what: WHAT, error })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.value.as_bytes())
        .map_err(|error| ValueError::NotBase64 { what: WHAT, error })?;
    Ok(decimal_of_bytes(&bytes, v.scale))
}

/// A field value as stage 2 owns it: in a record's state, each system's copy, each pending
/// delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(Decimal),
    /// Beyond 38 digits: the exact normalized text.
    WideDecimal(String),
    Float(f64),
    Date(Date),
    Time(TimeOfDay),
    Timestamp(Timestamp),
    /// Base64 text.
    Bytes(String),
    Text(String),
    /// Structs, arrays, JSON documents: their JSON text.
    Json(String),
}

impl FieldValue {
    /// Bytes it owns on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            FieldValue::Text(t)
            | FieldValue::Json(t)
            | FieldValue::WideDecimal(t)
            | FieldValue::Bytes(t) => t.capacity(),
            _ => 0,
        }
    }

    /// As an exact number of any size, `(unscaled, scale)`: for `sum`, `max` and `min` where
    /// a value is beyond 38 digits, or their result would be.
    pub fn as_wide(&self) -> Option<(num_bigint::BigInt, u32)> {
        FieldRef::from(self).as_wide()
    }

    /// An exact number as a [`Decimal`] when it fits 38 digits, else as its normalized text.
    pub fn from_wide(unscaled: num_bigint::BigInt, scale: u32) -> Self {
        match i128::try_from(&unscaled) {
            Ok(unscaled) => FieldValue::Decimal(Decimal { unscaled, scale }.normalized()),
            Err(_) => FieldValue::WideDecimal(wide_decimal_text(&unscaled, scale)),
        }
    }

    /// As an exact number, for `sum`, `max`, `min`.
    pub fn as_decimal(&self) -> Option<Decimal> {
        FieldRef::from(self).as_decimal()
    }
}

// Every value the state holds is one of these: a field's, each system's, each pending
// delivery's. 32 bytes is a string and its tag (see `Decimal`'s alignment).
const _: () = assert!(std::mem::size_of::<FieldValue>() == 32);

/// A field value as a topic's record holds it, borrowing its text: the internal topic's and
/// the conflicts topic's JSON, and the changelog's compact binary form, are this one type. A
/// decimal is its exact text in JSON and its unscaled integer and scale in the binary form
/// (`Decimal`'s serialisation asks the serializer which it is).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(Decimal),
    Float(f64),
    Text(#[serde(borrow)] Cow<'a, str>),
    Json(#[serde(borrow)] Cow<'a, str>),
    /// From here on, in the order they were added: the changelog names variants by position,
    /// and values written before a variant existed must read the same.
    WideDecimal(#[serde(borrow)] Cow<'a, str>),
    Date(Date),
    Time(TimeOfDay),
    Timestamp(Timestamp),
    Bytes(#[serde(borrow)] Cow<'a, str>),
}

impl FieldRef<'_> {
    /// As an exact number within 38 digits: an integer, a decimal, or decimal text.
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self {
            FieldRef::Int(i) => Some(Decimal {
                unscaled: i128::from(*i),
                scale: 0,
            }),
            FieldRef::Decimal(d) => Some(*d),
            FieldRef::Text(t) => Decimal::parse(t).map(Decimal::normalized),
            _ => None,
        }
    }

    /// As an exact number of any size, `(unscaled, scale)`.
    pub fn as_wide(&self) -> Option<(num_bigint::BigInt, u32)> {
        match self {
            FieldRef::WideDecimal(t) => wide_decimal_parts(t),
            FieldRef::Text(t) if Decimal::parse(t).is_none() => {
                wide_decimal_parts(t.trim_start_matches('+'))
            }
            _ => self
                .as_decimal()
                .map(|d| (num_bigint::BigInt::from(d.unscaled), d.scale)),
        }
    }
}

impl<'a> FieldRef<'a> {
    /// A decoded column value as stage 1 writes it, borrowing its text; `None` for a value
    /// Debezium did not send.
    pub fn from_value(value: &'a Value<'_>) -> Option<Self> {
        Some(match value {
            Value::Null => FieldRef::Null,
            Value::Bool(b) => FieldRef::Bool(*b),
            Value::Int(i) => FieldRef::Int(*i),
            Value::Decimal(d) => FieldRef::Decimal(d.normalized()),
            Value::WideDecimal(t) => FieldRef::WideDecimal(Cow::Borrowed(t)),
            Value::Date(d) => FieldRef::Date(*d),
            Value::Time(t) => FieldRef::Time(*t),
            Value::Timestamp(t) => FieldRef::Timestamp(*t),
            Value::Bytes(b) => FieldRef::Bytes(Cow::Borrowed(b)),
            Value::Float(f) => FieldRef::Float(*f),
            Value::Text(t) => FieldRef::Text(Cow::Borrowed(t)),
            Value::Raw(r) => FieldRef::Json(Cow::Borrowed(r.get())),
            Value::Unavailable => return None,
        })
    }
}

impl<'a> From<&'a FieldValue> for FieldRef<'a> {
    fn from(v: &'a FieldValue) -> Self {
        match v {
            FieldValue::Null => FieldRef::Null,
            FieldValue::Bool(b) => FieldRef::Bool(*b),
            FieldValue::Int(i) => FieldRef::Int(*i),
            FieldValue::Decimal(d) => FieldRef::Decimal(*d),
            FieldValue::WideDecimal(t) => FieldRef::WideDecimal(Cow::Borrowed(t)),
            FieldValue::Date(d) => FieldRef::Date(*d),
            FieldValue::Time(t) => FieldRef::Time(*t),
            FieldValue::Timestamp(t) => FieldRef::Timestamp(*t),
            FieldValue::Bytes(b) => FieldRef::Bytes(Cow::Borrowed(b)),
            FieldValue::Float(f) => FieldRef::Float(*f),
            FieldValue::Text(t) => FieldRef::Text(Cow::Borrowed(t)),
            FieldValue::Json(j) => FieldRef::Json(Cow::Borrowed(j)),
        }
    }
}

impl From<FieldRef<'_>> for FieldValue {
    fn from(v: FieldRef<'_>) -> Self {
        match v {
            FieldRef::Null => FieldValue::Null,
            FieldRef::Bool(b) => FieldValue::Bool(b),
            FieldRef::Int(i) => FieldValue::Int(i),
            FieldRef::Decimal(d) => FieldValue::Decimal(d),
            FieldRef::WideDecimal(t) => FieldValue::WideDecimal(t.into_owned()),
            FieldRef::Date(d) => FieldValue::Date(d),
            FieldRef::Time(t) => FieldValue::Time(t),
            FieldRef::Timestamp(t) => FieldValue::Timestamp(t),
            FieldRef::Bytes(b) => FieldValue::Bytes(b.into_owned()),
            FieldRef::Float(f) => FieldValue::Float(f),
            FieldRef::Text(t) => FieldValue::Text(t.into_owned()),
            FieldRef::Json(j) => FieldValue::Json(j.into_owned()),
        }
    }
}

impl serde::Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.unscaled, self.scale).serialize(serializer)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <Cow<'de, str>>::deserialize(deserializer)?;
            Decimal::parse(&text)
                .ok_or_else(|| serde::de::Error::custom(format_args!("`{text}` is not a decimal")))
        } else {
            let (unscaled, scale) = <(i128, u32)>::deserialize(deserializer)?;
            Ok(Decimal { unscaled, scale })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connect's bytes of `unscaled` (any size), base64, as a JSON string.
    fn connect_bytes(unscaled: &num_bigint::BigInt) -> Box<RawValue> {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(unscaled.to_signed_bytes_be());
        raw(&format!("\"{text}\""))
    }

    #[test]
    fn a_captured_column_reads_as_a_field_type_of_its_kind_or_from_text() {
        let t = |name| ColumnType::parse(name).unwrap();
        for (captured, canonical) in [
            ("timestamp_ms", "timestamptz"),
            ("date", "timestamp_us"),
            ("decimal(2)", "decimal"),
            ("year", "int"),
            ("string", "decimal(3)"),
            ("string", "timestamp_us"),
            ("string", "uuid"),
            ("json", "string"),
            ("int", "boolean"),
            ("bits", "bytes"),
            ("interval", "duration_us"),
        ] {
            assert!(
                t(captured).reads_as(&t(canonical)),
                "{captured} as {canonical}"
            );
        }
        for (captured, canonical) in [
            ("bytes", "uuid"),
            ("boolean", "int"),
            ("timestamp_ms", "time_us"),
            ("string", "boolean"),
            ("string", "float"),
            ("decimal(2)", "timestamptz"),
        ] {
            assert!(
                !t(captured).reads_as(&t(canonical)),
                "{captured} as {canonical}"
            );
        }
    }

    #[test]
    fn a_field_type_reads_a_schemas_text_as_the_number_it_writes() {
        let decimal = ColumnType::VariableScaleDecimal;
        let read = |text: &'static str, canonical: &ColumnType| {
            as_canonical(Value::Text(text.into()), canonical)
        };
        let (a, b) = (
            read("12.50", &decimal).unwrap(),
            read("12.500", &decimal).unwrap(),
        );
        assert_eq!(
            a.as_decimal().map(Decimal::normalized),
            b.as_decimal().map(Decimal::normalized)
        );
        assert_eq!(read("-7", &ColumnType::Integer).unwrap(), Value::Int(-7));
        assert!(matches!(
            read("123456789012345678901234567890123456789.5", &decimal).unwrap(),
            Value::WideDecimal(_)
        ));
        // Never base64 (only schemaless `precise` decimals are): text that is no number is an
        // error, not a number decoded from its letters.
        assert!(read("BNI=", &ColumnType::Decimal { scale: 2 }).is_err());
        assert!(read("12.5", &ColumnType::Integer).is_err());
        // Values read already pass through; MySQL's tinyint(1) is a boolean.
        let at = Value::Timestamp(crate::model::temporal::Timestamp {
            seconds: 1,
            nanos: 5,
        });
        let as_us = ColumnType::Semantic(Semantic::TimestampMicros);
        assert_eq!(as_canonical(at.clone(), &as_us).unwrap(), at);
        assert_eq!(
            as_canonical(Value::Int(1), &ColumnType::Boolean).unwrap(),
            Value::Bool(true)
        );
        assert!(as_canonical(Value::Int(2), &ColumnType::Boolean).is_err());
    }

    #[test]
    fn decimals_beyond_38_digits_stay_exact() {
        // numeric(50, 10) holding 40 integer digits: before, the whole record was refused.
        let unscaled: num_bigint::BigInt = "12345678901234567890123456789012345678900123456789"
            .parse()
            .unwrap();
        let bytes = connect_bytes(&unscaled);
        let v = decode_value(&bytes, Some(&ColumnType::Decimal { scale: 10 }));
        assert_eq!(
            v.unwrap(),
            Value::WideDecimal("1234567890123456789012345678901234567890.0123456789".into())
        );
        let negative = -unscaled * 1000;
        let bytes = connect_bytes(&negative);
        let v = decode_value(&bytes, Some(&ColumnType::Decimal { scale: 13 }));
        assert_eq!(
            v.unwrap(),
            Value::WideDecimal("-1234567890123456789012345678901234567890.0123456789".into()),
            "trailing zeros go, as a normalized Decimal's do"
        );
        // Within 38 digits, still a Decimal.
        let small: num_bigint::BigInt = 1250.into();
        assert_eq!(
            decode_value(
                &connect_bytes(&small),
                Some(&ColumnType::Decimal { scale: 2 })
            )
            .unwrap(),
            Value::Decimal(Decimal {
                unscaled: 1250,
                scale: 2
            })
        );
    }

    #[test]
    fn a_wide_decimal_goes_to_connect_bytes_and_back() {
        for text in [
            "1234567890123456789012345678901234567890.0123456789",
            "-99999999999999999999999999999999999999999",
            "-0.123456789012345678901234567890123456789012",
        ] {
            let (unscaled, scale) = wide_decimal_parts(text).unwrap();
            assert_eq!(wide_decimal_text(&unscaled, scale), text);
            let back = decimal_of_bytes(&unscaled.to_signed_bytes_be(), scale);
            assert_eq!(back, Value::WideDecimal(text.into()));
        }
        assert_eq!(wide_decimal_text(&0.into(), 5), "0");
    }

    #[test]
    fn a_wide_decimal_is_the_last_variant_of_the_changelog_form() {
        // Values written before it existed keep their variant numbers.
        let wide = FieldRef::WideDecimal("1.5".into());
        let bytes = postcard::to_allocvec(&wide).unwrap();
        assert_eq!(bytes[0], 7);
        assert_eq!(postcard::from_bytes::<FieldRef<'_>>(&bytes).unwrap(), wide);
        let json = serde_json::to_string(&wide).unwrap();
        assert_eq!(json, r#"{"wide_decimal":"1.5"}"#);
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn integers_beyond_f64_precision_stay_exact() {
        let r = raw("1795932223496409000");
        assert_eq!(
            decode_value(&r, None).unwrap(),
            Value::Int(1_795_932_223_496_409_000)
        );
        let r = raw("9007199254740993");
        assert_eq!(
            decode_value(&r, Some(&ColumnType::Integer)).unwrap(),
            Value::Int(9_007_199_254_740_993)
        );
    }

    #[test]
    fn integers_as_strings_when_the_schema_says_integer() {
        let r = raw(r#""-42""#);
        assert_eq!(
            decode_value(&r, Some(&ColumnType::Integer)).unwrap(),
            Value::Int(-42)
        );
        assert!(decode_value(&raw(r#""4x""#), Some(&ColumnType::Integer)).is_err());
    }

    #[test]
    fn decimals_in_every_mode() {
        // precise: 12.3450 with scale 4 → unscaled 123450 = 0x01E23A
        let r = raw(r#""AeI6""#);
        let d = Decimal {
            unscaled: 123_450,
            scale: 4,
        };
        assert_eq!(
            decode_value(&r, Some(&ColumnType::Decimal { scale: 4 })).unwrap(),
            Value::Decimal(d)
        );
        assert_eq!(d.to_string(), "12.3450");
        // negative: -1.00 with scale 2 → -100 = 0xFF9C
        let r = raw(r#""/5w=""#);
        let v = decode_value(&r, Some(&ColumnType::Decimal { scale: 2 })).unwrap();
        assert_eq!(
            v,
            Value::Decimal(Decimal {
                unscaled: -100,
                scale: 2
            })
        );
        // variable scale
        let r = raw(r#"{"scale":3,"value":"AeI6"}"#);
        let v = decode_value(&r, Some(&ColumnType::VariableScaleDecimal)).unwrap();
        assert_eq!(
            v,
            Value::Decimal(Decimal {
                unscaled: 123_450,
                scale: 3
            })
        );
        // string mode is text; the engine reads it with Decimal::parse
        assert_eq!(
            Decimal::parse("-0.05"),
            Some(Decimal {
                unscaled: -5,
                scale: 2
            })
        );
        assert_eq!(
            Decimal::parse("12"),
            Some(Decimal {
                unscaled: 12,
                scale: 0
            })
        );
        assert_eq!(
            Decimal::parse("1e3"),
            Some(Decimal {
                unscaled: 1000,
                scale: 0
            })
        );
        assert_eq!(
            Decimal::parse("1.23456781234E7"),
            Some(Decimal {
                unscaled: 123_456_781_234,
                scale: 4
            })
        );
        assert_eq!(
            Decimal::parse("2.5e-3"),
            Some(Decimal {
                unscaled: 25,
                scale: 4
            })
        );
        assert_eq!(Decimal::parse("1e"), None);
        assert_eq!(Decimal::parse("."), None);
        assert_eq!(Decimal::parse("-"), None);
        assert_eq!(
            Decimal {
                unscaled: 105_000,
                scale: 4
            }
            .normalized(),
            Decimal {
                unscaled: 105,
                scale: 1
            }
        );
        assert_eq!(
            Decimal {
                unscaled: -5,
                scale: 2
            }
            .to_string(),
            "-0.05"
        );
        // double mode: a JSON number with a fraction, kept exact
        assert_eq!(
            decode_value(&raw("19.99"), None).unwrap(),
            Value::Decimal(Decimal {
                unscaled: 1999,
                scale: 2
            })
        );
    }

    #[test]
    fn unavailable_placeholder_is_not_a_value() {
        assert_eq!(
            decode_value(&raw(r#""__debezium_unavailable_value""#), None).unwrap(),
            Value::Unavailable
        );
        assert_eq!(
            decode_value(
                &raw(r#""X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==""#),
                Some(&ColumnType::Bytes)
            )
            .unwrap(),
            Value::Unavailable
        );
        assert_eq!(
            decode_value(&raw(r#"["__debezium_unavailable_value"]"#), None).unwrap(),
            Value::Unavailable
        );
    }

    #[test]
    fn other_json_kinds() {
        assert_eq!(decode_value(&raw("null"), None).unwrap(), Value::Null);
        assert_eq!(decode_value(&raw("true"), None).unwrap(), Value::Bool(true));
        assert_eq!(
            decode_value(&raw(r#""a\"b""#), None).unwrap(),
            Value::Text("a\"b".into())
        );
        assert_eq!(
            decode_value(&raw("1.5e3"), None).unwrap(),
            Value::Decimal(Decimal {
                unscaled: 1500,
                scale: 0
            })
        );
        assert!(
            matches!(decode_value(&raw(r#""NaN""#), Some(&ColumnType::Float)).unwrap(), Value::Float(f) if f.is_nan())
        );
        assert!(matches!(
            decode_value(&raw(r#"{"x":1}"#), None).unwrap(),
            Value::Raw(_)
        ));
    }
}
