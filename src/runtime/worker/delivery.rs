//! The delivery guarantee a pipeline runs under, with the state each needs
//! (ARCHITECTURE.md §5 "Order of durability").
//!
//! At least once, an input offset is stored once every record it caused is acknowledged —
//! for a stage with state, its outputs first, then its changelog writes. Exactly once, an
//! event's records and its changelog writes go into the stage's open Kafka transaction, and
//! its offset commits with the batch.

use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::StreamConsumer;

use super::durability::Durability;
use super::ownership::OwnershipContext;
use super::transaction::Transaction;
use super::PendingCompletion;
use crate::runtime::kafka::offsets::OffsetStore;

// One per pipeline, made once: its size never moves on a hot path.
#[allow(clippy::large_enum_variant)]
pub(super) enum Delivery<'c> {
    AtLeastOnce {
        /// The one owner of the input offsets: stored in order as events complete.
        offsets: OffsetStore<'c, StreamConsumer<OwnershipContext>, OwnershipContext>,
        /// A stage with state: outputs → changelog → offset.
        durability: Durability,
        /// Each event's records, waiting for their acknowledgements.
        deliveries: FuturesUnordered<PendingCompletion>,
    },
    ExactlyOnce {
        transaction: Arc<Transaction>,
    },
}

impl<'c> Delivery<'c> {
    pub(super) fn new(
        consumer: &'c StreamConsumer<OwnershipContext>,
        transaction: Option<Arc<Transaction>>,
    ) -> Self {
        match transaction {
            Some(transaction) => Delivery::ExactlyOnce { transaction },
            None => Delivery::AtLeastOnce {
                offsets: OffsetStore::new(consumer),
                durability: Durability::default(),
                deliveries: FuturesUnordered::new(),
            },
        }
    }

    pub(super) fn transaction(&self) -> Option<&Arc<Transaction>> {
        match self {
            Delivery::ExactlyOnce { transaction } => Some(transaction),
            Delivery::AtLeastOnce { .. } => None,
        }
    }

    /// Events read and not yet stored, in either phase.
    pub(super) fn in_flight(&self) -> usize {
        match self {
            Delivery::AtLeastOnce {
                offsets,
                durability,
                ..
            } => offsets.in_flight() + durability.in_flight(),
            Delivery::ExactlyOnce { .. } => 0,
        }
    }

    /// A partition's unfinished work is dropped: revoked, or to be read again.
    pub(super) fn forget(&mut self, topic: &str, partition: i32) {
        if let Delivery::AtLeastOnce {
            offsets,
            durability,
            ..
        } = self
        {
            offsets.forget(topic, partition);
            durability.forget(topic, partition);
        }
    }

    /// The earliest offset of the partition read and not yet stored, in either phase.
    pub(super) fn earliest_unstored(&self, topic: &str, partition: i32) -> Option<i64> {
        let Delivery::AtLeastOnce {
            offsets,
            durability,
            ..
        } = self
        else {
            return None;
        };
        [
            offsets.tracker().earliest_pending(topic, partition),
            durability.tracker().earliest_pending(topic, partition),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
