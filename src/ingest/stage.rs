//! Stage 1 as a [`Stage`]: a Debezium record → its system (by topic) → decoded → with entities
//! declared, one internal record per entity its table feeds (keyed `entity:key`); without,
//! harmony's Debezium-shaped output record. What cannot be handled is rejected with its kind.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::SchemaChangePolicy;
use crate::config::{Config, TopicRouter};
use crate::ingest::avro::AvroSchemas;
use crate::ingest::envelope::Op;
use crate::ingest::envelope::{ChangeEvent, Decoded, Decoder, Limits, RecordHeaders, Transcoded};
use crate::ingest::internal::{self, FieldType, InternalChange};
use crate::ingest::mapping::{Catalog, EntityId, MappedChange};
use crate::ingest::output::{encode_change, output_key, Origin};
use crate::ingest::schema::ValueSchema;
use crate::ingest::shape::Shapes;
use crate::model::clock::SystemId;
use crate::model::stage::{Count, Effects, Input, Stage, Topic};

pub struct Ingest {
    router: TopicRouter,
    /// Topic → system index, as routed the first time the topic was seen.
    routed: std::collections::HashMap<String, Option<usize>>,
    systems: Vec<String>,
    decoder: Decoder,
    /// Where an Avro record is written as JSON text; taken for each record and put back.
    transcoded: Transcoded,
    /// With entities declared: the mapping onto them.
    catalog: Option<Arc<Catalog>>,
    /// The producer's `message.max.bytes`: an internal record beyond it is refused here.
    max_message_bytes: usize,
    /// The field types each captured schema declares, per entity, rendered once per schema.
    field_types: FieldTypes,
    /// Each system's `on_schema_change`.
    schema_policies: Vec<SchemaChangePolicy>,
    /// Mapped tables' shapes as last seen, and the mapped columns their changes lack.
    shapes: Shapes,
    /// Under `ignore`: the shape whose types the targets keep, by system and table.
    kept_types: HashMap<(usize, String), Arc<ValueSchema>>,
    /// Under `stop`: the shape a table's partition stopped at, so that reading the record
    /// again does not count the change again.
    stopped_at: HashMap<(usize, String), Arc<ValueSchema>>,
}

/// [`Catalog::field_types`] by schema (its parsed form's address, the form kept alive here so
/// the address is not reused), system and entity. Bounded like the schema cache it follows.
#[derive(Default)]
struct FieldTypes {
    entries: Vec<FieldTypesOf>,
}

/// One schema's field types for one system's entity: (schema, system, entity, field → type).
type FieldTypesOf = (Arc<ValueSchema>, usize, EntityId, Vec<FieldType>);

const MAX_FIELD_TYPES: usize = 256;

impl FieldTypes {
    fn get(
        &mut self,
        catalog: &Catalog,
        system: usize,
        event: &ChangeEvent<'_>,
        entity: EntityId,
        schema: Option<&Arc<ValueSchema>>,
    ) -> &[FieldType] {
        let Some(schema) = schema else {
            return &[];
        };
        let found = self
            .entries
            .iter()
            .position(|(s, sys, e, _)| Arc::ptr_eq(s, schema) && *sys == system && *e == entity);
        let index = match found {
            Some(index) => index,
            None => {
                if self.entries.len() >= MAX_FIELD_TYPES {
                    self.entries.clear();
                }
                let types = catalog
                    .field_types(system, event, entity, &schema.row)
                    .into_iter()
                    .map(|(field, name)| (Cow::Owned(field), Cow::Owned(name)))
                    .collect();
                self.entries
                    .push((Arc::clone(schema), system, entity, types));
                self.entries.len() - 1
            }
        };
        &self.entries[index].3
    }
}

impl Ingest {
    pub fn new(config: &Config, catalog: Option<Arc<Catalog>>) -> Self {
        Self {
            router: config.topic_router().clone(),
            routed: Default::default(),
            systems: config.systems.iter().map(|s| s.name.clone()).collect(),
            decoder: Decoder::new(Limits {
                max_record_bytes: config.input.max_record_bytes,
                max_nesting_depth: config.input.max_nesting_depth,
            }),
            transcoded: Transcoded::default(),
            catalog,
            max_message_bytes: config.kafka.max_message_bytes(),
            field_types: FieldTypes::default(),
            schema_policies: config.systems.iter().map(|s| s.on_schema_change).collect(),
            shapes: Shapes::default(),
            kept_types: HashMap::new(),
            stopped_at: HashMap::new(),
        }
    }

