//! The machinery both stages share: read until told to stop, hand records to the producer,
//! and store an input offset once every record it caused is acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::sync::watch;

use super::durability::Durability;
use super::ownership::{Ownership, OwnershipContext, OwnershipEvent};
use super::{Completion, Destination, PendingCompletion, Phase, Sent, WorkerError};
use crate::config::{Config, TopicRouter};
use crate::envelope::Decoder;
use crate::kafka::offsets::{OffsetStore, Ticket};
use crate::mapping::Catalog;
use crate::resolver::Resolver;
use crate::telemetry::Metrics;

pub(super) struct Pipeline<'a> {
    pub(super) config: &'a Config,
    pub(super) metrics: &'a Metrics,
    pub(super) producer: &'a FutureProducer,
    pub(super) router: TopicRouter,
    pub(super) offsets: OffsetStore<'a, StreamConsumer<OwnershipContext>, OwnershipContext>,
    /// Which partitions the consumer owns now, and what changed since the last record.
    pub(super) ownership: std::sync::Arc<Ownership>,
    /// Stage 2: outputs → changelog → offset.
    pub(super) durability: Option<Durability>,
    /// Present when entities are declared: stage 1 mapping.
    pub(super) catalog: Option<Catalog>,
    /// Present in the stage 2 pipeline, which reads the internal topic.
    pub(super) resolver: Option<Resolver>,
    pub(super) internal_topic: &'a str,
    pub(super) state_topic: &'a str,
    pub(super) decoder: Decoder,
    pub(super) deliveries: FuturesUnordered<PendingCompletion>,
    /// Reused for every output value.
    pub(super) buf: Vec<u8>,
}

