//! What a stage is to the runtime that runs it (ARCHITECTURE.md §1 "Stages and the runtime"):
//! one input record in, its [`Effects`] out as plain data — records to publish, a dead-letter
//! decision, changelog writes, events to count. A stage knows no client, no delivery mode and
//! no clock; the runtime publishes the effects under its guarantee. So every decision of a
//! stage is testable without a broker.
//!
//! The runtime owns one [`Effects`] per pipeline and hands it to every call cleared, so a
//! stage's per-event path reuses its buffers rather than allocating them.

use crate::model::clock::SystemId;

/// An entity's index in the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(pub u16);

/// A field's index within its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldId(pub u16);

/// What a change did to the logical record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The record exists with these field values (create, update, snapshot read).
    Upsert,
    Delete,
}

/// The headers of an input record, as far as a stage reads them.
pub trait HeaderSource {
    /// The value of the first header of that name; `None` when absent or null.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// No headers at all.
impl HeaderSource for () {
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

impl HeaderSource for [(&str, &[u8])] {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// One record read from an input topic, borrowed from the consumer's buffer.
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a dyn HeaderSource,
    /// When the runtime read it (ms since the epoch): the only clock a stage sees.
    pub read_at_ms: i64,
}

/// Where a published record goes: one of harmony's own topics, named by the runtime's plan,
/// or a topic the stage names (a target's, the conflicts topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `output.topic`: changes published as they are (no entities declared).
    Output,
    /// The internal topic stage 1 writes record changes into.
    Internal,
    Named(String),
}

/// A record to publish. `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: Topic,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// The input cannot be handled: its copy goes to the dead-letter topic with the reason, and
/// nothing else of it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Bounded: a metric label.
    pub kind: &'static str,
    pub reason: String,
}

/// What an event writes to the changelog: the tombstones of the records its stream time took
/// off (`processing.deleted_retention`), then its own record's key and state. Nothing on the
/// heap for an event that takes no record off, as nearly every one.
#[derive(Debug, Default, PartialEq)]
pub struct ChangelogWrites {
    pub tombstones: Vec<String>,
    pub value: Option<(String, Vec<u8>)>,
}

impl ChangelogWrites {
    pub fn is_empty(&self) -> bool {
        self.tombstones.is_empty() && self.value.is_none()
    }

    pub fn len(&self) -> usize {
        self.tombstones.len() + usize::from(self.value.is_some())
    }

    /// In the order they are written: each key, and its state (`None`: a tombstone).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        let tombstones = self.tombstones.iter().map(|key| (key.as_str(), None));
        let value = self
            .value
            .iter()
            .map(|(key, state)| (key.as_str(), Some(state.as_slice())));
        tombstones.chain(value)
    }
}