    /// Reads Avro records with the writer schemas the registry gave (`runtime::registry`).
    pub fn with_avro(mut self, schemas: Arc<AvroSchemas>) -> Self {
        self.decoder = std::mem::take(&mut self.decoder).with_avro(schemas);
        self
    }

    fn system_of(&mut self, topic: &str) -> Option<usize> {
        if let Some(&routed) = self.routed.get(topic) {
            return routed;
        }
        let routed = self.router.system_index(topic);
        self.routed.insert(topic.to_owned(), routed);
        routed
    }

    /// With entities: the change as record changes of the entities its table feeds, all or
    /// none — a change whose record for one entity the producer would refuse is rejected whole
    /// rather than half published.
    fn map(
        &mut self,
        catalog: &Catalog,
        system: usize,
        event: &mut ChangeEvent<'_>,
        input: &Input<'_>,
        effects: &mut Effects,
    ) {
        if let Err((column, error)) = catalog.apply_declared_types(system, event) {
            return effects.reject("invalid_value", format!("column `{column}`: {error}"));
        }
        let event = &*event;
        if self.shape_stops(catalog, system, event, effects) {
            return;
        }
        let changes = match catalog.map(system, event) {
            Ok(changes) => changes,
            Err(error) => return effects.reject(error.kind(), error.to_string()),
        };
        if changes.is_empty() {
            effects.counts.push(Count::Unmapped {
                system: SystemId(system as u16),
            });
            return;
        }
        if self.missing_stops(catalog, system, event, &changes, effects) {
            return;
        }
        let name = self.systems[system].as_str();
        // The table's label is made only when some table keeps its types (rare): it allocates.
        let types_of = event.schema.as_ref().map(|schema| {
            if self.kept_types.is_empty() {
                return schema;
            }
            self.kept_types
                .get(&(system, table_label(event)))
                .unwrap_or(schema)
        });
        for mapped in &changes {
            let types = self
                .field_types
                .get(catalog, system, event, mapped.entity, types_of);
            let internal = InternalChange::from_mapped(
                catalog,
                mapped,
                name,
                event,
                types,
                internal::Origin {
                    topic: input.topic.into(),
                    partition: input.partition,
                    offset: input.offset,
                },
            );
            let record = effects.publish_to(Topic::Internal);
            let (key, value) = (
                record.key.get_or_insert_default(),
                record.value.get_or_insert_default(),
            );
            internal.write_record_key(key);
            internal.encode_into(value);
            let bytes = key.len() + value.len();
            if bytes > self.max_message_bytes {
                let limit = self.max_message_bytes;
                return effects.reject(
                    "output_too_large",
                    format!("the internal record of {bytes} bytes exceeds the producer's message.max.bytes of {limit}"),
                );
            }
        }
    }
}

impl Ingest {
    /// Notices a change of a mapped table's shape in the record's schema (ARCHITECTURE.md §2):
    /// counts it, and under the system's `stop` policy, when it touches a mapped column,
    /// halts the partition at the record (true). Under `ignore` the targets keep the column
    /// types of the shape before.
    fn shape_stops(
        &mut self,
        catalog: &Catalog,
        system: usize,
        event: &ChangeEvent<'_>,
        effects: &mut Effects,
    ) -> bool {
        let (Some(schema), Some(at)) = (&event.schema, table_of(event)) else {
            return false;
        };
        if self.shapes.is_current(system, at, schema) || !catalog.maps_table(system, event) {
            return false;
        }
        let policy = self.schema_policies[system];
        let label = table_label(event);
        let key = (system, label.clone());
        if self
            .stopped_at
            .get(&key)
            .is_some_and(|s| Arc::ptr_eq(s, schema))
        {
            effects.halt = Some(format!(
                "{label} changed shape under on_schema_change = \"stop\""
            ));
            return true;
        }
        let changes = self
            .shapes
            .differences(system, at, schema, |c| {
                catalog.maps_column(system, event, c)
            })
            .unwrap_or_default();
        let stopped = policy == SchemaChangePolicy::Stop && changes.iter().any(|c| c.mapped);
        for change in &changes {
            effects.counts.push(Count::SchemaChange {
                system: SystemId(system as u16),
                table: label.clone(),
                kind: change.kind,
                column: change.column.clone(),
                stopped,
            });
        }
        if stopped {
            let columns: Vec<&str> = changes
                .iter()
                .filter(|c| c.mapped)
                .map(|c| c.column.as_str())
                .collect();
            effects.halt = Some(format!(
                "{label} changed shape ({}) under on_schema_change = \"stop\"",
                columns.join(", ")
            ));
            self.stopped_at.insert(key, Arc::clone(schema));
            return true;
        }
        self.stopped_at.remove(&key);
        if policy == SchemaChangePolicy::Ignore && !changes.is_empty() {
            if let Some(previous) = self.shapes.current(system, at) {
                self.kept_types
                    .entry(key)
                    .or_insert_with(|| Arc::clone(previous));
            }
        }
        self.shapes.remember(system, at, schema);
        false
    }

