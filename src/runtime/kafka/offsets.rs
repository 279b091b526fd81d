//! The one owner of input offsets. An offset is stored for commit only when every record its
//! event caused (outputs, dead-letter copies) has been acknowledged by the broker, and only in
//! offset order per partition: a later event finishing first waits for the earlier ones.
//!
//! ```text
//! begin 7, begin 8, begin 9;  ack 8 → nothing;  ack 7 → store 9;  ack 9 → store 10
//! ```
//!
//! (The stored offset is the *next* one to read, hence +1.) The background committer of
//! librdkafka commits what is stored every `commit_interval`; [`OffsetStore::commit_now`]
//! commits synchronously on shutdown; [`rewind_group`] sets a stopped group's offsets back to
//! rebuild lost state. Nothing else in the crate may call `store_offset` or `commit` (see
//! `clippy.toml`).

use std::collections::{HashMap, VecDeque};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

/// Identifies a begun event so that its acknowledgement finds it again, even across a
/// reassignment that restarted the partition's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slot: usize,
    generation: u64,
    offset: i64,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    generation: u64,
    /// Offsets begun and not yet stored, ascending, with whether they are acknowledged.
    pending: VecDeque<(i64, bool)>,
}

/// Pure bookkeeping of in-flight offsets; no Kafka client inside, so it is tested alone.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// topic → partition → index into `partitions`; looked up by `&str`, so without allocating.
    slots: HashMap<String, HashMap<i32, usize>>,
    partitions: Vec<((String, i32), PartitionQueue)>,
    in_flight: usize,
}

impl OffsetTracker {
    /// Registers an event read at `offset` whose outputs are about to be sent.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let slot = self.slot(topic, partition);
        let queue = &mut self.partitions[slot].1;
        if queue
            .pending
            .back()
            .is_some_and(|&(last, _)| offset <= last)
        {
            // The partition was re-fetched from an earlier offset (reassignment, seek): what
            // was in flight before will be delivered again by this new read.
            self.in_flight -= queue.pending.len();
            queue.pending.clear();
            queue.generation += 1;
        }
        queue.pending.push_back((offset, false));
        self.in_flight += 1;
        Ticket {
            slot,
            generation: queue.generation,
            offset,
        }
    }

    /// Marks a ticket's outputs acknowledged. Returns the topic, partition and next offset to
    /// store when the acknowledged prefix of the partition grew.
    pub fn acknowledge(&mut self, ticket: Ticket) -> Option<(&str, i32, i64)> {
        let ((topic, partition), queue) = &mut self.partitions[ticket.slot];
        if queue.generation != ticket.generation {
            return None;
        }
        let index = queue
            .pending
            .binary_search_by_key(&ticket.offset, |&(offset, _)| offset)
            .ok()?;
        queue.pending[index].1 = true;
        let mut next = None;
        while let Some(&(offset, true)) = queue.pending.front() {
            queue.pending.pop_front();
            self.in_flight -= 1;
            next = Some(offset + 1);
        }
        next.map(|n| (topic.as_str(), *partition, n))
    }

    /// Events begun and not yet acknowledged (or acknowledged behind an unacknowledged one).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The topic and partition of a ticket still current (not of a read since forgotten).
    pub fn locate(&self, ticket: Ticket) -> Option<(String, i32)> {
        let ((topic, partition), queue) = self.partitions.get(ticket.slot)?;
        (queue.generation == ticket.generation).then(|| (topic.clone(), *partition))
    }

    /// The earliest offset begun and not yet stored: everything before it is stored, so a
    /// re-read from here redoes exactly the unfinished work.
    pub fn earliest_pending(&self, topic: &str, partition: i32) -> Option<i64> {
        let slot = *self.slots.get(topic)?.get(&partition)?;
        self.partitions[slot].1.pending.front().map(|&(o, _)| o)
    }

    /// Drops what is in flight for a revoked partition: its next owner reads it again, and a
    /// later assignment starts afresh instead of waiting behind events it will never see.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        if let Some(&slot) = self.slots.get(topic).and_then(|p| p.get(&partition)) {
            let queue = &mut self.partitions[slot].1;
            self.in_flight -= queue.pending.len();
            queue.pending.clear();
            queue.generation += 1;
        }
    }

    fn slot(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(&slot) = self.slots.get(topic).and_then(|p| p.get(&partition)) {
            return slot;
        }
        let slot = self.partitions.len();
        self.partitions
            .push(((topic.to_owned(), partition), PartitionQueue::default()));
        self.slots
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, slot);
        slot
    }
}

/// The tracker, storing offsets on the consumer it is handed: the pipeline's, or the one a
/// revocation callback is given (the same client).
#[derive(Debug, Default)]
pub struct OffsetStore {
    tracker: OffsetTracker,
}

