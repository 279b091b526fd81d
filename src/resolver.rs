//! Stage 2 over the internal topic: each record change applied to its record's state by the
//! engine, and what that produces — target records and conflict records. Pure: the worker
//! sends what this returns and owns nothing of it.
//!
//! State lives in memory per record (the durable changelog and restore on reassignment are
//! the next step, DESIGN §1 "Partition ownership").

use std::collections::HashMap;

use serde_json::value::RawValue;
use thiserror::Error;

use crate::clock::SystemId;
use crate::config::Config;
use crate::conflict::conflict_record;
use crate::engine::{apply, entity_rules, Change, EntityRules, FieldValue, Outcome, RecordState};
use crate::internal::InternalChange;
use crate::mapping::{Catalog, EntityId, FieldId};
use crate::target::{target_plans, target_records, Provenance, TargetPlan};

#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("internal record: {0}")]
    Invalid(String),
    #[error("internal record names unknown {what} `{name}`")]
    Unknown { what: &'static str, name: String },
}

impl ResolveError {
    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::Invalid(_) => "invalid_internal",
            ResolveError::Unknown { .. } => "unknown_name",
        }
    }
}

/// A record to publish. `value: None` is a tombstone.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// What one record change produced.
#[derive(Debug, Default)]
pub struct Resolved {
    /// `duplicate`, `echo` or `applied`, for metrics.
    pub outcome: &'static str,
    pub conflicts: usize,
    pub publications: Vec<Publication>,
}

pub struct Resolver {
    catalog: Catalog,
    rules: Vec<EntityRules>,
    plans: HashMap<(EntityId, SystemId), TargetPlan>,
    entities: HashMap<String, EntityId>,
    systems: HashMap<String, SystemId>,
    fields: Vec<HashMap<String, FieldId>>,
    conflicts_topic: String,
    /// Record state by entity, then canonical key.
    records: HashMap<EntityId, HashMap<String, RecordState>>,
}

impl Resolver {
    pub fn new(config: &Config) -> Self {
        let catalog = Catalog::new(config);
        let rules = entity_rules(config, &catalog);
        let plans = target_plans(config, &catalog);
        let entities = config
            .entities
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), EntityId(i as u16)))
            .collect();
        let systems = config
            .systems
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), SystemId(i as u16)))
            .collect();
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
        Self {
            catalog,
            rules,
            plans,
            entities,
            systems,
            fields,
            conflicts_topic: config.output.conflicts_topic(&config.kafka.group_id),
            records: HashMap::new(),
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

    pub fn resolve(&mut self, payload: &[u8]) -> Result<Resolved, ResolveError> {
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
        let field_ids = &self.fields[entity.0 as usize];
        let mut fields = Vec::with_capacity(change.fields.len());
        for (name, typed) in change.fields {
            let id = *field_ids
                .get(name.as_ref())
                .ok_or_else(|| unknown("field", &name))?;
            fields.push((
                id,
                FieldValue::try_from(typed).map_err(ResolveError::Invalid)?,
            ));
        }
        fields.sort_by_key(|(f, _)| *f);
        let rules = &self.rules[entity.0 as usize];
        // Looked up by the borrowed key; only a record seen for the first time copies it.
        let records = self.records.entry(entity).or_default();
        if !records.contains_key(change.key.as_ref()) {
            records.insert(change.key.to_string(), RecordState::default());
        }
        let state = records
            .get_mut(change.key.as_ref())
            .ok_or_else(|| ResolveError::Invalid("record state missing after insert".into()))?;
        let outcome = apply(
            state,
            rules,
            &Change {
                system,
                position: change.position.into(),
                ts_ms: change.ts_ms,
                snapshot: change.snapshot,
                kind: change.kind.into(),
                fields: &fields,
                context: None,
            },
        );
        let mut resolved = Resolved::default();
        match outcome {
            Outcome::Duplicate(_) => resolved.outcome = "duplicate",
            Outcome::Echo => resolved.outcome = "echo",
            Outcome::Applied {
                conflicts,
                deliver_to,
                ..
            } => {
                resolved.outcome = "applied";
                resolved.conflicts = conflicts.len();
                let entity_name = self.catalog.entity_name(entity);
                let record_key = format!("{entity_name}:{}", change.key);
                let mut conflict_ids = Vec::with_capacity(conflicts.len());
                if let Ok(key) = serde_json::from_str::<&RawValue>(&change.key) {
                    for conflict in &conflicts {
                        let field = self.catalog.field_name(entity, conflict.field);
                        let record =
                            conflict_record(&rules.systems, entity_name, key, field, conflict);
                        conflict_ids.push(record.id.clone());
                        resolved.publications.push(Publication {
                            topic: self.conflicts_topic.clone(),
                            key: record_key.clone().into_bytes(),
                            value: serde_json::to_vec(&record).ok(),
                            headers: Vec::new(),
                        });
                    }
                }
                let provenance = Provenance {
                    entity: entity_name,
                    key_text: &change.key,
                    origin: system,
                    conflicts: &conflict_ids,
                };
                for target in deliver_to {
                    if let Some(plan) = self.plans.get(&(entity, target)) {
                        resolved.publications.extend(target_records(
                            plan,
                            rules,
                            state,
                            &provenance,
                        ));
                    }
                }
            }
        }
        Ok(resolved)
    }
}
