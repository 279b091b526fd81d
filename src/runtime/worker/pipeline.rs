//! One runner for either stage: read until told to stop, hand each record to the [`Stage`],
//! publish its [`Effects`] under the pipeline's [`Delivery`] guarantee, and follow the
//! partitions' life cycle (assigned → restoring → ready → revoked, or paused and read again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::acks::{self, Settled, Settling};
use super::dead_letter;
use super::delivery::{next_completion, Delivery};
use super::ownership::{self, ChangelogLog, Ownership, OwnershipContext, OwnershipEvent};
use super::plan::Plan;
use super::rewind::{self, Rewinds};
use super::transaction::TransactionError;
use super::{Completion, Destination, Phase, Sent, WorkerError};
use crate::config::{Config, RegressionPolicy};
use crate::model::stage::{ChangelogWrites, Count, Effects, HeaderSource, Input, Stage, Topic};
use crate::runtime::kafka::offsets::{OffsetStore, Ticket};
use crate::runtime::registry::Registry;
use crate::runtime::telemetry::Metrics;

pub(super) struct Pipeline<'a, S: Stage> {
    pub(super) stage: S,
    pub(super) config: &'a Config,
    pub(super) plan: &'a Plan,
    pub(super) metrics: &'a Metrics,
    /// The stage's transactional producer exactly once; the shared one at least once.
    pub(super) producer: &'a FutureProducer,
    pub(super) consumer: &'a StreamConsumer<OwnershipContext>,
    pub(super) delivery: Delivery,
    /// Which partitions the consumer owns now, and what changed since the last record.
    pub(super) ownership: Arc<Ownership>,
    /// Reused for every record: what the stage made of it.
    pub(super) effects: Effects,
    /// Partitions paused after a failed delivery, waiting to be read again.
    pub(super) rewinds: Rewinds,
    /// A stage with state: when its state gauges are next published.
    pub(super) next_state_metrics: Instant,
    /// Stage 1 with `schema_registry`: where Avro records' writer schemas come from.
    pub(super) registry: Option<Arc<Registry>>,
}

/// An input record's headers, read without copying.
struct MessageHeaders<'m>(Option<&'m rdkafka::message::BorrowedHeaders>);

impl HeaderSource for MessageHeaders<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0?.iter().find(|h| h.key == name)?.value
    }
}

impl<'a, S: Stage> Pipeline<'a, S> {
    pub(super) fn new(
        stage: S,
        config: &'a Config,
        plan: &'a Plan,
        metrics: &'a Metrics,
        producer: &'a FutureProducer,
        consumer: &'a StreamConsumer<OwnershipContext>,
        delivery: Delivery,
    ) -> Self {
        Self {
            stage,
            config,
            plan,
            metrics,
            producer,
            consumer,
            delivery,
            ownership: Arc::clone(&consumer.context().ownership),
            effects: Effects::default(),
            rewinds: Rewinds::default(),
            next_state_metrics: Instant::now(),
            registry: None,
        }
    }

