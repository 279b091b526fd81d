//! The ceilings harmony is measured against: Kafka I/O with no decoding and no engine.
//!
//! - `plain`: consume the input, produce each record unchanged to one topic, store its offset
//!   once acknowledged — the least any at-least-once consume → produce job does;
//! - `io`: harmony's hops without harmony's work — consume the input, re-key to an internal
//!   topic; consume that, produce to every target topic and to a compacted changelog; store
//!   offsets once acknowledged.
//!
//! Both use harmony's own client settings (`harmony::runtime::kafka`), so they differ from it only in
//! what happens between receiving and sending.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Records sent and not yet acknowledged, per stage: as many as harmony allows by default.
const MAX_IN_FLIGHT: usize = 10_000;

/// One stage: every record of `inputs` goes to each of `outputs` under its own key; its
/// offset is stored once all its copies are acknowledged, in the order they were read.
pub async fn relay(
    consumer: ClientConfig,
    producer: Arc<FutureProducer>,
    inputs: &[String],
    outputs: &[String],
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = consumer.create().context("consumer")?;
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&names).context("subscribe")?;
    let mut acks = FuturesOrdered::new();
    loop {
        tokio::select! {
            message = consumer.recv(), if acks.len() < MAX_IN_FLIGHT => {
                let message = message.context("consume")?;
                let position = (message.topic().to_owned(), message.partition(), message.offset());
                let mut sends = Vec::with_capacity(outputs.len());
                for topic in outputs {
                    // librdkafka copies the bytes when it enqueues them: nothing is cloned here.
                    let mut record = FutureRecord::<[u8], [u8]>::to(topic);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    if let Some(payload) = message.payload() {
                        record = record.payload(payload);
                    }
                    loop {
                        match producer.send_result(record) {
                            Ok(delivery) => break sends.push(delivery),
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                record = back;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err((e, _)) => return Err(e).context("produce"),
                        }
                    }
                }
                acks.push_back(async move {
                    for send in sends {
                        match send.await {
                            Ok(Ok(_)) => {}
                            Ok(Err((e, _))) => return Err(e),
                            Err(_) => return Err(KafkaError::Canceled),
                        }
                    }
                    Ok::<_, KafkaError>(position)
                });
            }
            Some(acked) = acks.next() => {
                let (topic, partition, offset) = acked.context("produce")?;
                let mut list = TopicPartitionList::new();
                list.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
                // The ceiling is not harmony: acknowledgements come back in the order records
                // were read (`FuturesOrdered`), so storing each as it comes is in offset order.
                #[allow(clippy::disallowed_methods)]
                consumer.store_offsets(&list).context("store offset")?;
            }
        }
    }
}
