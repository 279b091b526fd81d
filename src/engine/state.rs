//! What stage 2 keeps per logical record (DESIGN §4): its version vector, each field's value
//! with the dot of the change that wrote it, and per system what that system is known to have
//! seen, hold and be sent.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::clock::{Dot, SystemId, VersionVector};
use crate::envelope::SourcePosition;
use crate::mapping::FieldId;
use crate::value::Decimal;

/// A field value owned by the state.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(Decimal),
    Float(f64),
    Text(String),
    /// Structs, arrays, JSON documents: their JSON text.
    Json(String),
}

impl FieldValue {
    /// As an exact number, for `sum`, `max`, `min`.
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self {
            FieldValue::Int(i) => Some(Decimal {
                unscaled: i128::from(*i),
                scale: 0,
            }),
            FieldValue::Decimal(d) => Some(*d),
            FieldValue::Text(t) => Decimal::parse(t).map(Decimal::normalized),
            _ => None,
        }
    }

    /// Stable across processes (SipHash with fixed keys), so fingerprints survive a restart.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash_into(&mut h);
        h.finish()
    }

    fn hash_into(&self, h: &mut DefaultHasher) {
        match self {
            FieldValue::Null => 0u8.hash(h),
            FieldValue::Bool(b) => (1u8, b).hash(h),
            // Numbers hash by value, so 42 and 42.00 from two systems are the same content.
            FieldValue::Int(_) | FieldValue::Decimal(_) => {
                let d = self.as_decimal().map(Decimal::normalized);
                (2u8, d.map(|d| (d.unscaled, d.scale))).hash(h)
            }
            FieldValue::Float(f) => (3u8, f.to_bits()).hash(h),
            FieldValue::Text(t) => (4u8, t).hash(h),
            FieldValue::Json(j) => (5u8, j).hash(h),
        }
    }
}

/// A field's current value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldState {
    pub value: FieldValue,
    pub dot: Dot,
    /// Source commit time of the change that wrote it.
    pub ts_ms: i64,
    /// `merge` fields: each element with the dots that added it; empty otherwise.
    pub tags: super::orset::Tags,
}

/// One publication to a target not yet seen back from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub clock: VersionVector,
    /// Fingerprint of the content sent: the fields that target holds.
    pub fingerprint: u64,
    /// Field values sent, for `sum` bases when the echo arrives.
    pub values: Vec<(FieldId, FieldValue)>,
    /// Sent as deleted.
    pub deleted: bool,
}

/// What harmony knows of one system for one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemState {
    /// The record state this system is known to have (its causal context).
    pub seen: VersionVector,
    /// What it last held, per field (by its own change or by applying a delivery).
    pub held: Vec<(FieldId, FieldValue)>,
    /// Whether it last held the record as deleted.
    pub held_deleted: bool,
    /// Highest source position applied from it.
    pub position: Option<SourcePosition>,
    /// Deliveries not yet seen back, oldest first.
    pub pending: VecDeque<Delivery>,
    /// Deliveries overtaken by a later one's echo before they were seen back, oldest first.
    pub superseded: VecDeque<Delivery>,
}

impl SystemState {
    pub fn held(&self, field: FieldId) -> Option<&FieldValue> {
        sorted_get(&self.held, field)
    }

    pub fn set_held(&mut self, field: FieldId, value: FieldValue) {
        *sorted_entry(&mut self.held, field, || FieldValue::Null) = value;
    }
}

/// Small maps kept as vectors sorted by key: a record has a handful of fields and systems,
/// and a sorted vector costs less memory per record than a map.
fn sorted_get<K: Ord + Copy, V>(entries: &[(K, V)], key: K) -> Option<&V> {
    entries
        .binary_search_by_key(&key, |(k, _)| *k)
        .ok()
        .map(|i| &entries[i].1)
}

fn sorted_entry<K: Ord + Copy, V>(
    entries: &mut Vec<(K, V)>,
    key: K,
    new: impl FnOnce() -> V,
) -> &mut V {
    let i = match entries.binary_search_by_key(&key, |(k, _)| *k) {
        Ok(i) => i,
        Err(i) => {
            entries.insert(i, (key, new()));
            i
        }
    };
    &mut entries[i].1
}

/// A logical record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordState {
    pub clock: VersionVector,
    /// Field values by field id.
    pub fields: Vec<(FieldId, FieldState)>,
    /// Whether the record exists, and the dot that decided it.
    pub deleted: Option<Dot>,
    /// Per system, by system id.
    pub systems: Vec<(SystemId, SystemState)>,
}

impl RecordState {
    pub fn field(&self, field: FieldId) -> Option<&FieldState> {
        sorted_get(&self.fields, field)
    }

    pub fn set_field(&mut self, field: FieldId, state: FieldState) {
        match self.fields.binary_search_by_key(&field, |(f, _)| *f) {
            Ok(i) => self.fields[i].1 = state,
            Err(i) => self.fields.insert(i, (field, state)),
        }
    }

    pub fn system(&self, system: SystemId) -> Option<&SystemState> {
        sorted_get(&self.systems, system)
    }

    pub fn system_mut(&mut self, system: SystemId) -> &mut SystemState {
        sorted_entry(&mut self.systems, system, SystemState::default)
    }
}
