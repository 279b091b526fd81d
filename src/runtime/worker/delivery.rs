//! The delivery guarantee a pipeline runs under, with the state each needs
//! (ARCHITECTURE.md §5 "Order of durability").
//!
//! At least once, an input offset is stored once every record it caused is acknowledged —
//! for a stage with state, its outputs first, then its changelog writes ([`Acks`], shared with
//! the revocation callback). Exactly once, an event's records and its changelog writes go into
//! the stage's open Kafka transaction, and its offset commits with the batch.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;

use super::acks::{self, SharedAcks};
use super::transaction::Transaction;

/// One per stage, shared by its pipeline and its consumer's revocation callback (a clone
/// shares the same state).
#[derive(Clone)]
pub(super) enum Delivery {
    AtLeastOnce(SharedAcks),
    ExactlyOnce { transaction: Arc<Transaction> },
}

impl Delivery {
    /// The producer the stage writes with: its transaction's, or the worker's `shared` one.
    pub(super) fn producer<'p>(&'p self, shared: &'p FutureProducer) -> &'p FutureProducer {
        self.transaction().map_or(shared, |t| t.producer())
    }

    pub(super) fn transaction(&self) -> Option<&Arc<Transaction>> {
        match self {
            Delivery::ExactlyOnce { transaction } => Some(transaction),
            Delivery::AtLeastOnce(_) => None,
        }
    }

    pub(super) fn acks(&self) -> Option<&SharedAcks> {
        match self {
            Delivery::AtLeastOnce(acks) => Some(acks),
            Delivery::ExactlyOnce { .. } => None,
        }
    }

    /// Events read and not yet stored, in either phase.
    pub(super) fn in_flight(&self) -> usize {
        self.acks().map_or(0, |a| acks::lock(a).in_flight())
    }

    /// A partition's unfinished work is dropped: revoked, or to be read again.
    pub(super) fn forget(&self, topic: &str, partition: i32) {
        if let Some(shared) = self.acks() {
            let mut acks = acks::lock(shared);
            acks.offsets.forget(topic, partition);
            acks.durability.forget(topic, partition);
        }
    }

    /// The earliest offset of the partition read and not yet stored, in either phase.
    pub(super) fn earliest_unstored(&self, topic: &str, partition: i32) -> Option<i64> {
        let acks = acks::lock(self.acks()?);
        [
            acks.offsets.tracker().earliest_pending(topic, partition),
            acks.durability.tracker().earliest_pending(topic, partition),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether events wait for acknowledgements.
    pub(super) fn has_deliveries(&self) -> bool {
        self.acks()
            .is_some_and(|a| !acks::lock(a).deliveries.is_empty())
    }
}

/// The next event whose records are all acknowledged (none when nothing is in flight). The
/// lock is held only while polling, never across an await: the revocation callback, which runs
/// while the pipeline polls its consumer, takes it too.
pub(super) async fn next_completion(delivery: &Delivery) -> Option<super::Completion> {
    use futures_util::StreamExt;
    let shared = delivery.acks()?;
    std::future::poll_fn(|cx| acks::lock(shared).deliveries.poll_next_unpin(cx)).await
}
