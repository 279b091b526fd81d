//! Stage 2 over the internal topic: each record change applied to its record's state by the
//! engine, and what that produces — target records and conflict records. Pure: the worker
//! sends what this returns and owns nothing of it.
//!
//! State lives in memory per partition of the internal topic and per record; every change
//! that alters a record's state also yields the record's changelog value ([`crate::resolve::changelog`]),
//! which the worker writes once the change's outputs are acknowledged. A partition assigned to
//! this worker is [`Resolver::install`]ed from its changelog before any of its changes is
//! applied, and dropped when it is revoked (ARCHITECTURE.md §1 "Partition ownership").

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::value::RawValue;
use thiserror::Error;

use crate::config::{Config, RegressionPolicy, Strategy};
use crate::ingest::envelope::SourcePosition;
use crate::ingest::internal::{FieldRef, InternalChange};
use crate::ingest::mapping::{Catalog, EntityId, FieldId};
use crate::model::clock::{SystemId, VersionVector};
use crate::resolve::changelog;
use crate::resolve::conflict::conflict_record;
use crate::resolve::connect;
use crate::resolve::engine::position::{self, PositionVerdict};
use crate::resolve::engine::{
    apply, entity_rules, erase_if_gone, erased_at, Change, DuplicateReason, EntityRules,
    FieldValue, Outcome, RecordState,
};
use crate::resolve::figures::{Figures, Times};
use crate::resolve::target::{
    target_plans, target_records, Mistyped, Provenance, Publication, TargetPlan,
};

#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("internal record: {0}")]
    Invalid(crate::ingest::internal::InternalError),
    #[error("internal record names unknown {what} `{name}`")]
    Unknown { what: &'static str, name: String },
    /// A value of the change that a target's column cannot hold exactly (ARCHITECTURE.md §2):
    /// the change is not applied, and its input is dead-lettered.
    #[error("field `{field}` for {system}'s column `{column}`: {error}")]
    Unrepresentable {
        system: String,
        field: String,
        column: String,
        error: crate::resolve::connect::Unrepresentable,
    },
    /// A record the change would publish (or its changelog value) is larger than the producer
    /// takes: the change is not applied, and its input is dead-lettered.
    #[error(
        "{what} would be {bytes} bytes, more than the producer's message.max.bytes of {limit}"
    )]
    OutputTooLarge {
        what: String,
        bytes: usize,
        limit: usize,
    },
    /// Not the record's fault: its system's policy says to stop rather than apply it.
    #[error("{}'s source position went backwards at {} {} (applied {:?}, now {:?}, committed later) and systems.on_position_regression is `stop`", .0.system, .0.entity, .0.key, .0.applied, .0.incoming)]
    Halted(Box<Halt>),
}

/// A change stopped by its system's `on_position_regression = "stop"`.
#[derive(Debug)]
pub struct Halt {
    /// The ids of `system` and `entity`, for the metrics.
    pub ids: (SystemId, EntityId),
    pub system: String,
    pub entity: String,
    pub key: String,
    pub applied: SourcePosition,
    pub incoming: SourcePosition,
}

impl ResolveError {
    /// Only a halt passes by itself (once the policy or the source changes, its partition reads
    /// the change again); any other change is dead-lettered, as reading it again changes nothing.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ResolveError::Halted(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::Invalid(_) => "invalid_internal",
            ResolveError::Unknown { .. } => "unknown_name",
            ResolveError::OutputTooLarge { .. } => "output_too_large",
            ResolveError::Unrepresentable { .. } => "unrepresentable",
            ResolveError::Halted(_) => "position_regression",
        }
    }
}

/// What one record change produced.
#[derive(Debug, Default)]
pub struct Resolved {
    /// `duplicate`, `echo` or `applied`, for metrics.
    pub outcome: &'static str,
    /// Why a duplicate was dropped: `position`, `snapshot_content` or `no_change`.
    pub duplicate_reason: Option<&'static str>,
    /// The change's source position was behind what its system had applied, yet it was
    /// committed later (accepted under the system's policy): where it was, where it is now.
    pub position_regression: Option<(SourcePosition, SourcePosition)>,
    /// Entity and system of the change, to be named by [`Resolver::label_names`].
    pub entity: EntityId,
    pub system: SystemId,
    /// Per conflict: its field and strategy.
    pub conflicts: Vec<(FieldId, Strategy)>,
    /// Fields whose new value a guard kept out.
    pub rejected: Vec<FieldId>,
    /// The source's commit time of the change, for end-to-end latency.
    pub source_ts_ms: i64,
    pub publications: Vec<Publication>,
    /// The record's key and new state for the changelog, when the change altered the state.
    pub changelog: Option<(String, Vec<u8>)>,
}

/// Records of one partition: by entity, then canonical key.
type PartitionRecords = HashMap<EntityId, HashMap<String, RecordState>>;

/// One partition's records and the figures its metrics report, kept together so that every
/// change of a record updates both.
#[derive(Debug, Default, Clone)]
struct PartitionState {
    records: PartitionRecords,
    figures: Figures,
    /// The newest source commit time among the partition's changes: its clock for
    /// `processing.deleted_retention`, so that the same input takes off the same records
    /// whenever it is read. Restored as the newest a record holds, which is never later than
    /// it was: a restore can only delay a tombstone.
    stream_ts_ms: i64,
    /// Records whose values were erased, by when ([`erased_at`]), oldest first. An entry may
    /// name a record changed since; it is checked again when due.
    erased: BTreeSet<(i64, EntityId, String)>,
    /// Changelog keys of the records taken off since the stage last took them: their
    /// tombstones go to the changelog with the change being resolved.
    tombstones: Vec<String>,
}

impl PartitionState {
    /// Moves the partition's clock to `ts_ms` and takes off every erased record due by it.
    fn advance(
        &mut self,
        ts_ms: i64,
        retention: Option<i64>,
        echoing: &[Vec<SystemId>],
        catalog: &Catalog,
    ) {
        self.stream_ts_ms = self.stream_ts_ms.max(ts_ms);
        let Some(retention) = retention else { return };
        let now = self.stream_ts_ms;
        while self
            .erased
            .first()
            .is_some_and(|(at, ..)| at.saturating_add(retention) <= now)
        {
            let Some((_, entity, key)) = self.erased.pop_first() else {
                break;
            };
            let Some(records) = self.records.get_mut(&entity) else {
                continue;
            };
            match records.get(&key).and_then(erased_at) {
                Some(at) if at.saturating_add(retention) <= now => {}
                // Changed since, and erased again later: due then.
                Some(at) => {
                    self.erased.insert((at, entity, key));
                    continue;
                }
                None => continue,
            }
            if let Some((key, state)) = records.remove_entry(&key) {
                self.figures
                    .take_out(&echoing[entity.0 as usize], entity, &state);
                self.figures.remove_record(key.capacity());
                self.tombstones
                    .push(changelog::key(catalog.entity_name(entity), &key));
            }
        }
    }
}

/// One partition's state as its metrics report it ([`Figures`], kept change by change).
pub use crate::model::stage::StateSummary;

