//! What a worker checks of its own topics before it reads anything: settings under which the
//! broker would lose harmony's data without a word. A state topic that deletes old segments
//! forgets records; an internal topic that compacts or expires quickly drops changes stage 2 has
//! not read; a state topic deleted while stage 2's offsets remain leaves every record to start
//! afresh, as if never seen. Each is refused at start with the setting named; the last can be
//! rebuilt on request (`harmony run --rebuild-state`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The internal topic must keep a change at least this long: stage 2 may be down (or behind)
/// that long without losing what stage 1 wrote for it.
pub const MIN_INTERNAL_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The settings of a topic that decide what the broker removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub cleanup_policy: String,
    /// -1: forever.
    pub retention_ms: i64,
    /// -1: no limit.
    pub retention_bytes: i64,
}

impl Retention {
    fn policies(&self) -> impl Iterator<Item = &str> {
        self.cleanup_policy.split(',').map(str::trim)
    }
}

/// Why the state topic's settings would lose record state, if they would. Compaction keeps each
/// record's latest state; `delete` (alone or beside `compact`) expires states of records that
/// did not change for `retention.ms`.
pub fn state_topic_problem(topic: &str, r: &Retention) -> Option<String> {
    let compacts = r.policies().any(|p| p == "compact");
    let deletes = r.policies().any(|p| p == "delete");
    (!compacts || deletes).then(|| {
        format!(
            "output.state_topic `{topic}` has cleanup.policy={}: it must be `compact` alone, or records that did not change for retention.ms lose their state (kafka-configs --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact)",
            r.cleanup_policy
        )
    })
}

/// Why the internal topic's settings would drop changes stage 2 has not read, if they would.
pub fn internal_topic_problem(topic: &str, r: &Retention) -> Option<String> {
    let min_ms = MIN_INTERNAL_RETENTION.as_millis() as i64;
    if r.policies().any(|p| p == "compact") {
        Some(format!(
            "output.internal_topic `{topic}` has cleanup.policy={}: compaction keeps one change per record and drops the others before stage 2 reads them; it must be `delete`",
            r.cleanup_policy
        ))
    } else if r.retention_ms >= 0 && r.retention_ms < min_ms {
        Some(format!(
            "output.internal_topic `{topic}` has retention.ms={}: changes stage 2 has not read within that time would be lost; give it at least {min_ms} (7 days) or -1",
            r.retention_ms
        ))
    } else if r.retention_bytes >= 0 {
        Some(format!(
            "output.internal_topic `{topic}` has retention.bytes={}: a backlog past that size would be lost before stage 2 reads it; set it to -1",
            r.retention_bytes
        ))
    } else {
        None
    }
}

/// Whether stage 2's state is gone: it committed offsets on the internal topic (`committed`,
/// per partition, -1 for none), yet the state topic never held a record (`state_ends`: its
/// high watermarks; compaction never lowers them, so a topic that had records does not read
/// as empty).
pub fn state_lost(committed: &[i64], state_ends: &[i64]) -> bool {
    committed.iter().any(|&o| o > 0) && state_ends.iter().all(|&end| end == 0)
}

