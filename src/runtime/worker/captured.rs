//! Each target system's column types as its own capture last declared them, read at start
//! from the newest records of the source topics (ARCHITECTURE.md §2). Stage 2 otherwise learns
//! them from the internal records a system's changes make, and after a restart a target would
//! be sent its columns in the values' own types until it next captured a change: its schema
//! would churn, and a `datetime(3)` could be sent a microsecond.
//!
//! Best effort and bounded: a topic that cannot be read in time is left to be learned as
//! changes come.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::ingest::envelope::{Decoded, Decoder, Limits, RecordHeaders, Transcoded};
use crate::ingest::mapping::{Catalog, EntityId, FieldId};
use crate::model::clock::SystemId;
use crate::model::value::{ColumnType, ValueKind};
use crate::resolve::resolver::Resolver;
use crate::runtime::registry::Registry;
use crate::runtime::telemetry::Metrics;

/// The newest records read per partition: enough to pass a delete's tombstone and a heartbeat.
const TAIL: i64 = 8;
/// How long the whole read may take.
const DEADLINE: Duration = Duration::from_secs(5);

/// Reads the tails of every source topic and gives `resolver` the column types their newest
/// schema-wrapped changes declare. Returns how many (system, entity) pairs it learned.
///
/// Fails when a field's captured types cannot be read as one ([`disagreements`]): its values
/// from two systems would never compare equal, and every echo would read as a new write.
pub async fn learn_captured_types(
    consumer_config: &ClientConfig,
    config: &Config,
    catalog: &Catalog,
    resolver: &mut Resolver,
    registry: Option<(&Registry, &Metrics)>,
) -> Result<usize, Vec<String>> {
    match read_tails(consumer_config, config, catalog, registry).await {
        Ok(types) => {
            let disagreements = disagreements(config, catalog, &types);
            if !disagreements.is_empty() {
                return Err(disagreements);
            }
            let learned = types.len();
            for ((system, entity), (_, types)) in types {
                resolver.learn_captured_types(SystemId(system as u16), entity, &types);
            }
            Ok(learned)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the source topics' newest records for their column types; targets learn them as changes come");
            Ok(0)
        }
    }
}

