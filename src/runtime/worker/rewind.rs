//! Re-reading a partition after the producer gave up on one of its outputs (ARCHITECTURE.md §5 "Retry
//! without reordering").
//!
//! librdkafka retries a failed produce by itself until `message.timeout.ms`; what fails after
//! that budget is retriable trouble that outlasted it (broker down, no leader, too few
//! replicas). Skipping the event would lose it and stopping the worker would stop every
//! partition, so only the partition is stopped: its unfinished work is forgotten, it is paused,
//! and after a growing back-off it is read again from its earliest unstored offset (stage 2
//! first rebuilds the partition's state from the changelog, which holds nothing past the failed
//! event: changelog values are written in offset order after outputs). Outputs of a record are
//! produced again in their input order, so they never go backwards: what was queued behind the
//! failed record is purged from the producer (and read again too), so no later record of a key
//! slips out before the failed one is sent again.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Whether a delivery error is worth reading the partition again for. Anything else (denied
/// authorisation, an invalid record, a fenced or fatal producer) would fail again the same way.
pub fn is_retriable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error,
        KafkaError::MessageProduction(
            MessageTimedOut
                | RequestTimedOut
                | QueueFull
                | AllBrokersDown
                | BrokerTransportFailure
                | BrokerNotAvailable
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NetworkException
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | KafkaStorageError
                | PreferredLeaderNotAvailable
                | PurgeQueue
                | PurgeInflight
        )
    )
}

/// Whether the record failed because harmony purged the producer's queue after another failure.
pub fn is_purged(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
        )
    )
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Between half and all of `backoff` ("equal jitter"): partitions of many workers that failed
/// together (a broker restart) then come back spread out rather than all at once. The draw is
/// std's randomly keyed hasher over `seed`: random per process and per call.
fn jittered(backoff: Duration, seed: impl std::hash::Hash) -> Duration {
    use std::hash::BuildHasher;
    let draw = std::collections::hash_map::RandomState::new().hash_one(seed);
    let fraction = 0.5 + (draw % 1_000) as f64 / 2_000.0;
    backoff.mul_f64(fraction)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    pub topic: String,
    pub partition: i32,
    /// The offset to read again from.
    pub offset: i64,
    pub due: Instant,
}

/// Partitions waiting to be read again, and how often each failed in a row.
#[derive(Debug, Default)]
pub struct Rewinds {
    waiting: Vec<Rewind>,
    /// Consecutive failures per partition; cleared once the partition stores an offset past
    /// where it was rewound to.
    failures: Vec<((String, i32), u32, i64)>,
}

impl Rewinds {
    /// Schedules a partition to be read again from `offset`; returns the back-off.
    pub fn schedule(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) -> Duration {
        let failures = match self
            .failures
            .iter_mut()
            .find(|((t, p), _, _)| t == topic && *p == partition)
        {
            Some(entry) => {
                entry.1 += 1;
                entry.2 = offset;
                entry.1
            }
            None => {
                self.failures
                    .push(((topic.to_owned(), partition), 1, offset));
                1
            }
        };
        let backoff = jittered(
            FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1).min(5))
                .min(MAX_BACKOFF),
            (topic, partition, failures),
        );
        self.wait(topic, partition, offset, now + backoff);
        backoff
    }

    /// Holds a partition at `offset` for the longest back-off: it stopped at a change it must not
    /// apply yet (a policy, not a failure that may pass in a second), and each reading again
    /// costs a restore of its state.
    pub fn hold(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) -> Duration {
        self.wait(topic, partition, offset, now + MAX_BACKOFF);
        MAX_BACKOFF
    }

    /// The partition waits until `due`, to be read again from `offset` (any earlier wait of it
    /// replaced).
    fn wait(&mut self, topic: &str, partition: i32, offset: i64, due: Instant) {
        self.waiting
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.waiting.push(Rewind {
            topic: topic.to_owned(),
            partition,
            offset,
            due,
        });
    }

    /// Whether the partition's records are to be ignored: it is waiting to be read again.
    pub fn is_waiting(&self, topic: &str, partition: i32) -> bool {
        !self.waiting.is_empty()
            && self
                .waiting
                .iter()
                .any(|r| r.partition == partition && r.topic == topic)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.iter().map(|r| r.due).min()
    }

    /// Takes the rewinds due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Rewind> {
        let (due, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| r.due <= now);
        self.waiting = waiting;
        due
    }

    /// An offset was stored: a partition that got past the point it was rewound to is healthy.
    pub fn stored(&mut self, topic: &str, partition: i32, next: i64) {
        if !self.failures.is_empty() {
            self.failures
                .retain(|((t, p), _, from)| !(t == topic && *p == partition && next > *from));
        }
    }

    /// Exactly once: a batch committed, so every partition got past where it was rewound to.
    pub fn committed(&mut self) {
        self.failures.clear();
    }

    /// A revoked partition is its next owner's to read.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.waiting
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.failures
            .retain(|((t, p), _, _)| !(t == topic && *p == partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `backoff` is `nominal` less at most half of it (the jitter).
    fn about(backoff: Duration, nominal: Duration) -> bool {
        backoff <= nominal && backoff >= nominal / 2
    }

    #[test]
    fn back_off_grows_per_partition_until_it_gets_past_the_failure() {
        let mut r = Rewinds::default();
        let now = Instant::now();
        assert!(about(r.schedule("t", 0, 10, now), Duration::from_secs(1)));
        assert!(about(r.schedule("t", 0, 10, now), Duration::from_secs(2)));
        assert!(about(r.schedule("t", 1, 4, now), Duration::from_secs(1)));
        assert!(r.is_waiting("t", 0) && r.is_waiting("t", 1) && !r.is_waiting("u", 0));
        assert!(r
            .next_due()
            .is_some_and(|d| d <= now + Duration::from_secs(1)));
        let due = r.take_due(now + Duration::from_secs(1));
        assert_eq!(
            due.len(),
            1,
            "only partition 1 is due: partition 0 was rescheduled"
        );
        assert_eq!((due[0].partition, due[0].offset), (1, 4));
        for _ in 0..10 {
            r.schedule("t", 0, 10, now);
        }
        assert!(about(r.schedule("t", 0, 10, now), MAX_BACKOFF));
        r.stored("t", 0, 10);
        assert!(
            about(r.schedule("t", 0, 10, now), MAX_BACKOFF),
            "not past 10 yet"
        );
        r.stored("t", 0, 11);
        assert!(about(r.schedule("t", 0, 12, now), FIRST_BACKOFF));
        r.forget("t", 0);
        assert!(!r.is_waiting("t", 0));
    }

    #[test]
    fn back_offs_are_spread_not_in_lockstep() {
        // Before: every partition that failed once waited exactly 1 s.
        let now = Instant::now();
        let mut r = Rewinds::default();
        let backoffs: std::collections::BTreeSet<Duration> =
            (0..50).map(|p| r.schedule("t", p, 0, now)).collect();
        assert!(backoffs.len() > 10, "{backoffs:?}");
        assert!(backoffs.iter().all(|b| about(*b, FIRST_BACKOFF)));
    }

    #[test]
    fn only_transient_delivery_errors_are_retried() {
        assert!(is_retriable(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_retriable(&KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_retriable(&KafkaError::Canceled));
    }
}