pub struct Resolver {
    catalog: Arc<Catalog>,
    rules: Vec<EntityRules>,
    plans: HashMap<(EntityId, SystemId), TargetPlan>,
    entities: HashMap<String, EntityId>,
    systems: HashMap<String, SystemId>,
    fields: Vec<HashMap<String, FieldId>>,
    conflicts_topic: String,
    /// By entity: the targets whose deliveries can be seen arriving ([`EntityRules::echoes`]);
    /// only they can be out of sync.
    echoing_targets: Vec<Vec<SystemId>>,
    /// Every entity's echoing targets, in id order: the targets a state summary reports on.
    reported_targets: Vec<SystemId>,
    /// Record state by internal-topic partition.
    partitions: HashMap<i32, PartitionState>,
    /// The producer's `message.max.bytes`: no publication or changelog value may be larger.
    max_output_bytes: usize,
    /// `processing.deleted_retention` in milliseconds; `None`: deleted records are kept.
    deleted_retention_ms: Option<i64>,
    /// Where a value is tried in its target column's form before it is applied.
    scratch: Vec<u8>,
}

/// How much larger than the record's values (stored and incoming) its publications can be: a
/// value appears in a target record and in a conflict record's two candidates, and JSON
/// escaping can make one byte six (`\u0000`). Past this, a change keeps a copy of the record's
/// state to put back should an output turn out too large.
const OUTPUT_EXPANSION: usize = 2 * 6;
/// Per record, what its publications add beyond its values: Connect schemas, the `harmony`
/// block, keys, headers, and the changelog value's own bookkeeping.
const OUTPUT_OVERHEAD: usize = 64 * 1024;

impl Resolver {
    pub fn new(config: &Config) -> Self {
        Self::with_catalog(config, Arc::new(Catalog::new(config)))
    }