    /// Reports the mapped columns an upsert lacks when that changes, and under the system's
    /// `stop` policy halts the partition at it while any are missing (true).
    fn missing_stops(
        &mut self,
        catalog: &Catalog,
        system: usize,
        event: &ChangeEvent<'_>,
        changes: &[MappedChange<'_, '_>],
        effects: &mut Effects,
    ) -> bool {
        if !matches!(event.op, Op::Create | Op::Update | Op::Read) {
            return false;
        }
        let incomplete = changes.iter().find(|c| !c.complete);
        let Some(at) = table_of(event) else {
            return false;
        };
        if incomplete.is_none() && !self.shapes.any_missing() {
            return false;
        }
        let missing = incomplete.map_or_else(Vec::new, |c| {
            catalog.missing_columns(system, event, c.entity)
        });
        let stopped =
            !missing.is_empty() && self.schema_policies[system] == SchemaChangePolicy::Stop;
        if stopped {
            effects.halt = Some(format!(
                "{}'s changes lack mapped columns {missing:?} under on_schema_change = \"stop\"",
                table_label(event)
            ));
        }
        // The table's label is made only for news: while any table lacks columns, every upsert
        // comes here.
        if let Some(columns) = self.shapes.missing_news(system, at, missing) {
            effects.counts.push(Count::MissingColumns {
                system: SystemId(system as u16),
                table: table_label(event),
                columns,
                stopped,
            });
        }
        stopped
    }
}

/// A change's table: its qualifier (the schema in Postgres, the database in MySQL and
/// MariaDB) and its name.
fn table_of<'e>(event: &'e ChangeEvent<'_>) -> Option<(&'e str, &'e str)> {
    let qualifier = event
        .source
        .schema
        .as_deref()
        .unwrap_or(event.source.db.as_ref());
    Some((qualifier, event.source.table.as_deref()?))
}

/// A change's table as metrics and logs name it: `schema.table` or `database.table`.
fn table_label(event: &ChangeEvent<'_>) -> String {
    match table_of(event) {
        Some(("", table)) => table.to_owned(),
        Some((qualifier, table)) => format!("{qualifier}.{table}"),
        None => "?".to_owned(),
    }
}