impl OffsetStore {
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        self.tracker.begin(topic, partition, offset)
    }

    /// Records that every output of `ticket`'s event is acknowledged, and stores the offset
    /// when the partition's acknowledged prefix grew.
    /// Returns the partition and next offset when one was stored.
    pub fn acknowledged<X: ConsumerContext, C: Consumer<X>>(
        &mut self,
        consumer: &C,
        ticket: Ticket,
    ) -> Option<(&str, i32, i64)> {
        let stored = self.tracker.acknowledge(ticket);
        if let Some((topic, partition, next)) = stored {
            // rd_kafka_offset_store stores `offset + 1` itself: hand it the last acknowledged
            // offset. Passing `next` would commit one record too far, and a crash would then
            // skip a record nobody processed (the mock-cluster fault test catches exactly that).
            #[allow(clippy::disallowed_methods)]
            if let Err(e) = consumer.store_offset(topic, partition, next - 1) {
                // The partition was revoked while its events were in flight; its new owner
                // reads them again from the last commit, so nothing is lost.
                tracing::debug!(topic, partition, offset = next, error = %e, "offset not stored");
            }
        }
        stored
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    pub fn tracker(&self) -> &OffsetTracker {
        &self.tracker
    }

    /// See [`OffsetTracker::forget`].
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.tracker.forget(topic, partition);
    }

    /// Commits every stored offset now and waits for the broker's answer.
    pub fn commit_now<X: ConsumerContext, C: Consumer<X>>(consumer: &C) -> KafkaResult<()> {
        #[allow(clippy::disallowed_methods)]
        consumer.commit_consumer_state(CommitMode::Sync)
    }
}

/// Sets `group`'s committed offsets on `topic` to `lows` (each partition's earliest retained
/// offset), so that the group reads it all again: `harmony run --rebuild-state`. Fails while
/// the group has active members.
pub fn rewind_group(
    client_config: &rdkafka::ClientConfig,
    group: &str,
    topic: &str,
    lows: &[i64],
) -> KafkaResult<()> {
    let consumer = super::preflight::group_reader(client_config, group)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, &low) in lows.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Offset(low))?;
    }
    #[allow(clippy::disallowed_methods)]
    consumer.commit(&tpl, CommitMode::Sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_the_acknowledged_prefix_in_offset_order() {
        let mut t = OffsetTracker::default();
        let a = t.begin("in", 0, 7);
        let b = t.begin("in", 0, 8);
        let c = t.begin("in", 0, 9);
        assert_eq!(t.acknowledge(b), None);
        assert_eq!(t.acknowledge(a), Some(("in", 0, 9)));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.acknowledge(c), Some(("in", 0, 10)));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        let p0 = t.begin("in", 0, 100);
        let p1 = t.begin("in", 1, 5);
        let other = t.begin("other", 0, 1);
        assert_eq!(t.acknowledge(p1), Some(("in", 1, 6)));
        assert_eq!(t.acknowledge(other), Some(("other", 0, 2)));
        assert_eq!(t.acknowledge(p0), Some(("in", 0, 101)));
    }

    #[test]
    fn refetch_from_an_earlier_offset_forgets_the_old_reads() {
        let mut t = OffsetTracker::default();
        let stale = t.begin("in", 0, 10);
        let _ = t.begin("in", 0, 11);
        let fresh = t.begin("in", 0, 10);
        assert_eq!(t.in_flight(), 1);
        // The stale acknowledgement belongs to the previous read and stores nothing.
        assert_eq!(t.acknowledge(stale), None);
        assert_eq!(t.acknowledge(fresh), Some(("in", 0, 11)));
    }

    #[test]
    fn a_rewind_point_is_the_first_unstored_offset_and_stale_tickets_have_no_place() {
        let mut t = OffsetTracker::default();
        let a = t.begin("in", 3, 20);
        let b = t.begin("in", 3, 21);
        let _ = t.begin("in", 3, 22);
        assert_eq!(t.acknowledge(a), Some(("in", 3, 21)));
        assert_eq!(t.earliest_pending("in", 3), Some(21));
        assert_eq!(t.locate(b), Some(("in".to_owned(), 3)));
        t.forget("in", 3);
        assert_eq!(t.locate(b), None);
        assert_eq!(t.earliest_pending("in", 3), None);
        assert_eq!(t.earliest_pending("other", 0), None);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever order acknowledgements arrive in, the stored offsets only grow, never pass
        /// an unacknowledged offset, and end one past the last offset.
        #[test]
        fn stored_offsets_never_pass_an_unacknowledged_event(
            order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle()
        ) {
            let mut t = OffsetTracker::default();
            let tickets: Vec<Ticket> = (0..40).map(|o| t.begin("in", 0, o)).collect();
            let mut acked = [false; 40];
            let mut stored = 0;
            for o in order {
                acked[o as usize] = true;
                if let Some((_, _, next)) = t.acknowledge(tickets[o as usize]) {
                    prop_assert!(next > stored);
                    prop_assert!(acked[..next as usize].iter().all(|&a| a));
                    stored = next;
                }
            }
            prop_assert_eq!(stored, 40);
        }
    }
}
