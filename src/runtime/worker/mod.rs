//! The worker: one consumer-group member that reads Debezium topics, turns each record into
//! its outputs, and stores the record's offset once every output is acknowledged.
//!
//! Life cycle: create clients → ensure topics → subscribe (ready) → process until shutdown →
//! drain in-flight deliveries under a deadline → commit → leave the group.
//!
//! Per record, in offset order: the stage ([`crate::ingest::stage::Ingest`], or with entities
//! declared also [`crate::resolve::resolver::Resolver`] in a second pipeline with its own
//! consumer group) turns it into effects → `pipeline` hands their records to the producer →
//! `delivery` registers the offset as in flight (or the batch takes it). Acknowledgements
//! arrive in any order; the offset store stores offsets in order.
//!
//! `plan` holds the settings resolved once; `ownership` the partitions' life cycle and
//! readiness; `pipeline` the one runner of either stage; `delivery` the guarantee it runs
//! under; `dead_letter` the copy of a record that cannot be handled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use thiserror::Error;
use tokio::sync::watch;

use crate::config::{Config, Guarantee};
use crate::ingest::stage::Ingest;
use crate::model::stage::{Stage, Topic};
use crate::resolve::resolver::Resolver;
use crate::runtime::http::Health;
use crate::runtime::kafka::offsets::Ticket;
use crate::runtime::kafka::{self, preflight, topics};
use crate::runtime::registry::Registry;
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
    /// Fields whose sources' captured column types cannot be read as one type.
    #[error("the sources' captured column types disagree:\n  {}", .0.join("\n  "))]
    FieldTypes(Vec<String>),
    #[error("cannot set up the schema registry client")]
    Registry(#[source] crate::runtime::registry::RegistryError),
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
    #[error("cannot restore partition {partition} from the changelog")]
    Restore {
        partition: i32,
        #[source]
        error: KafkaError,
    },
}

impl WorkerError {
    /// Whether starting the worker again can succeed without anyone changing anything: the
    /// broker or a delivery was failing, and the input is read again from its committed
    /// offsets. Otherwise the configuration, the topics or another worker must change first.
    pub fn is_retriable(&self) -> bool {
        match self {
            WorkerError::Setup(_)
            | WorkerError::Delivery { .. }
            | WorkerError::Commit(_)
            | WorkerError::Restore { .. } => true,
            WorkerError::Runtime(_)
            | WorkerError::Panicked(_)
            | WorkerError::StatePartitions { .. }
            | WorkerError::Transaction(_)
            | WorkerError::TopicSettings(_)
            | WorkerError::FieldTypes(_)
            | WorkerError::Registry(_)
            | WorkerError::StateLost { .. } => false,
        }
    }
}

