//! The machinery both stages share: read until told to stop, hand records to the producer,
//! and store an input offset once every record it caused is acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::durability::ChangelogWrites;
use super::durability::Durability;
use super::ownership::{self, ChangelogLog, Ownership, OwnershipContext, OwnershipEvent};
use super::rewind::{self, Rewinds};
use super::transaction::{Transaction, TransactionError};
use super::{Completion, Destination, PendingCompletion, Phase, Sent, WorkerError};
use crate::config::{Config, TopicRouter};
use crate::ingest::envelope::Decoder;
use crate::ingest::mapping::Catalog;
use crate::resolve::resolver::Resolver;
use crate::runtime::kafka::offsets::{OffsetStore, Ticket};
use crate::runtime::telemetry::Metrics;

pub(super) struct Pipeline<'a> {
    pub(super) config: &'a Config,
    pub(super) metrics: &'a Metrics,
    pub(super) producer: &'a FutureProducer,
    /// Exactly once: the stage's batch, which the producer writes into.
    pub(super) transaction: Option<std::sync::Arc<Transaction>>,
    pub(super) router: TopicRouter,
    pub(super) offsets: OffsetStore<'a, StreamConsumer<OwnershipContext>, OwnershipContext>,
    /// Which partitions the consumer owns now, and what changed since the last record.
    pub(super) ownership: std::sync::Arc<Ownership>,
    /// Stage 2: outputs → changelog → offset.
    pub(super) durability: Option<Durability>,
    /// Present when entities are declared: stage 1 mapping.
    pub(super) catalog: Option<std::sync::Arc<Catalog>>,
    /// Present in the stage 2 pipeline, which reads the internal topic.
    pub(super) resolver: Option<Resolver>,
    pub(super) internal_topic: &'a str,
    pub(super) state_topic: &'a str,
    /// The producer's `message.max.bytes`, read from the settings once.
    pub(super) max_message_bytes: usize,
    pub(super) decoder: Decoder,
    pub(super) deliveries: FuturesUnordered<PendingCompletion>,
    /// Reused for every output value.
    pub(super) buf: Vec<u8>,
    /// Partitions paused after a failed delivery, waiting to be read again.
    pub(super) rewinds: Rewinds,
    /// Stage 2: when its state gauges are next published.
    pub(super) next_state_metrics: Instant,
    /// Stage 2 reports the worker ready once the state of its assignment is installed.
    pub(super) health: crate::runtime::http::Health,
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
                self.read_again(consumer)?;
            }
            let state_metrics_due = self.resolver.is_some().then_some(self.next_state_metrics);
            if state_metrics_due.is_some_and(|due| Instant::now() >= due) {
                self.publish_state_metrics();
            }
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
                () = sleep_until(self.rewinds.next_due()), if self.rewinds.next_due().is_some() => {
                    self.read_again(consumer)?;
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
                    Ok(message) if self.resolver.is_some() => {
                        // An assignment in this very poll restored the partition's state.
                        self.apply_ownership()?;
                        self.resolve(&message).await?;
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
                        self.process(&message, system).await?;
                    }
                    // librdkafka reports and recovers from broker and topic trouble by itself;
                    // the consumer keeps its position, so nothing is skipped.
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
            }
        }
    }

    /// Stage 2: the state gauges of every partition it holds.
    fn publish_state_metrics(&mut self) {
        self.next_state_metrics = Instant::now() + self.config.processing.state_metrics_interval;
        let Some(resolver) = self.resolver.as_ref() else {
            return;
        };
        let started = Instant::now();
        let partitions = resolver.partitions();
        for &partition in &partitions {
            self.metrics
                .partition_state(partition, &resolver.state_summary(partition));
        }
        tracing::debug!(
            partitions = partitions.len(),
            seconds = started.elapsed().as_secs_f64(),
            "state metrics published"
        );
    }

    /// Events read and not yet stored, in either phase.
    fn in_flight(&self) -> usize {
        self.offsets.in_flight() + self.durability.as_ref().map_or(0, Durability::in_flight)
    }

    /// Follows the rebalances since the last call: a revoked partition's work is forgotten
    /// (its next owner reads it again) and its state dropped; an assigned one's state installed.
    fn apply_ownership(&mut self) -> Result<(), WorkerError> {
        let mut installed = false;
        for event in self.ownership.take_events() {
            match event {
                OwnershipEvent::TransactionFailed { reason, fatal } => {
                    if fatal {
                        return Err(WorkerError::Transaction(reason));
                    }
                    self.batch_aborted(&reason)?;
                }
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
                    if let Err(e) = self.offsets.consumer().resume(&tpl) {
                        tracing::debug!(topic, partition, error = %e, "cannot resume the assigned partition");
                    }
                    if let Some(restored) = restored {
                        self.install(partition, restored)?;
                        installed = true;
                    }
                }
            }
        }
        if installed {
            self.health.set_ready(true);
        }
        Ok(())
    }

    /// Stage 2: a partition's state as read back from its changelog.
    fn install(
        &mut self,
        partition: i32,
        restored: Result<(ChangelogLog, Duration), String>,
    ) -> Result<(), WorkerError> {
        let Some(resolver) = self.resolver.as_mut() else {
            return Ok(());
        };
        let (log, elapsed) = restored.map_err(|error| WorkerError::Restore { partition, error })?;
        let (records, unreadable) = resolver.install(
            partition,
            log.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        );
        self.metrics
            .partition_restored(partition, records, unreadable, elapsed.as_secs_f64());
        self.metrics
            .partition_state(partition, &resolver.state_summary(partition));
        Ok(())
    }

    /// Drops a partition's unfinished work and (stage 2) its state: revoked, or to be read
    /// again from an earlier offset.
    fn forget_partition(&mut self, topic: &str, partition: i32) {
        self.offsets.forget(topic, partition);
        if let Some(d) = self.durability.as_mut() {
            d.forget(topic, partition);
        }
        if let Some(r) = self.resolver.as_mut() {
            r.drop_partition(partition);
            self.metrics
                .partition_dropped(partition, &r.state_summary(partition));
        }
    }

    fn pause(&self, topic: &str, partition: i32) {
        let mut paused = TopicPartitionList::new();
        paused.add_partition(topic, partition);
        if let Err(e) = self.offsets.consumer().pause(&paused) {
            tracing::warn!(topic, partition, error = %e, "cannot pause the partition; its records are ignored until it is read again");
        }
    }

    /// The producer gave up on an output of `ticket`'s event: its partition stops, forgets its
    /// unfinished work (and, in stage 2, its state), and is read again after a back-off from
    /// the earliest offset not yet stored. A ticket of a read already forgotten changes nothing.
    fn rewind(&mut self, ticket: Ticket, phase: Phase, error: &KafkaError) {
        // Records queued behind the failed one would otherwise still go out, and a later
        // record of a key land before the failed one's second sending. Purged, they fail too
        // (PurgeQueue) and their partitions are read again as well. Exactly once needs none of
        // this: the batch is aborted.
        if self.transaction.is_none() && !rewind::is_purged(error) {
            self.producer
                .purge(rdkafka::producer::PurgeConfig::default().queue());
        }
        let located = match phase {
            Phase::Stored => self.offsets.tracker().locate(ticket),
            Phase::Outputs => self
                .durability
                .as_ref()
                .and_then(|d| d.tracker().locate(ticket)),
        };
        let Some((topic, partition)) = located else {
            return;
        };
        if !self.ownership.owns(&topic, partition) {
            // Revoked meanwhile: its next owner reads it again from the committed offset.
            return;
        }
        let Some(offset) = self.earliest_unstored(&topic, partition) else {
            return;
        };
        let backoff = self
            .rewinds
            .schedule(&topic, partition, offset, Instant::now());
        self.stop_partition(&topic, partition, offset, backoff, &error.to_string());
    }

    /// The earliest offset of the partition read and not yet stored, in either phase.
    fn earliest_unstored(&self, topic: &str, partition: i32) -> Option<i64> {
        let durability = self.durability.as_ref();
        [
            self.offsets.tracker().earliest_pending(topic, partition),
            durability.and_then(|d| d.tracker().earliest_pending(topic, partition)),
        ]
        .into_iter()
        .flatten()
        .min()
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

    /// Stage 2: a change its system's policy says not to apply (a position regression under
    /// `stop`). The partition stops at it as after a failed delivery — its unfinished work and
    /// state forgotten, paused, read again from its earliest unstored offset after a back-off —
    /// so nothing after the change is applied before it and nothing is skipped; it moves on by
    /// itself once the policy or the source changes.
    pub(super) fn halt(
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
            .earliest_unstored(topic, partition)
            .map_or(offset, |earliest| earliest.min(offset));
        let backoff = self.rewinds.hold(topic, partition, from, Instant::now());
        self.stop_partition(topic, partition, from, backoff, reason);
        Ok(())
    }

    /// Partitions whose back-off is over: (stage 2) their state rebuilt from the changelog,
    /// then read again from where they were rewound to.
    fn read_again(
        &mut self,
        consumer: &StreamConsumer<OwnershipContext>,
    ) -> Result<(), WorkerError> {
        for due in self.rewinds.take_due(Instant::now()) {
            let (topic, partition) = (due.topic.as_str(), due.partition);
            if !self.ownership.owns(topic, partition) {
                continue;
            }
            if let Some(restore) = consumer.context().restore.as_ref() {
                let started = Instant::now();
                // The reader blocks the stage's thread; its other partitions wait as they do
                // on an assignment.
                let log = ownership::read_to_end(restore, partition);
                match log {
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
                if let Some(r) = self.resolver.as_mut() {
                    r.drop_partition(partition);
                }
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
    /// their acknowledgements (stage 2: and then for its changelog value's). Exactly once: its
    /// changelog value joins them in the open batch, and its offset commits with the batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish(
        &mut self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        changelog: ChangelogWrites,
        phase: Phase,
        sends: Vec<(Destination, Sent)>,
        source_ts_ms: Option<i64>,
        started: Instant,
    ) -> Result<(), WorkerError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if self.transaction.is_none() {
            let ticket = match (phase, self.durability.as_mut()) {
                (Phase::Outputs, Some(d)) => d.begin(topic, partition, offset, changelog),
                _ => self.offsets.begin(topic, partition, offset),
            };
            self.track(ticket, phase, sends, source_ts_ms, started);
            return Ok(());
        }
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
        if let Some(transaction) = &self.transaction {
            transaction.consumed(topic, partition, offset, source_ts_ms);
        }
        self.metrics.processed(started.elapsed().as_secs_f64(), 0);
        Ok(())
    }

    /// A record's state (`None`: its tombstone) to the changelog, partition for partition: the
    /// internal partition's next owner restores from exactly this changelog partition.
    async fn write_changelog(&self, partition: i32, key: &str, state: Option<&[u8]>) -> Sent {
        let record = FutureRecord {
            topic: self.state_topic,
            partition: Some(partition),
            payload: state,
            key: Some(key.as_bytes()),
            timestamp: None,
            headers: None,
        };
        send(self.producer, record).await
    }

    /// Exactly once: opens the stage's batch before an event's first record is sent.
    pub(super) fn open_batch(&mut self) -> Result<(), WorkerError> {
        let opened = match &self.transaction {
            None => return Ok(()),
            Some(transaction) => transaction.ensure_open(),
        };
        match opened {
            Ok(()) => Ok(()),
            Err(TransactionError::Fatal(reason)) => Err(WorkerError::Transaction(reason)),
            Err(TransactionError::Aborted(reason)) => self.abort_batch(&reason),
        }
    }

    fn commit_due(&self) -> Option<Instant> {
        self.transaction
            .as_ref()
            .and_then(|t| t.due(self.config.processing.commit_interval))
    }

    /// Exactly once: commits the open batch with its offsets.
    fn commit_batch(&mut self) -> Result<(), WorkerError> {
        let Some(transaction) = self.transaction.clone() else {
            return Ok(());
        };
        let group = self.offsets.consumer().group_metadata();
        // The commit blocks the stage's thread until every record of the batch is written;
        // the stage has nothing else to do meanwhile that would not go into the next batch.
        match transaction.commit(group) {
            Ok((events, source_times)) => {
                self.rewinds.committed();
                for ts in source_times {
                    self.metrics.end_to_end(ts);
                }
                self.metrics.batch_committed(transaction.stage, events);
                Ok(())
            }
            Err(TransactionError::Aborted(reason)) => self.batch_aborted(&reason),
            Err(TransactionError::Fatal(reason)) => Err(WorkerError::Transaction(reason)),
        }
    }

    fn abort_batch(&mut self, reason: &str) -> Result<(), WorkerError> {
        let Some(transaction) = self.transaction.clone() else {
            return Ok(());
        };
        match transaction.abort_open(reason) {
            TransactionError::Fatal(reason) => Err(WorkerError::Transaction(reason)),
            TransactionError::Aborted(reason) => self.batch_aborted(&reason),
        }
    }

    /// Exactly once: a batch was aborted, so nothing of it happened. Every assigned partition
    /// is read again from its committed offset (stage 2: with its state rebuilt from the
    /// committed changelog).
    fn batch_aborted(&mut self, reason: &str) -> Result<(), WorkerError> {
        let stage = self.transaction.as_ref().map_or("", |t| t.stage);
        self.metrics.batch_aborted(stage, reason);
        let consumer = self.offsets.consumer();
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

    /// Turns one input record into its outputs and registers it as in flight.
    pub(super) fn track(
        &mut self,
        ticket: Ticket,
        phase: Phase,
        sends: Vec<(Destination, Sent)>,
        source_ts_ms: Option<i64>,
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
                source_ts_ms,
                results,
            }
        }));
        self.metrics
            .processed(started.elapsed().as_secs_f64(), self.in_flight());
    }

    /// One phase of an event acknowledged. Outputs (stage 2): the events now ready write their
    /// changelog values, in offset order. Last phase: the offset may be stored.
    async fn complete(&mut self, done: Completion) -> Result<(), WorkerError> {
        let mut failed = None;
        for (destination, result) in done.results {
            let topic = match &destination {
                Destination::Output => self.config.output.topic.as_str(),
                Destination::Internal => self.internal_topic,
                Destination::Changelog => self.state_topic,
                Destination::DeadLetter => self.config.output.dead_letter_topic.as_str(),
                Destination::Topic(name) => name.as_str(),
            };
            match result {
                Ok(()) => match destination {
                    Destination::Output
                    | Destination::Internal
                    | Destination::Changelog
                    | Destination::Topic(_) => self.metrics.output_acknowledged(topic),
                    Destination::DeadLetter => self.metrics.dead_letter_acknowledged(topic),
                },
                Err(error) if rewind::is_retriable(&error) && failed.is_none() => {
                    failed = Some(error);
                }
                Err(error) if rewind::is_retriable(&error) => {}
                Err(error) => {
                    tracing::error!(topic = %topic, error = %error,
                        "delivery failed and cannot succeed by retrying; stopping without storing this offset");
                    return Err(WorkerError::Delivery {
                        topic: topic.to_owned(),
                        error,
                    });
                }
            }
        }
        if let Some(error) = failed {
            self.rewind(done.ticket, done.phase, &error);
            self.metrics.set_in_flight(self.in_flight());
            return Ok(());
        }
        if let Some(ts) = done.source_ts_ms {
            self.metrics.end_to_end(ts);
        }
        match done.phase {
            Phase::Stored => {
                if let Some((topic, partition, next)) = self.offsets.acknowledged(done.ticket) {
                    self.rewinds.stored(topic, partition, next);
                }
            }
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
                    if value.is_empty() {
                        if let Some((topic, partition, next)) = self.offsets.acknowledged(ticket) {
                            self.rewinds.stored(topic, partition, next);
                        }
                        continue;
                    }
                    let mut sends = Vec::with_capacity(value.len());
                    for (key, state) in value.iter() {
                        let sent = self.write_changelog(partition, key, state).await;
                        sends.push((Destination::Changelog, sent));
                    }
                    self.track(ticket, Phase::Stored, sends, None, Instant::now());
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