/// Fields whose sources' captured column types cannot be read as one type: each against the
/// field's declared type (`fields.<f>.type`), or, undeclared, against each other (values of
/// two kinds — text and a number, a number and a boolean — never compare equal). One message
/// per field, naming the systems and their types.
fn disagreements(config: &Config, catalog: &Catalog, captured: &Learned) -> Vec<String> {
    let mut found = Vec::new();
    for e in 0..config.entities.len() {
        let entity_id = EntityId(e as u16);
        for (f, field) in catalog.field_names(entity_id).iter().enumerate() {
            let mut types: Vec<(&str, ColumnType)> = Vec::new();
            for ((system, _), (_, fields)) in
                captured.iter().filter(|((_, id), _)| *id == entity_id)
            {
                let captured = fields
                    .iter()
                    .find(|(name, _)| name == field)
                    .and_then(|(_, t)| ColumnType::parse(t));
                if let Some(captured) = captured {
                    types.push((config.systems[*system].name.as_str(), captured));
                }
            }
            types.sort_by(|a, b| a.0.cmp(b.0));
            let at = format!("entities[{e}].fields.{field}");
            let listed = |types: &[&(&str, ColumnType)]| {
                types
                    .iter()
                    .map(|(system, t)| {
                        format!("{system} captures it as `{t}` ({})", t.kind().name())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match catalog.canonical_type(entity_id, FieldId(f as u16)) {
                Some(canonical) => {
                    let unreadable: Vec<_> = types
                        .iter()
                        .filter(|(_, t)| !t.reads_as(canonical))
                        .collect();
                    if !unreadable.is_empty() {
                        found.push(format!(
                            "{at}.type is `{canonical}` ({}), but {}: change the declared type or the connector's setting",
                            canonical.kind().name(),
                            listed(&unreadable)
                        ));
                    }
                }
                None => {
                    let first = types.first().map(|(_, t)| t.kind());
                    if types.iter().any(|(_, t)| Some(t.kind()) != first) {
                        let suggested = types
                            .iter()
                            .find(|(_, t)| t.kind() != ValueKind::Text)
                            .map_or_else(|| "string".to_owned(), |(_, t)| t.to_string());
                        found.push(format!(
                            "{at}: {}; values of different kinds never compare equal: declare {at}.type (e.g. \"{suggested}\") to read them as one",
                            listed(&types.iter().collect::<Vec<_>>())
                        ));
                    }
                }
            }
        }
    }
    found
}

type Learned = HashMap<(usize, EntityId), (i64, Vec<(String, String)>)>;

async fn read_tails(
    consumer_config: &ClientConfig,
    config: &Config,
    catalog: &Catalog,
    registry: Option<(&Registry, &Metrics)>,
) -> Result<Learned, rdkafka::error::KafkaError> {
    let mut client = consumer_config.clone();
    // A reader of its own: it joins no group and commits nothing.
    client
        .set("enable.auto.commit", "false")
        .set("group.id", format!("{}.types", config.kafka.group_id));
    let consumer: BaseConsumer = client.create()?;
    let started = Instant::now();
    let metadata = consumer.fetch_metadata(None, DEADLINE)?;
    let router = config.topic_router();
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in metadata.topics() {
        if router.system_index(topic.name()).is_none() {
            continue;
        }
        for partition in topic.partitions() {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let (low, high) = consumer.fetch_watermarks(topic.name(), partition.id(), left)?;
            if high > low {
                assignment.add_partition_offset(
                    topic.name(),
                    partition.id(),
                    Offset::Offset((high - TAIL).max(low)),
                )?;
                ends.insert((topic.name().to_owned(), partition.id()), high);
            }
        }
    }
    let mut learned = Learned::new();
    if ends.is_empty() {
        return Ok(learned);
    }
    consumer.assign(&assignment)?;
    let mut decoder = Decoder::new(Limits {
        max_record_bytes: config.input.max_record_bytes,
        max_nesting_depth: config.input.max_nesting_depth,
    });
    if let Some((registry, _)) = registry {
        decoder = decoder.with_avro(registry.schemas());
    }
    let mut scratch = Transcoded::default();
    while !ends.is_empty() && started.elapsed() < DEADLINE {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if ends
            .get(&(topic.to_owned(), partition))
            .is_some_and(|&end| offset + 1 >= end)
        {
            ends.remove(&(topic.to_owned(), partition));
        }
        let Some(system) = router.system_index(topic) else {
            continue;
        };
        if let Some((registry, metrics)) = registry {
            // A record whose schema cannot be had now tells nothing; the next one may.
            if let Err(error) = registry
                .ensure(message.key(), message.payload(), metrics)
                .await
            {
                tracing::debug!(%error, "no writer schema for a record's types");
                continue;
            }
        }
        let Ok(Decoded::Change(event)) = decoder.decode_with(
            message.key(),
            message.payload(),
            RecordHeaders::default(),
            &mut scratch,
        ) else {
            continue;
        };
        let Some(schema) = &event.schema else {
            continue;
        };
        let Ok(changes) = catalog.map(system, &event) else {
            continue;
        };
        // The newest change of each (system, entity) by its source commit time: partitions
        // are read side by side.
        for change in changes {
            let types = catalog.field_types(system, &event, change.entity, &schema.row);
            let at = event.source.ts_ms;
            let slot = learned
                .entry((system, change.entity))
                .or_insert((i64::MIN, Vec::new()));
            if at >= slot.0 && !types.is_empty() {
                *slot = (at, types);
            }
        }
    }
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(price_type: Option<&str>) -> Config {
        let mut text = include_str!("../../../examples/inventory.toml").to_owned();
        if let Some(t) = price_type {
            text = text.replacen(
                "[entities.fields.price]",
                &format!("[entities.fields.price]\n  type = \"{t}\""),
                1,
            );
        }
        Config::from_toml(&text, "inventory.toml", std::iter::empty()).unwrap()
    }

    /// What the erp (0) and the shop (1) captured for the product's fields.
    fn captured(erp: &[(&str, &str)], shop: &[(&str, &str)]) -> Learned {
        let types = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                .collect()
        };
        Learned::from([
            ((0, EntityId(0)), (1, types(erp))),
            ((1, EntityId(0)), (1, types(shop))),
        ])
    }

    #[test]
    fn undeclared_a_fields_captured_types_must_be_of_one_kind() {
        let config = config(None);
        let catalog = Catalog::new(&config);
        let agreeing = captured(
            &[("price", "decimal(2)"), ("updated_at", "timestamp_us")],
            &[("price", "decimal(3)"), ("updated_at", "timestamptz")],
        );
        assert!(disagreements(&config, &catalog, &agreeing).is_empty());
        // A string-mode decimal in the shop: "4.90" never equals 4.9.
        let text = captured(&[("price", "decimal(2)")], &[("price", "string")]);
        assert_eq!(
            disagreements(&config, &catalog, &text),
            ["entities[0].fields.price: erp captures it as `decimal(2)` (a number), shop captures it as `string` (text); values of different kinds never compare equal: declare entities[0].fields.price.type (e.g. \"decimal(2)\") to read them as one"]
        );
    }

    #[test]
    fn declared_every_captured_type_must_read_as_the_fields() {
        let config = config(Some("decimal"));
        let catalog = Catalog::new(&config);
        let text = captured(&[("price", "decimal(2)")], &[("price", "string")]);
        assert!(disagreements(&config, &catalog, &text).is_empty());
        let wrong = captured(&[("price", "decimal(2)")], &[("price", "timestamptz")]);
        assert_eq!(
            disagreements(&config, &catalog, &wrong),
            ["entities[0].fields.price.type is `decimal` (a number), but shop captures it as `timestamptz` (a date or timestamp): change the declared type or the connector's setting"]
        );
    }
}
