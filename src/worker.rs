//! The worker: one consumer-group member that reads Debezium topics, turns each record into
//! its outputs, and stores the record's offset once every output is acknowledged.
//!
//! Life cycle: create clients → ensure topics → subscribe (ready) → process until shutdown →
//! drain in-flight deliveries under a deadline → commit → leave the group.
//!
//! Per record, in offset order: decode → (change) encode output | (tombstone) nothing |
//! (undecodable) dead-letter copy → hand the records to the producer → register the offset as
//! in flight. Acknowledgements arrive in any order; [`OffsetStore`] stores offsets in order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::Message;
use thiserror::Error;
use tokio::sync::watch;

use crate::config::{Config, TopicRouter};
use crate::envelope::{Decoded, Decoder, Limits, RecordHeaders};
use crate::http::Health;
use crate::internal::{self, InternalChange};
use crate::kafka::offsets::{OffsetStore, Ticket};
use crate::kafka::{self, topics};
use crate::mapping::Catalog;
use crate::output::{encode_change, output_key, Origin};
use crate::resolver::Resolver;
use crate::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("cannot set up the Kafka clients: {0}")]
    Setup(#[source] KafkaError),
    /// The producer gave up on a record after its own retries (`message.timeout.ms`). Its
    /// input offset was not stored, so the record is read again after a restart.
    #[error("delivery to {topic} failed: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("commit failed: {0}")]
    Commit(#[source] KafkaError),
}

/// Where an output record goes; decides which counter its acknowledgement moves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Output,
    Internal,
    DeadLetter,
    /// A target or conflicts topic of stage 2, by name.
    Topic(String),
}

/// The acknowledgement of every record one input event caused.
struct Completion {
    ticket: Ticket,
    results: Vec<(Destination, Result<(), KafkaError>)>,
}

type PendingCompletion = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// A record handed to the producer, or the producer's immediate refusal of it.
type Sent = Result<DeliveryFuture, KafkaError>;

/// Runs until `shutdown` flips to true, then drains and commits. Returns an error only for
/// what an operator must look at; input that cannot be decoded is never an error here.
pub async fn run(
    config: &Config,
    metrics: &Metrics,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let consumer_config = kafka::consumer_config(
        &config.kafka,
        config.processing.commit_interval.as_millis() as u64,
    );
    let producer_config = kafka::producer_config(&config.kafka);
    tracing::info!(consumer = ?kafka::redacted(&consumer_config), producer = ?kafka::redacted(&producer_config),
        "Kafka client settings");
    let consumer: StreamConsumer = consumer_config.create().map_err(WorkerError::Setup)?;
    let producer: FutureProducer = producer_config.create().map_err(WorkerError::Setup)?;

    let internal_topic = config.output.internal_topic(&config.kafka.group_id);
    // With entities declared, stage 1 re-keys changes into the internal topic and stage 2
    // resolves them into target and conflict records; without, each change is published as
    // it is to the output topic.
    let catalog = (!config.entities.is_empty()).then(|| Catalog::new(config));
    let resolver = catalog.as_ref().map(|_| Resolver::new(config));
    let mut own_topics: Vec<String> = vec![config.output.dead_letter_topic.clone()];
    match &resolver {
        Some(r) => {
            own_topics.push(internal_topic.clone());
            own_topics.extend(r.topics());
        }
        None => own_topics.push(config.output.topic.clone()),
    }
    let own_topics: Vec<&str> = own_topics.iter().map(String::as_str).collect();
    topics::ensure_topics(
        &producer_config,
        &own_topics,
        config.output.partitions,
        config.output.replication_factor,
    )
    .await
    .map_err(WorkerError::Setup)?;

    // Stage 2 is a consumer group of its own over the internal topic.
    let resolve_consumer: Option<StreamConsumer> = match &resolver {
        Some(_) => {
            let mut resolve_config = consumer_config.clone();
            resolve_config.set("group.id", format!("{}.resolve", config.kafka.group_id));
            let c: StreamConsumer = resolve_config.create().map_err(WorkerError::Setup)?;
            c.subscribe(&[internal_topic.as_str()])
                .map_err(WorkerError::Setup)?;
            Some(c)
        }
        None => None,
    };
    let subscription = config.subscription();
    consumer
        .subscribe(&subscription)
        .map_err(WorkerError::Setup)?;
    tracing::info!(group = %config.kafka.group_id, topics = ?subscription, "subscribed");
    health.set_ready(true);

    let pipeline = |consumer, catalog, resolver| Pipeline {
        config,
        metrics,
        producer: &producer,
        router: config.topic_router(),
        offsets: OffsetStore::new(consumer),
        catalog,
        resolver,
        internal_topic: &internal_topic,
        decoder: Decoder::new(Limits {
            max_record_bytes: config.input.max_record_bytes,
            max_nesting_depth: config.input.max_nesting_depth,
        }),
        deliveries: FuturesUnordered::new(),
        buf: Vec::with_capacity(4096),
    };
    let mut ingest = pipeline(&consumer, catalog, None);
    let mut resolve = resolve_consumer
        .as_ref()
        .map(|c| pipeline(c, None, resolver));

    // Both stages stop together: on the signal, or when either stops on its own.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let forward = std::sync::Arc::clone(&stop_tx);
    let forwarder = tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        let _ = forward.send(true);
    });
    let (mut stop_ingest, mut stop_resolve) = (stop_rx.clone(), stop_rx);
    let ingest_run = async {
        let r = ingest.process_until(&consumer, &mut stop_ingest).await;
        let _ = stop_tx.send(true);
        r
    };
    let resolve_run = async {
        match (resolve.as_mut(), resolve_consumer.as_ref()) {
            (Some(p), Some(c)) => {
                let r = p.process_until(c, &mut stop_resolve).await;
                let _ = stop_tx.send(true);
                r
            }
            _ => Ok(()),
        }
    };
    let (ingested, resolved) = tokio::join!(ingest_run, resolve_run);
    forwarder.abort();
    health.set_ready(false);

    let mut result = ingested.and(resolved);
    for (p, c) in std::iter::once((&mut ingest, &consumer))
        .chain(resolve.as_mut().zip(resolve_consumer.as_ref()))
    {
        let drained = p.drain(config.processing.shutdown_timeout).await;
        // Whatever happened above, every stored offset is acknowledged work: committing it
        // is always safe and saves the replay.
        let committed = match p.offsets.commit_now() {
            Ok(()) => Ok(()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(WorkerError::Commit(e)),
        };
        result = result.and(drained).and(committed);
        c.unsubscribe();
    }
    tracing::info!("left the consumer group");
    result
}

