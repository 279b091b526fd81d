//! Which partitions this worker owns, as the group's rebalances decide, and stage 2's state
//! following that ownership (ARCHITECTURE.md §1 "Partition ownership").
//!
//! The callbacks run inside the consumer's poll, before any record of a newly assigned
//! partition is handed to the pipeline: an assigned internal-topic partition is restored there
//! by reading its changelog partition to the end, so no change of it is applied to a missing
//! state. On revocation, everything already handed to the producer is flushed and the revoked
//! partitions' acknowledged events are settled into committed offsets before the partitions
//! are released (`acks::settle_revoked`), so their next owner's restore sees every changelog
//! record this worker wrote and reads none of that work again; what is still unacknowledged is
//! forgotten, not stored, and read again by that owner.
//! The pipeline applies the recorded events between two records (`take_events`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use super::acks::{self, Settling};
use super::delivery::Delivery;
use super::plan::Plan;
use super::transaction::TransactionError;
use crate::runtime::http::Health;
use crate::runtime::kafka::offsets::OffsetStore;
use crate::runtime::telemetry::Metrics;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A partition's changelog as read back: `(key, value)` in log order, `None` for a tombstone.
pub type ChangelogLog = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub enum OwnershipEvent {
    Assigned {
        topic: String,
        partition: i32,
        /// Stage 2: the partition's changelog and how long reading it took, or why it could
        /// not be read.
        restored: Option<Result<(ChangelogLog, Duration), rdkafka::error::KafkaError>>,
    },
    Revoked {
        topic: String,
        partition: i32,
    },
    /// Exactly once: the batch committed at a revocation failed. Aborted, its input is read
    /// again; fatal, the worker stops.
    TransactionFailed(TransactionError),
}

/// Shared between the consumer's callbacks and the pipeline: the partitions' life cycle
/// (assigned → restoring → ready → revoked) and the one place that says whether the worker is
/// ready.
#[derive(Default)]
pub struct Ownership {
    /// Topic → partitions; looked up by `&str`, so asking allocates nothing.
    owned: Mutex<HashMap<String, HashSet<i32>>>,
    events: Mutex<Vec<OwnershipEvent>>,
    /// Wakes the pipeline when events wait, even while no record arrives.
    pending: tokio::sync::Notify,
    readiness: Mutex<Readiness>,
    /// The `/ready` this stage answers for; `None` for a stage whose readiness another's
    /// stands for (stage 1 when stage 2 runs: stage 2 is ready later).
    health: Option<Health>,
}

/// What readiness is made of.
#[derive(Default)]
struct Readiness {
    /// Subscribed, and not yet stopping.
    running: bool,
    /// A stage with state is not ready before its first assignment is restored.
    awaiting_assignment: bool,
    /// Assigned partitions whose state is not installed yet.
    restoring: HashSet<(String, i32)>,
}

impl Ownership {
    /// For a stage that answers `/ready` through `health`; `keeps_state`: its partitions are
    /// restored before it is ready.
    pub fn new(health: Option<Health>, keeps_state: bool) -> Self {
        Self {
            health,
            readiness: Mutex::new(Readiness {
                awaiting_assignment: keeps_state,
                ..Readiness::default()
            }),
            ..Self::default()
        }
    }

    /// Subscribed: ready once nothing waits to be restored.
    pub fn start(&self) {
        self.update_readiness(|r| r.running = true);
    }

    /// Leaving the group: not ready any more.
    pub fn stop(&self) {
        self.update_readiness(|r| r.running = false);
    }

    /// An assigned partition's state is installed.
    pub fn installed(&self, topic: &str, partition: i32) {
        self.update_readiness(|r| {
            r.restoring.remove(&(topic.to_owned(), partition));
        });
    }

    /// The one place readiness is decided.
    fn update_readiness(&self, change: impl FnOnce(&mut Readiness)) {
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        change(&mut readiness);
        let ready =
            readiness.running && !readiness.awaiting_assignment && readiness.restoring.is_empty();
        if let Some(health) = &self.health {
            health.set_ready(ready);
        }
    }

    /// Whether the partition is assigned to this worker now. Work finishing for a revoked one
    /// must neither write its changelog nor store its offset.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .map(|o| o.get(topic).is_some_and(|p| p.contains(&partition)))
            .unwrap_or(false)
    }

    pub fn take_events(&self) -> Vec<OwnershipEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Resolves when events are waiting to be taken.
    pub async fn changed(&self) {
        self.pending.notified().await;
    }

    fn push(&self, event: OwnershipEvent) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
        self.pending.notify_one();
    }
}

/// How stage 2 restores an assigned partition.
pub struct Restore {
    /// Settings for a group-less reader of the changelog.
    pub reader: ClientConfig,
    pub changelog_topic: String,
    pub timeout: Duration,
}

pub struct OwnershipContext {
    pub ownership: Arc<Ownership>,
    pub producer: FutureProducer,
    /// Bounded below the session timeout, so a slow broker cannot get the worker evicted.
    pub flush_deadline: Duration,
    pub restore: Option<Restore>,
    /// `harmony_consumer_lag`, by this consumer's group.
    pub lag: prometheus::IntGaugeVec,
    /// `harmony_producer_queue_messages` of `producer`, sampled with the statistics.
    pub producer_queue: prometheus::IntGauge,
    pub group: String,
    /// Exactly once: the stage's open batch, committed before partitions change hands. At
    /// least once: its in-flight events, settled for the revoked partitions before they go.
    pub delivery: Delivery,
    pub plan: Arc<Plan>,
    pub metrics: Metrics,
}