    pub(super) async fn process_until(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let ownership = Arc::clone(&self.ownership);
        let consumer = self.consumer;
        loop {
            self.apply_ownership()?;
            let can_read = self.in_flight() < self.config.processing.max_in_flight;
            // Checked here as well as slept on below: while records keep coming the task never
            // waits, so the runtime never turns its timer and a sleep would not end.
            let commit_due = self.commit_due();
            if commit_due.is_some_and(|due| Instant::now() >= due) {
                self.commit_batch()?;
                continue;
            }
            if self
                .rewinds
                .next_due()
                .is_some_and(|due| Instant::now() >= due)
            {
                self.read_again()?;
            }
            let state_metrics_due = S::KEEPS_STATE.then_some(self.next_state_metrics);
            if state_metrics_due.is_some_and(|due| Instant::now() >= due) {
                self.publish_state_metrics();
            }
            let has_deliveries = self.delivery.has_deliveries();
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(in_flight = self.in_flight(), "shutdown requested; draining");
                        return Ok(());
                    }
                }
                Some(done) = next_completion(&self.delivery), if has_deliveries => {
                    self.complete(done)?;
                }
                // Taken at the top of the loop.
                () = ownership.changed() => {}
                () = sleep_until(self.rewinds.next_due()), if self.rewinds.next_due().is_some() => {
                    self.read_again()?;
                }
                () = sleep_until(commit_due), if commit_due.is_some() => {
                    self.commit_batch()?;
                }
                () = sleep_until(state_metrics_due), if state_metrics_due.is_some() => {
                    self.publish_state_metrics();
                }
                received = consumer.recv(), if can_read => match received {
                    // Fetched before the partition was paused: it is read again from its
                    // earliest unfinished offset.
                    Ok(message) if self.rewinds.is_waiting(message.topic(), message.partition()) => {}
                    Ok(message) => {
                        // An assignment in this very poll restored the partition's state.
                        self.apply_ownership()?;
                        self.handle(&message).await?;
                    }
                    // librdkafka reports and recovers from broker and topic trouble by itself;
                    // the consumer keeps its position, so nothing is skipped.
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
            }
        }
    }

    /// One input record: the stage's effects, published under the pipeline's guarantee.
    async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let started = Instant::now();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if let Some(registry) = &self.registry {
            if let Err(error) = registry
                .ensure(message.key(), message.payload(), self.metrics)
                .await
            {
                // Never dead-lettered: the record is fine, the registry is not. The partition
                // waits and reads it again, as after a failed delivery.
                return self.halt(topic, partition, offset, &error.to_string());
            }
        }
        let headers = MessageHeaders(message.headers());
        let input = Input {
            topic,
            partition,
            offset,
            key: message.key(),
            payload: message.payload(),
            headers: &headers,
            read_at_ms: crate::runtime::kafka::now_ms(),
        };
        self.effects.clear();
        self.stage.handle(&input, &mut self.effects);
        self.count(topic);
        if let Some(reason) = self.effects.halt.take() {
            return self.halt(topic, partition, offset, &reason);
        }
        self.open_batch()?;
        let mut sends: Vec<(Destination, Sent)> = Vec::with_capacity(self.effects.publish.len());
        let mut too_large = None;
        for publish in &mut self.effects.publish {
            let record = FutureRecord {
                topic: self.plan.topic_name(&publish.topic),
                partition: None,
                payload: publish.value.as_deref(),
                key: publish.key.as_deref(),
                timestamp: None,
                headers: (!publish.headers.is_empty()).then(|| {
                    publish.headers.iter().fold(
                        OwnedHeaders::new_with_capacity(publish.headers.len()),
                        |headers, (key, value)| {
                            headers.insert(Header {
                                key,
                                value: Some(value.as_slice()),
                            })
                        },
                    )
                }),
            };
            match send(self.producer, record).await {
                // The event's first record alone exceeds the producer's message.max.bytes:
                // sending it can never succeed, so the input goes to the dead-letter topic
                // instead of stopping the partition.
                // A stage with state has applied the change already: it checks its outputs'
                // sizes itself, and what the producer refuses anyway stops the worker.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    if sends.is_empty() && !S::KEEPS_STATE =>
                {
                    too_large = Some(publish.value.as_ref().map_or(0, Vec::len));
                    break;
                }
                // The topic moves into the completion; the record's buffers stay for the next.
                sent => sends.push((
                    Destination::Publish(std::mem::replace(&mut publish.topic, Topic::Output)),
                    sent,
                )),
            }
        }
        if let Some(bytes) = too_large {
            self.effects.reject(
                "output_too_large",
                format!(
                    "the output record of {bytes} bytes exceeds the producer's message.max.bytes"
                ),
            );
        }
        if let Some(rejection) = &self.effects.reject {
            let (kind, reason) = (rejection.kind, rejection.reason.as_str());
            self.metrics
                .dead_lettered(topic, partition, offset, kind, reason);
            let sent = dead_letter::send_copy(
                self.producer,
                &self.plan.dead_letter_topic,
                message,
                kind,
                reason,
            )
            .await;
            sends.push((Destination::DeadLetter, sent));
        }
        let changelog = std::mem::take(&mut self.effects.changelog);
        let source_ts_ms = self.effects.source_ts_ms;
        self.finish(message, changelog, sends, source_ts_ms, started)
            .await
    }

    /// The metrics of the stage's counted events.
    fn count(&self, topic: &str) {
        let stage = &self.stage;
        for count in &self.effects.counts {
            match count {
                &Count::Consumed { system, op } => {
                    self.metrics
                        .change_consumed(stage.system_name(system), topic, op)
                }
                &Count::TombstoneSkipped { system } => self
                    .metrics
                    .tombstone_skipped(stage.system_name(system), topic),
                &Count::Control { system, kind } => {
                    self.metrics
                        .control_record(stage.system_name(system), topic, kind)
                }
                &Count::Unmapped { system } => self
                    .metrics
                    .unmapped_change(stage.system_name(system), topic),
                &Count::RecordChange {
                    entity,
                    system,
                    outcome,
                    duplicate_reason,
                } => self.metrics.record_change(
                    stage.entity_name(entity),
                    stage.system_name(system),
                    outcome,
                    duplicate_reason,
                ),
                Count::Regression {
                    entity,
                    system,
                    applied,
                    incoming,
                    stopped,
                } => self.metrics.position_regression(
                    stage.system_name(*system),
                    stage.entity_name(*entity),
                    applied,
                    incoming,
                    if *stopped {
                        RegressionPolicy::Stop
                    } else {
                        RegressionPolicy::Accept
                    },
                ),
                Count::SchemaChange {
                    system,
                    table,
                    kind,
                    column,
                    stopped,
                } => self.metrics.schema_change(
                    stage.system_name(*system),
                    table,
                    kind,
                    column,
                    *stopped,
                ),
                Count::MissingColumns {
                    system,
                    table,
                    columns,
                    stopped,
                } => self.metrics.missing_columns(
                    stage.system_name(*system),
                    table,
                    columns,
                    *stopped,
                ),
                &Count::GuardRejection {
                    entity,
                    field,
                    system,
                } => self.metrics.guard_rejection(
                    stage.entity_name(entity),
                    stage.field_name(entity, field),
                    stage.system_name(system),
                ),
                &Count::Conflict {
                    entity,
                    field,
                    strategy,
                } => self.metrics.conflict(
                    stage.entity_name(entity),
                    stage.field_name(entity, field),
                    strategy,
                ),
            }
        }
    }

    /// A stage with state: the state gauges of every partition it holds.
    fn publish_state_metrics(&mut self) {
        self.next_state_metrics = Instant::now() + self.config.processing.state_metrics_interval;
        let started = Instant::now();
        let partitions = self.stage.partitions();
        for &partition in &partitions {
            self.metrics
                .partition_state(partition, &self.stage.state_summary(partition));
        }
        tracing::debug!(
            partitions = partitions.len(),
            seconds = started.elapsed().as_secs_f64(),
            "state metrics published"
        );
    }

    fn in_flight(&self) -> usize {
        self.delivery.in_flight()
    }

    /// Follows the rebalances since the last call: a revoked partition's work is forgotten
    /// (its next owner reads it again) and its state dropped; an assigned one's state installed.
    fn apply_ownership(&mut self) -> Result<(), WorkerError> {
        for event in self.ownership.take_events() {
            match event {
                OwnershipEvent::TransactionFailed(error) => self.transaction_failed(error)?,
                OwnershipEvent::Revoked { topic, partition } => {
                    self.rewinds.forget(&topic, partition);
                    self.forget_partition(&topic, partition);
                }
                OwnershipEvent::Assigned {
                    topic,
                    partition,
                    restored,
                } => {
                    self.metrics.rebalanced();
                    // librdkafka keeps a partition's pause across a revocation: one paused
                    // for a rewind just before it was revoked would stay silent forever.
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    if let Err(e) = self.consumer.resume(&tpl) {
                        tracing::debug!(topic, partition, error = %e, "cannot resume the assigned partition");
                    }
                    if let Some(restored) = restored {
                        self.install(partition, restored)?;
                        self.ownership.installed(&topic, partition);
                    }
                }
            }
        }
        Ok(())
    }

    /// A partition's state as read back from its changelog.
    fn install(
        &mut self,
        partition: i32,
        restored: Result<(ChangelogLog, Duration), KafkaError>,
    ) -> Result<(), WorkerError> {
        let (log, elapsed) = restored.map_err(|error| WorkerError::Restore { partition, error })?;
        let mut entries = log.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
        let (records, unreadable) = self.stage.install(partition, &mut entries);
        self.metrics
            .partition_restored(partition, records, unreadable, elapsed.as_secs_f64());
        self.metrics
            .partition_state(partition, &self.stage.state_summary(partition));
        Ok(())
    }

    /// Drops a partition's unfinished work and its state: revoked, or to be read again from an
    /// earlier offset.
    fn forget_partition(&mut self, topic: &str, partition: i32) {
        self.delivery.forget(topic, partition);
        if S::KEEPS_STATE {
            self.stage.drop_partition(partition);
            self.metrics
                .partition_dropped(partition, &self.stage.state_summary(partition));
        }
    }

    fn pause(&self, topic: &str, partition: i32) {
        let mut paused = TopicPartitionList::new();
        paused.add_partition(topic, partition);
        if let Err(e) = self.consumer.pause(&paused) {
            tracing::warn!(topic, partition, error = %e, "cannot pause the partition; its records are ignored until it is read again");
        }
    }

    /// The producer gave up on an output of `ticket`'s event: its partition stops, forgets its
    /// unfinished work (and its state), and is read again after a back-off from the earliest
    /// offset not yet stored. A ticket of a read already forgotten changes nothing.
    fn rewind(&mut self, ticket: Ticket, phase: Phase, error: &KafkaError) {
        let Some(shared) = self.delivery.acks() else {
            return;
        };
        // Records queued behind the failed one would otherwise still go out, and a later
        // record of a key land before the failed one's second sending. Purged, they fail too
        // (PurgeQueue) and their partitions are read again as well. Exactly once needs none of
        // this: the batch is aborted.
        if !rewind::is_purged(error) {
            self.producer
                .purge(rdkafka::producer::PurgeConfig::default().queue());
        }
        let located = acks::lock(shared).locate(ticket, phase);
        let Some((topic, partition)) = located else {
            return;
        };
        if !self.ownership.owns(&topic, partition) {
            // Revoked meanwhile: its next owner reads it again from the committed offset.
            return;
        }
        let Some(offset) = self.delivery.earliest_unstored(&topic, partition) else {
            return;
        };
        let backoff = self
            .rewinds
            .schedule(&topic, partition, offset, Instant::now());
        self.stop_partition(&topic, partition, offset, backoff, &error.to_string());
    }

    /// Forgets the partition's unfinished work (and state) and pauses it: the rewind just
    /// scheduled reads it again from `offset` after `backoff`.
    fn stop_partition(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        backoff: Duration,
        reason: &str,
    ) {
        self.forget_partition(topic, partition);
        self.pause(topic, partition);
        self.metrics
            .partition_rewound(topic, partition, offset, backoff, reason);
    }

    /// A change its system's policy says not to apply (a position regression under `stop`).
    /// The partition stops at it as after a failed delivery — its unfinished work and state
    /// forgotten, paused, read again from its earliest unstored offset after a back-off — so
    /// nothing after the change is applied before it and nothing is skipped; it moves on by
    /// itself once the policy or the source changes.
    fn halt(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &str,
    ) -> Result<(), WorkerError> {
        // What the open batch holds of the partition came before the change: committed whole,
        // so reading again from the change repeats nothing.
        self.commit_batch()?;
        let from = self
            .delivery
            .earliest_unstored(topic, partition)
            .map_or(offset, |earliest| earliest.min(offset));
        let backoff = self.rewinds.hold(topic, partition, from, Instant::now());
        self.stop_partition(topic, partition, from, backoff, reason);
        Ok(())
    }

    /// Partitions whose back-off is over: their state rebuilt from the changelog, then read
    /// again from where they were rewound to.
    fn read_again(&mut self) -> Result<(), WorkerError> {
        let consumer = self.consumer;
        for due in self.rewinds.take_due(Instant::now()) {
            let (topic, partition) = (due.topic.as_str(), due.partition);
            if !self.ownership.owns(topic, partition) {
                continue;
            }
            if let Some(restore) = consumer.context().restore.as_ref() {
                let started = Instant::now();
                // The reader blocks the stage's thread; its other partitions wait as they do
                // on an assignment.
                match ownership::read_to_end(restore, partition) {
                    Ok(log) => self.install(partition, Ok((log, started.elapsed())))?,
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot read the changelog to rebuild the partition; trying again");
                        self.rewinds
                            .schedule(topic, partition, due.offset, Instant::now());
                        continue;
                    }
                }
            }
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl
                .add_partition_offset(topic, partition, Offset::from_raw(due.offset))
                .and_then(|()| consumer.seek_partitions(tpl.clone(), Duration::from_secs(10)))
                .and_then(|_| consumer.resume(&tpl))
            {
                tracing::warn!(topic, partition, error = %e, "cannot read the partition again yet");
                self.stage.drop_partition(partition);
                self.rewinds
                    .schedule(topic, partition, due.offset, Instant::now());
                continue;
            }
            tracing::info!(
                topic,
                partition,
                offset = due.offset,
                "partition read again"
            );
        }
        Ok(())
    }

    /// An event's records are all handed to the producer. At least once: its offset waits for
    /// their acknowledgements (a stage with state: and then for its changelog writes'). Exactly
    /// once: its changelog writes join them in the open batch, and its offset commits with it.
    async fn finish(
        &mut self,
        message: &BorrowedMessage<'_>,
        changelog: ChangelogWrites,
        sends: Vec<(Destination, Sent)>,
        source_ts_ms: Option<i64>,
        started: Instant,
    ) -> Result<(), WorkerError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let transaction = match &self.delivery {
            Delivery::AtLeastOnce(shared) => {
                let mut acks = acks::lock(shared);
                let (ticket, phase) = if S::KEEPS_STATE {
                    let ticket = acks.durability.begin(topic, partition, offset, changelog);
                    (ticket, Phase::Outputs)
                } else {
                    (acks.offsets.begin(topic, partition, offset), Phase::Stored)
                };
                acks.track(ticket, phase, sends, source_ts_ms);
                let in_flight = acks.in_flight();
                drop(acks);
                self.metrics
                    .processed(started.elapsed().as_secs_f64(), in_flight);
                return Ok(());
            }
            Delivery::ExactlyOnce { transaction } => Arc::clone(transaction),
        };
        let mut refused = sends.into_iter().find_map(|(_, sent)| sent.err());
        for (key, state) in changelog.iter() {
            if refused.is_some() {
                break;
            }
            refused = self.write_changelog(partition, key, state).await.err();
        }
        if let Some(error) = refused {
            // A record the producer would not even take: the batch cannot be whole.
            return self.abort_batch(&error.to_string());
        }
        transaction.consumed(topic, partition, offset, source_ts_ms);
        self.metrics.processed(started.elapsed().as_secs_f64(), 0);
        Ok(())
    }

    /// Exactly once: a record's state (`None`: its tombstone) to the changelog, in the batch.
    async fn write_changelog(&self, partition: i32, key: &str, state: Option<&[u8]>) -> Sent {
        send(
            self.producer,
            acks::changelog_record(self.plan, partition, key, state),
        )
        .await
    }

    /// Exactly once: opens the stage's batch before an event's first record is sent.
    fn open_batch(&mut self) -> Result<(), WorkerError> {
        let Some(transaction) = self.delivery.transaction() else {
            return Ok(());
        };
        match transaction.ensure_open() {
            Ok(()) => Ok(()),
            Err(error) if error.is_retriable() => self.abort_batch(&error.to_string()),
            Err(error) => self.transaction_failed(error),
        }
    }

    fn commit_due(&self) -> Option<Instant> {
        self.delivery
            .transaction()
            .and_then(|t| t.due(self.config.processing.commit_interval))
    }

    /// Exactly once: commits the open batch with its offsets.
    fn commit_batch(&mut self) -> Result<(), WorkerError> {
        let Some(transaction) = self.delivery.transaction().cloned() else {
            return Ok(());
        };
        let group = self.consumer.group_metadata();
        // The commit blocks the stage's thread until every record of the batch is written;
        // the stage has nothing else to do meanwhile that would not go into the next batch.
        match transaction.commit(group) {
            Ok((events, source_times)) => {
                self.rewinds.committed();
                for ts in source_times {
                    self.metrics.end_to_end(ts);
                }
                self.metrics.batch_committed(S::NAME, events);
                Ok(())
            }
            Err(error) => self.transaction_failed(error),
        }
    }

    fn abort_batch(&mut self, reason: &str) -> Result<(), WorkerError> {
        let Some(transaction) = self.delivery.transaction().cloned() else {
            return Ok(());
        };
        let error = transaction.abort_open(reason);
        self.transaction_failed(error)
    }

    /// Exactly once: an aborted batch is done again; a producer that cannot go on stops the
    /// worker.
    fn transaction_failed(&mut self, error: TransactionError) -> Result<(), WorkerError> {
        if error.is_retriable() {
            self.batch_aborted(&error.to_string())
        } else {
            Err(WorkerError::Transaction(error.to_string()))
        }
    }

    /// Exactly once: a batch was aborted, so nothing of it happened. Every assigned partition
    /// is read again from its committed offset (with its state rebuilt from the committed
    /// changelog).
    fn batch_aborted(&mut self, reason: &str) -> Result<(), WorkerError> {
        self.metrics.batch_aborted(S::NAME, reason);
        let consumer = self.consumer;
        let assignment = consumer.assignment().map_err(|e| {
            WorkerError::Transaction(format!("cannot read the assignment after an abort: {e}"))
        })?;
        let committed = consumer
            .committed_offsets(assignment, Duration::from_secs(30))
            .map_err(|e| {
                WorkerError::Transaction(format!(
                    "cannot read the committed offsets after an abort: {e}"
                ))
            })?;
        let now = Instant::now();
        for p in committed.elements() {
            let (topic, partition) = (p.topic(), p.partition());
            let from = match p.offset() {
                Offset::Offset(o) => o,
                // Nothing committed yet: from the beginning, as a new group reads.
                _ => Offset::Beginning.to_raw().unwrap_or(-2),
            };
            self.forget_partition(topic, partition);
            self.pause(topic, partition);
            self.rewinds.schedule(topic, partition, from, now);
        }
        Ok(())
    }

    /// At least once: one phase of an event acknowledged (see [`acks::Acks::settle`]); a
    /// retriable failure reads its partition again, a permanent one stops the worker.
    fn complete(&mut self, done: Completion) -> Result<(), WorkerError> {
        let Some(shared) = self.delivery.acks() else {
            return Ok(());
        };
        let ownership = &self.ownership;
        let with = Settling {
            producer: self.producer,
            plan: self.plan,
            metrics: self.metrics,
            owns: &|topic, partition| ownership.owns(topic, partition),
        };
        let rewinds = &mut self.rewinds;
        let settled =
            acks::lock(shared).settle(done, self.consumer, &with, &mut |topic, partition, next| {
                rewinds.stored(topic, partition, next)
            });
        match settled {
            Settled::Done => {}
            Settled::Retry {
                ticket,
                phase,
                error,
            } => self.rewind(ticket, phase, &error),
            Settled::Fatal { topic, error } => {
                tracing::error!(topic = %topic, error = %error,
                    "delivery failed and cannot succeed by retrying; stopping without storing this offset");
                return Err(WorkerError::Delivery { topic, error });
            }
        }
        self.metrics.set_in_flight(self.in_flight());
        Ok(())
    }

    /// Waits for in-flight deliveries, at most `deadline`. Whatever is still unacknowledged
    /// then keeps its offset unstored and is read again by the next owner of the partition.
    pub(super) async fn drain(&mut self, deadline: Duration) -> Result<(), WorkerError> {
        let drain = async {
            while let Some(done) = next_completion(&self.delivery).await {
                self.complete(done)?;
            }
            self.commit_batch()
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

    /// At least once: commits what is stored now, before leaving the group.
    pub(super) fn commit_stored(&self) -> Result<(), WorkerError> {
        if self.delivery.acks().is_none() {
            return Ok(());
        }
        match OffsetStore::commit_now(self.consumer) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(WorkerError::Commit(e)),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Hands a record to the producer, waiting while its local queue is full rather than
/// dropping or reordering anything.
pub(super) async fn send(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Sent {
    loop {
        match acks::offer(producer, record) {
            Ok(sent) => return sent,
            Err(returned) => {
                record = returned;
                tokio::time::sleep(acks::QUEUE_FULL_WAIT).await;
            }
        }
    }
}