struct Pipeline<'a> {
    config: &'a Config,
    metrics: &'a Metrics,
    producer: &'a FutureProducer,
    router: TopicRouter,
    offsets: OffsetStore<'a, StreamConsumer>,
    /// Present when entities are declared: stage 1 mapping.
    catalog: Option<Catalog>,
    /// Present in the stage 2 pipeline, which reads the internal topic.
    resolver: Option<Resolver>,
    internal_topic: &'a str,
    decoder: Decoder,
    deliveries: FuturesUnordered<PendingCompletion>,
    /// Reused for every output value.
    buf: Vec<u8>,
}

impl Pipeline<'_> {
    async fn process_until(
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
    async fn process(&mut self, message: &BorrowedMessage<'_>, system: Option<usize>) {
        let started = Instant::now();
        let topic = message.topic();
        let origin = Origin {
            topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        let ticket = self.offsets.begin(topic, origin.partition, origin.offset);
        let mut sends: Vec<(Destination, Sent)> = Vec::with_capacity(1);

        let Some(system_index) = system else {
            let reason = "the topic matches no declared system";
            tracing::warn!(
                topic,
                "record from a topic no system declares; dead-lettering it"
            );
            sends.push((
                Destination::DeadLetter,
                self.dead_letter(message, "unroutable", reason).await,
            ));
            return self.track(ticket, sends, started);
        };
        let system = self.config.systems[system_index].name.as_str();

        let headers = message.headers().map_or_else(RecordHeaders::default, |hs| {
            RecordHeaders::from_pairs(hs.iter().map(|h| (h.key, h.value)))
        });
        match self
            .decoder
            .decode(message.key(), message.payload(), headers)
        {
            Ok(Decoded::Change(event)) if self.catalog.is_some() => {
                self.metrics.change_consumed(system, topic, event.op);
                self.ingest(message, system_index, &event, origin, &mut sends)
                    .await;
            }
            Ok(Decoded::Change(event)) => {
                self.metrics.change_consumed(system, topic, event.op);
                encode_change(&mut self.buf, &event, system, origin, now_ms());
                let record = FutureRecord {
                    topic: &self.config.output.topic,
                    partition: None,
                    payload: Some(self.buf.as_slice()),
                    key: output_key(&event),
                    timestamp: None,
                    headers: Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: "harmony.system",
                        value: Some(system),
                    })),
                };
                match send(self.producer, record).await {
                    // The output alone exceeds the producer's message.max.bytes: sending it
                    // can never succeed, so the input goes to the dead-letter topic instead of
                    // stopping the partition.
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        let reason = format!(
                            "the output record of {} bytes exceeds the producer's message.max.bytes",
                            self.buf.len()
                        );
                        self.metrics.dead_lettered(
                            topic,
                            origin.partition,
                            origin.offset,
                            "output_too_large",
                            &reason,
                        );
                        sends.push((
                            Destination::DeadLetter,
                            self.dead_letter(message, "output_too_large", &reason).await,
                        ));
                    }
                    sent => sends.push((Destination::Output, sent)),
                }
            }
            Ok(Decoded::Tombstone) => self.metrics.tombstone_skipped(system, topic),
            Ok(
                control @ (Decoded::Heartbeat { .. }
                | Decoded::Transaction(_)
                | Decoded::SchemaChange),
            ) => {
                self.metrics.control_record(system, topic, control.kind());
            }
            Err(error) => {
                self.metrics.dead_lettered(
                    topic,
                    origin.partition,
                    origin.offset,
                    error.kind(),
                    &error.to_string(),
                );
                let message_text = error.to_string();
                sends.push((
                    Destination::DeadLetter,
                    self.dead_letter(message, error.kind(), &message_text).await,
                ));
            }
        }
        self.track(ticket, sends, started);
    }

    /// Stage 2: one internal record through the engine; its target and conflict records are
    /// published, and its offset stored once they are all acknowledged.
    async fn resolve(&mut self, message: &BorrowedMessage<'_>) {
        let started = Instant::now();
        let ticket = self
            .offsets
            .begin(message.topic(), message.partition(), message.offset());
        let mut sends: Vec<(Destination, Sent)> = Vec::new();
        let Some(resolver) = self.resolver.as_mut() else {
            return;
        };
        match resolver.resolve(message.payload().unwrap_or_default()) {
            Ok(resolved) => {
                self.metrics
                    .record_change(resolved.outcome, resolved.conflicts);
                for (topic, key, value) in resolved.publications {
                    let record = FutureRecord {
                        topic: &topic,
                        partition: None,
                        payload: Some(value.as_slice()),
                        key: Some(key.as_slice()),
                        timestamp: None,
                        headers: None,
                    };
                    let sent = send(self.producer, record).await;
                    sends.push((Destination::Topic(topic), sent));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                self.metrics.dead_lettered(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    error.kind(),
                    &reason,
                );
                sends.push((
                    Destination::DeadLetter,
                    self.dead_letter(message, error.kind(), &reason).await,
                ));
            }
        }
        self.track(ticket, sends, started);
    }

    /// Stage 1: the change as record changes of the entities its table feeds, each to the
    /// internal topic keyed by record. A row that breaks the mapping is dead-lettered.
    async fn ingest(
        &self,
        message: &BorrowedMessage<'_>,
        system_index: usize,
        event: &crate::envelope::ChangeEvent<'_>,
        origin: Origin<'_>,
        sends: &mut Vec<(Destination, Sent)>,
    ) {
        let Some(catalog) = &self.catalog else { return };
        let system = self.config.systems[system_index].name.as_str();
        match catalog.map(system_index, event) {
            Ok(changes) if changes.is_empty() => self.metrics.unmapped_change(system, origin.topic),
            Ok(changes) => {
                for mapped in changes {
                    let internal = InternalChange::from_mapped(
                        catalog,
                        &mapped,
                        system,
                        event,
                        internal::Origin {
                            topic: origin.topic.to_owned(),
                            partition: origin.partition,
                            offset: origin.offset,
                        },
                    );
                    let key = internal.record_key();
                    let payload = internal.encode();
                    let record = FutureRecord {
                        topic: self.internal_topic,
                        partition: None,
                        payload: Some(payload.as_slice()),
                        key: Some(key.as_bytes()),
                        timestamp: None,
                        headers: None,
                    };
                    sends.push((Destination::Internal, send(self.producer, record).await));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                self.metrics.dead_lettered(
                    origin.topic,
                    origin.partition,
                    origin.offset,
                    error.kind(),
                    &reason,
                );
                sends.push((
                    Destination::DeadLetter,
                    self.dead_letter(message, error.kind(), &reason).await,
                ));
            }
        }
    }

    fn track(&mut self, ticket: Ticket, sends: Vec<(Destination, Sent)>, started: Instant) {
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
    async fn dead_letter(&self, message: &BorrowedMessage<'_>, kind: &str, reason: &str) -> Sent {
        match self.dead_letter_copy(message, kind, reason, true).await {
            // A record the broker accepted can still be too large for the producer (its
            // message.max.bytes, plus headers): keep the reason and coordinates, drop the bytes.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "dead-letter copy too large for the producer; sending it without key and value"
                );
                self.dead_letter_copy(message, kind, reason, false).await
            }
            sent => sent,
        }
    }

    async fn dead_letter_copy(
        &self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
        with_bytes: bool,
    ) -> Sent {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let timestamp = message.timestamp().to_millis().map(|t| t.to_string());
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: "harmony.error.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "harmony.error.message",
                value: Some(reason),
            })
            .insert(Header {
                key: "harmony.source.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "harmony.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "harmony.source.offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "harmony.source.timestamp",
                value: timestamp.as_deref(),
            });
        let headers = if with_bytes {
            headers
        } else {
            let size = message.payload_len().to_string();
            headers.insert(Header {
                key: "harmony.error.payload_dropped",
                value: Some(&size),
            })
        };
        let record = FutureRecord {
            topic: &self.config.output.dead_letter_topic,
            partition: None,
            payload: message.payload().filter(|_| with_bytes),
            key: message.key().filter(|_| with_bytes),
            timestamp: message.timestamp().to_millis(),
            headers: Some(headers),
        };
        send(self.producer, record).await
    }

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
    async fn drain(&mut self, deadline: Duration) -> Result<(), WorkerError> {
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
async fn send(producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) -> Sent {
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
