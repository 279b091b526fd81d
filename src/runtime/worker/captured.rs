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
use crate::ingest::envelope::{Decoded, Decoder, Limits, RecordHeaders};
use crate::ingest::mapping::Catalog;
use crate::model::clock::SystemId;
use crate::resolve::resolver::Resolver;

/// The newest records read per partition: enough to pass a delete's tombstone and a heartbeat.
const TAIL: i64 = 8;
/// How long the whole read may take.
const DEADLINE: Duration = Duration::from_secs(5);

/// Reads the tails of every source topic and gives `resolver` the column types their newest
/// schema-wrapped changes declare. Returns how many (system, entity) pairs it learned.
pub fn learn_captured_types(
    consumer_config: &ClientConfig,
    config: &Config,
    catalog: &Catalog,
    resolver: &mut Resolver,
) -> usize {
    match read_tails(consumer_config, config, catalog) {
        Ok(types) => {
            let learned = types.len();
            for ((system, entity), (_, types)) in types {
                resolver.learn_captured_types(SystemId(system as u16), entity, &types);
            }
            learned
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the source topics' newest records for their column types; targets learn them as changes come");
            0
        }
    }
}

type Learned = HashMap<(usize, crate::ingest::mapping::EntityId), (i64, Vec<(String, String)>)>;

fn read_tails(
    consumer_config: &ClientConfig,
    config: &Config,
    catalog: &Catalog,
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
        let Ok(Decoded::Change(event)) =
            decoder.decode(message.key(), message.payload(), RecordHeaders::default())
        else {
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