impl Ingest {
    fn handle_record<'a>(
        &mut self,
        input: &Input<'a>,
        effects: &mut Effects,
        transcoded: &'a mut Transcoded,
    ) {
        let Some(system) = self.system_of(input.topic) else {
            return effects.reject(
                "unroutable",
                "the topic matches no declared system".to_owned(),
            );
        };
        let id = SystemId(system as u16);
        let headers = RecordHeaders {
            new_key: input.headers.header(RecordHeaders::NEW_KEY),
            old_key: input.headers.header(RecordHeaders::OLD_KEY),
        };
        let mut event =
            match self
                .decoder
                .decode_with(input.key, input.payload, headers, transcoded)
            {
                Ok(Decoded::Change(event)) => event,
                Ok(Decoded::Tombstone) => {
                    return effects.counts.push(Count::TombstoneSkipped { system: id });
                }
                Ok(
                    control @ (Decoded::Heartbeat { .. }
                    | Decoded::Transaction(_)
                    | Decoded::SchemaChange),
                ) => {
                    let kind = control.kind();
                    return effects.counts.push(Count::Control { system: id, kind });
                }
                Err(error) => return effects.reject(error.kind(), error.to_string()),
            };
        effects.counts.push(Count::Consumed {
            system: id,
            op: event.op.code(),
        });
        if let Some(catalog) = self.catalog.clone() {
            return self.map(&catalog, system, &mut event, input, effects);
        }
        effects.source_ts_ms = Some(event.source.ts_ms);
        let name = self.systems[system].as_str();
        let origin = Origin {
            topic: input.topic,
            partition: input.partition,
            offset: input.offset,
        };
        let record = effects.publish_to(Topic::Output);
        encode_change(
            record.value.get_or_insert_default(),
            &event,
            name,
            origin,
            input.read_at_ms,
        );
        match output_key(&event) {
            Some(key) => record.key.get_or_insert_default().extend_from_slice(key),
            None => record.key = None,
        }
        effects.add_header("harmony.system", name.as_bytes());
    }
}

impl Stage for Ingest {
    const NAME: &'static str = "ingest";
    const KEEPS_STATE: bool = false;

    fn handle(&mut self, input: &Input<'_>, effects: &mut Effects) {
        // Out of `self` while the decoded record borrows it, so the rest of `self` stays free.
        let mut transcoded = std::mem::take(&mut self.transcoded);
        self.handle_record(input, effects, &mut transcoded);
        self.transcoded = transcoded;
    }

