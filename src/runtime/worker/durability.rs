//! Stage 2's order of durability (ARCHITECTURE.md §5): an event's outputs acknowledged → its record's
//! changelog value written and acknowledged → its input offset stored. A crash anywhere then
//! replays into a state that either lacks the event (redone) or holds it with its outputs
//! already delivered (deduplicated); the reverse order would let a replay be deduplicated away
//! while its outputs were lost.
//!
//! Changelog values are written in input-offset order per partition, so the compacted log's
//! latest value of a record is always its newest state, even when a later event's outputs are
//! acknowledged first.

use std::collections::{HashMap, VecDeque};

use crate::model::stage::ChangelogWrites;
use crate::runtime::kafka::offsets::{OffsetTracker, Ticket};

#[derive(Default)]
pub struct Durability {
    /// First phase: the events' outputs.
    outputs: OffsetTracker,
    /// Per input partition, in offset order: begun events and the value each will write.
    queued: HashMap<i32, VecDeque<(i64, ChangelogWrites)>>,
}

impl Durability {
    /// Registers an event whose outputs are about to be sent, and what it will write to the
    /// changelog once they are acknowledged.
    pub fn begin(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        changelog: ChangelogWrites,
    ) -> Ticket {
        let queue = self.queued.entry(partition).or_default();
        if queue.back().is_some_and(|&(last, _)| offset <= last) {
            // Re-fetched from an earlier offset: what was queued is read again.
            queue.clear();
        }
        queue.push_back((offset, changelog));
        self.outputs.begin(topic, partition, offset)
    }

    /// Records that `ticket`'s outputs are acknowledged; returns, in offset order, the events
    /// of its partition that are now ready for their changelog write.
    pub fn outputs_acknowledged(&mut self, ticket: Ticket) -> Vec<(i32, i64, ChangelogWrites)> {
        let Some((_, partition, next)) = self.outputs.acknowledge(ticket) else {
            return Vec::new();
        };
        let Some(queue) = self.queued.get_mut(&partition) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while queue.front().is_some_and(|&(offset, _)| offset < next) {
            if let Some((offset, value)) = queue.pop_front() {
                ready.push((partition, offset, value));
            }
        }
        ready
    }

    /// A revoked partition: nothing of it is written any more.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.queued.remove(&partition);
        self.outputs.forget(topic, partition);
    }

    pub fn tracker(&self) -> &OffsetTracker {
        &self.outputs
    }

    pub fn in_flight(&self) -> usize {
        self.outputs.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u8) -> ChangelogWrites {
        ChangelogWrites {
            tombstones: Vec::new(),
            value: Some((format!("k{n}"), vec![n])),
        }
    }

    #[test]
    fn changelog_values_are_released_in_offset_order_once_outputs_are_acknowledged() {
        let mut d = Durability::default();
        let a = d.begin("in", 0, 10, value(1));
        let b = d.begin("in", 0, 11, ChangelogWrites::default());
        let c = d.begin("in", 0, 12, value(3));
        assert!(
            d.outputs_acknowledged(c).is_empty(),
            "12 waits for 10 and 11"
        );
        assert!(d.outputs_acknowledged(b).is_empty());
        let ready = d.outputs_acknowledged(a);
        assert_eq!(
            ready,
            vec![
                (0, 10, value(1)),
                (0, 11, ChangelogWrites::default()),
                (0, 12, value(3))
            ]
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_revoked_partition_releases_nothing() {
        let mut d = Durability::default();
        let a = d.begin("in", 1, 5, value(1));
        d.forget("in", 1);
        assert!(d.outputs_acknowledged(a).is_empty());
        assert_eq!(d.in_flight(), 0);
        // Assigned again later, from a later offset: nothing stale blocks it.
        let b = d.begin("in", 1, 9, value(2));
        assert_eq!(d.outputs_acknowledged(b), vec![(1, 9, value(2))]);
    }
}
