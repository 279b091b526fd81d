//! A copy of an input record that cannot be handled, on the dead-letter topic: its key and
//! value as they came, with headers saying why and where from.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use super::pipeline::send;
use super::Sent;

/// Sends the copy; a record the broker accepted can still be too large for the producer (its
/// message.max.bytes, plus headers): then the reason and coordinates go without the bytes.
pub(super) async fn send_copy(
    producer: &FutureProducer,
    topic: &str,
    message: &BorrowedMessage<'_>,
    kind: &str,
    reason: &str,
) -> Sent {
    match send(producer, copy(topic, message, kind, reason, true)).await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "dead-letter copy too large for the producer; sending it without key and value"
            );
            send(producer, copy(topic, message, kind, reason, false)).await
        }
        sent => sent,
    }
}

fn copy<'m>(
    topic: &'m str,
    message: &'m BorrowedMessage<'_>,
    kind: &str,
    reason: &str,
    with_bytes: bool,
) -> FutureRecord<'m, [u8], [u8]> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let timestamp = message.timestamp().to_millis().map(|t| t.to_string());
    let headers = OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: "harmony.error.kind",
            value: Some(kind),
        })
        .insert(Header {
            key: "harmony.error.message",
            value: Some(reason),
        })
        .insert(Header {
            key: "harmony.source.topic",
            value: Some(message.topic()),
        })
        .insert(Header {
            key: "harmony.source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "harmony.source.offset",
            value: Some(&offset),
        })
        .insert(Header {
            key: "harmony.source.timestamp",
            value: timestamp.as_deref(),
        });
    let headers = if with_bytes {
        headers
    } else {
        let size = message.payload_len().to_string();
        headers.insert(Header {
            key: "harmony.error.payload_dropped",
            value: Some(&size),
        })
    };
    FutureRecord {
        topic,
        partition: None,
        payload: message.payload().filter(|_| with_bytes),
        key: message.key().filter(|_| with_bytes),
        timestamp: message.timestamp().to_millis(),
        headers: Some(headers),
    }
}
