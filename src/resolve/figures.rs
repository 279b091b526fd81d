//! What the state metrics report of one partition — records, bytes, targets behind, unsettled
//! manual conflicts — kept up to date change by change.
//!
//! They were once a pass over every record every few seconds, on stage 2's thread: at a million
//! records that pass walked gigabytes of state, a seventh of the process's CPU time, and held up
//! every change behind it. Now each change takes its record's share out before it is applied
//! and puts it back after, while the record is in cache; a summary costs nothing.

use std::collections::BTreeMap;

use crate::ingest::mapping::EntityId;
use crate::model::clock::SystemId;
use crate::resolve::engine::RecordState;

/// A multiset of times: how many, and the earliest.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Times {
    count: usize,
    at: BTreeMap<i64, usize>,
}

impl Times {
    pub fn add(&mut self, ts_ms: i64) {
        self.count += 1;
        *self.at.entry(ts_ms).or_default() += 1;
    }

    pub fn remove(&mut self, ts_ms: i64) {
        if let Some(n) = self.at.get_mut(&ts_ms) {
            *n -= 1;
            self.count -= 1;
            if *n == 0 {
                self.at.remove(&ts_ms);
            }
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn oldest(&self) -> Option<i64> {
        self.at.keys().next().copied()
    }
}

/// One partition's figures, as the sum of its records' shares.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    pub records: usize,
    /// Keys and record states on the heap (the maps' own buckets are added when reported).
    pub bytes: usize,
    /// By target system id: the source commit time of each record's oldest delivery that
    /// target has not been seen applying.
    pub behind: Vec<Times>,
    /// By entity id: since when each unsettled manual conflict has been held.
    pub unsettled: Vec<Times>,
}

impl Figures {
    /// A record first seen, under a key taking `key_bytes`.
    pub fn add_record(&mut self, key_bytes: usize) {
        self.records += 1;
        self.bytes += key_bytes;
    }

    /// A record taken off (its share already taken out), whose key took `key_bytes`.
    pub fn remove_record(&mut self, key_bytes: usize) {
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(key_bytes);
    }

    /// Takes `state`'s share out, before a change; `echoing`: the entity's targets that echo.
    pub fn take_out(&mut self, echoing: &[SystemId], entity: EntityId, state: &RecordState) {
        self.take_out_sized(echoing, entity, state, state.heap_bytes());
    }

    /// [`Figures::take_out`] with the state's [`RecordState::heap_bytes`] already counted.
    pub fn take_out_sized(
        &mut self,
        echoing: &[SystemId],
        entity: EntityId,
        state: &RecordState,
        heap_bytes: usize,
    ) {
        self.bytes = self.bytes.saturating_sub(heap_bytes);
        for &target in echoing {
            if let Some(ts_ms) = oldest_pending(state, target) {
                self.behind_of(target).remove(ts_ms);
            }
        }
        for &(_, since) in &state.unsettled {
            self.unsettled_of(entity).remove(since);
        }
    }

    /// Puts `state`'s share back, after a change (or as read from the changelog).
    pub fn put_in(&mut self, echoing: &[SystemId], entity: EntityId, state: &RecordState) {
        self.bytes += state.heap_bytes();
        for &target in echoing {
            if let Some(ts_ms) = oldest_pending(state, target) {
                self.behind_of(target).add(ts_ms);
            }
        }
        for &(_, since) in &state.unsettled {
            self.unsettled_of(entity).add(since);
        }
    }

    fn behind_of(&mut self, target: SystemId) -> &mut Times {
        let i = target.0 as usize;
        if self.behind.len() <= i {
            self.behind.resize_with(i + 1, Times::default);
        }
        &mut self.behind[i]
    }

    fn unsettled_of(&mut self, entity: EntityId) -> &mut Times {
        let i = entity.0 as usize;
        if self.unsettled.len() <= i {
            self.unsettled.resize_with(i + 1, Times::default);
        }
        &mut self.unsettled[i]
    }
}

fn oldest_pending(state: &RecordState, target: SystemId) -> Option<i64> {
    state
        .system(target)
        .and_then(|s| s.pending.front())
        .map(|d| d.ts_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_count_and_keep_the_oldest_through_removals() {
        let mut times = Times::default();
        for t in [30, 10, 10, 20] {
            times.add(t);
        }
        assert_eq!((times.count(), times.oldest()), (4, Some(10)));
        times.remove(10);
        assert_eq!((times.count(), times.oldest()), (3, Some(10)));
        times.remove(10);
        assert_eq!((times.count(), times.oldest()), (2, Some(20)));
        times.remove(99);
        assert_eq!(times.count(), 2, "a time never added changes nothing");
        times.remove(20);
        times.remove(30);
        assert_eq!((times.count(), times.oldest()), (0, None));
    }
}