impl Pipeline<'_> {
    pub(super) async fn process_until(
        &mut self,
        consumer: &StreamConsumer<OwnershipContext>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let mut system_cache: HashMap<String, Option<usize>> = HashMap::new();
        let ownership = std::sync::Arc::clone(&self.ownership);
        loop {
            self.apply_ownership()?;
            let can_read = self.in_flight() < self.config.processing.max_in_flight;
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(in_flight = self.in_flight(), "shutdown requested; draining");
                        return Ok(());
                    }
                }
                Some(done) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.complete(done).await?;
                }
                // Taken at the top of the loop.
                () = ownership.changed() => {}
                received = consumer.recv(), if can_read => match received {
                    Ok(message) if self.resolver.is_some() => {
                        // An assignment in this very poll restored the partition's state.
                        self.apply_ownership()?;
                        self.resolve(&message).await
                    }
                    Ok(message) => {
                        self.apply_ownership()?;
                        let topic = message.topic();
                        let system = match system_cache.get(topic) {
                            Some(&s) => s,
                            None => {
                                let s = self.router.system_index(topic);
                                system_cache.insert(topic.to_owned(), s);
                                s
                            }
                        };
                        self.process(&message, system).await;
                    }
                    // librdkafka reports and recovers from broker and topic trouble by itself;
                    // the consumer keeps its position, so nothing is skipped.
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
            }
        }
    }

    /// Events read and not yet stored, in either phase.
    fn in_flight(&self) -> usize {
        self.offsets.in_flight() + self.durability.as_ref().map_or(0, Durability::in_flight)
    }

    /// Follows the rebalances since the last call: a revoked partition's work is forgotten
    /// (its next owner reads it again) and its state dropped; an assigned one's state installed.
    fn apply_ownership(&mut self) -> Result<(), WorkerError> {
        for event in self.ownership.take_events() {
            match event {
                OwnershipEvent::Revoked { topic, partition } => {
                    self.offsets.forget(&topic, partition);
                    if let Some(d) = self.durability.as_mut() {
                        d.forget(&topic, partition);
                    }
                    if let Some(r) = self.resolver.as_mut() {
                        r.drop_partition(partition);
                        self.metrics.partition_dropped(partition, r.record_count());
                    }
                }
                OwnershipEvent::Assigned {
                    partition,
                    restored,
                    ..
                } => {
                    self.metrics.rebalanced();
                    let (Some(restored), Some(resolver)) = (restored, self.resolver.as_mut())
                    else {
                        continue;
                    };
                    let (log, elapsed) =
                        restored.map_err(|error| WorkerError::Restore { partition, error })?;
                    let (records, unreadable) = resolver.install(
                        partition,
                        log.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                    );
                    self.metrics.partition_restored(
                        partition,
                        records,
                        unreadable,
                        elapsed.as_secs_f64(),
                        resolver.record_count(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Turns one input record into its outputs and registers it as in flight.
    pub(super) fn track(
        &mut self,
        ticket: Ticket,
        phase: Phase,
        sends: Vec<(Destination, Sent)>,
        started: Instant,
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
                results,
            }
        }));
        self.metrics
            .processed(started.elapsed().as_secs_f64(), self.in_flight());
    }

    /// One phase of an event acknowledged. Outputs (stage 2): the events now ready write their
    /// changelog values, in offset order. Last phase: the offset may be stored.
    async fn complete(&mut self, done: Completion) -> Result<(), WorkerError> {
        for (destination, result) in done.results {
            let topic = match &destination {
                Destination::Output => self.config.output.topic.as_str(),
                Destination::Internal => self.internal_topic,
                Destination::DeadLetter => self.config.output.dead_letter_topic.as_str(),
                Destination::Topic(name) => name.as_str(),
            };
            match result {
                Ok(()) => match destination {
                    Destination::Output | Destination::Internal | Destination::Topic(_) => {
                        self.metrics.output_acknowledged(topic)
                    }
                    Destination::DeadLetter => self.metrics.dead_letter_acknowledged(topic),
                },
                Err(error) => {
                    tracing::error!(topic = %topic, error = %error,
                        "delivery failed after the producer's retries; stopping without storing this offset");
                    return Err(WorkerError::Delivery {
                        topic: topic.to_owned(),
                        error,
                    });
                }
            }
        }
        match done.phase {
            Phase::Stored => self.offsets.acknowledged(done.ticket),
            Phase::Outputs => {
                let ready = self
                    .durability
                    .as_mut()
                    .map(|d| d.outputs_acknowledged(done.ticket))
                    .unwrap_or_default();
                for (partition, offset, value) in ready {
                    if !self.ownership.owns(self.internal_topic, partition) {
                        continue;
                    }
                    let ticket = self.offsets.begin(self.internal_topic, partition, offset);
                    match value {
                        None => self.offsets.acknowledged(ticket),
                        Some((key, state)) => {
                            // Partition for partition: the internal partition's next owner
                            // restores from exactly this changelog partition.
                            let record = FutureRecord {
                                topic: self.state_topic,
                                partition: Some(partition),
                                payload: Some(state.as_slice()),
                                key: Some(key.as_bytes()),
                                timestamp: None,
                                headers: None,
                            };
                            let sent = send(self.producer, record).await;
                            let destination = Destination::Topic(self.state_topic.to_owned());
                            self.track(
                                ticket,
                                Phase::Stored,
                                vec![(destination, sent)],
                                Instant::now(),
                            );
                        }
                    }
                }
            }
        }
        self.metrics.set_in_flight(self.in_flight());
        Ok(())
    }

    /// Waits for in-flight deliveries, at most `deadline`. Whatever is still unacknowledged
    /// then keeps its offset unstored and is read again by the next owner of the partition.
    pub(super) async fn drain(&mut self, deadline: Duration) -> Result<(), WorkerError> {
        let drain = async {
            while let Some(done) = self.deliveries.next().await {
                self.complete(done).await?;
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    in_flight = self.in_flight(),
                    "shutdown deadline reached with deliveries in flight; they will be re-read"
                );
                Ok(())
            }
        }
    }
}
/// Hands a record to the producer, waiting while its local queue is full rather than
/// dropping or reordering anything.
pub(super) async fn send(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Sent {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => {
                // Not retryable locally (e.g. message too large): it takes the path of a
                // failed delivery, so the offset is not stored.
                return Err(error);
            }
        }
    }
}
