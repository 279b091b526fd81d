//! At least once: the events in flight, and how an acknowledged one becomes a stored offset
//! (ARCHITECTURE.md §5). Shared by the pipeline, which settles acknowledgements as they
//! arrive, and the consumer's revocation callback, which settles those of the partitions it is
//! about to release so that their next owners read none of them again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::durability::Durability;
use super::plan::Plan;
use super::rewind;
use super::{Completion, Destination, PendingCompletion, Phase, Sent};
use crate::runtime::kafka::offsets::{OffsetStore, Ticket};
use crate::runtime::telemetry::Metrics;

#[derive(Default)]
pub(super) struct Acks {
    /// The one owner of the input offsets: stored in order as events complete.
    pub(super) offsets: OffsetStore,
    /// A stage with state: outputs → changelog → offset.
    pub(super) durability: Durability,
    /// Each event's records, waiting for their acknowledgements.
    pub(super) deliveries: FuturesUnordered<PendingCompletion>,
}

pub(super) type SharedAcks = Arc<Mutex<Acks>>;

/// Locks the shared state. A panic while it was held leaves bookkeeping that at worst stores
/// an offset late: taken as it is.
pub(super) fn lock(acks: &SharedAcks) -> MutexGuard<'_, Acks> {
    acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What settling one completion came to.
pub(super) enum Settled {
    Done,
    /// A record failed with an error that retrying can mend: the event's partition is read
    /// again from its earliest unstored offset.
    Retry {
        ticket: Ticket,
        phase: Phase,
        error: KafkaError,
    },
    /// A record failed for good: the worker stops without storing the offset.
    Fatal {
        topic: String,
        error: KafkaError,
    },
}

/// What settling needs from the pipeline it runs for.
pub(super) struct Settling<'a> {
    pub(super) producer: &'a FutureProducer,
    pub(super) plan: &'a Plan,
    pub(super) metrics: &'a Metrics,
    /// Whether the worker still owns a partition: a revoked one's work is not written on.
    pub(super) owns: &'a dyn Fn(&str, i32) -> bool,
}

impl Acks {
    /// Events read and not yet stored, in either phase.
    pub(super) fn in_flight(&self) -> usize {
        self.offsets.in_flight() + self.durability.in_flight()
    }

    /// The partition of a completion's event, while it is still tracked.
    pub(super) fn locate(&self, ticket: Ticket, phase: Phase) -> Option<(String, i32)> {
        match phase {
            Phase::Stored => self.offsets.tracker().locate(ticket),
            Phase::Outputs => self.durability.tracker().locate(ticket),
        }
    }

    /// Registers an event's records as in flight until acknowledged.
    pub(super) fn track(
        &mut self,
        ticket: Ticket,
        phase: Phase,
        sends: Vec<(Destination, Sent)>,
        source_ts_ms: Option<i64>,
    ) {
        self.deliveries.push(Box::pin(async move {
            let mut results = Vec::with_capacity(sends.len());
            for (destination, delivery) in sends {
                let result = match delivery {
                    Err(refused) => Err(refused),
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error),
                        // The producer was dropped with the record still queued.
                        Err(_canceled) => Err(KafkaError::Canceled),
                    },
                };
                results.push((destination, result));
            }
            Completion {
                ticket,
                phase,
                source_ts_ms,
                results,
            }
        }));
    }

    /// One phase of an event acknowledged: counted; its last phase stores its offset (each
    /// stored offset is reported to `stored`); the outputs phase of a stage with state writes
    /// the changelog values of the events now ready, in offset order, and tracks them.
    pub(super) fn settle<X: ConsumerContext, C: Consumer<X>>(
        &mut self,
        done: Completion,
        consumer: &C,
        with: &Settling<'_>,
        stored: &mut dyn FnMut(&str, i32, i64),
    ) -> Settled {
        let mut failed = None;
        for (destination, result) in done.results {
            let topic = destination_topic(with.plan, &destination);
            match result {
                Ok(()) if destination == Destination::DeadLetter => {
                    with.metrics.dead_letter_acknowledged(topic)
                }
                Ok(()) => with.metrics.output_acknowledged(topic),
                Err(error) if rewind::is_retriable(&error) => {
                    failed = failed.or(Some(error));
                }
                Err(error) => {
                    return Settled::Fatal {
                        topic: topic.to_owned(),
                        error,
                    }
                }
            }
        }
        if let Some(error) = failed {
            return Settled::Retry {
                ticket: done.ticket,
                phase: done.phase,
                error,
            };
        }
        if let Some(ts) = done.source_ts_ms {
            with.metrics.end_to_end(ts);
        }
        let ready = match done.phase {
            Phase::Stored => {
                if let Some((topic, partition, next)) =
                    self.offsets.acknowledged(consumer, done.ticket)
                {
                    stored(topic, partition, next);
                }
                return Settled::Done;
            }
            Phase::Outputs => self.durability.outputs_acknowledged(done.ticket),
        };
        let internal_topic = with.plan.internal_topic.as_str();
        for (partition, offset, changelog) in ready {
            if !(with.owns)(internal_topic, partition) {
                continue;
            }
            let ticket = self.offsets.begin(internal_topic, partition, offset);
            if changelog.is_empty() {
                if let Some((topic, partition, next)) = self.offsets.acknowledged(consumer, ticket)
                {
                    stored(topic, partition, next);
                }
                continue;
            }
            let sends = changelog
                .iter()
                .map(|(key, state)| {
                    let record = changelog_record(with.plan, partition, key, state);
                    (Destination::Changelog, send_now(with.producer, record))
                })
                .collect();
            self.track(ticket, Phase::Stored, sends, None);
        }
        Settled::Done
    }
}

