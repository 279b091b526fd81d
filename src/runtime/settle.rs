//! `harmony resolve`: an operator settles a held (`manual`) conflict. The conflict record is
//! looked up by id on the conflicts topic, and the operator's change ([`crate::resolve::settlement`]) is
//! published to the internal topic, keyed like the record, for stage 2 to apply in order with
//! the record's other changes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::Config;
use crate::resolve::settlement::{settlement_change, Choice, ConflictDoc};
use crate::runtime::kafka;

/// What was published, for the operator's terminal.
pub struct Settled {
    pub record_key: String,
    pub field: String,
    pub value: String,
    pub topic: String,
}

/// Reads the conflicts topic to its end, settles conflict `id` with `choice`, and waits until
/// the broker has the operator's change.
pub async fn settle(
    config: &Config,
    id: &str,
    choice: &Choice,
    timeout: Duration,
) -> Result<Settled> {
    let conflicts_topic = config.output.conflicts_topic(&config.kafka.group_id);
    let record = find_conflict(config, &conflicts_topic, id, timeout)
        .with_context(|| format!("looking up conflict {id} on {conflicts_topic}"))?;
    let doc = ConflictDoc::parse(&record)?;
    let (record_key, change) = settlement_change(&doc, choice, kafka::now_ms())?;
    let topic = config.output.internal_topic(&config.kafka.group_id);
    let producer: FutureProducer = kafka::producer_config(&config.kafka)
        .create()
        .context("creating the producer")?;
    let payload = change.encode();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(record_key.as_bytes())
                .payload(&payload),
            timeout,
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing the resolution to {topic}"))?;
    let (field, value) = change
        .fields
        .first()
        .map(|(f, v)| (f.to_string(), serde_json::to_string(v).unwrap_or_default()))
        .unwrap_or_default();
    Ok(Settled {
        record_key,
        field,
        value,
        topic,
    })
}

#[derive(Deserialize)]
struct Id<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// The latest record of conflict `id`, reading every partition from the beginning to the end
/// it had when the lookup started.
fn find_conflict(config: &Config, topic: &str, id: &str, timeout: Duration) -> Result<Vec<u8>> {
    let mut settings = kafka::consumer_config(&config.kafka, 5_000);
    // A reader of its own: no group membership, nothing committed.
    settings
        .set("group.id", format!("{}.resolve-cli", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer = settings.create().context("creating the consumer")?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    if partitions == 0 {
        bail!("topic {topic} does not exist");
    }
    let mut assignment = TopicPartitionList::new();
    // Per partition, the end to read up to; `None` once reached (or empty from the start).
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        ends.push((high > low).then_some(high));
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut found = None;
    while ends.iter().any(Option::is_some) {
        if Instant::now() > deadline {
            bail!("timed out before reaching the end of {topic}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        if let Some(payload) = message.payload() {
            if serde_json::from_slice::<Id<'_>>(payload).is_ok_and(|r| r.id == id) {
                found = Some(payload.to_vec());
            }
        }
        if let Some(end) = ends.get_mut(message.partition() as usize) {
            if end.is_some_and(|e| message.offset() + 1 >= e) {
                *end = None;
            }
        }
    }
    found.with_context(|| format!("no conflict {id} on {topic}"))
}
