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

use super::{Completion, Destination, PendingCompletion, Sent, WorkerError};
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
    pub(super) offsets: OffsetStore<'a, StreamConsumer>,
    /// Present when entities are declared: stage 1 mapping.
    pub(super) catalog: Option<Catalog>,
    /// Present in the stage 2 pipeline, which reads the internal topic.
    pub(super) resolver: Option<Resolver>,
    pub(super) internal_topic: &'a str,
    pub(super) decoder: Decoder,
    pub(super) deliveries: FuturesUnordered<PendingCompletion>,
    /// Reused for every output value.
    pub(super) buf: Vec<u8>,
}

impl Pipeline<'_> {
    pub(super) async fn process_until(
        &mut self,
        consumer: &StreamConsumer,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let mut system_cache: HashMap<String, Option<usize>> = HashMap::new();
        loop {
            let can_read = self.offsets.in_flight() < self.config.processing.max_in_flight;
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(in_flight = self.offsets.in_flight(), "shutdown requested; draining");
                        return Ok(());
                    }
                }
                Some(done) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.complete(done)?;
                }
                received = consumer.recv(), if can_read => match received {
                    Ok(message) if self.resolver.is_some() => self.resolve(&message).await,
                    Ok(message) => {
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

    /// Turns one input record into its outputs and registers it as in flight.
    pub(super) fn track(
        &mut self,
        ticket: Ticket,
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
            Completion { ticket, results }
        }));
        self.metrics
            .processed(started.elapsed().as_secs_f64(), self.offsets.in_flight());
    }

    /// A copy of the input record, bytes untouched, with why and where from in headers.
    fn complete(&mut self, done: Completion) -> Result<(), WorkerError> {
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
        self.offsets.acknowledged(done.ticket);
        self.metrics.set_in_flight(self.offsets.in_flight());
        Ok(())
    }

    /// Waits for in-flight deliveries, at most `deadline`. Whatever is still unacknowledged
    /// then keeps its offset unstored and is read again by the next owner of the partition.
    pub(super) async fn drain(&mut self, deadline: Duration) -> Result<(), WorkerError> {
        let drain = async {
            while let Some(done) = self.deliveries.next().await {
                self.complete(done)?;
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    in_flight = self.offsets.in_flight(),
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
