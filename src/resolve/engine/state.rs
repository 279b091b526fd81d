//! What stage 2 keeps per logical record (ARCHITECTURE.md §4): its version vector, each field's value
//! with the dot of the change that wrote it, and per system what that system is known to have
//! seen, hold and be sent.

use std::collections::VecDeque;

use super::position::Applied;
use crate::ingest::mapping::FieldId;
use crate::model::clock::{Dot, SystemId, VersionVector};
use crate::model::value::FieldValue;

/// A field's current value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldState {
    pub value: FieldValue,
    pub dot: Dot,
    /// Source commit time of the change that wrote it, in microseconds (as fine as its source
    /// gave it): `lww` between two writes in one millisecond goes by it.
    pub ts_us: i64,
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
    /// Source commit time of the change that made it: how long the target has been behind is
    /// measured from there (the same origin as end-to-end latency).
    pub ts_ms: i64,
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
    /// The last change applied from it: its source position and commit time (dedup).
    pub applied: Option<Applied>,
    /// Exact mode: the version column of its row as last captured. Only its sink writes that
    /// column, so a change that carries another version was written by the sink.
    pub row_version: Option<VersionVector>,
    /// Deliveries not yet seen back, oldest first.
    pub pending: VecDeque<Delivery>,
    /// Deliveries seen back, or overtaken by a later one's echo before they were, oldest first:
    /// a change equal to one of them is its system's sink writing it late (a late echo), not a
    /// fresh write of stale values.
    pub superseded: VecDeque<Delivery>,
}

impl SystemState {
    pub fn held(&self, field: FieldId) -> Option<&FieldValue> {
        sorted_get(&self.held, field)
    }

    pub fn set_held(&mut self, field: FieldId, value: FieldValue) {
        hold(&mut self.held, field, value);
    }
}

/// Sets what a system holds of `field` in its `held` values (for a caller that borrows the
/// system's other parts at the same time).
pub(super) fn hold(held: &mut Vec<(FieldId, FieldValue)>, field: FieldId, value: FieldValue) {
    *sorted_entry(held, field, || FieldValue::Null) = value;
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
    /// Fields holding a `manual` conflict no operator has settled, with the source commit time
    /// of the change that raised it, by field id.
    pub unsettled: Vec<(FieldId, i64)>,
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

    /// Gives back what its vectors grew past their contents. A record's fields and systems stop
    /// growing after its first few changes, but growth doubles capacity (5 fields held room for
    /// 8), and a drained delivery queue kept its buffer: over a million records that slack was a
    /// quarter of the state. Cheap when there is none, as for most changes of a known record.
    pub fn shrink_to_fit(&mut self) {
        self.fields.shrink_to_fit();
        self.systems.shrink_to_fit();
        self.unsettled.shrink_to_fit();
        for (_, system) in &mut self.systems {
            system.held.shrink_to_fit();
            system.seen.shrink_to_fit();
            if let Some(v) = system.row_version.as_mut() {
                v.shrink_to_fit();
            }
            system.pending.shrink_to_fit();
            system.superseded.shrink_to_fit();
        }
        self.clock.shrink_to_fit();
    }

    /// Marks `field` as holding a manual conflict; a field already unsettled keeps the time it
    /// has been so.
    pub fn unsettle(&mut self, field: FieldId, ts_ms: i64) {
        sorted_entry(&mut self.unsettled, field, || ts_ms);
    }

    /// A write that had seen the field's value settles whatever conflict it held.
    pub fn settle(&mut self, field: FieldId) {
        if let Ok(i) = self.unsettled.binary_search_by_key(&field, |(f, _)| *f) {
            self.unsettled.remove(i);
        }
    }

    /// Bytes this record's state owns on the heap, by the capacities it holds (the allocator's
    /// own overhead is not counted).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let values = |v: &Vec<(FieldId, FieldValue)>| -> usize {
            v.capacity() * size_of::<(FieldId, FieldValue)>()
                + v.iter().map(|(_, value)| value.heap_bytes()).sum::<usize>()
        };
        let delivery = |d: &Delivery| d.clock.heap_bytes() + values(&d.values);
        let fields: usize = self
            .fields
            .iter()
            .map(|(_, f)| {
                f.value.heap_bytes()
                    + f.tags.capacity() * size_of::<(String, Vec<Dot>)>()
                    + f.tags
                        .iter()
                        .map(|(e, dots)| e.capacity() + dots.capacity() * size_of::<Dot>())
                        .sum::<usize>()
            })
            .sum();
        let systems: usize = self
            .systems
            .iter()
            .map(|(_, s)| {
                s.seen.heap_bytes()
                    + s.row_version.as_ref().map_or(0, VersionVector::heap_bytes)
                    + values(&s.held)
                    + (s.pending.capacity() + s.superseded.capacity()) * size_of::<Delivery>()
                    + s.pending
                        .iter()
                        .chain(&s.superseded)
                        .map(delivery)
                        .sum::<usize>()
            })
            .sum();
        self.clock.heap_bytes()
            + self.fields.capacity() * size_of::<(FieldId, FieldState)>()
            + fields
            + self.systems.capacity() * size_of::<(SystemId, SystemState)>()
            + systems
            + self.unsettled.capacity() * size_of::<(FieldId, i64)>()
    }
}