    /// Over the catalog stage 1 compiled from the same configuration, shared rather than
    /// compiled again.
    pub fn with_catalog(config: &Config, catalog: Arc<Catalog>) -> Self {
        let rules = entity_rules(config, &catalog);
        let plans = target_plans(config, &catalog);
        let entities = config
            .entities
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), EntityId(i as u16)))
            .collect();
        // Ids as the rules number them: the configured systems, then the operator.
        let systems = rules
            .first()
            .map(|r| {
                r.systems
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.clone(), SystemId(i as u16)))
                    .collect()
            })
            .unwrap_or_default();
        let fields = (0..config.entities.len())
            .map(|e| {
                catalog
                    .field_names(EntityId(e as u16))
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), FieldId(i as u16)))
                    .collect()
            })
            .collect();
        let echoing_targets: Vec<Vec<SystemId>> = rules
            .iter()
            .map(|r| r.targets.iter().copied().filter(|&t| r.echoes(t)).collect())
            .collect();
        let mut reported_targets: Vec<SystemId> = echoing_targets.concat();
        reported_targets.sort_unstable();
        reported_targets.dedup();
        Self {
            echoing_targets,
            reported_targets,
            catalog,
            rules,
            plans,
            entities,
            systems,
            fields,
            conflicts_topic: config.output.conflicts_topic(&config.kafka.group_id),
            partitions: HashMap::new(),
            max_output_bytes: config.kafka.max_message_bytes(),
            deleted_retention_ms: Some(config.processing.deleted_retention.as_millis())
                .filter(|&ms| ms > 0)
                .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
            scratch: Vec::new(),
        }
    }

    /// Every topic stage 2 publishes to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.plans.values().map(|p| p.topic.clone()).collect();
        topics.push(self.conflicts_topic.clone());
        topics.sort();
        topics.dedup();
        topics
    }

    /// A version column's text (`{"erp":2,"shop":1}`) as a version vector. Text that is not
    /// one (an application wrote the column) leaves the change in content mode rather than
    /// losing it; counts of systems no longer configured are dropped.
    fn version_of(&self, text: &str) -> Option<VersionVector> {
        let counts: HashMap<&str, u64> = serde_json::from_str(text).ok()?;
        let mut version = VersionVector::new();
        for (name, count) in counts {
            if let Some(&system) = self.systems.get(name) {
                version.set(system, count);
            }
        }
        Some(version)
    }

    /// How `entity`'s changelog values name systems and fields under this configuration.
    pub fn names(&self, entity: EntityId) -> changelog::Names<'_> {
        changelog::Names {
            systems: &self.rules[entity.0 as usize].systems,
            fields: self.catalog.field_names(entity),
            system_ids: &self.systems,
            field_ids: &self.fields[entity.0 as usize],
        }
    }

    /// Replaces `partition`'s state by the records of its changelog, `(key, value)` in log
    /// order (the latest value of a key wins, as compaction would keep it). Returns how many
    /// records it holds and how many values could not be read (they are skipped: the record
    /// then starts afresh, which re-delivers rather than loses).
    pub fn install<'v>(
        &mut self,
        partition: i32,
        log: impl IntoIterator<Item = (&'v [u8], Option<&'v [u8]>)>,
    ) -> (usize, usize) {
        let mut records = PartitionRecords::new();
        let mut unreadable = 0;
        for (key, value) in log {
            let Some((entity, record_key)) = std::str::from_utf8(key)
                .ok()
                .and_then(changelog::split_key)
                .and_then(|(e, k)| self.entities.get(e).map(|&id| (id, k)))
            else {
                unreadable += 1;
                continue;
            };
            let by_key = records.entry(entity).or_default();
            match value.map(|v| changelog::decode(v, &self.names(entity))) {
                Some(Ok(state)) => {
                    by_key.insert(record_key.to_owned(), state);
                }
                None => {
                    by_key.remove(record_key);
                }
                Some(Err(error)) => {
                    tracing::warn!(partition, key = record_key, %error, "unreadable changelog record skipped");
                    unreadable += 1;
                }
            }
        }
        let mut restored = PartitionState::default();
        for (&entity, by_key) in &records {
            let echoing = &self.echoing_targets[entity.0 as usize];
            for (key, state) in by_key {
                restored.figures.add_record(key.capacity());
                restored.figures.put_in(echoing, entity, state);
                let newest = state.systems.iter().filter_map(|(_, s)| s.applied.as_ref());
                if let Some(ts_ms) = newest.map(|a| a.ts_ms).max() {
                    restored.stream_ts_ms = restored.stream_ts_ms.max(ts_ms);
                }
                if let Some(at) = erased_at(state) {
                    restored.erased.insert((at, entity, key.clone()));
                }
            }
        }
        restored.records = records;
        let count = restored.figures.records;
        self.partitions.insert(partition, restored);
        (count, unreadable)
    }

    /// Changelog keys of the records `partition` took off since the last call (see
    /// `processing.deleted_retention`): each is to be written a tombstone with the change
    /// just resolved, before its own changelog value.
    pub fn take_tombstones(&mut self, partition: i32) -> Vec<String> {
        self.partitions
            .get_mut(&partition)
            .map(|p| std::mem::take(&mut p.tombstones))
            .unwrap_or_default()
    }

    /// The partitions whose state it holds.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Forgets a revoked partition's state; its next owner restores it from the changelog.
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// A record's version vector by system name, from whichever partition holds it: how many
    /// changes of each system the record has accepted (state inspection, the chaos checker).
    pub fn version_of_record(&self, entity: &str, key: &str) -> Option<Vec<(String, u64)>> {
        let entity = *self.entities.get(entity)?;
        let state = self
            .partitions
            .values()
            .find_map(|p| p.records.get(&entity)?.get(key))?;
        Some(
            state
                .clock
                .iter()
                .map(|(s, n)| (self.system_name(entity, s).to_owned(), n))
                .collect(),
        )
    }

    pub fn system_id(&self, name: &str) -> Option<SystemId> {
        self.systems.get(name).copied()
    }

    fn system_name(&self, entity: EntityId, system: SystemId) -> &str {
        self.rules[entity.0 as usize]
            .systems
            .get(system.0 as usize)
            .map_or("?", |s| s.name.as_str())
    }

    /// The names of a resolved change's entity and system, and of a field of the entity: the
    /// labels of its metrics.
    pub fn label_names(&self, entity: EntityId, system: SystemId) -> (&str, &str) {
        (
            self.catalog.entity_name(entity),
            self.system_name(entity, system),
        )
    }

    pub fn field_name(&self, entity: EntityId, field: FieldId) -> &str {
        self.catalog.field_name(entity, field)
    }

    /// What the metrics report of one partition's state: its running figures.
    pub fn state_summary(&self, partition: i32) -> StateSummary<'_> {
        let Some(state) = self.partitions.get(&partition) else {
            return StateSummary {
                out_of_sync: self
                    .reported_targets
                    .iter()
                    .map(|&t| (self.system_name(EntityId(0), t), 0, None))
                    .collect(),
                unsettled: (0..self.rules.len())
                    .map(|e| (self.catalog.entity_name(EntityId(e as u16)), 0, None))
                    .collect(),
                ..StateSummary::default()
            };
        };
        let figures = &state.figures;
        // A bucket per slot of capacity, plus its control byte.
        let buckets: usize = state
            .records
            .values()
            .map(|r| r.capacity() * (std::mem::size_of::<(String, RecordState)>() + 1))
            .sum();
        let times = |all: &[Times], i: usize| {
            all.get(i)
                .map_or((0, None), |t: &Times| (t.count(), t.oldest()))
        };
        StateSummary {
            records: figures.records,
            bytes: figures.bytes + buckets,
            out_of_sync: self
                .reported_targets
                .iter()
                .map(|&t| {
                    let (count, oldest) = times(&figures.behind, t.0 as usize);
                    (self.system_name(EntityId(0), t), count, oldest)
                })
                .collect(),
            unsettled: (0..self.rules.len())
                .map(|e| {
                    let (count, since) = times(&figures.unsettled, e);
                    (self.catalog.entity_name(EntityId(e as u16)), count, since)
                })
                .collect(),
        }
    }

    pub fn resolve(&mut self, partition: i32, payload: &[u8]) -> Result<Resolved, ResolveError> {
        let change = InternalChange::decode(payload).map_err(ResolveError::Invalid)?;
        let unknown = |what, name: &str| ResolveError::Unknown {
            what,
            name: name.to_owned(),
        };
        let entity = *self
            .entities
            .get(change.entity.as_ref())
            .ok_or_else(|| unknown("entity", &change.entity))?;
        let system = *self
            .systems
            .get(change.system.as_ref())
            .ok_or_else(|| unknown("system", &change.system))?;
        if !change.types.is_empty() {
            if let Some(plan) = self.plans.get_mut(&(entity, system)) {
                let fields = self.catalog.field_names(entity);
                warn_contradicted(&change.system, plan.learn_types(&change.types, fields));
            }
            self.borrow_types(entity, system, &change.types);
        }
        let field_ids = &self.fields[entity.0 as usize];
        let mut fields = Vec::with_capacity(change.fields.len());
        for (name, typed) in change.fields {
            let id = *field_ids
                .get(name.as_ref())
                .ok_or_else(|| unknown("field", &name))?;
            fields.push((id, FieldValue::from(typed)));
        }
        fields.sort_by_key(|(f, _)| *f);
        self.check_representable(entity, &fields)?;
        let context = change
            .context
            .as_deref()
            .and_then(|text| self.version_of(text));
        let rules = &self.rules[entity.0 as usize];
        // Looked up by the borrowed key; only a record seen for the first time copies it.
        let partition_state = self.partitions.entry(partition).or_default();
        partition_state.advance(
            change.ts_ms,
            self.deleted_retention_ms,
            &self.echoing_targets,
            &self.catalog,
        );
        let figures = &mut partition_state.figures;
        let records = partition_state.records.entry(entity).or_default();
        if !records.contains_key(change.key.as_ref()) {
            let key = change.key.to_string();
            figures.add_record(key.capacity());
            records.insert(key, RecordState::default());
        }
        let Some(state) = records.get_mut(change.key.as_ref()) else {
            unreachable!("the record's state was inserted above")
        };
        let engine_change = Change {
            system,
            position: change.position.into(),
            ts_ms: change.ts_ms,
            ts_us: change
                .ts_us
                .unwrap_or_else(|| change.ts_ms.saturating_mul(1000)),
            snapshot: change.snapshot,
            kind: change.kind,
            fields: &fields,
            context: context.as_ref(),
        };
        let regression = regressed_from(state, &engine_change);
        if let Some(applied) = regression {
            if rules.systems[system.0 as usize].on_position_regression == RegressionPolicy::Stop {
                return Err(ResolveError::Halted(Box::new(Halt {
                    ids: (system, entity),
                    system: change.system.into_owned(),
                    entity: change.entity.into_owned(),
                    key: change.key.into_owned(),
                    applied,
                    incoming: engine_change.position,
                })));
            }
        }
        // Too large an output must leave the state as it was, so that the dead-lettered change
        // can be applied when it is sent again; the copy is made only for a record large
        // enough to risk it.
        let heap_bytes = state.heap_bytes();
        let at_risk = (payload.len() + heap_bytes) * OUTPUT_EXPANSION + OUTPUT_OVERHEAD
            > self.max_output_bytes;
        let before = at_risk.then(|| state.clone());
        let echoing = &self.echoing_targets[entity.0 as usize];
        figures.take_out_sized(echoing, entity, state, heap_bytes);
        let was_erased = erased_at(state).is_some();
        let outcome = apply(state, rules, &engine_change);
        erase_if_gone(state, rules);
        if let Some(at) = erased_at(state).filter(|_| !was_erased) {
            partition_state
                .erased
                .insert((at, entity, change.key.to_string()));
        }
        state.shrink_to_fit();
        figures.put_in(echoing, entity, state);
        let mut resolved = Resolved {
            entity,
            system,
            source_ts_ms: change.ts_ms,
            position_regression: regression.map(|applied| (applied, engine_change.position)),
            ..Resolved::default()
        };
        // A replay (position dedup) leaves the state as it was: nothing to write.
        let entity_name = self.catalog.entity_name(entity);
        if !matches!(outcome, Outcome::Duplicate(DuplicateReason::Position)) {
            let names = changelog::Names {
                systems: &rules.systems,
                fields: self.catalog.field_names(entity),
                system_ids: &self.systems,
                field_ids: &self.fields[entity.0 as usize],
            };
            resolved.changelog = Some((
                changelog::key(entity_name, &change.key),
                changelog::encode(state, &names),
            ));
        }
        let (deliver_to, conflict_ids) = match outcome {
            Outcome::Duplicate(reason) => {
                resolved.outcome = "duplicate";
                resolved.duplicate_reason = Some(reason.name());
                return Ok(resolved);
            }
            Outcome::Echo { deliver_to } | Outcome::LateEcho { deliver_to } => {
                resolved.outcome = "echo";
                (deliver_to, Vec::new())
            }
            Outcome::Applied {
                conflicts,
                deliver_to,
                rejected,
                dot,
            } => {
                resolved.outcome = "applied";
                resolved.conflicts = conflicts.iter().map(|c| (c.field, c.strategy)).collect();
                let mut conflict_ids = Vec::with_capacity(conflicts.len());
                resolved.rejected = rejected.iter().map(|(field, _)| *field).collect();
                // Rejections and conflicts go to the conflicts topic, keyed like the record.
                let key = (!rejected.is_empty() || !conflicts.is_empty())
                    .then(|| serde_json::from_str::<&RawValue>(&change.key).ok())
                    .flatten();
                if let Some(key) = key {
                    let record_key = changelog::key(entity_name, &change.key);
                    let mut publish = |value: Option<Vec<u8>>| {
                        resolved.publications.push(Publication {
                            topic: self.conflicts_topic.clone(),
                            key: record_key.clone().into_bytes(),
                            value,
                            headers: Vec::new(),
                        });
                    };
                    for (field, value) in &rejected {
                        let rule = &rules.fields[field.0 as usize];
                        let sent = fields
                            .binary_search_by_key(field, |(f, _)| *f)
                            .ok()
                            .map(|i| &fields[i].1);
                        let record = crate::resolve::conflict::rejection_record(
                            &rules.systems,
                            entity_name,
                            key,
                            (
                                self.catalog.field_name(entity, *field),
                                rule.guard.as_ref().map_or("", |g| g.source()),
                            ),
                            dot,
                            value,
                            sent,
                            state.field(*field).map(|f| &f.value),
                            change.ts_ms,
                        );
                        publish(serde_json::to_vec(&record).ok());
                    }
                    for conflict in &conflicts {
                        let field = self.catalog.field_name(entity, conflict.field);
                        let record =
                            conflict_record(&rules.systems, entity_name, key, field, conflict);
                        conflict_ids.push(record.id.clone());
                        publish(serde_json::to_vec(&record).ok());
                    }
                }
                (deliver_to, conflict_ids)
            }
        };
        let provenance = Provenance {
            entity: entity_name,
            key_text: &change.key,
            origin: system,
            conflicts: &conflict_ids,
        };
        deliveries(
            &self.plans,
            entity,
            &deliver_to,
            (rules, state),
            &provenance,
            &mut resolved,
        );
        if let Some((what, bytes)) = oversized(&resolved, self.max_output_bytes) {
            let limit = self.max_output_bytes;
            if let Some(before) = before {
                figures.take_out(echoing, entity, state);
                *state = before;
                figures.put_in(echoing, entity, state);
            } else {
                tracing::error!(entity = entity_name, %what, bytes, limit,
                    "an output too large for the producer from a record thought too small to risk it: the change stays applied without its outputs");
            }
            return Err(ResolveError::OutputTooLarge { what, bytes, limit });
        }
        Ok(resolved)
    }
}