/// The topic a destination names.
pub(super) fn destination_topic<'p>(plan: &'p Plan, destination: &'p Destination) -> &'p str {
    match destination {
        Destination::Publish(topic) => plan.topic_name(topic),
        Destination::Changelog => &plan.state_topic,
        Destination::DeadLetter => &plan.dead_letter_topic,
    }
}

/// A record's state (`None`: its tombstone) for the changelog, partition for partition: the
/// internal partition's next owner restores from exactly this changelog partition.
pub(super) fn changelog_record<'r>(
    plan: &'r Plan,
    partition: i32,
    key: &'r str,
    state: Option<&'r [u8]>,
) -> FutureRecord<'r, [u8], [u8]> {
    FutureRecord {
        topic: &plan.state_topic,
        partition: Some(partition),
        payload: state,
        key: Some(key.as_bytes()),
        timestamp: None,
        headers: None,
    }
}

/// One hand-over to the producer: its answer, or the record back while its local queue is full.
pub(super) fn offer<'r>(
    producer: &FutureProducer,
    record: FutureRecord<'r, [u8], [u8]>,
) -> Result<Sent, FutureRecord<'r, [u8], [u8]>> {
    match producer.send_result(record) {
        Ok(delivery) => Ok(Ok(delivery)),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
            Err(returned)
        }
        // Not retryable locally (e.g. message too large): it takes the path of a failed
        // delivery, so the offset is not stored.
        Err((error, _)) => Ok(Err(error)),
    }
}

/// How long a full local queue is waited on before the record is offered again.
pub(super) const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

/// Hands a record to the producer from code that cannot wait asynchronously (a revocation
/// callback): while its local queue is full, the thread waits for the producer's own thread to
/// drain it.
pub(super) fn send_now(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Sent {
    loop {
        match offer(producer, record) {
            Ok(sent) => return sent,
            Err(returned) => {
                record = returned;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
        }
    }
}

/// The revocation's part: every record is flushed (bounded by `deadline`), and the events of
/// the revoked partitions whose records are now all acknowledged are settled — their offsets
/// stored, a stage with state's changelog values written and flushed in turn — until nothing
/// more settles. Returns how many events were settled. What stays unacknowledged is forgotten
/// with the partition and read again by its next owner.
pub(super) fn settle_revoked<X: ConsumerContext, C: Consumer<X>>(
    acks: &SharedAcks,
    consumer: &C,
    with: &Settling<'_>,
    revoked: &dyn Fn(&str, i32) -> bool,
    deadline: Instant,
) -> usize {
    use futures_util::StreamExt;
    let waker = futures_util::task::noop_waker_ref();
    let mut context = std::task::Context::from_waker(waker);
    let mut total = 0;
    loop {
        if let Err(error) = rdkafka::producer::Producer::flush(
            with.producer,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            tracing::warn!(%error, "records still unacknowledged at revocation; their events will be read again by the next owner");
        }
        // The pipeline holds the lock only between its own awaits, never while it polls the
        // consumer (where this callback runs): a lock held now would be a bug, not a wait.
        let Ok(mut acks) = acks.try_lock() else {
            tracing::warn!("in-flight events busy at revocation; they will be read again");
            return total;
        };
        let mut settled = 0;
        let mut others = Vec::new();
        while let std::task::Poll::Ready(Some(done)) = acks.deliveries.poll_next_unpin(&mut context)
        {
            let of_revoked = acks
                .locate(done.ticket, done.phase)
                .is_some_and(|(topic, partition)| revoked(&topic, partition));
            if !of_revoked {
                others.push(done);
                continue;
            }
            settled += 1;
            // A failure is not stored: the partition's next owner reads the event again.
            let _ = acks.settle(done, consumer, with, &mut |_, _, _| {});
        }
        // The pipeline settles the partitions it keeps, as ever.
        for done in others {
            acks.deliveries.push(Box::pin(std::future::ready(done)));
        }
        total += settled;
        if settled == 0 || acks.in_flight() == 0 || Instant::now() >= deadline {
            return total;
        }
    }
}
