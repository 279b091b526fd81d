//! The worker: one consumer-group member that reads Debezium topics, turns each record into
//! its outputs, and stores the record's offset once every output is acknowledged.
//!
//! Life cycle: create clients → ensure topics → subscribe (ready) → process until shutdown →
//! drain in-flight deliveries under a deadline → commit → leave the group.
//!
//! Per record, in offset order: decode → (change) encode output, or with entities declared map
//! it into the internal topic | (tombstone) nothing | (undecodable) dead-letter copy → hand the
//! records to the producer → register the offset as in flight. With entities, a second
//! pipeline (its own consumer group) resolves the internal topic into target and conflict
//! records. Acknowledgements arrive in any order; [`OffsetStore`] stores offsets in order.
//!
//! `pipeline` holds what both stages share (reading, in-flight deliveries, offsets); `stages`
//! what each does with one record.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use thiserror::Error;
use tokio::sync::watch;

use crate::config::{Config, Guarantee};
use crate::ingest::envelope::{Decoder, Limits};
use crate::ingest::mapping::Catalog;
use crate::resolve::resolver::Resolver;
use crate::runtime::http::Health;
use crate::runtime::kafka::offsets::{OffsetStore, Ticket};
use crate::runtime::kafka::{self, preflight, topics};
use crate::runtime::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum WorkerError {
    // Causes are `#[source]`s, printed by whoever prints the chain (`{:#}`), not by `Display`
    // as well: "cannot set up the Kafka clients: no brokers: no brokers" said it twice.
    #[error("cannot set up the Kafka clients")]
    Setup(#[source] KafkaError),
    /// The producer gave up on a record after its own retries (`message.timeout.ms`). Its
    /// input offset was not stored, so the record is read again after a restart.
    #[error("delivery to {topic} failed: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("cannot start a stage's thread or runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the {0} stage panicked")]
    Panicked(&'static str),
    #[error("commit failed")]
    Commit(#[source] KafkaError),
    /// Internal partition `p` is restored from state partition `p`: the state topic needs at
    /// least as many partitions.
    #[error("output.state_topic `{state_topic}` has {state} partitions, fewer than the {internal} of output.internal_topic `{internal_topic}`: give it as many (or more)")]
    StatePartitions {
        state_topic: String,
        state: usize,
        internal_topic: String,
        internal: usize,
    },
    /// Exactly-once mode: the transactional producer is fenced (another live worker uses the
    /// same instance id) or failed fatally.
    #[error("transactional producer failed: {0} (each live worker needs its own processing.instance_id / HARMONY_INSTANCE_ID)")]
    Transaction(String),
    /// A setting of harmony's own topics under which the broker would lose its data.
    #[error("{0}")]
    TopicSettings(String),
    /// Stage 2 committed offsets on the internal topic, but the state topic never held a
    /// record: the record state is gone.
    #[error("output.state_topic `{state_topic}` has no records, yet stage 2 (group {group}) has committed offsets on `{internal_topic}`: the record state is gone (the topic deleted or recreated?). Every record would start afresh and be re-delivered as new. Restore the topic, or stop every worker and start one with `harmony run --rebuild-state` to rebuild the state from the internal topic's retained changes")]
    StateLost {
        state_topic: String,
        group: String,
        internal_topic: String,
    },
    /// An assigned partition's changelog could not be read: going on without its state would
    /// re-deliver every record as new.
    #[error("cannot restore partition {partition} from the changelog: {error}")]
    Restore { partition: i32, error: String },
}

/// Where an output record goes; decides which counter its acknowledgement moves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Output,
    Internal,
    /// Stage 2's state topic.
    Changelog,
    DeadLetter,
    /// A target or conflicts topic of stage 2, by name.
    Topic(String),
}

/// Which acknowledgement a completion is: of an event's outputs (stage 2, before its changelog
/// write) or of the last records before its offset may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Outputs,
    Stored,
}

/// The acknowledgement of every record one input event caused (in one phase).
struct Completion {
    ticket: Ticket,
    phase: Phase,
    /// The source's commit time of the event, when its outputs are target records: the start
    /// of the end-to-end latency that ends with their acknowledgement.
    source_ts_ms: Option<i64>,
    results: Vec<(Destination, Result<(), KafkaError>)>,
}

type PendingCompletion = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// A record handed to the producer, or the producer's immediate refusal of it.
type Sent = Result<DeliveryFuture, KafkaError>;

/// Runs until `shutdown` flips to true, then drains and commits. Returns an error only for
/// what an operator must look at; input that cannot be decoded is never an error here.
/// `rebuild_state`: stage 2's state topic is known to be lost (see
/// [`WorkerError::StateLost`]); rebuild it by reading the internal topic again from its start.
pub async fn run(
    config: &Config,
    metrics: &Metrics,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
    rebuild_state: bool,
) -> Result<(), WorkerError> {
    let commit_interval_ms = config.processing.commit_interval.as_millis() as u64;
    let mut consumer_config = kafka::consumer_config(&config.kafka, commit_interval_ms);
    let exactly_once = config.processing.guarantee == Guarantee::ExactlyOnce;
    if exactly_once {
        kafka::exactly_once_consumer(&mut consumer_config);
    }
    let producer_config = kafka::producer_config(&config.kafka);
    tracing::info!(consumer = ?kafka::redacted(&consumer_config), producer = ?kafka::redacted(&producer_config),
        guarantee = ?config.processing.guarantee, "Kafka client settings");
    let producer: FutureProducer = producer_config.create().map_err(WorkerError::Setup)?;
    // Exactly once: a transactional producer per stage, named by group, stage and instance.
    let instance = config.processing.instance();
    let transaction = |stage: &'static str| -> Result<Option<Arc<Transaction>>, WorkerError> {
        if !exactly_once {
            return Ok(None);
        }
        let id = format!("harmony.{}.{stage}.{instance}", config.kafka.group_id);
        let producer: FutureProducer =
            kafka::transactional_producer(&producer_config, &id, commit_interval_ms)
                .create()
                .map_err(WorkerError::Setup)?;
        let transaction = Transaction::init(stage, producer, TRANSACTION_TIMEOUT)
            .map_err(|e| WorkerError::Transaction(format!("{id}: {e}")))?;
        tracing::info!(transactional_id = %id, "transactional producer ready");
        Ok(Some(Arc::new(transaction)))
    };
    let flush_deadline = config
        .processing
        .shutdown_timeout
        .min(std::time::Duration::from_secs(20));
    // With entities declared, readiness is stage 2's: ready once its partitions' state is
    // installed. Stage 1's rebalances must not say otherwise.
    let ingest_health = if config.entities.is_empty() {
        health.clone()
    } else {
        Health::default()
    };
    let context = |restore,
                   transaction: &Option<Arc<Transaction>>,
                   group: String,
                   health: &Health| OwnershipContext {
        lag: metrics.consumer_lag(),
        producer_queue: metrics.producer_queue(transaction.as_ref().map_or("shared", |t| t.stage)),
        group,
        ownership: Arc::new(Ownership::default()),
        producer: transaction
            .as_ref()
            .map_or_else(|| producer.clone(), |t| t.producer().clone()),
        transaction: transaction.clone(),
        flush_deadline,
        restore,
        health: health.clone(),
    };
    let ingest_transaction = transaction("ingest")?;
    let consumer: StreamConsumer<OwnershipContext> = consumer_config
        .create_with_context(context(
            None,
            &ingest_transaction,
            config.kafka.group_id.clone(),
            &ingest_health,
        ))
        .map_err(WorkerError::Setup)?;

    let internal_topic = config.output.internal_topic(&config.kafka.group_id);
    // With entities declared, stage 1 re-keys changes into the internal topic and stage 2
    // resolves them into target and conflict records; without, each change is published as
    // it is to the output topic.
    let catalog = (!config.entities.is_empty()).then(|| Arc::new(Catalog::new(config)));
    let resolver = catalog
        .clone()
        .map(|catalog| Resolver::with_catalog(config, catalog));
    let state_topic = config.output.state_topic(&config.kafka.group_id);
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
        &[],
    )
    .await
    .map_err(WorkerError::Setup)?;
    if resolver.is_some() {
        // One changelog partition per internal partition (written partition for partition);
        // compacted, so it keeps each record's latest state and nothing older.
        topics::ensure_topics(
            &producer_config,
            &[state_topic.as_str()],
            config.output.partitions,
            config.output.replication_factor,
            &[
                ("cleanup.policy", "compact"),
                // A restore reads the partition from its beginning, and compaction never touches
                // the active segment: rolled hourly or at 64 MiB, a record's superseded states
                // are cleaned within about an hour instead of after a 1 GiB segment fills.
                ("segment.ms", "3600000"),
                ("segment.bytes", "67108864"),
            ],
        )
        .await
        .map_err(WorkerError::Setup)?;
        let internal = topics::partition_count(&producer_config, &internal_topic)
            .map_err(WorkerError::Setup)?;
        let state =
            topics::partition_count(&producer_config, &state_topic).map_err(WorkerError::Setup)?;
        if state < internal {
            return Err(WorkerError::StatePartitions {
                state_topic,
                state,
                internal_topic,
                internal,
            });
        }
        let retention = preflight::retention(
            &producer_config,
            &[state_topic.as_str(), internal_topic.as_str()],
        )
        .await
        .map_err(WorkerError::Setup)?;
        if let Some(problem) = preflight::state_topic_problem(&state_topic, &retention[0])
            .or_else(|| preflight::internal_topic_problem(&internal_topic, &retention[1]))
        {
            return Err(WorkerError::TopicSettings(problem));
        }
        let group = format!("{}.resolve", config.kafka.group_id);
        let offsets = preflight::group_offsets(
            &consumer_config,
            &group,
            (&internal_topic, internal),
            (&state_topic, state),
        )
        .map_err(WorkerError::Setup)?;
        let (committed, state_ends) = (&offsets.committed, &offsets.state_ends);
        if preflight::state_lost(committed, state_ends) {
            if !rebuild_state {
                return Err(WorkerError::StateLost {
                    state_topic,
                    group,
                    internal_topic,
                });
            }
            let lows = &offsets.lows;
            kafka::offsets::rewind_group(&consumer_config, &group, &internal_topic, lows)
                .map_err(WorkerError::Setup)?;
            tracing::warn!(group, topic = internal_topic, from = ?lows, committed = ?committed,
                "rebuilding the record state: stage 2 reads the internal topic again from its earliest retained changes (changes already expired from it are not replayed: re-snapshot their sources for a complete rebuild)");
        } else if rebuild_state {
            tracing::info!(
                state_topic,
                "--rebuild-state: the record state is not lost; nothing to rebuild"
            );
        }
    }

    let resolve_transaction = match &resolver {
        Some(_) => transaction("resolve")?,
        None => None,
    };
    // Stage 2 is a consumer group of its own over the internal topic.
    let resolve_consumer: Option<StreamConsumer<OwnershipContext>> = match &resolver {
        Some(_) => {
            let mut resolve_config = consumer_config.clone();
            resolve_config.set("group.id", format!("{}.resolve", config.kafka.group_id));
            let mut reader = consumer_config.clone();
            reader
                .set("group.id", format!("{}.restore", config.kafka.group_id))
                .set("enable.auto.commit", "false");
            let restore = Restore {
                reader,
                changelog_topic: state_topic.clone(),
                timeout: std::time::Duration::from_secs(120),
            };
            let c: StreamConsumer<OwnershipContext> = resolve_config
                .create_with_context(context(
                    Some(restore),
                    &resolve_transaction,
                    format!("{}.resolve", config.kafka.group_id),
                    health,
                ))
                .map_err(WorkerError::Setup)?;
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
    metrics.dead_letter_topic(&config.output.dead_letter_topic);
    if !config.entities.is_empty() {
        let systems: Vec<(&str, &str)> = config
            .systems
            .iter()
            .map(|s| (s.name.as_str(), s.on_position_regression.name()))
            .collect();
        metrics.position_regression_series(&systems);
    }
    // Stage 2 is ready once its first assignment's state is installed (its pipeline says so).
    if resolve_consumer.is_none() {
        health.set_ready(true);
    }

    let pipeline = |consumer, ownership, catalog, resolver, durability| Pipeline {
        config,
        metrics,
        producer: &producer,
        transaction: None,
        router: config.topic_router(),
        offsets: OffsetStore::new(consumer),
        ownership,
        durability,
        catalog,
        resolver,
        internal_topic: &internal_topic,
        state_topic: &state_topic,
        max_message_bytes: config.kafka.max_message_bytes(),
        decoder: Decoder::new(Limits {
            max_record_bytes: config.input.max_record_bytes,
            max_nesting_depth: config.input.max_nesting_depth,
        }),
        deliveries: FuturesUnordered::new(),
        buf: Vec::with_capacity(4096),
        rewinds: Default::default(),
        next_state_metrics: std::time::Instant::now(),
        health: health.clone(),
    };
    let mut ingest = pipeline(
        &consumer,
        Arc::clone(&consumer.context().ownership),
        catalog,
        None,
        None,
    );
    if let Some(t) = &ingest_transaction {
        ingest.producer = t.producer();
        ingest.transaction = Some(Arc::clone(t));
    }
    let mut resolve = resolve_consumer.as_ref().map(|c| {
        let ownership = Arc::clone(&c.context().ownership);
        let mut p = pipeline(c, ownership, None, resolver, Some(Durability::default()));
        if let Some(t) = &resolve_transaction {
            p.producer = t.producer();
            p.transaction = Some(Arc::clone(t));
        }
        p
    });

    // Both stages stop together: on the signal, or when either stops on its own.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let forward = Arc::clone(&stop_tx);
    let forwarder = tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        let _ = forward.send(true);
    });
    // Each stage runs on a thread of its own: sharing one task, a stage that always has a
    // record ready kept the other from running long enough for its exactly-once batch to
    // outlive the transaction timeout. The threads are scoped, so the stages borrow the
    // clients and the configuration.
    let shutdown_timeout = config.processing.shutdown_timeout;
    let run_stage = |pipeline: &mut Pipeline<'_>,
                     consumer: &StreamConsumer<OwnershipContext>,
                     mut stop: watch::Receiver<bool>|
     -> Result<(), WorkerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(WorkerError::Runtime)?;
        runtime.block_on(async {
            let processed = pipeline.process_until(consumer, &mut stop).await;
            let _ = stop_tx.send(true);
            let drained = pipeline.drain(shutdown_timeout).await;
            // Whatever happened above, every stored offset is acknowledged work: committing
            // it is always safe and saves the replay.
            let committed = match pipeline.offsets.commit_now() {
                Ok(()) => Ok(()),
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                Err(e) => Err(WorkerError::Commit(e)),
            };
            consumer.unsubscribe();
            processed.and(drained).and(committed)
        })
    };
    let result = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let resolving = match (resolve.as_mut(), resolve_consumer.as_ref()) {
                (Some(p), Some(c)) => {
                    let stop = stop_rx.clone();
                    let run_stage = &run_stage;
                    Some(
                        std::thread::Builder::new()
                            .name("harmony-resolve".into())
                            .spawn_scoped(scope, move || run_stage(p, c, stop))
                            .map_err(WorkerError::Runtime)?,
                    )
                }
                _ => None,
            };
            let ingested = run_stage(&mut ingest, &consumer, stop_rx.clone());
            let resolved = match resolving {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(WorkerError::Panicked("resolve"))),
                None => Ok(()),
            };
            ingested.and(resolved)
        })
    });
    forwarder.abort();
    health.set_ready(false);
    tracing::info!("left the consumer group");
    result
}