impl Resolver {
    /// Column types a target system's capture declares, read outside its changes (at start,
    /// from its topics' newest records: `runtime::worker::captured`).
    pub fn learn_captured_types(
        &mut self,
        system: SystemId,
        entity: EntityId,
        types: &[(String, String)],
    ) {
        if let Some(plan) = self.plans.get_mut(&(entity, system)) {
            let contradicted = plan.learn_types(types, self.catalog.field_names(entity));
            warn_contradicted(self.system_name(entity, system), contradicted);
        }
        self.borrow_types(entity, system, types);
    }

    /// Lends `system`'s captured column types to the entity's other targets whose own are not
    /// known yet.
    fn borrow_types(
        &mut self,
        entity: EntityId,
        system: SystemId,
        types: &[(impl AsRef<str>, impl AsRef<str>)],
    ) {
        let fields = self.catalog.field_names(entity);
        for target in &self.rules[entity.0 as usize].targets {
            if *target == system {
                continue;
            }
            if let Some(plan) = self.plans.get_mut(&(entity, *target)) {
                plan.borrow_types(types, fields);
            }
        }
    }

    /// Refuses a value that a target's column could not hold exactly, before anything of the
    /// change is applied: the state stays as it was and the input is dead-lettered, naming
    /// the column, rather than a target receiving a truncated value.
    fn check_representable(
        &mut self,
        entity: EntityId,
        fields: &[(FieldId, FieldValue)],
    ) -> Result<(), ResolveError> {
        let rules = &self.rules[entity.0 as usize];
        for target in &rules.targets {
            let Some(plan) = self.plans.get(&(entity, *target)) else {
                continue;
            };
            for column in &plan.columns {
                let Some(column_type) = column.known_type() else {
                    continue;
                };
                let Ok(i) = fields.binary_search_by_key(&column.field, |(f, _)| *f) else {
                    continue;
                };
                let value = FieldRef::from(&fields[i].1);
                if let Err(error) = connect::check(&value, column_type, &mut self.scratch) {
                    return Err(ResolveError::Unrepresentable {
                        system: rules.systems[target.0 as usize].name.clone(),
                        field: self.catalog.field_name(entity, column.field).to_owned(),
                        column: column.name.clone(),
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Columns whose captured type contradicts the one `sources.types` declares: the declared one
/// is kept, and the operator told.
fn warn_contradicted(system: &str, contradicted: Vec<(String, crate::model::value::ColumnType)>) {
    for (column, captured) in contradicted {
        tracing::warn!(system, column, captured = %captured,
            "the column's captured type is not the one sources.types declares; the declared type is the one the system is sent");
    }
}

/// The first publication, or the changelog value, larger than `limit` bytes as the producer
/// counts them (key, value and headers), and its size.
fn oversized(resolved: &Resolved, limit: usize) -> Option<(String, usize)> {
    let mut publications = resolved.publications.iter().map(|p| {
        let headers: usize = p.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
        (
            &p.topic,
            p.key.len() + p.value.as_ref().map_or(0, Vec::len) + headers,
        )
    });
    let changelog = resolved
        .changelog
        .as_ref()
        .map(|(key, value)| (key, key.len() + value.len()));
    publications
        .find(|(_, bytes)| *bytes > limit)
        .map(|(topic, bytes)| (format!("a record for {topic}"), bytes))
        .or_else(|| {
            changelog
                .filter(|(_, bytes)| *bytes > limit)
                .map(|(key, bytes)| (format!("the changelog value of {key}"), bytes))
        })
}

/// Where the change's system had got to, when the change is behind it yet committed later.
fn regressed_from(state: &RecordState, change: &Change<'_>) -> Option<SourcePosition> {
    let sys = state.system(change.system)?;
    (position::verdict_of(sys, change) == PositionVerdict::Regressed)
        .then(|| sys.applied.map(|a| a.position))?
}

/// The target records of `state` for each of `targets` that receives the entity.
fn deliveries(
    plans: &HashMap<(EntityId, SystemId), TargetPlan>,
    entity: EntityId,
    targets: &[SystemId],
    (rules, state): (&EntityRules, &RecordState),
    provenance: &Provenance<'_>,
    resolved: &mut Resolved,
) {
    let plans = targets.iter().filter_map(|t| plans.get(&(entity, *t)));
    let mut mistyped = Vec::new();
    resolved.publications.extend(target_records(
        plans,
        rules,
        state,
        provenance,
        &mut mistyped,
    ));
    for Mistyped {
        topic,
        column,
        error,
    } in mistyped
    {
        tracing::error!(entity = provenance.entity, %topic, column, %error,
            "a value the column's type cannot hold exactly, already in the record's state: sent in its own type");
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::ingest::internal::{FieldRef, Origin, Position, FORMAT_VERSION};
    use crate::model::stage::ChangeKind;

    fn resolver(wms_exact: bool) -> Resolver {
        // The example's warehouse runs in exact mode.
        let mut text = include_str!("../../examples/inventory.toml").to_owned();
        if !wms_exact {
            text = text.replace(r#"version_column = "harmony_version""#, "");
        }
        Resolver::new(&Config::from_toml(&text, "inventory.toml", std::iter::empty()).unwrap())
    }

    /// An internal record of `system` changing SKU-1 to `fields`, based on `context`.
    fn record(
        system: &str,
        lsn: u64,
        fields: &[(&str, FieldValue)],
        context: Option<&str>,
    ) -> Vec<u8> {
        InternalChange {
            v: FORMAT_VERSION,
            entity: "product".into(),
            key: r#"["SKU-1"]"#.into(),
            system: system.into(),
            kind: ChangeKind::Upsert,
            ts_ms: 1_000 + lsn as i64,
            ts_us: None,
            snapshot: false,
            position: Position::Postgres([lsn, lsn]),
            fields: fields
                .iter()
                .map(|(name, value)| (Cow::Borrowed(*name), FieldRef::from(value)))
                .collect(),
            context: context.map(Cow::Borrowed),
            types: Cow::Borrowed(&[]),
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: lsn as i64,
            },
        }
        .encode()
    }

    fn after(publication: &Publication) -> serde_json::Value {
        let value: serde_json::Value =
            serde_json::from_slice(publication.value.as_deref().unwrap()).unwrap();
        value["payload"]["after"].clone()
    }

    /// The warehouse sells 5 while harmony is sending it the shop's sale of 5: its row reads 95,
    /// exactly the pending delivery. Content matching takes that for the delivery's echo and the
    /// warehouse's sale is lost; the version column says the row was based on the older version,
    /// so in exact mode both sales count.
    fn stock_after_two_equal_sales(wms_exact: bool) -> (Vec<&'static str>, serde_json::Value) {
        let mut resolver = resolver(wms_exact);
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let out = resolver
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap();
        let to_wms = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.demo.wms.product")
            .unwrap();
        let version = after(to_wms)["harmony_version"].as_str().map(str::to_owned);
        assert_eq!(
            version.is_some(),
            wms_exact,
            "the sink writes the version column"
        );
        let mut outcomes = Vec::new();
        // Both sinks applied the erp's product.
        let r = resolver.resolve(0, &record("wms", 2, &created[2..], version.as_deref()));
        outcomes.push(r.unwrap().outcome);
        let r = resolver.resolve(0, &record("shop", 3, &created, None));
        outcomes.push(r.unwrap().outcome);
        let sold = [("quantity", FieldValue::Int(95))];
        resolver
            .resolve(0, &record("shop", 4, &sold, None))
            .unwrap();
        let wms_sale = resolver
            .resolve(0, &record("wms", 5, &sold, version.as_deref()))
            .unwrap();
        outcomes.push(wms_sale.outcome);
        let to_erp = wms_sale
            .publications
            .iter()
            .find(|p| p.topic == "harmony.demo.erp.product")
            .map_or(serde_json::Value::Null, |p| after(p)["quantity"].clone());
        (outcomes, to_erp)
    }

    #[test]
    fn exact_mode_tells_a_local_write_from_the_echo_it_equals() {
        let (outcomes, erp_gets) = stock_after_two_equal_sales(true);
        assert_eq!(outcomes, ["echo", "echo", "applied"]);
        assert_eq!(erp_gets, 90, "both sales count");

        let (outcomes, erp_gets) = stock_after_two_equal_sales(false);
        assert_eq!(
            outcomes,
            ["echo", "echo", "echo"],
            "content mode cannot tell the two apart"
        );
        assert_eq!(erp_gets, serde_json::Value::Null);
    }

    #[test]
    fn a_target_not_yet_captured_is_sent_bits_as_another_system_captured_them() {
        let mut resolver = resolver(false);
        let with_types = |lsn, price: FieldValue| {
            // The shop's table needs a name to create the row.
            let fields = [("name", FieldValue::Text("Cup".into())), ("price", price)];
            let bytes = record("erp", lsn, &fields, None);
            let mut change = InternalChange::decode(&bytes).unwrap();
            change.types = Cow::Owned(vec![
                (Cow::Borrowed("name"), Cow::Borrowed("json")),
                (Cow::Borrowed("price"), Cow::Borrowed("bits(16)")),
            ]);
            change.encode()
        };
        let price_to_shop = |resolver: &mut Resolver, payload: &[u8]| {
            let out = resolver.resolve(0, payload).unwrap();
            let to_shop = out
                .publications
                .iter()
                .find(|p| p.topic == "harmony.demo.shop.product")
                .unwrap();
            let value: serde_json::Value =
                serde_json::from_slice(to_shop.value.as_deref().unwrap()).unwrap();
            let schema = value["schema"]["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["field"] == "after")
                .unwrap()["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["field"] == "price")
                .unwrap()
                .clone();
            (schema, value["payload"]["after"]["price"].clone())
        };
        // The erp's bit(16), not the value's own bytes, which a `bit` column refuses.
        let flags = FieldValue::Bytes("pQE=".into());
        let (schema, value) = price_to_shop(&mut resolver, &with_types(1, flags));
        assert_eq!(schema["name"], "io.debezium.data.Bits", "{schema}");
        assert_eq!(schema["parameters"]["length"], "16", "{schema}");
        assert_eq!(value, "pQE=");
    }

    #[test]
    fn a_version_column_that_is_not_a_version_leaves_the_change_in_content_mode() {
        let resolver = resolver(true);
        assert!(resolver.version_of("not json").is_none());
        let v = resolver.version_of(r#"{"erp":2,"crm":7}"#).unwrap();
        assert_eq!(v.get(SystemId(0)), 2);
        assert_eq!(
            v.iter().count(),
            1,
            "systems no longer configured are dropped"
        );
    }

    #[test]
    fn a_held_conflict_is_settled_by_the_operators_pick_and_delivered_everywhere() {
        let text = include_str!("../../examples/inventory.toml").replace(
            "[entities.fields.price]\n  strategy = \"lww\"",
            "[entities.fields.price]\n  strategy = \"manual\"",
        );
        let config = Config::from_toml(&text, "inventory.toml", std::iter::empty()).unwrap();
        let mut resolver = Resolver::new(&config);
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(490)),
            ("quantity", FieldValue::Int(100)),
        ];
        resolver
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap();
        // The shop, never having applied the erp's version, prices the product itself.
        let priced = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(520)),
        ];
        let out = resolver
            .resolve(0, &record("shop", 2, &priced, None))
            .unwrap();
        let held = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.harmony-inventory.conflicts")
            .expect("a conflict record");
        let held = held.value.as_deref().unwrap();
        let doc = crate::resolve::settlement::ConflictDoc::parse(held).unwrap();
        let (key, settle) = crate::resolve::settlement::settlement_change(
            &doc,
            &crate::resolve::settlement::Choice::Pick("shop".into()),
            5_000,
        )
        .unwrap();
        assert_eq!(key, r#"product:["SKU-1"]"#);
        let unsettled = |r: &Resolver| -> Vec<(String, usize, Option<i64>)> {
            r.state_summary(0)
                .unsettled
                .into_iter()
                .map(|(e, n, since)| (e.to_owned(), n, since))
                .collect()
        };
        assert_eq!(
            unsettled(&resolver),
            [("product".to_owned(), 1, Some(1_002))],
            "held since the shop's change"
        );
        assert_figures_add_up(&resolver);
        let out = resolver.resolve(0, &settle.encode()).unwrap();
        assert_eq!(unsettled(&resolver), [("product".to_owned(), 0, None)]);
        assert_figures_add_up(&resolver);
        assert_eq!(out.outcome, "applied");
        assert!(
            out.conflicts.is_empty(),
            "the operator had seen both candidates"
        );
        let to_erp = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.demo.erp.product")
            .expect("the erp is sent the settled price");
        assert_eq!(after(to_erp)["price"], 520);
        let value: serde_json::Value =
            serde_json::from_slice(to_erp.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["payload"]["harmony"]["origin"], "operator");
        // Settling twice changes nothing.
        let again = resolver.resolve(0, &settle.encode()).unwrap();
        assert_eq!(again.outcome, "duplicate");
    }

    #[test]
    fn a_partition_restored_from_its_changelog_carries_on_exactly_as_before() {
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let version = r#"{"erp":1}"#;
        let sold = [("quantity", FieldValue::Int(95))];
        let steps = [
            record("erp", 1, &created, None),
            record("wms", 2, &created[2..], Some(version)),
            record("shop", 3, &created, None),
            record("shop", 4, &sold, None),
            // A replay of the shop's sale (a connector restart): a duplicate.
            record("shop", 4, &sold, None),
            record("wms", 5, &sold, Some(version)),
            record("erp", 6, &created[..2], None),
        ];
        let outputs = |r: Resolved| {
            let published: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = r
                .publications
                .into_iter()
                .map(|p| (p.topic, p.key, p.value))
                .collect();
            (r.outcome, r.conflicts, published, r.changelog)
        };
        for crash_after in 0..=steps.len() {
            let mut before = resolver(true);
            let mut log = Vec::new();
            for step in &steps[..crash_after] {
                log.extend(before.resolve(0, step).unwrap().changelog);
            }
            let mut after = resolver(true);
            let (count, unreadable) = after.install(
                0,
                log.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_slice()))),
            );
            assert_eq!((count, unreadable), (usize::from(crash_after > 0), 0));
            let held = |r: &Resolver| {
                r.partitions
                    .get(&0)
                    .map(|p| p.records.clone())
                    .unwrap_or_default()
            };
            assert_eq!(held(&after), held(&before), "restored after {crash_after}");
            for step in &steps[crash_after..] {
                assert_eq!(
                    outputs(after.resolve(0, step).unwrap()),
                    outputs(before.resolve(0, step).unwrap())
                );
                assert_figures_add_up(&after);
                assert_figures_add_up(&before);
            }
        }
    }

    /// The figures kept change by change are what a pass over every record finds.
    fn assert_figures_add_up(r: &Resolver) {
        for (partition, state) in &r.partitions {
            let mut recounted = Figures::default();
            for (&entity, by_key) in &state.records {
                for (key, record) in by_key {
                    recounted.add_record(key.capacity());
                    recounted.put_in(&r.echoing_targets[entity.0 as usize], entity, record);
                }
            }
            // Kept figures may hold empty tallies a recount never creates.
            let trimmed = |times: &[Times]| -> Vec<(usize, Option<i64>)> {
                let mut all: Vec<_> = times.iter().map(|t| (t.count(), t.oldest())).collect();
                while all.last() == Some(&(0, None)) {
                    all.pop();
                }
                all
            };
            let kept = &state.figures;
            assert_eq!(
                (
                    kept.records,
                    kept.bytes,
                    trimmed(&kept.behind),
                    trimmed(&kept.unsettled)
                ),
                (
                    recounted.records,
                    recounted.bytes,
                    trimmed(&recounted.behind),
                    trimmed(&recounted.unsettled)
                ),
                "partition {partition}"
            );
        }
    }

    #[test]
    fn a_target_is_out_of_sync_until_it_is_seen_applying_its_latest_delivery() {
        let mut live = resolver(true);
        let behind = |r: &Resolver| -> Vec<(String, usize, Option<i64>)> {
            r.state_summary(0)
                .out_of_sync
                .into_iter()
                .map(|(t, n, oldest)| (t.to_owned(), n, oldest))
                .collect()
        };
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let out = live.resolve(0, &record("erp", 1, &created, None)).unwrap();
        let version = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.demo.wms.product")
            .map(|p| after(p)["harmony_version"].as_str().unwrap().to_owned())
            .unwrap();
        assert_eq!(
            behind(&live),
            [
                ("erp".to_owned(), 0, None),
                ("shop".to_owned(), 1, Some(1_001)),
                ("wms".to_owned(), 1, Some(1_001)),
            ]
        );
        let summary = live.state_summary(0);
        assert_eq!(summary.records, 1);
        assert!(summary.bytes > 0);
        // The warehouse applies it; a later change sent to the shop keeps the oldest time.
        live.resolve(0, &record("wms", 2, &created[2..], Some(&version)))
            .unwrap();
        live.resolve(
            0,
            &record("erp", 3, &[("quantity", FieldValue::Int(90))], None),
        )
        .unwrap();
        assert_eq!(
            behind(&live),
            [
                ("erp".to_owned(), 0, None),
                ("shop".to_owned(), 1, Some(1_001)),
                ("wms".to_owned(), 1, Some(1_003)),
            ]
        );
        // Restored from the changelog, the times are as they were.
        let mut log = Vec::new();
        let mut again = resolver(true);
        for (i, step) in [
            record("erp", 1, &created, None),
            record("wms", 2, &created[2..], Some(&version)),
            record("erp", 3, &[("quantity", FieldValue::Int(90))], None),
        ]
        .iter()
        .enumerate()
        {
            let out = again.resolve(0, step).unwrap();
            assert!(out.changelog.is_some(), "step {i}");
            log.extend(out.changelog);
        }
        let mut restored = resolver(true);
        restored.install(
            0,
            log.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_slice()))),
        );
        assert_eq!(behind(&restored), behind(&live));
    }

    /// Commit times finer than a millisecond survive a restore (format 4), so that `lww`
    /// decides the same after a restart; a state without them is written in format 3, as
    /// before.
    #[test]
    fn microsecond_commit_times_survive_the_changelog() {
        let created = [("name", FieldValue::Text("Cup".into()))];
        let mut live = resolver(true);
        let plain = record("erp", 1, &created, None);
        let mut fine = InternalChange::decode(&plain).unwrap();
        fine.ts_us = Some(1_001_250);
        let bytes = serde_json::to_vec(&fine).unwrap();
        let (key, value) = live.resolve(0, &bytes).unwrap().changelog.unwrap();
        assert_eq!(value[0], 4, "format 4: it has microseconds to keep");
        let mut restored = resolver(true);
        assert_eq!(
            restored.install(0, [(key.as_bytes(), Some(value.as_slice()))]),
            (1, 0)
        );
        let time = |r: &Resolver| {
            r.partitions[&0].records[&EntityId(0)]["[\"SKU-1\"]"]
                .fields
                .iter()
                .map(|(_, f)| f.ts_us)
                .collect::<Vec<_>>()
        };
        assert_eq!(time(&restored), vec![1_001_250]);
        assert_eq!(time(&restored), time(&live));
        // Whole milliseconds: format 3, byte for byte what earlier builds write.
        let (_, plain) = resolver(true)
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap()
            .changelog
            .unwrap();
        assert_eq!(plain[0], 3);
    }

    #[test]
    fn a_format_1_changelog_value_reads_with_its_delivery_times_taken_from_the_record() {
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let mut live = resolver(true);
        let (key, value) = live
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap()
            .changelog
            .unwrap();
        let v1 = changelog::as_format_1(&value);
        assert!(v1.len() < value.len());
        let mut restored = resolver(true);
        assert_eq!(
            restored.install(0, [(key.as_bytes(), Some(v1.as_slice()))]),
            (1, 0)
        );
        assert_eq!(
            restored.state_summary(0).out_of_sync,
            live.state_summary(0).out_of_sync
        );
    }

    /// The example with the warehouse's system declared first and a new erp field (`barcode`,
    /// which sorts before every other): every system and field gets another id.
    fn reordered_resolver() -> Resolver {
        let text = include_str!("../../examples/inventory.toml")
            .replace(r#"version_column = "harmony_version""#, "")
            .replace(
                "[[systems]]\nname = \"erp\"",
                "[[systems]]\nname = \"wms\"\ntopics = [\"wms.public.skus\"]\nrank = 2\n\n[[systems]]\nname = \"erp\"",
            )
            .replacen(
                "[[systems]]\nname = \"wms\"\ntopics = [\"wms.public.skus\"]\nrank = 2\n\n[output]",
                "[output]",
                1,
            )
            .replace(
                "columns = { sku = \"sku\", name = \"name\"",
                "columns = { barcode = \"barcode\", sku = \"sku\", name = \"name\"",
            );
        let config = Config::from_toml(&text, "reordered.toml", std::iter::empty()).unwrap();
        assert_eq!(config.systems[0].name, "wms");
        assert_eq!(config.systems.len(), 3);
        Resolver::new(&config)
    }

    #[test]
    fn a_restart_under_a_reordered_configuration_still_knows_what_each_target_was_sent() {
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let mut live = resolver(false);
        let out = live.resolve(0, &record("erp", 1, &created, None)).unwrap();
        assert!(out
            .publications
            .iter()
            .any(|p| p.topic == "harmony.demo.shop.product"));
        let (key, value) = out.changelog.unwrap();

        let mut restored = reordered_resolver();
        assert_eq!(
            restored.install(0, [(key.as_bytes(), Some(value.as_slice()))]),
            (1, 0)
        );
        // The warehouse reserves two: nothing the shop holds changes, so the shop, whose
        // delivery is still on its way, is sent nothing. Fingerprints over field ids made the
        // pending delivery look different from the same content and sent it again.
        let reserved = [("reserved", FieldValue::Int(2))];
        let out = restored
            .resolve(0, &record("wms", 2, &reserved, None))
            .unwrap();
        assert_eq!(out.outcome, "applied");
        let topics: Vec<&str> = out.publications.iter().map(|p| p.topic.as_str()).collect();
        assert!(!topics.contains(&"harmony.demo.shop.product"), "{topics:?}");
        // The shop's sink writes the delivery: its echo.
        let out = restored
            .resolve(0, &record("shop", 3, &created, None))
            .unwrap();
        assert_eq!(out.outcome, "echo");
        assert!(out.publications.is_empty());
    }

    #[test]
    fn a_format_2_changelog_value_is_refingerprinted_on_reading() {
        // A delivery fingerprint as a format-2 writer (std's hasher over field ids) left it:
        // any value but the fixed one; reading makes it again from the delivery's values.
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let mut live = resolver(false);
        let (key, value) = live
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap()
            .changelog
            .unwrap();
        let v2 = changelog::as_format_2_with_fingerprints(&value, 0xdead_beef);
        let mut restored = resolver(false);
        restored.install(0, [(key.as_bytes(), Some(v2.as_slice()))]);
        let reserved = [("reserved", FieldValue::Int(2))];
        let out = restored
            .resolve(0, &record("wms", 2, &reserved, None))
            .unwrap();
        assert!(
            !out.publications
                .iter()
                .any(|p| p.topic == "harmony.demo.shop.product"),
            "the shop's pending delivery is known for what it sent"
        );
    }

    /// An internal record of `system` at Postgres LSN `lsn`, committed at `ts_ms`.
    fn record_at(system: &str, lsn: u64, ts_ms: i64, fields: &[(&str, FieldValue)]) -> Vec<u8> {
        let bytes = record(system, lsn, fields, None);
        let mut change = InternalChange::decode(&bytes).unwrap();
        change.ts_ms = ts_ms;
        change.encode()
    }

    #[test]
    fn a_source_whose_positions_went_back_is_applied_or_stops_the_partition_by_policy() {
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ];
        let repriced = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(7)),
            ("quantity", FieldValue::Int(100)),
        ];
        for policy in ["accept", "stop"] {
            let text = include_str!("../../examples/inventory.toml").replace(
                "rank = 3",
                &format!("rank = 3\non_position_regression = \"{policy}\""),
            );
            let config = Config::from_toml(&text, "t.toml", std::iter::empty()).unwrap();
            let mut resolver = Resolver::new(&config);
            resolver
                .resolve(0, &record_at("erp", 500, 1_000, &created))
                .unwrap();
            // A replay: behind, committed no later.
            let replay = resolver
                .resolve(0, &record_at("erp", 400, 900, &created))
                .unwrap();
            assert_eq!(replay.duplicate_reason, Some("position"));
            assert!(replay.position_regression.is_none());
            // Restored from a backup: behind, committed later.
            let restored = resolver.resolve(0, &record_at("erp", 300, 9_000, &repriced));
            match policy {
                "accept" => {
                    let out = restored.unwrap();
                    assert_eq!(out.outcome, "applied");
                    assert!(out.position_regression.is_some());
                    assert!(out
                        .publications
                        .iter()
                        .any(|p| p.topic == "harmony.demo.shop.product"));
                    // Its later changes compare with the new history.
                    let next = resolver
                        .resolve(0, &record_at("erp", 310, 9_100, &created))
                        .unwrap();
                    assert_eq!(next.outcome, "applied");
                    assert!(next.position_regression.is_none());
                }
                _ => {
                    let error = restored.unwrap_err();
                    assert_eq!(error.kind(), "position_regression");
                    assert!(
                        error.to_string().contains("on_position_regression"),
                        "{error}"
                    );
                    // Nothing was applied: the same change stops it again, and is not a replay.
                    let again = resolver.resolve(0, &record_at("erp", 300, 9_000, &repriced));
                    assert!(matches!(again, Err(ResolveError::Halted(_))));
                }
            }
        }
    }