/// The retention settings of each of `topics`, in order; asked again for up to 30 s while the
/// broker is not ready to answer.
pub async fn retention(
    client_config: &ClientConfig,
    topics: &[&str],
) -> Result<Vec<Retention>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let specifiers: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let described = admin
            .describe_configs(&specifiers, &options)
            .await
            .and_then(|resources| {
                resources
                    .into_iter()
                    .map(|resource| {
                        let resource = resource.map_err(KafkaError::AdminOp)?;
                        let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
                        let number =
                            |name: &str| value(name).and_then(|v| v.parse().ok()).unwrap_or(-1);
                        Ok(Retention {
                            cleanup_policy: value("cleanup.policy")
                                .unwrap_or_else(|| "delete".into()),
                            retention_ms: number("retention.ms"),
                            retention_bytes: number("retention.bytes"),
                        })
                    })
                    .collect()
            });
        match described {
            Err(e) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "topic settings not readable yet; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// A consumer of `group` that never joins it: it reads the group's committed offsets (and,
/// through [`super::offsets::rewind_group`], commits new ones while no member is active).
pub(super) fn group_reader(
    client_config: &ClientConfig,
    group: &str,
) -> Result<BaseConsumer, KafkaError> {
    let mut settings = client_config.clone();
    settings
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    settings.create()
}

/// What stage 2's group has of its topics: on each partition of `internal`, its committed
/// offset (-1: none) and the low watermark; on each of `state`, the high watermark. One reader
/// for both; asked again while the broker answers that it is not ready (a coordinator moving
/// or loading after a broker restart), for up to 30 s.
pub struct GroupOffsets {
    pub committed: Vec<i64>,
    pub lows: Vec<i64>,
    pub state_ends: Vec<i64>,
}

pub fn group_offsets(
    client_config: &ClientConfig,
    group: &str,
    (internal, internal_partitions): (&str, usize),
    (state, state_partitions): (&str, usize),
) -> Result<GroupOffsets, KafkaError> {
    let consumer = group_reader(client_config, group)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let read = || -> Result<GroupOffsets, KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for p in 0..internal_partitions as i32 {
                tpl.add_partition(internal, p);
            }
            let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
            let mut offsets = GroupOffsets {
                committed: Vec::with_capacity(internal_partitions),
                lows: Vec::with_capacity(internal_partitions),
                state_ends: Vec::with_capacity(state_partitions),
            };
            for p in 0..internal_partitions as i32 {
                let (low, _) = consumer.fetch_watermarks(internal, p, TIMEOUT)?;
                offsets.lows.push(low);
                offsets.committed.push(
                    committed
                        .find_partition(internal, p)
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1),
                );
            }
            for p in 0..state_partitions as i32 {
                offsets
                    .state_ends
                    .push(consumer.fetch_watermarks(state, p, TIMEOUT)?.1);
            }
            Ok(offsets)
        };
        match read() {
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!(group, error = %e, "offsets not readable yet; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// Errors a broker gives while it is (re)starting or moving a group's coordinator.
fn is_transient(error: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotCoordinator
                | CoordinatorNotAvailable
                | CoordinatorLoadInProgress
                | LeaderNotAvailable
                | NotLeaderForPartition
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | UnknownTopicOrPartition
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(policy: &str, ms: i64, bytes: i64) -> Retention {
        Retention {
            cleanup_policy: policy.into(),
            retention_ms: ms,
            retention_bytes: bytes,
        }
    }

    #[test]
    fn a_state_topic_must_compact_and_never_delete() {
        assert_eq!(
            state_topic_problem("s", &retention("compact", 604_800_000, -1)),
            None
        );
        for policy in ["delete", "compact,delete", "delete, compact"] {
            let problem = state_topic_problem("s", &retention(policy, -1, -1)).unwrap();
            assert!(
                problem.starts_with("output.state_topic `s` has cleanup.policy="),
                "{problem}"
            );
        }
    }

    #[test]
    fn an_internal_topic_must_keep_changes_a_week_and_never_compact() {
        let week = MIN_INTERNAL_RETENTION.as_millis() as i64;
        assert_eq!(
            internal_topic_problem("i", &retention("delete", week, -1)),
            None
        );
        assert_eq!(
            internal_topic_problem("i", &retention("delete", -1, -1)),
            None
        );
        let short = internal_topic_problem("i", &retention("delete", 3_600_000, -1)).unwrap();
        assert!(short.contains("retention.ms=3600000"), "{short}");
        let sized = internal_topic_problem("i", &retention("delete", -1, 1 << 30)).unwrap();
        assert!(sized.contains("retention.bytes"), "{sized}");
        let compacted = internal_topic_problem("i", &retention("compact", -1, -1)).unwrap();
        assert!(compacted.contains("cleanup.policy=compact"), "{compacted}");
    }

    #[test]
    fn state_is_lost_when_offsets_remain_and_the_state_topic_never_held_a_record() {
        assert!(state_lost(&[12, -1, 3], &[0, 0, 0]));
        assert!(
            !state_lost(&[12, -1, 3], &[0, 40, 0]),
            "compacted, not lost"
        );
        assert!(!state_lost(&[-1, -1, 0], &[0, 0, 0]), "a new deployment");
    }
}