/// An event for the metrics, by ids; [`Stage::system_name`] and friends name them.
#[derive(Debug, Clone, PartialEq)]
pub enum Count {
    /// A change read from a system's topic (`op`: Debezium's code).
    Consumed { system: SystemId, op: &'static str },
    /// A Kafka tombstone after a delete: nothing to do.
    TombstoneSkipped { system: SystemId },
    /// A heartbeat, transaction marker or schema change.
    Control {
        system: SystemId,
        kind: &'static str,
    },
    /// A change of a table no entity maps.
    Unmapped { system: SystemId },
    /// A record change and what the engine made of it.
    RecordChange {
        entity: EntityId,
        system: SystemId,
        outcome: &'static str,
        duplicate_reason: Option<&'static str>,
    },
    /// A change behind its system's applied position yet committed later; `stopped` under the
    /// system's `stop` policy (the effects then say [`Effects::halt`]).
    Regression {
        entity: EntityId,
        system: SystemId,
        applied: String,
        incoming: String,
        stopped: bool,
    },
    /// A mapped table's shape changed (`kind`: `add`, `drop`, `rename`, `type`), as its records'
    /// schema shows; `stopped` under the system's `stop` policy (the effects then halt).
    SchemaChange {
        system: SystemId,
        table: String,
        kind: &'static str,
        column: String,
        stopped: bool,
    },
    /// The mapped columns a table's changes lack, when that changes (empty: none any more);
    /// `stopped` under the `stop` policy.
    MissingColumns {
        system: SystemId,
        table: String,
        columns: Vec<String>,
        stopped: bool,
    },
    GuardRejection {
        entity: EntityId,
        field: FieldId,
        system: SystemId,
    },
    Conflict {
        entity: EntityId,
        field: FieldId,
        strategy: &'static str,
    },
}

/// How many published records' buffers [`Effects::clear`] keeps for the next record.
pub const SPARE: usize = 16;

/// Everything one input record causes, in the order it is to happen.
#[derive(Debug, Default)]
pub struct Effects {
    pub publish: Vec<Publish>,
    pub reject: Option<Rejection>,
    /// Stage 2: written to the changelog once `publish` is acknowledged (at least once), or in
    /// the same batch (exactly once).
    pub changelog: ChangelogWrites,
    pub counts: Vec<Count>,
    /// The source's commit time of the change, when the effects are target records: the start
    /// of the end-to-end latency their acknowledgement ends.
    pub source_ts_ms: Option<i64>,
    /// The input must not be applied yet (its system's policy): its partition stops at it and
    /// reads it again later. Nothing else of the effects counts then but `counts`.
    pub halt: Option<String>,
    /// Published records taken back by [`Effects::clear`], their buffers kept for the next.
    spare: Vec<Publish>,
    /// Their header values' buffers, likewise.
    spare_headers: Vec<Vec<u8>>,
}

impl Effects {
    /// Empties the effects for the next record, keeping the buffers of up to [`SPARE`]
    /// records: a stage that fills its own (stage 2) would otherwise pile them up.
    pub fn clear(&mut self) {
        let keep = SPARE.saturating_sub(self.spare.len());
        self.publish.truncate(keep);
        for mut publish in self.publish.drain(..) {
            if let Some(key) = publish.key.as_mut() {
                key.clear();
            }
            if let Some(value) = publish.value.as_mut() {
                value.clear();
            }
            for (_, mut value) in publish.headers.drain(..) {
                if self.spare_headers.len() < SPARE {
                    value.clear();
                    self.spare_headers.push(value);
                }
            }
            self.spare.push(publish);
        }
        self.reject = None;
        self.changelog.tombstones.clear();
        self.changelog.value = None;
        self.counts.clear();
        self.source_ts_ms = None;
        self.halt = None;
    }

    /// A record to `topic`, with the key and value buffers of an earlier one when there is
    /// one (emptied, present): the stage fills them, or sets them to `None`.
    pub fn publish_to(&mut self, topic: Topic) -> &mut Publish {
        let publish = match self.spare.pop() {
            Some(mut spare) => {
                spare.topic = topic;
                spare.key.get_or_insert_with(Vec::new);
                spare.value.get_or_insert_with(Vec::new);
                spare
            }
            None => Publish {
                topic,
                key: Some(Vec::new()),
                value: Some(Vec::new()),
                headers: Vec::new(),
            },
        };
        self.publish.push(publish);
        let last = self.publish.len() - 1;
        &mut self.publish[last]
    }

    /// A header on the record [`Effects::publish_to`] made last, in the buffer of an earlier
    /// header when there is one.
    pub fn add_header(&mut self, name: &'static str, value: &[u8]) {
        let mut buffer = self.spare_headers.pop().unwrap_or_default();
        buffer.extend_from_slice(value);
        if let Some(last) = self.publish.last_mut() {
            last.headers.push((name, buffer));
        }
    }