    #[test]
    fn a_value_a_guard_keeps_out_is_published_as_rejected_and_sent_back() {
        let mut resolver = resolver(false);
        let created = [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(1)),
        ];
        resolver
            .resolve(0, &record("erp", 1, &created, None))
            .unwrap();
        let echo = resolver
            .resolve(0, &record("shop", 2, &created, None))
            .unwrap();
        assert_eq!(echo.outcome, "echo");
        // The shop sells three of the one in stock: a negative stock, which the guard refuses.
        let oversold = [("quantity", FieldValue::Int(-2))];
        let out = resolver
            .resolve(0, &record("shop", 3, &oversold, None))
            .unwrap();
        assert_eq!(out.outcome, "applied");
        assert_eq!(out.rejected.len(), 1);
        let rejected = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.harmony-inventory.conflicts")
            .expect("a rejected record on the conflicts topic");
        assert_eq!(rejected.key, br#"product:["SKU-1"]"#);
        let doc: serde_json::Value =
            serde_json::from_slice(rejected.value.as_deref().unwrap()).unwrap();
        assert_eq!(doc["kind"], "rejected");
        assert_eq!(doc["field"], "quantity");
        assert_eq!(doc["guard"], "value >= 0");
        assert_eq!(doc["system"], "shop");
        assert_eq!(doc["value"], serde_json::json!({"int": -2}));
        assert_eq!(doc["sent"], serde_json::json!({"int": -2}));
        assert_eq!(doc["kept"], serde_json::json!({"int": 1}));
        assert!(doc["id"].as_str().unwrap().starts_with("r-"));
        let to_shop = out
            .publications
            .iter()
            .find(|p| p.topic == "harmony.demo.shop.product")
            .expect("the shop is sent the stock back");
        assert_eq!(after(to_shop)["stock"], 1);
    }