mod durability;
mod ownership;
mod pipeline;
mod rewind;
mod stages;
mod transaction;

use durability::Durability;
use ownership::{Ownership, OwnershipContext, Restore};
use pipeline::Pipeline;
use transaction::Transaction;

/// How long a transaction call (init, offsets, commit, abort) may take.
const TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_error_says_its_cause_once() {
        use crate::runtime::telemetry::error_text;
        use rdkafka::error::RDKafkaErrorCode;
        // librdkafka's own errors print their code and give it as their source as well.
        let error = anyhow::Error::new(WorkerError::Setup(KafkaError::MetadataFetch(
            RDKafkaErrorCode::NotCoordinator,
        )))
        .context("worker");
        let shown = error_text(error.as_ref());
        assert_eq!(shown.matches("Not coordinator").count(), 1, "{shown}");
        assert!(
            shown.starts_with("worker: cannot set up the Kafka clients: "),
            "{shown}"
        );
        // Before: `{:#}` said it twice.
        assert_eq!(format!("{error:#}").matches("Not coordinator").count(), 2);
        let decode = anyhow::Error::new(crate::ingest::envelope::DecodeError::json(
            serde_json::from_str::<u8>("x").unwrap_err(),
        ));
        let shown = error_text(decode.as_ref());
        assert_eq!(shown.matches("expected value").count(), 1, "{shown}");
    }
}
