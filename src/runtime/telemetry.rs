//! Observable occurrences as named events: each function logs and counts together, so a log
//! line and its metric cannot drift apart. The registry is passed in, never global, so a test
//! reads the very counters a worker moved.
//!
//! Labels are bounded: system, topic, op, error kind. Never a record key or raw error text.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::model::stage::StateSummary;

/// Handles on the registry's series: a clone counts into the same ones.
#[derive(Clone)]
pub struct Metrics {
    events_consumed: IntCounterVec,
    tombstones: IntCounterVec,
    control_records: IntCounterVec,
    unmapped_changes: IntCounterVec,
    record_changes: IntCounterVec,
    conflicts: IntCounterVec,
    duplicates: IntCounterVec,
    decode_failures: IntCounterVec,
    dead_letters: IntCounterVec,
    outputs_published: IntCounterVec,
    in_flight: IntGauge,
    processing_seconds: Histogram,
    restore_seconds: Histogram,
    restored_records: prometheus::IntCounter,
    state_records: IntGaugeVec,
    rebalances: prometheus::IntCounter,
    rewinds: IntCounterVec,
    batches: IntCounterVec,
    batch_events: IntCounterVec,
    ready: IntGauge,
    end_to_end_seconds: Histogram,
    producer_queue: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    state_bytes: IntGaugeVec,
    out_of_sync: IntGaugeVec,
    out_of_sync_age: GaugeVec,
    unsettled: IntGaugeVec,
    unsettled_age: GaugeVec,
    position_regressions: IntCounterVec,
    schema_changes: IntCounterVec,
    missing_columns: IntGaugeVec,
    guard_rejections: IntCounterVec,
    registry_lookups: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let age = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, GaugeVec::new(Opts::new(name, help), labels))
        };
        Ok(Self {
            state_bytes: gauge(
                "harmony_state_bytes",
                "Memory the record state of an assigned internal-topic partition takes (keys, state, map buckets; allocator overhead not counted).",
                &["partition"],
            )?,
            out_of_sync: gauge(
                "harmony_target_out_of_sync_records",
                "Records whose latest delivery a target system has not yet been seen applying (its echo through its own change capture), per target and partition.",
                &["target", "partition"],
            )?,
            out_of_sync_age: age(
                "harmony_target_out_of_sync_age_seconds",
                "Age of the oldest delivery a target has not yet been seen applying, from the source commit of the change that caused it; 0 when in sync.",
                &["target", "partition"],
            )?,
            unsettled: gauge(
                "harmony_manual_conflicts_pending",
                "Fields holding a manual conflict no operator has settled, per entity and partition.",
                &["entity", "partition"],
            )?,
            unsettled_age: age(
                "harmony_manual_conflicts_oldest_age_seconds",
                "Age of the oldest unsettled manual conflict, from the source commit of the change that raised it; 0 when none.",
                &["entity", "partition"],
            )?,
            guard_rejections: counter(
                "harmony_guard_rejections_total",
                "Values a field's guard kept out, by entity, field and the system whose change was refused: the field kept its value, the system is sent the record back, and a `rejected` record is on the conflicts topic.",
                &["entity", "field", "system"],
            )?,
            position_regressions: counter(
                "harmony_position_regressions_total",
                "Changes whose source position was behind what harmony had applied from their system, yet committed later (a restored database, a promoted replica, a binlog reset), by system and the policy that met them (accept: applied; stop: the partition waits at the change).",
                &["system", "policy"],
            )?,
            schema_changes: counter(
                "harmony_schema_changes_total",
                "Changes of a mapped table's shape seen in its records' schema (a column added, dropped, renamed, its type changed), by system, table and kind.",
                &["system", "table", "kind"],
            )?,
            missing_columns: gauge(
                "harmony_schema_missing_columns",
                "Mapped columns that a table's latest changes no longer carry (dropped or renamed by DDL), by system and table: their fields keep their last values, or under `on_schema_change = \"stop\"` the partition waits. 0 once the mapping or the table is repaired.",
                &["system", "table"],
            )?,
            events_consumed: counter(
                "harmony_events_consumed_total",
                "Change events read from Debezium topics, by system, topic and op.",
                &["system", "topic", "op"],
            )?,
            tombstones: counter(
                "harmony_tombstones_total",
                "Kafka tombstones (null values after deletes) read and skipped.",
                &["system", "topic"],
            )?,
            control_records: counter(
                "harmony_control_records_total",
                "Heartbeats, transaction markers and schema changes read: recognised, not record changes.",
                &["system", "topic", "kind"],
            )?,
            unmapped_changes: counter(
                "harmony_unmapped_changes_total",
                "Changes of tables no entity maps (with entities declared): read and skipped.",
                &["system", "topic"],
            )?,
            record_changes: counter(
                "harmony_record_changes_total",
                "Record changes stage 2 processed, by entity, source system and outcome (applied, echo: a system applying a delivery, duplicate).",
                &["entity", "system", "outcome"],
            )?,
            conflicts: counter(
                "harmony_conflicts_total",
                "Concurrent writes of a field detected and resolved, by entity, field and strategy (manual: held for an operator).",
                &["entity", "field", "strategy"],
            )?,
            duplicates: counter(
                "harmony_duplicates_total",
                "Record changes dropped as duplicates, by source system and reason (position: a replay; snapshot_content: a snapshot read of what the system holds; no_change: nothing but ignored fields changed).",
                &["system", "reason"],
            )?,
            decode_failures: counter(
                "harmony_decode_failures_total",
                "Input records sent to the dead-letter topic, by kind of failure (decode errors, output_too_large).",
                &["topic", "kind"],
            )?,
            registry_lookups: counter(
                "harmony_schema_registry_lookups_total",
                "Writer schemas asked of the schema registry by id, by outcome (found, refused: unknown or unreadable, unavailable: the partition waits and asks again).",
                &["outcome"],
            )?,
            dead_letters: counter(
                "harmony_dead_letter_records_total",
                "Records written to the dead-letter topic and acknowledged.",
                &["topic"],
            )?,
            outputs_published: counter(
                "harmony_outputs_published_total",
                "Output records acknowledged by the broker, by output topic.",
                &["topic"],
            )?,
            in_flight: registered(
                registry,
                IntGauge::new(
                    "harmony_events_in_flight",
                    "Events read whose outputs are not yet all acknowledged.",
                ),
            )?,
            processing_seconds: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "harmony_event_processing_seconds",
                        "Time from reading an event to handing all its outputs to the producer.",
                    )
                    .buckets(vec![
                        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025,
                        0.005, 0.01, 0.025, 0.1,
                    ]),
                ),
            )?,
            restore_seconds: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "harmony_state_restore_seconds",
                        "Time to rebuild one assigned partition's record state from its changelog.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                ),
            )?,
            restored_records: registered(
                registry,
                prometheus::IntCounter::new(
                    "harmony_state_restored_records_total",
                    "Records rebuilt from the changelog on partition assignment.",
                ),
            )?,
            state_records: gauge(
                "harmony_state_records",
                "Records whose state this worker holds, per assigned internal-topic partition.",
                &["partition"],
            )?,
            rebalances: registered(
                registry,
                prometheus::IntCounter::new(
                    "harmony_rebalances_total",
                    "Partition assignments this worker received from its consumer groups.",
                ),
            )?,
            rewinds: counter(
                "harmony_partition_rewinds_total",
                "Partitions read again from their last stored offset after the producer gave up on an output (retry budget spent).",
                &["topic"],
            )?,
            batches: counter(
                "harmony_transactions_total",
                "Exactly-once batches (Kafka transactions) by stage and result (committed, aborted).",
                &["stage", "result"],
            )?,
            batch_events: counter(
                "harmony_transaction_events_total",
                "Events committed in exactly-once batches, by stage.",
                &["stage"],
            )?,
            end_to_end_seconds: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "harmony_end_to_end_latency_seconds",
                        "From the source database's commit (source.ts_ms) to the broker's acknowledgement of the change's target records (exactly once: to the batch's commit).",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                ),
            )?,
            producer_queue: gauge(
                "harmony_producer_queue_messages",
                "Records handed to a producer and not yet acknowledged (librdkafka's queue), by producer: shared (at least once) or the stage's transactional one.",
                &["producer"],
            )?,
            ready: registered(
                registry,
                IntGauge::new(
                    "harmony_ready",
                    "1 when every assigned partition is restored and the worker processes; 0 while starting, restoring or stopping.",
                ),
            )?,
            consumer_lag: gauge(
                "harmony_consumer_lag",
                "Records behind the partition's end, per consumer group (stage 1: <group>, stage 2: <group>.resolve), topic and assigned partition, from librdkafka's statistics.",
                &["group", "topic", "partition"],
            )?,
        })
    }

    /// `op`: Debezium's code of the change.
    pub fn change_consumed(&self, system: &str, topic: &str, op: &str) {
        tracing::trace!(system, topic, op, "change consumed");
        self.events_consumed
            .with_label_values(&[system, topic, op])
            .inc();
    }

    pub fn tombstone_skipped(&self, system: &str, topic: &str) {
        tracing::trace!(system, topic, "tombstone skipped");
        self.tombstones.with_label_values(&[system, topic]).inc();
    }

    pub fn control_record(&self, system: &str, topic: &str, kind: &str) {
        tracing::trace!(system, topic, kind, "control record");
        self.control_records
            .with_label_values(&[system, topic, kind])
            .inc();
    }

    pub fn record_change(
        &self,
        entity: &str,
        system: &str,
        outcome: &str,
        duplicate_reason: Option<&str>,
    ) {
        tracing::debug!(entity, system, outcome, duplicate_reason, "record change");
        self.record_changes
            .with_label_values(&[entity, system, outcome])
            .inc();
        if let Some(reason) = duplicate_reason {
            self.duplicates.with_label_values(&[system, reason]).inc();
        }
    }

    pub fn guard_rejection(&self, entity: &str, field: &str, system: &str) {
        tracing::info!(
            entity,
            field,
            system,
            "a guard kept a value out; the conflicts topic has the rejected record"
        );
        self.guard_rejections
            .with_label_values(&[entity, field, system])
            .inc();
    }

    pub fn conflict(&self, entity: &str, field: &str, strategy: &str) {
        self.conflicts
            .with_label_values(&[entity, field, strategy])
            .inc();
    }

    pub fn unmapped_change(&self, system: &str, topic: &str) {
        tracing::trace!(system, topic, "change of a table no entity maps");
        self.unmapped_changes
            .with_label_values(&[system, topic])
            .inc();
    }

    /// An input record is going to the dead-letter topic: it cannot be decoded, or its
    /// output cannot be published. `kind` is bounded ([`crate::ingest::envelope::DecodeError::kind`] or
    /// `output_too_large`); `reason` goes to the log only.
    pub fn dead_lettered(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        kind: &str,
        reason: &str,
    ) {
        tracing::warn!(
            topic,
            partition,
            offset,
            kind,
            reason,
            "sending the record to the dead-letter topic"
        );
        self.decode_failures.with_label_values(&[topic, kind]).inc();
    }

    /// The regression series of every system, at zero from the start, so that the first
    /// regression shows as an increase and raises the alert.
    pub fn position_regression_series(&self, systems: &[(&str, &str)]) {
        for (system, policy) in systems {
            self.position_regressions
                .with_label_values(&[system, policy]);
        }
    }

    /// A change behind its system's applied position yet committed later, met by its system's
    /// policy (under `stop` its partition waits at it).
    pub fn position_regression(
        &self,
        system: &str,
        entity: &str,
        applied: &str,
        incoming: &str,
        policy: crate::config::RegressionPolicy,
    ) {
        let stopped = policy == crate::config::RegressionPolicy::Stop;
        if stopped {
            tracing::error!(system, entity, applied, incoming,
                "source position went backwards; systems.on_position_regression = \"stop\": the partition waits at this change until the policy or the source changes");
        } else {
            tracing::warn!(system, entity, applied, incoming,
                "source position went backwards (restored database, promoted replica, binlog reset?); applied as the system's new history");
        }
        self.position_regressions
            .with_label_values(&[system, policy.name()])
            .inc();
    }

    /// A mapped table's shape changed.
    pub fn schema_change(
        &self,
        system: &str,
        table: &str,
        kind: &str,
        column: &str,
        stopped: bool,
    ) {
        if stopped {
            tracing::error!(system, table, kind, column,
                "a mapped column's table changed shape; systems.on_schema_change = \"stop\": the partition waits at the first record of the new shape until the mapping or the policy changes");
        } else if kind == "add" {
            tracing::info!(
                system,
                table,
                column,
                "a column was added to a mapped table; it is not mapped"
            );
        } else {
            tracing::warn!(system, table, kind, column, "a mapped table changed shape");
        }
        self.schema_changes
            .with_label_values(&[system, table, kind])
            .inc();
    }

    /// The mapped columns a table's changes lack, now.
    pub fn missing_columns(&self, system: &str, table: &str, columns: &[String], stopped: bool) {
        let gauge = self.missing_columns.with_label_values(&[system, table]);
        gauge.set(columns.len() as i64);
        match (columns.is_empty(), stopped) {
            (true, _) => tracing::info!(
                system,
                table,
                "every mapped column is back in the table's changes"
            ),
            (false, true) => tracing::error!(system, table, columns = ?columns,
                "mapped columns are gone from the table's changes; systems.on_schema_change = \"stop\": the partition waits until the mapping or the table is repaired"),
            (false, false) => tracing::error!(system, table, columns = ?columns,
                "mapped columns are gone from the table's changes (dropped or renamed?): their fields keep their last values until the mapping or the table is repaired"),
        }
    }

    /// The dead-letter series, at zero before the first dead letter: a counter that appears
    /// at 1 shows no `increase`, and the first dead letter would raise no alert.
    pub fn dead_letter_topic(&self, dead_letter_topic: &str) {
        self.dead_letters.with_label_values(&[dead_letter_topic]);
    }

    pub fn dead_letter_acknowledged(&self, dead_letter_topic: &str) {
        self.dead_letters
            .with_label_values(&[dead_letter_topic])
            .inc();
    }

    pub fn output_acknowledged(&self, topic: &str) {
        self.outputs_published.with_label_values(&[topic]).inc();
    }

    pub fn processed(&self, seconds: f64, in_flight: usize) {
        self.processing_seconds.observe(seconds);
        self.in_flight.set(in_flight as i64);
    }

    pub fn set_in_flight(&self, in_flight: usize) {
        self.in_flight.set(in_flight as i64);
    }

    /// An assigned partition's state rebuilt from its changelog.
    pub fn partition_restored(
        &self,
        partition: i32,
        records: usize,
        unreadable: usize,
        seconds: f64,
    ) {
        tracing::info!(
            partition,
            records,
            unreadable,
            seconds,
            "partition state restored"
        );
        self.restore_seconds.observe(seconds);
        self.restored_records.inc_by(records as u64);
    }

    /// A revoked partition: its series go with it. `labels`: a summary naming every target and
    /// entity the partition's series were set for.
    pub fn partition_dropped(&self, partition: i32, labels: &StateSummary<'_>) {
        tracing::info!(partition, "partition state dropped");
        let partition = partition.to_string();
        let _ = self.state_records.remove_label_values(&[&partition]);
        let _ = self.state_bytes.remove_label_values(&[&partition]);
        let partition = partition.as_str();
        for &(target, _, _) in &labels.out_of_sync {
            let _ = self.out_of_sync.remove_label_values(&[target, partition]);
            let _ = self
                .out_of_sync_age
                .remove_label_values(&[target, partition]);
        }
        for &(entity, _, _) in &labels.unsettled {
            let _ = self.unsettled.remove_label_values(&[entity, partition]);
            let _ = self.unsettled_age.remove_label_values(&[entity, partition]);
        }
    }

    /// A scan of an assigned partition's state.
    pub fn partition_state(&self, partition: i32, summary: &StateSummary<'_>) {
        let now_ms = crate::runtime::kafka::now_ms();
        let age =
            |oldest: Option<i64>| oldest.map_or(0.0, |ts| (now_ms - ts).max(0) as f64 / 1000.0);
        let partition = partition.to_string();
        self.state_records
            .with_label_values(&[&partition])
            .set(summary.records as i64);
        self.state_bytes
            .with_label_values(&[&partition])
            .set(summary.bytes as i64);
        for &(target, count, oldest) in &summary.out_of_sync {
            self.out_of_sync
                .with_label_values(&[target, &partition])
                .set(count as i64);
            self.out_of_sync_age
                .with_label_values(&[target, &partition])
                .set(age(oldest));
        }
        for &(entity, count, oldest) in &summary.unsettled {
            self.unsettled
                .with_label_values(&[entity, &partition])
                .set(count as i64);
            self.unsettled_age
                .with_label_values(&[entity, &partition])
                .set(age(oldest));
        }
    }

    /// A partition paused after a failed delivery, to be read again after `backoff`.
    pub fn partition_rewound(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        backoff: std::time::Duration,
        error: &str,
    ) {
        tracing::warn!(topic, partition, offset, backoff = ?backoff, error,
            "partition paused; it is read again from its earliest unstored offset after the back-off");
        self.rewinds.with_label_values(&[topic]).inc();
    }

    pub fn batch_committed(&self, stage: &str, events: usize) {
        tracing::debug!(stage, events, "batch committed");
        self.batches.with_label_values(&[stage, "committed"]).inc();
        self.batch_events
            .with_label_values(&[stage])
            .inc_by(events as u64);
    }

    pub fn batch_aborted(&self, stage: &str, reason: &str) {
        tracing::warn!(
            stage,
            reason,
            "batch aborted; the assigned partitions are read again from their committed offsets"
        );
        self.batches.with_label_values(&[stage, "aborted"]).inc();
    }

    /// A change whose target records are acknowledged, committed at `source_ts_ms`. Snapshot
    /// reads and replays carry old commit times: they are observed too, as what they are.
    pub fn end_to_end(&self, source_ts_ms: i64) {
        self.end_to_end_seconds
            .observe((crate::runtime::kafka::now_ms() - source_ts_ms).max(0) as f64 / 1000.0);
    }

    /// The queue depth series of one producer, for the statistics callbacks.
    pub fn producer_queue(&self, producer: &str) -> IntGauge {
        self.producer_queue.with_label_values(&[producer])
    }

    pub fn ready_gauge(&self) -> IntGauge {
        self.ready.clone()
    }

    /// The per-partition lag series, for the consumers' statistics callbacks.
    pub fn consumer_lag(&self) -> IntGaugeVec {
        self.consumer_lag.clone()
    }

    pub fn registry_lookup(&self, outcome: &str) {
        self.registry_lookups.with_label_values(&[outcome]).inc();
    }

    pub fn rebalanced(&self) {
        self.rebalances.inc();
    }
}

/// `metric`, as built, registered with `registry`.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> Result<M, prometheus::Error> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    // Text encoding into memory fails only on metric families that cannot exist here.
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// An error and its causes on one line, `outer: cause: root`, each said once: a cause whose
/// text its parent already shows (librdkafka's errors print their code and give it as their
/// source too) is not repeated.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_under_their_names() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        metrics.change_consumed("erp", "erp.public.products", "u");
        metrics.change_consumed("erp", "erp.public.products", "u");
        metrics.output_acknowledged("harmony.out");
        let text = render(&registry);
        assert!(
            text.contains(r#"harmony_events_consumed_total{op="u",system="erp",topic="erp.public.products"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"harmony_outputs_published_total{topic="harmony.out"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_dead_letter_series_exists_at_zero_before_the_first_dead_letter() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        metrics.dead_letter_topic("harmony.dlq");
        let text = render(&registry);
        assert!(
            text.contains(r#"harmony_dead_letter_records_total{topic="harmony.dlq"} 0"#),
            "{text}"
        );
    }
}