    /// Dead-letters the input: whatever the stage meant to publish for it is dropped.
    pub fn reject(&mut self, kind: &'static str, reason: String) {
        self.publish.clear();
        self.source_ts_ms = None;
        self.reject = Some(Rejection { kind, reason });
    }
}

/// One partition's state as its metrics report it.
#[derive(Debug, Default, PartialEq)]
pub struct StateSummary<'r> {
    pub records: usize,
    /// Memory the records take: their keys, their state, the maps' buckets.
    pub bytes: usize,
    /// Per target system: records whose latest delivery it has not yet been seen applying
    /// (echoed), and the source commit time of the oldest such delivery.
    pub out_of_sync: Vec<(&'r str, usize, Option<i64>)>,
    /// Per entity: fields holding a manual conflict no operator has settled, and since when the
    /// oldest has been held.
    pub unsettled: Vec<(&'r str, usize, Option<i64>)>,
}

/// A stage: a pure type the runtime feeds input records in offset order per partition.
pub trait Stage {
    /// `ingest` or `resolve`: the label of its batches and threads.
    const NAME: &'static str;

    /// Whether the stage keeps record state per input partition, restored from and written to
    /// the changelog (stage 2). Its effects then wait for their outputs' acknowledgement before
    /// their changelog writes (ARCHITECTURE.md §5).
    const KEEPS_STATE: bool;

    /// What the record causes, written into `effects` (handed over cleared).
    fn handle(&mut self, input: &Input<'_>, effects: &mut Effects);

    fn system_name(&self, system: SystemId) -> &str;

    fn entity_name(&self, _entity: EntityId) -> &str {
        "?"
    }

    fn field_name(&self, _entity: EntityId, _field: FieldId) -> &str {
        "?"
    }

    /// Replaces a partition's state by its changelog, `(key, value)` in log order; returns how
    /// many records it holds and how many values could not be read.
    fn install<'l>(
        &mut self,
        _partition: i32,
        _log: &mut dyn Iterator<Item = (&'l [u8], Option<&'l [u8]>)>,
    ) -> (usize, usize) {
        (0, 0)
    }

    /// Forgets a partition's state: revoked, or to be read again.
    fn drop_partition(&mut self, _partition: i32) {}

    /// The partitions whose state it holds.
    fn partitions(&self) -> Vec<i32> {
        Vec::new()
    }

    fn state_summary(&self, _partition: i32) -> StateSummary<'_> {
        StateSummary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleared_effects_keep_their_buffers_for_the_next_record() {
        let mut effects = Effects::default();
        let publish = effects.publish_to(Topic::Output);
        publish
            .value
            .as_mut()
            .unwrap()
            .extend_from_slice(&[0; 1000]);
        publish.headers.push(("h", b"v".to_vec()));
        effects.counts.push(Count::Unmapped {
            system: SystemId(0),
        });
        effects.clear();
        assert!(effects.publish.is_empty() && effects.counts.is_empty());
        let publish = effects.publish_to(Topic::Internal);
        assert_eq!(publish.topic, Topic::Internal);
        assert_eq!(publish.value.as_deref(), Some(&[][..]));
        assert!(publish.value.as_ref().unwrap().capacity() >= 1000);
        assert!(publish.headers.is_empty());
    }

    #[test]
    fn a_header_reuses_the_buffer_of_an_earlier_one() {
        let mut effects = Effects::default();
        effects.publish_to(Topic::Output);
        effects.add_header("harmony.system", &[b'x'; 64]);
        effects.clear();
        effects.publish_to(Topic::Output);
        effects.add_header("harmony.system", b"shop");
        let (name, value) = &effects.publish[0].headers[0];
        assert_eq!((*name, value.as_slice()), ("harmony.system", &b"shop"[..]));
        assert!(value.capacity() >= 64);
    }

    #[test]
    fn cleared_effects_keep_a_bounded_number_of_buffers() {
        let mut effects = Effects::default();
        for _ in 0..3 {
            for _ in 0..SPARE {
                effects.publish.push(Publish {
                    topic: Topic::Named("t".into()),
                    key: Some(vec![1]),
                    value: None,
                    headers: Vec::new(),
                });
            }
            effects.clear();
        }
        assert_eq!(effects.spare.len(), SPARE);
    }

    #[test]
    fn a_rejection_drops_what_the_record_meant_to_publish() {
        let mut effects = Effects::default();
        effects.publish_to(Topic::Internal);
        effects.source_ts_ms = Some(1);
        effects.reject("output_too_large", "too large".into());
        assert!(effects.publish.is_empty());
        assert_eq!(effects.source_ts_ms, None);
        assert_eq!(effects.reject.as_ref().unwrap().kind, "output_too_large");
    }

    #[test]
    fn headers_are_found_by_name() {
        let headers: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2")];
        assert_eq!(headers.header("b"), Some(&b"2"[..]));
        assert_eq!(headers.header("c"), None);
        assert_eq!(().header("a"), None);
    }
}