impl OwnershipContext {
    /// Exactly once: the open batch committed (or, failing, aborted and done again). At least
    /// once: the revoked partitions' acknowledged events settled into stored offsets under
    /// `flush_deadline`, and committed.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let shared = match &self.delivery {
            Delivery::AtLeastOnce(shared) => shared,
            Delivery::ExactlyOnce { transaction } => {
                match transaction.commit(consumer.group_metadata()) {
                    Ok((events, _)) => tracing::info!(
                        events,
                        stage = transaction.stage,
                        "batch committed at revocation"
                    ),
                    Err(error) => self
                        .ownership
                        .push(OwnershipEvent::TransactionFailed(error)),
                }
                return;
            }
        };
        let deadline = Instant::now() + self.flush_deadline;
        let revoked = |topic: &str, partition: i32| {
            partitions
                .elements()
                .iter()
                .any(|p| p.topic() == topic && p.partition() == partition)
        };
        let ownership = &self.ownership;
        let with = Settling {
            producer: &self.producer,
            plan: &self.plan,
            metrics: &self.metrics,
            owns: &|topic, partition| ownership.owns(topic, partition),
        };
        let settled = acks::settle_revoked(shared, consumer, &with, &revoked, deadline);
        match OffsetStore::commit_now(consumer) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot commit at revocation; the next owner reads from the last commit")
            }
        }
        tracing::info!(
            settled,
            in_flight = acks::lock(shared).in_flight(),
            "in-flight events settled at revocation"
        );
    }
}

impl ClientContext for OwnershipContext {
    /// librdkafka's statistics: the lag of every partition this consumer owns. A revoked
    /// partition's series is removed at revocation, so only owned ones are set here.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.producer_queue
            .set(i64::from(self.producer.in_flight_count()));
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition < 0 || p.consumer_lag < 0 || !self.ownership.owns(topic, partition) {
                    continue;
                }
                self.lag
                    .with_label_values(&[self.group.as_str(), topic, &partition.to_string()])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        // First what this worker did with the partitions reaches the broker and the offsets,
        // while they are still its own: their next owners read from the committed offsets.
        self.hand_over(consumer, partitions);
        if let Ok(mut owned) = self.ownership.owned.lock() {
            for p in partitions.elements() {
                if let Some(partitions) = owned.get_mut(p.topic()) {
                    partitions.remove(&p.partition());
                }
            }
        }
        self.ownership.update_readiness(|r| {
            for p in partitions.elements() {
                r.restoring.remove(&(p.topic().to_owned(), p.partition()));
            }
        });
        for p in partitions.elements() {
            tracing::info!(
                topic = p.topic(),
                partition = p.partition(),
                "partition revoked"
            );
            let _ = self.lag.remove_label_values(&[
                self.group.as_str(),
                p.topic(),
                &p.partition().to_string(),
            ]);
            self.ownership.push(OwnershipEvent::Revoked {
                topic: p.topic().to_owned(),
                partition: p.partition(),
            });
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        // With state to restore, not ready until the pipeline has installed it (its decoding
        // takes as long as the reading). A worker beyond the partition count is assigned
        // nothing, and has nothing to restore.
        self.ownership.update_readiness(|r| {
            r.awaiting_assignment = false;
            if self.restore.is_some() {
                for p in partitions.elements() {
                    r.restoring.insert((p.topic().to_owned(), p.partition()));
                }
            }
        });
        for p in partitions.elements() {
            let (topic, partition) = (p.topic().to_owned(), p.partition());
            tracing::info!(topic, partition, "partition assigned");
            let restored = self.restore.as_ref().map(|restore| {
                let started = Instant::now();
                read_to_end(restore, partition).map(|log| (log, started.elapsed()))
            });
            if let Ok(mut owned) = self.ownership.owned.lock() {
                owned.entry(topic.clone()).or_default().insert(partition);
            }
            self.ownership.push(OwnershipEvent::Assigned {
                topic,
                partition,
                restored,
            });
        }
    }
}

/// The latest value of each key of the changelog partition, from its beginning to the end it
/// has now.
pub(super) fn read_to_end(
    restore: &Restore,
    partition: i32,
) -> Result<ChangelogLog, rdkafka::error::KafkaError> {
    let mut settings = restore.reader.clone();
    // A transactionally written changelog ends in a commit marker the reader never sees: the
    // end is where librdkafka reports it (the last stable offset under read_committed).
    settings
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "0");
    let reader: BaseConsumer = settings.create()?;
    let topic = restore.changelog_topic.as_str();
    let (low, high) = reader.fetch_watermarks(topic, partition, restore.timeout)?;
    // Only each key's latest value is kept: until compaction catches up the partition holds
    // every state a record went through, and the worker's memory must not.
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    if high <= low {
        return Ok(Vec::new());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&assignment)?;
    let deadline = Instant::now() + restore.timeout;
    loop {
        if Instant::now() > deadline {
            return Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(message) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match message {
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                return Ok(latest.into_iter().collect())
            }
            other => other?,
        };
        if let Some(key) = message.key() {
            let value = message.payload().map(<[u8]>::to_vec);
            match latest.get_mut(key) {
                Some(slot) => *slot = value,
                None => {
                    latest.insert(key.to_vec(), value);
                }
            }
        }
        if message.offset() + 1 >= high {
            return Ok(latest.into_iter().collect());
        }
    }
}