    const DAY_MS: i64 = 86_400_000;

    /// A product's fields as the erp creates it.
    fn cup() -> [(&'static str, FieldValue); 3] {
        [
            ("name", FieldValue::Text("Cup".into())),
            ("price", FieldValue::Int(5)),
            ("quantity", FieldValue::Int(100)),
        ]
    }

    /// `record_at` of another record, or a delete.
    fn change_of(
        system: &str,
        sku: &str,
        lsn: u64,
        ts_ms: i64,
        delete: bool,
        fields: &[(&str, FieldValue)],
    ) -> Vec<u8> {
        let bytes = record_at(system, lsn, ts_ms, fields);
        let mut change = InternalChange::decode(&bytes).unwrap();
        change.key = format!(r#"["{sku}"]"#).into();
        if delete {
            change.kind = ChangeKind::Delete;
        }
        change.encode()
    }

    #[test]
    fn a_record_deleted_everywhere_leaves_the_changelog_once_its_retention_is_over() {
        let created = cup();
        let mut r = resolver(false);
        let mut changelog: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        // As stage 2 writes them: tombstones, then the change's own value.
        fn resolve(
            r: &mut Resolver,
            changelog: &mut Vec<(String, Option<Vec<u8>>)>,
            payload: Vec<u8>,
        ) -> &'static str {
            let out = r.resolve(0, &payload).unwrap();
            changelog.extend(r.take_tombstones(0).into_iter().map(|k| (k, None)));
            changelog.extend(out.changelog.map(|(k, v)| (k, Some(v))));
            out.outcome
        }
        resolve(
            &mut r,
            &mut changelog,
            change_of("erp", "SKU-1", 1, 1_000, false, &created),
        );
        resolve(
            &mut r,
            &mut changelog,
            change_of("shop", "SKU-1", 2, 1_001, false, &created),
        );
        resolve(
            &mut r,
            &mut changelog,
            change_of("wms", "SKU-1", 3, 1_002, false, &created[2..]),
        );
        resolve(
            &mut r,
            &mut changelog,
            change_of("erp", "SKU-1", 4, 2_000, true, &[]),
        );
        resolve(
            &mut r,
            &mut changelog,
            change_of("shop", "SKU-1", 5, 2_001, true, &[]),
        );
        assert_eq!(
            r.state_summary(0).records,
            1,
            "kept while the warehouse may still hold it"
        );
        let echo = resolve(
            &mut r,
            &mut changelog,
            change_of("wms", "SKU-1", 6, 2_002, true, &[]),
        );
        assert_eq!(echo, "echo");
        // Another record's changes move the partition's clock: a day after the last change of
        // SKU-1, not before, its bookkeeping goes.
        resolve(
            &mut r,
            &mut changelog,
            change_of("erp", "SKU-2", 7, 2_002 + DAY_MS - 1, false, &created),
        );
        assert!(r.version_of_record("product", r#"["SKU-1"]"#).is_some());
        assert!(!changelog.iter().any(|(_, v)| v.is_none()));
        resolve(
            &mut r,
            &mut changelog,
            change_of("erp", "SKU-2", 8, 2_002 + DAY_MS, false, &created[..2]),
        );
        assert_eq!(r.version_of_record("product", r#"["SKU-1"]"#), None);
        let tombstones: Vec<&str> = changelog
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(tombstones, [r#"product:["SKU-1"]"#]);
        assert_eq!(r.state_summary(0).records, 1);

        // Read back, the tombstone takes the record off; a change of its key is a new record.
        let mut restored = resolver(false);
        let log = changelog.iter().map(|(k, v)| (k.as_bytes(), v.as_deref()));
        assert_eq!(restored.install(0, log), (1, 0));
        let again = restored
            .resolve(
                0,
                &change_of("shop", "SKU-1", 1, 3 * DAY_MS, false, &created),
            )
            .unwrap();
        assert_eq!(again.outcome, "applied");
        assert_eq!(
            restored.version_of_record("product", r#"["SKU-1"]"#),
            Some(vec![("shop".to_owned(), 1)])
        );
    }

    #[test]
    fn a_record_erased_but_recreated_in_its_retention_is_kept_and_a_zero_retention_keeps_all() {
        let created = cup();
        let erase = |r: &mut Resolver, from: u64, ts_ms: i64| {
            for (i, (system, delete, fields)) in [
                ("erp", false, &created[..]),
                ("shop", false, &created[..]),
                ("wms", false, &created[2..]),
                ("erp", true, &[][..]),
                ("shop", true, &[][..]),
                ("wms", true, &[][..]),
            ]
            .into_iter()
            .enumerate()
            {
                let lsn = from + i as u64;
                r.resolve(
                    0,
                    &change_of(system, "SKU-1", lsn, ts_ms + lsn as i64, delete, fields),
                )
                .unwrap();
            }
        };
        let mut r = resolver(false);
        erase(&mut r, 1, 0);
        // Created and deleted again half a day later: its retention starts over.
        erase(&mut r, 10, DAY_MS / 2);
        r.resolve(
            0,
            &change_of("erp", "SKU-2", 20, DAY_MS + 100, false, &created),
        )
        .unwrap();
        assert!(r.take_tombstones(0).is_empty());
        assert!(r.version_of_record("product", r#"["SKU-1"]"#).is_some());
        r.resolve(
            0,
            &change_of(
                "erp",
                "SKU-2",
                21,
                DAY_MS * 3 / 2 + 100,
                false,
                &created[..2],
            ),
        )
        .unwrap();
        assert_eq!(r.take_tombstones(0), [r#"product:["SKU-1"]"#]);

        let text = include_str!("../../examples/inventory.toml")
            .replace(r#"version_column = "harmony_version""#, "")
            + "\n[processing]\ndeleted_retention = \"0s\"\n";
        let mut keep =
            Resolver::new(&Config::from_toml(&text, "x.toml", std::iter::empty()).unwrap());
        erase(&mut keep, 1, 0);
        keep.resolve(
            0,
            &change_of("erp", "SKU-2", 20, DAY_MS * 365, false, &created),
        )
        .unwrap();
        assert!(keep.take_tombstones(0).is_empty());
        assert!(keep.version_of_record("product", r#"["SKU-1"]"#).is_some());
    }

    #[test]
    fn unreadable_changelog_records_are_skipped_and_counted() {
        let mut resolver = resolver(true);
        let log: [(&[u8], Option<&[u8]>); 3] = [
            (b"product:[\"A\"]", Some(&[9, 1, 2])),
            (b"no-entity", Some(&[1])),
            (b"product:[\"B\"]", None),
        ];
        assert_eq!(resolver.install(0, log), (0, 2));
    }
}
