//! Fingerprints of values and of a record's content, as the changelog keeps them and echo
//! matching compares them. They outlive the process, so they are fixed functions of what they
//! describe: XXH3 (a specified algorithm, not std's `DefaultHasher`, which may change with a
//! Rust release) over the values and the field *names* (not the ids a configuration's order
//! gives them), combined so that the order fields are declared in does not matter.
//!
//! Version 1 of the scheme; a change to it is a changelog format change
//! ([`crate::resolve::changelog::FORMAT`]).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::FieldValue;

impl FieldValue {
    /// Fixed across processes and Rust releases: fingerprints are persisted in the changelog.
    pub fn fingerprint(&self) -> u64 {
        value(self)
    }
}
use crate::model::temporal::Timestamp;
use crate::model::value::Decimal;

/// A value's fingerprint. Numbers are fingerprinted by value, so `42` and `42.00` from two
/// systems are the same content. One-shot XXH3 with the value's kind as the seed: it runs for
/// every field of every change, and the streaming hasher's setup cost more than the hashing.
pub fn value(v: &FieldValue) -> u64 {
    match v {
        FieldValue::Null => xxh3_64_with_seed(&[], 0),
        FieldValue::Bool(b) => xxh3_64_with_seed(&[u8::from(*b)], 1),
        FieldValue::Int(_) | FieldValue::Decimal(_) => {
            let mut bytes = [0u8; 20];
            if let Some(d) = v.as_decimal().map(Decimal::normalized) {
                // Copied out of the packed struct before their bytes are taken.
                let (unscaled, scale) = (d.unscaled, d.scale);
                bytes[..16].copy_from_slice(&unscaled.to_le_bytes());
                bytes[16..].copy_from_slice(&scale.to_le_bytes());
            }
            xxh3_64_with_seed(&bytes, 2)
        }
        FieldValue::Float(f) => xxh3_64_with_seed(&f.to_bits().to_le_bytes(), 3),
        FieldValue::Text(t) => xxh3_64_with_seed(t.as_bytes(), 4),
        FieldValue::Json(j) => xxh3_64_with_seed(j.as_bytes(), 5),
        // Normalized text: equal numbers, equal bytes.
        FieldValue::WideDecimal(t) => xxh3_64_with_seed(t.as_bytes(), 6),
        // A date is its midnight: a field a `date` column holds in one system and a timestamp
        // column in another (sent midnight, ARCHITECTURE.md §2) is the same content in both,
        // so the echo of one is recognised in the other.
        FieldValue::Date(d) => timestamp(Timestamp::from_date(*d)),
        FieldValue::Time(t) => xxh3_64_with_seed(&t.0.to_le_bytes(), 8),
        FieldValue::Timestamp(t) => timestamp(*t),
        FieldValue::Bytes(b) => xxh3_64_with_seed(b.as_bytes(), 10),
    }
}

fn timestamp(t: Timestamp) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&t.seconds.to_le_bytes());
    bytes[8..].copy_from_slice(&t.nanos.to_le_bytes());
    xxh3_64_with_seed(&bytes, 9)
}

/// A field name's fingerprint, computed once per field when the rules are built.
pub fn name(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// A record's content: which fields hold which values, and whether it is deleted. A sum of one
/// hash per field, so it does not depend on the order the fields come in.
#[derive(Debug, Clone, Copy)]
pub struct Content(u64);

impl Content {
    pub fn new(deleted: bool) -> Self {
        Content(xxh3_64(&[6, u8::from(deleted)]))
    }

    /// Adds a field that holds a value (a field without one adds nothing).
    pub fn add(&mut self, field_name: u64, value_fingerprint: u64) {
        let mut pair = [0u8; 16];
        pair[..8].copy_from_slice(&field_name.to_le_bytes());
        pair[8..].copy_from_slice(&value_fingerprint.to_le_bytes());
        self.0 = self.0.wrapping_add(xxh3_64(&pair));
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_fixed_values() {
        // Pinned: a change here makes every persisted fingerprint unreadable as an echo. If it
        // must change, bump the changelog format and re-fingerprint older values on reading.
        assert_eq!(
            value(&FieldValue::Int(42)),
            value(&FieldValue::Decimal(Decimal::parse("42.00").unwrap()))
        );
        assert_eq!(
            value(&FieldValue::Text("Cup".into())),
            0xf190_d31a_8b68_012d
        );
        assert_eq!(name("quantity"), xxh3_64(b"quantity"));
    }

    #[test]
    fn content_does_not_depend_on_field_order() {
        let (a, b) = (
            (name("price"), value(&FieldValue::Int(5))),
            (name("name"), value(&FieldValue::Text("Cup".into()))),
        );
        let mut one = Content::new(false);
        one.add(a.0, a.1);
        one.add(b.0, b.1);
        let mut other = Content::new(false);
        other.add(b.0, b.1);
        other.add(a.0, a.1);
        assert_eq!(one.finish(), other.finish());
        let mut swapped = Content::new(false);
        swapped.add(a.0, b.1);
        swapped.add(b.0, a.1);
        assert_ne!(
            one.finish(),
            swapped.finish(),
            "values belong to their fields"
        );
        assert_ne!(Content::new(false).finish(), Content::new(true).finish());
    }

    #[test]
    fn a_date_is_the_same_content_as_its_midnight() {
        use crate::model::temporal::Date;
        let day = Date::parse("2024-02-29").unwrap();
        let midnight = FieldValue::Timestamp(Timestamp::from_date(day));
        assert_eq!(value(&FieldValue::Date(day)), value(&midnight));
        let later = FieldValue::Timestamp(Timestamp::parse("2024-02-29T00:00:01Z").unwrap());
        assert_ne!(value(&FieldValue::Date(day)), value(&later));
        // A time of day is not a timestamp of the epoch's day.
        assert_ne!(
            value(&FieldValue::Time(crate::model::temporal::TimeOfDay(0))),
            value(&FieldValue::Timestamp(Timestamp::from_date(Date(0))))
        );
    }
}