/// Where a record goes; decides which counter its acknowledgement moves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// A record of the stage's effects.
    Publish(Topic),
    /// Stage 2's state topic.
    Changelog,
    DeadLetter,
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
    let plan = Arc::new(Plan::new(config));
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
    // At least once, a stage's in-flight events are shared with its consumer's revocation
    // callback, which settles the revoked partitions' before they go.
    let delivery = |stage: &'static str| -> Result<Delivery, WorkerError> {
        if !exactly_once {
            return Ok(Delivery::AtLeastOnce(Arc::default()));
        }
        let id = format!("harmony.{}.{stage}.{instance}", plan.group);
        let producer: FutureProducer =
            kafka::transactional_producer(&producer_config, &id, commit_interval_ms)
                .create()
                .map_err(WorkerError::Setup)?;
        let transaction = Transaction::init(stage, producer, TRANSACTION_TIMEOUT)
            .map_err(|e| WorkerError::Transaction(format!("{id}: {e}")))?;
        tracing::info!(transactional_id = %id, "transactional producer ready");
        Ok(Delivery::ExactlyOnce {
            transaction: Arc::new(transaction),
        })
    };
    let flush_deadline = config
        .processing
        .shutdown_timeout
        .min(std::time::Duration::from_secs(20));
    // With entities declared, readiness is stage 2's: ready once its partitions' state is
    // installed. Stage 1's rebalances must not say otherwise.
    let resolving = plan.catalog.is_some();
    let context = |restore: Option<Restore>,
                   delivery: &Delivery,
                   group: &str,
                   health: Option<&Health>| OwnershipContext {
        delivery: delivery.clone(),
        plan: Arc::clone(&plan),
        metrics: metrics.clone(),
        lag: metrics.consumer_lag(),
        producer_queue: metrics
            .producer_queue(delivery.transaction().map_or("shared", |t| t.stage)),
        group: group.to_owned(),
        ownership: Arc::new(Ownership::new(health.cloned(), restore.is_some())),
        producer: delivery.producer(&producer).clone(),
        flush_deadline,
        restore,
    };
    let ingest_delivery = delivery(Ingest::NAME)?;
    let consumer: StreamConsumer<OwnershipContext> = consumer_config
        .create_with_context(context(
            None,
            &ingest_delivery,
            &plan.group,
            (!resolving).then_some(health),
        ))
        .map_err(WorkerError::Setup)?;

    // A corrupt length in an Avro datum must not make the reader allocate more than a record
    // may hold (apache-avro's default bound is 512 MiB). The first setting holds.
    apache_avro::util::max_allocation_bytes(config.input.max_record_bytes);
    let registry = config
        .schema_registry
        .as_ref()
        .map(Registry::new)
        .transpose()
        .map_err(WorkerError::Registry)?
        .map(Arc::new);

    let (internal_topic, state_topic) = (&plan.internal_topic, &plan.state_topic);
    // With entities declared, stage 1 re-keys changes into the internal topic and stage 2
    // resolves them into target and conflict records; without, each change is published as
    // it is to the output topic.
    let mut resolver = plan
        .catalog
        .clone()
        .map(|catalog| Resolver::with_catalog(config, catalog));
    if let (Some(resolver), Some(catalog)) = (resolver.as_mut(), plan.catalog.as_deref()) {
        let learned = captured::learn_captured_types(
            &consumer_config,
            config,
            catalog,
            resolver,
            registry.as_deref().map(|r| (r, metrics)),
        )
        .await
        .map_err(WorkerError::FieldTypes)?;
        tracing::info!(
            learned,
            "target column types read from the newest records of their systems' topics"
        );
    }
    let mut own_topics: Vec<String> = vec![plan.dead_letter_topic.clone()];
    match &resolver {
        Some(r) => {
            own_topics.push(internal_topic.clone());
            own_topics.extend(r.topics());
        }
        None => own_topics.push(plan.output_topic.clone()),
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
        let internal = topics::partition_count(&producer_config, internal_topic)
            .map_err(WorkerError::Setup)?;
        let state =
            topics::partition_count(&producer_config, state_topic).map_err(WorkerError::Setup)?;
        if state < internal {
            return Err(WorkerError::StatePartitions {
                state_topic: state_topic.clone(),
                state,
                internal_topic: internal_topic.clone(),
                internal,
            });
        }
        let retention = preflight::retention(
            &producer_config,
            &[state_topic.as_str(), internal_topic.as_str()],
        )
        .await
        .map_err(WorkerError::Setup)?;
        if let Some(problem) = preflight::state_topic_problem(state_topic, &retention[0])
            .or_else(|| preflight::internal_topic_problem(internal_topic, &retention[1]))
        {
            return Err(WorkerError::TopicSettings(problem));
        }
        let group = &plan.resolve_group;
        let offsets = preflight::group_offsets(
            &consumer_config,
            group,
            (internal_topic, internal),
            (state_topic, state),
        )
        .map_err(WorkerError::Setup)?;
        let (committed, state_ends) = (&offsets.committed, &offsets.state_ends);
        if preflight::state_lost(committed, state_ends) {
            if !rebuild_state {
                return Err(WorkerError::StateLost {
                    state_topic: state_topic.clone(),
                    group: group.clone(),
                    internal_topic: internal_topic.clone(),
                });
            }
            let lows = &offsets.lows;
            kafka::offsets::rewind_group(&consumer_config, group, internal_topic, lows)
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

    let resolve_delivery = match &resolver {
        Some(_) => Some(delivery(Resolver::NAME)?),
        None => None,
    };
    // Stage 2 is a consumer group of its own over the internal topic.
    let resolve_consumer: Option<StreamConsumer<OwnershipContext>> = match &resolve_delivery {
        Some(resolve_delivery) => {
            let mut resolve_config = consumer_config.clone();
            resolve_config.set("group.id", &plan.resolve_group);
            let mut reader = consumer_config.clone();
            reader
                .set("group.id", &plan.restore_group)
                .set("enable.auto.commit", "false");
            let restore = Restore {
                reader,
                changelog_topic: state_topic.clone(),
                timeout: std::time::Duration::from_secs(120),
            };
            let c: StreamConsumer<OwnershipContext> = resolve_config
                .create_with_context(context(
                    Some(restore),
                    resolve_delivery,
                    &plan.resolve_group,
                    Some(health),
                ))
                .map_err(WorkerError::Setup)?;
            c.subscribe(&[internal_topic.as_str()])
                .map_err(WorkerError::Setup)?;
            c.context().ownership.start();
            Some(c)
        }
        None => None,
    };
    let subscription = config.subscription();
    consumer
        .subscribe(&subscription)
        .map_err(WorkerError::Setup)?;
    consumer.context().ownership.start();
    tracing::info!(group = %plan.group, topics = ?subscription, "subscribed");
    metrics.dead_letter_topic(&plan.dead_letter_topic);
    if resolving {
        let systems: Vec<(&str, &str)> = config
            .systems
            .iter()
            .map(|s| (s.name.as_str(), s.on_position_regression.name()))
            .collect();
        metrics.position_regression_series(&systems);
    }

    let mut ingest_stage = Ingest::new(config, plan.catalog.clone());
    if let Some(registry) = &registry {
        ingest_stage = ingest_stage.with_avro(registry.schemas());
    }
    let mut ingest = Pipeline::new(
        ingest_stage,
        config,
        &plan,
        metrics,
        ingest_delivery.producer(&producer),
        &consumer,
        ingest_delivery.clone(),
    );
    ingest.registry = registry.clone();
    let mut resolve = match (resolver, resolve_consumer.as_ref(), &resolve_delivery) {
        (Some(resolver), Some(c), Some(delivery)) => Some(Pipeline::new(
            resolver,
            config,
            &plan,
            metrics,
            delivery.producer(&producer),
            c,
            delivery.clone(),
        )),
        _ => None,
    };

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
    let result = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let resolving = match resolve.as_mut() {
                Some(p) => {
                    let stop = stop_rx.clone();
                    let stop_tx = &stop_tx;
                    Some(
                        std::thread::Builder::new()
                            .name("harmony-resolve".into())
                            .spawn_scoped(scope, move || {
                                run_stage(p, stop, stop_tx, shutdown_timeout)
                            })
                            .map_err(WorkerError::Runtime)?,
                    )
                }
                None => None,
            };
            let ingested = run_stage(&mut ingest, stop_rx.clone(), &stop_tx, shutdown_timeout);
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
    consumer.context().ownership.stop();
    if let Some(c) = &resolve_consumer {
        c.context().ownership.stop();
    }
    tracing::info!("left the consumer group");
    result
}

/// One stage on its own thread and runtime: processes until told to stop, tells the other
/// stage to stop too, drains under the deadline, commits, and leaves the group.
fn run_stage<S: Stage>(
    pipeline: &mut Pipeline<'_, S>,
    mut stop: watch::Receiver<bool>,
    stop_all: &watch::Sender<bool>,
    shutdown_timeout: std::time::Duration,
) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    runtime.block_on(async {
        let processed = pipeline.process_until(&mut stop).await;
        let _ = stop_all.send(true);
        let drained = pipeline.drain(shutdown_timeout).await;
        // Whatever happened above, every stored offset is acknowledged work: committing it is
        // always safe and saves the replay.
        let committed = pipeline.commit_stored();
        pipeline.consumer.unsubscribe();
        processed.and(drained).and(committed)
    })
}

mod acks;
mod captured;
mod dead_letter;
mod delivery;
mod durability;
mod ownership;
mod pipeline;
mod plan;
mod rewind;
mod transaction;

use delivery::Delivery;
use ownership::{Ownership, OwnershipContext, Restore};
use pipeline::Pipeline;
use plan::Plan;
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
