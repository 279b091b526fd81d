//! What each stage does with one record: stage 1 passes a change through or maps it onto
//! entities (internal topic); stage 2 resolves an internal record; both dead-letter what
//! cannot be handled.

use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

use super::durability::ChangelogWrites;
use super::pipeline::{send, Pipeline};
use super::{Destination, Phase, Sent, WorkerError};
use crate::config::RegressionPolicy;
use crate::ingest::envelope::{Decoded, RecordHeaders};
use crate::ingest::internal::{self, InternalChange};
use crate::ingest::output::{encode_change, output_key, Origin};
use crate::resolve::resolver::ResolveError;

impl Pipeline<'_> {
    pub(super) async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        system: Option<usize>,
    ) -> Result<(), WorkerError> {
        let started = Instant::now();
        let topic = message.topic();
        let origin = Origin {
            topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        self.open_batch()?;
        // Set when the event's output is a target record (no entities: the output topic).
        let mut source_ts_ms = None;
        let mut sends: Vec<(Destination, Sent)> = Vec::with_capacity(1);

        let Some(system_index) = system else {
            let reason = "the topic matches no declared system";
            tracing::warn!(
                topic,
                "record from a topic no system declares; dead-lettering it"
            );
            sends.push((
                Destination::DeadLetter,
                self.dead_letter(message, "unroutable", reason).await,
            ));
            return self
                .finish(
                    message,
                    ChangelogWrites::default(),
                    Phase::Stored,
                    sends,
                    None,
                    started,
                )
                .await;
        };
        let system = self.config.systems[system_index].name.as_str();

        let headers = message.headers().map_or_else(RecordHeaders::default, |hs| {
            RecordHeaders::from_pairs(hs.iter().map(|h| (h.key, h.value)))
        });
        match self
            .decoder
            .decode(message.key(), message.payload(), headers)
        {
            Ok(Decoded::Change(event)) if self.catalog.is_some() => {
                self.metrics.change_consumed(system, topic, event.op);
                self.ingest(message, system_index, &event, origin, &mut sends)
                    .await;
            }
            Ok(Decoded::Change(event)) => {
                self.metrics.change_consumed(system, topic, event.op);
                source_ts_ms = Some(event.source.ts_ms);
                encode_change(
                    &mut self.buf,
                    &event,
                    system,
                    origin,
                    crate::runtime::kafka::now_ms(),
                );
                let record = FutureRecord {
                    topic: &self.config.output.topic,
                    partition: None,
                    payload: Some(self.buf.as_slice()),
                    key: output_key(&event),
                    timestamp: None,
                    headers: Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: "harmony.system",
                        value: Some(system),
                    })),
                };
                match send(self.producer, record).await {
                    // The output alone exceeds the producer's message.max.bytes: sending it
                    // can never succeed, so the input goes to the dead-letter topic instead of
                    // stopping the partition.
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        let reason = format!(
                            "the output record of {} bytes exceeds the producer's message.max.bytes",
                            self.buf.len()
                        );
                        sends.push(self.reject(message, "output_too_large", &reason).await);
                    }
                    sent => sends.push((Destination::Output, sent)),
                }
            }
            Ok(Decoded::Tombstone) => self.metrics.tombstone_skipped(system, topic),
            Ok(
                control @ (Decoded::Heartbeat { .. }
                | Decoded::Transaction(_)
                | Decoded::SchemaChange),
            ) => {
                self.metrics.control_record(system, topic, control.kind());
            }
            Err(error) => {
                let reason = error.to_string();
                sends.push(self.reject(message, error.kind(), &reason).await);
            }
        }
        self.finish(
            message,
            ChangelogWrites::default(),
            Phase::Stored,
            sends,
            source_ts_ms,
            started,
        )
        .await
    }

    /// Stage 2: one internal record through the engine; its target and conflict records are
    /// published, and its offset stored once they are all acknowledged.
    pub(super) async fn resolve(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), WorkerError> {
        let started = Instant::now();
        let mut sends: Vec<(Destination, Sent)> = Vec::new();
        self.open_batch()?;
        let Some(resolver) = self.resolver.as_mut() else {
            return Ok(());
        };
        let mut resolved =
            resolver.resolve(message.partition(), message.payload().unwrap_or_default());
        // Records taken off go first: a change of one of their keys starts it afresh after.
        let changelog = ChangelogWrites {
            tombstones: resolver.take_tombstones(message.partition()),
            value: resolved.as_mut().ok().and_then(|r| r.changelog.take()),
        };
        let source_ts_ms = resolved
            .as_ref()
            .ok()
            .filter(|r| !r.publications.is_empty())
            .map(|r| r.source_ts_ms);
        let mut halted = None;
        match resolved {
            Ok(resolved) => {
                let (entity, system) = resolver.label_names(resolved.entity, resolved.system);
                if let Some((applied, incoming)) = &resolved.position_regression {
                    self.metrics.position_regression(
                        system,
                        entity,
                        applied,
                        incoming,
                        RegressionPolicy::Accept,
                    );
                }
                self.metrics.record_change(
                    entity,
                    system,
                    resolved.outcome,
                    resolved.duplicate_reason,
                );
                for &field in &resolved.rejected {
                    self.metrics.guard_rejection(
                        entity,
                        resolver.field_name(resolved.entity, field),
                        system,
                    );
                }
                for &(field, strategy) in &resolved.conflicts {
                    self.metrics.conflict(
                        entity,
                        resolver.field_name(resolved.entity, field),
                        strategy.name(),
                    );
                }
                for publication in resolved.publications {
                    let headers = (!publication.headers.is_empty()).then(|| {
                        publication.headers.iter().fold(
                            OwnedHeaders::new_with_capacity(publication.headers.len()),
                            |headers, (key, value)| {
                                headers.insert(Header {
                                    key,
                                    value: Some(value.as_slice()),
                                })
                            },
                        )
                    });
                    let record = FutureRecord {
                        topic: &publication.topic,
                        partition: None,
                        payload: publication.value.as_deref(),
                        key: Some(publication.key.as_slice()),
                        timestamp: None,
                        headers,
                    };
                    let sent = send(self.producer, record).await;
                    sends.push((Destination::Topic(publication.topic), sent));
                }
            }
            Err(ResolveError::Halted(halt)) => {
                self.metrics.position_regression(
                    &halt.system,
                    &halt.entity,
                    &halt.applied,
                    &halt.incoming,
                    RegressionPolicy::Stop,
                );
                halted = Some(ResolveError::Halted(halt).to_string());
            }
            Err(error) => {
                let reason = error.to_string();
                sends.push(self.reject(message, error.kind(), &reason).await);
            }
        }
        if let Some(reason) = halted {
            return self.halt(
                message.topic(),
                message.partition(),
                message.offset(),
                &reason,
            );
        }
        self.finish(
            message,
            changelog,
            Phase::Outputs,
            sends,
            source_ts_ms,
            started,
        )
        .await
    }

    /// Stage 1: the change as record changes of the entities its table feeds, each to the
    /// internal topic keyed by record. A row that breaks the mapping is dead-lettered.
    async fn ingest(
        &self,
        message: &BorrowedMessage<'_>,
        system_index: usize,
        event: &crate::ingest::envelope::ChangeEvent<'_>,
        origin: Origin<'_>,
        sends: &mut Vec<(Destination, Sent)>,
    ) {
        let Some(catalog) = &self.catalog else { return };
        let system = self.config.systems[system_index].name.as_str();
        match catalog.map(system_index, event) {
            Ok(changes) if changes.is_empty() => self.metrics.unmapped_change(system, origin.topic),
            Ok(changes) => {
                let records: Vec<(String, Vec<u8>)> = changes
                    .iter()
                    .map(|mapped| {
                        let internal = InternalChange::from_mapped(
                            catalog,
                            mapped,
                            system,
                            event,
                            internal::Origin {
                                topic: origin.topic.into(),
                                partition: origin.partition,
                                offset: origin.offset,
                            },
                        );
                        (internal.record_key(), internal.encode())
                    })
                    .collect();
                // All or none: a change whose record for one entity the producer would refuse
                // is dead-lettered whole, rather than half published and the worker stopped.
                let limit = self.max_message_bytes;
                if let Some(bytes) = records
                    .iter()
                    .map(|(key, payload)| key.len() + payload.len())
                    .find(|&bytes| bytes > limit)
                {
                    let reason = format!(
                        "the internal record of {bytes} bytes exceeds the producer's message.max.bytes of {limit}"
                    );
                    sends.push(self.reject(message, "output_too_large", &reason).await);
                    return;
                }
                for (key, payload) in &records {
                    let record = FutureRecord {
                        topic: self.internal_topic,
                        partition: None,
                        payload: Some(payload.as_slice()),
                        key: Some(key.as_bytes()),
                        timestamp: None,
                        headers: None,
                    };
                    sends.push((Destination::Internal, send(self.producer, record).await));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                sends.push(self.reject(message, error.kind(), &reason).await);
            }
        }
    }

    /// A record that cannot be handled: counted, logged, and its copy sent to the dead-letter
    /// topic (its offset is stored once that copy is acknowledged).
    async fn reject(
        &self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
    ) -> (Destination, Sent) {
        self.metrics.dead_lettered(
            message.topic(),
            message.partition(),
            message.offset(),
            kind,
            reason,
        );
        (
            Destination::DeadLetter,
            self.dead_letter(message, kind, reason).await,
        )
    }

    async fn dead_letter(&self, message: &BorrowedMessage<'_>, kind: &str, reason: &str) -> Sent {
        match self.dead_letter_copy(message, kind, reason, true).await {
            // A record the broker accepted can still be too large for the producer (its
            // message.max.bytes, plus headers): keep the reason and coordinates, drop the bytes.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "dead-letter copy too large for the producer; sending it without key and value"
                );
                self.dead_letter_copy(message, kind, reason, false).await
            }
            sent => sent,
        }
    }

    async fn dead_letter_copy(
        &self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
        with_bytes: bool,
    ) -> Sent {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let timestamp = message.timestamp().to_millis().map(|t| t.to_string());
        let headers = OwnedHeaders::new_with_capacity(6)
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
        let record = FutureRecord {
            topic: &self.config.output.dead_letter_topic,
            partition: None,
            payload: message.payload().filter(|_| with_bytes),
            key: message.key().filter(|_| with_bytes),
            timestamp: message.timestamp().to_millis(),
            headers: Some(headers),
        };
        send(self.producer, record).await
    }
}