    fn system_name(&self, system: SystemId) -> &str {
        self.systems
            .get(system.0 as usize)
            .map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stage::Rejection;

    fn config(env: &[(&str, &str)]) -> Config {
        crate::config::inventory_example(env)
    }

    fn ingest(config: &Config, entities: bool) -> Ingest {
        let catalog = entities.then(|| Arc::new(Catalog::new(config)));
        Ingest::new(config, catalog)
    }

    fn handle(ingest: &mut Ingest, topic: &str, payload: &str) -> Effects {
        let mut effects = Effects::default();
        let input = Input {
            topic,
            partition: 3,
            offset: 41,
            key: Some(br#"{"sku":"SKU-1"}"#),
            payload: Some(payload.as_bytes()),
            headers: &(),
            read_at_ms: 7,
        };
        ingest.handle(&input, &mut effects);
        effects
    }

    const SHOP_UPDATE: &str = r#"{"before":null,"after":{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":95,"active":true,"updated_at":"t"},"source":{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"items","ts_ms":1,"sequence":"[null,\"1\"]"},"op":"u"}"#;

    #[test]
    fn with_entities_a_change_becomes_internal_records_keyed_by_record() {
        let config = config(&[]);
        let mut stage = ingest(&config, true);
        let effects = handle(&mut stage, "shop.public.items", SHOP_UPDATE);
        assert_eq!(effects.reject, None);
        assert_eq!(effects.publish.len(), 1);
        let record = &effects.publish[0];
        assert_eq!(record.topic, Topic::Internal);
        assert_eq!(record.key.as_deref(), Some(&br#"product:["SKU-1"]"#[..]));
        let internal = InternalChange::decode(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            (internal.system.as_ref(), internal.origin.offset),
            ("shop", 41)
        );
        assert_eq!(
            effects.counts,
            vec![Count::Consumed {
                system: SystemId(1),
                op: "u"
            }]
        );
        assert_eq!(stage.system_name(SystemId(1)), "shop");
    }

    #[test]
    fn without_entities_a_change_is_published_as_it_is_with_its_system() {
        let config = config(&[]);
        let mut stage = ingest(&config, false);
        let effects = handle(&mut stage, "shop.public.items", SHOP_UPDATE);
        let record = &effects.publish[0];
        assert_eq!(record.topic, Topic::Output);
        assert_eq!(record.key.as_deref(), Some(&br#"{"sku":"SKU-1"}"#[..]));
        assert_eq!(record.headers, vec![("harmony.system", b"shop".to_vec())]);
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["ts_ms"], 7, "the runtime's clock, not the stage's");
        assert_eq!(value["harmony"]["origin"]["partition"], 3);
        assert_eq!(effects.source_ts_ms, Some(1));
    }

    #[test]
    fn what_cannot_be_handled_is_rejected_with_its_kind_and_nothing_published() {
        let settings = config(&[]);
        let mut stage = ingest(&settings, true);
        let unroutable = handle(&mut stage, "elsewhere", SHOP_UPDATE);
        assert_eq!(
            unroutable.reject.as_ref().map(|r| r.kind),
            Some("unroutable")
        );
        let garbage = handle(&mut stage, "shop.public.items", "{not json");
        assert!(garbage.publish.is_empty());
        assert!(matches!(garbage.reject, Some(Rejection { kind, .. }) if kind != "unroutable"));
        // A record beyond the producer's limit is refused here, before anything is sent.
        let small = config(&[("HARMONY__KAFKA__PRODUCER__MESSAGE_MAX_BYTES", "100")]);
        let mut stage = ingest(&small, true);
        let too_large = handle(&mut stage, "shop.public.items", SHOP_UPDATE);
        assert!(too_large.publish.is_empty());
        let rejection = too_large.reject.unwrap();
        assert_eq!(rejection.kind, "output_too_large");
        assert!(
            rejection.reason.contains("message.max.bytes of 100"),
            "{}",
            rejection.reason
        );
    }

    #[test]
    fn tombstones_and_control_records_are_counted_only() {
        let config = config(&[]);
        let mut stage = ingest(&config, true);
        let mut effects = Effects::default();
        let input = Input {
            topic: "erp.public.products",
            partition: 0,
            offset: 0,
            key: Some(b"{}"),
            payload: None,
            headers: &(),
            read_at_ms: 0,
        };
        stage.handle(&input, &mut effects);
        assert!(effects.publish.is_empty() && effects.reject.is_none());
        assert_eq!(
            effects.counts,
            vec![Count::TombstoneSkipped {
                system: SystemId(0)
            }]
        );
    }

    /// A schema-wrapped update of the shop's `items` whose row has `columns` (name, type).
    fn shop_wrapped(columns: &[(&str, &str)], after: &str) -> String {
        let fields: Vec<String> = columns
            .iter()
            .map(|(n, t)| format!(r#"{{"type":"{t}","optional":true,"field":"{n}"}}"#))
            .collect();
        let after_schema = format!(
            r#"{{"type":"struct","fields":[{}],"optional":true,"name":"shop.public.items.Value","field":"after"}}"#,
            fields.join(",")
        );
        let before_schema = after_schema.replace(r#""field":"after""#, r#""field":"before""#);
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{before_schema},{after_schema},{{"type":"string","optional":false,"field":"op"}}],"optional":false,"name":"shop.public.items.Envelope"}},"payload":{{"before":null,"after":{after},"source":{{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"items","ts_ms":1,"sequence":"[null,\"1\"]"}},"op":"u"}}}}"#
        )
    }

    fn schema_counts(effects: &Effects) -> Vec<String> {
        effects
            .counts
            .iter()
            .filter_map(|c| match c {
                Count::SchemaChange {
                    kind,
                    column,
                    stopped,
                    table,
                    ..
                } => Some(format!("{table} {kind} {column} stopped={stopped}")),
                Count::MissingColumns {
                    columns, stopped, ..
                } => Some(format!("missing {columns:?} stopped={stopped}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ddl_on_a_mapped_table_is_counted_and_a_dropped_mapped_column_is_never_silent() {
        const FULL: [(&str, &str); 6] = [
            ("item_sku", "string"),
            ("title", "string"),
            ("price", "string"),
            ("stock", "int32"),
            ("active", "boolean"),
            ("updated_at", "string"),
        ];
        let row = r#"{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":95,"active":true,"updated_at":"t"}"#;
        for policy in [SchemaChangePolicy::Evolve, SchemaChangePolicy::Stop] {
            let mut config = config(&[]);
            config.systems[1].on_schema_change = policy;
            let mut ingest = ingest(&config, true);
            let stop = policy == SchemaChangePolicy::Stop;
            let first = handle(&mut ingest, "shop.public.items", &shop_wrapped(&FULL, row));
            assert!(
                schema_counts(&first).is_empty(),
                "the first shape is the baseline"
            );
            assert_eq!(first.publish.len(), 1);

            // ALTER TABLE items ADD COLUMN note text: reported once, under every policy.
            let mut with_note = FULL.to_vec();
            with_note.push(("note", "string"));
            let noted = row.replace('}', r#","note":"n"}"#);
            let added = handle(
                &mut ingest,
                "shop.public.items",
                &shop_wrapped(&with_note, &noted),
            );
            assert_eq!(
                schema_counts(&added),
                ["public.items add note stopped=false"]
            );
            assert!(added.halt.is_none() && added.publish.len() == 1);
            let again = handle(
                &mut ingest,
                "shop.public.items",
                &shop_wrapped(&with_note, &noted),
            );
            assert!(schema_counts(&again).is_empty(), "reported once");

            // ALTER TABLE items DROP COLUMN title: the field `name` loses its column.
            let without_title: Vec<_> = with_note
                .iter()
                .copied()
                .filter(|(n, _)| *n != "title")
                .collect();
            let dropped_row = noted.replace(r#""title":"Cup","#, "");
            let dropped = handle(
                &mut ingest,
                "shop.public.items",
                &shop_wrapped(&without_title, &dropped_row),
            );
            if stop {
                assert_eq!(
                    schema_counts(&dropped),
                    ["public.items drop title stopped=true"]
                );
                assert!(dropped.halt.as_deref().unwrap().contains("title"));
                assert!(dropped.publish.is_empty(), "nothing of the record goes out");
                // Read again after the back-off: still stopped, not counted twice.
                let retried = handle(
                    &mut ingest,
                    "shop.public.items",
                    &shop_wrapped(&without_title, &dropped_row),
                );
                assert!(retried.halt.is_some() && schema_counts(&retried).is_empty());
            } else {
                assert_eq!(
                    schema_counts(&dropped),
                    [
                        "public.items drop title stopped=false",
                        "missing [\"title\"] stopped=false"
                    ]
                );
                assert!(dropped.halt.is_none());
                let value = dropped.publish[0].value.as_deref().unwrap();
                let change = InternalChange::decode(value).unwrap();
                assert!(
                    change.fields.iter().all(|(f, _)| f != "name"),
                    "the field keeps its value: not sent, never sent as null"
                );
                // The column comes back (ADD COLUMN title): the alert clears.
                let back = handle(
                    &mut ingest,
                    "shop.public.items",
                    &shop_wrapped(&with_note, &noted),
                );
                assert_eq!(
                    schema_counts(&back),
                    [
                        "public.items add title stopped=false",
                        "missing [] stopped=false"
                    ]
                );
            }
        }
    }

    #[test]
    fn under_ignore_the_targets_keep_the_column_types_they_had() {
        fn with_price(price_type: &str) -> [(&str, &str); 6] {
            [
                ("item_sku", "string"),
                ("title", "string"),
                ("price", price_type),
                ("stock", "int32"),
                ("active", "boolean"),
                ("updated_at", "string"),
            ]
        }
        let row = r#"{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":95,"active":true,"updated_at":"t"}"#;
        let price_type = |effects: &Effects| {
            let value = effects.publish[0].value.as_deref().unwrap();
            let change = InternalChange::decode(value).unwrap();
            change
                .types
                .iter()
                .find(|(f, _)| f == "price")
                .map(|(_, t)| t.to_string())
        };
        for (policy, expected) in [
            (SchemaChangePolicy::Evolve, "int"),
            (SchemaChangePolicy::Ignore, "string"),
        ] {
            let mut config = config(&[]);
            config.systems[1].on_schema_change = policy;
            let mut ingest = ingest(&config, true);
            let before = handle(
                &mut ingest,
                "shop.public.items",
                &shop_wrapped(&with_price("string"), row),
            );
            assert_eq!(price_type(&before).as_deref(), Some("string"));
            // ALTER TABLE items ALTER COLUMN price TYPE bigint (and the value with it).
            let retyped = row.replace(r#""price":"4.90""#, r#""price":5"#);
            let after = handle(
                &mut ingest,
                "shop.public.items",
                &shop_wrapped(&with_price("int64"), &retyped),
            );
            assert_eq!(
                schema_counts(&after),
                ["public.items type price (string→int) stopped=false"]
            );
            assert_eq!(price_type(&after).as_deref(), Some(expected), "{policy:?}");
        }
    }
}
