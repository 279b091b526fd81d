//! Exactly-once mode (`processing.guarantee = "exactly_once"`, ARCHITECTURE.md §5): a stage's outputs,
//! conflict records, dead-letter copies, changelog values and the input offsets they consume
//! go to the broker in one Kafka transaction per commit interval. Readers with
//! `isolation.level = read_committed` see a batch whole or not at all; a worker killed mid-batch
//! leaves an open transaction that is aborted when its successor with the same transactional
//! id starts, or after `transaction.timeout.ms`.
//!
//! One transaction per stage (each stage has its own consumer group, and a transaction carries
//! the offsets of one). The transaction is committed by the pipeline when the interval is
//! over, by the consumer's revocation callback before partitions change hands (the next owner
//! must find their offsets committed), and on shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The batch was aborted: its outputs are invisible to read_committed readers and its
    /// offsets uncommitted, so its input must be read again from the committed offsets.
    #[error("{0}")]
    Aborted(String),
    /// The producer cannot go on: fenced by another worker with the same transactional id, or
    /// a fatal broker answer.
    #[error("{0}")]
    Fatal(String),
}

impl TransactionError {
    /// Aborted, the batch is done again by reading its input again; fatal, the worker stops.
    pub fn is_retriable(&self) -> bool {
        matches!(self, TransactionError::Aborted(_))
    }
}

#[derive(Default)]
struct Batch {
    /// When the open batch began; `None` with no batch open.
    opened_at: Option<Instant>,
    events: usize,
    /// Source commit times of the batch's events with target outputs: their end-to-end
    /// latency ends when the batch commits.
    source_times: Vec<i64>,
    /// topic → partition → next offset to read; looked up by `&str`, so recording an event
    /// allocates nothing once its partition is known.
    next: HashMap<String, HashMap<i32, i64>>,
}

pub struct Transaction {
    pub stage: &'static str,
    producer: FutureProducer,
    batch: Mutex<Batch>,
    timeout: Duration,
}

impl Transaction {
    /// Registers the producer's transactional id with the coordinator, which aborts whatever
    /// transaction a previous incarnation left open.
    pub fn init(
        stage: &'static str,
        producer: FutureProducer,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        producer.init_transactions(timeout)?;
        Ok(Self {
            stage,
            producer,
            batch: Mutex::new(Batch::default()),
            timeout,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Opens the batch if none is open; to be called before an event's first record is sent.
    pub fn ensure_open(&self) -> Result<(), TransactionError> {
        let mut batch = self.lock();
        if batch.opened_at.is_some() {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| classify(&e))?;
        batch.opened_at = Some(Instant::now());
        Ok(())
    }

    /// An event whose records were all sent in the open batch: its offset commits with them.
    pub fn consumed(&self, topic: &str, partition: i32, offset: i64, source_ts_ms: Option<i64>) {
        let mut batch = self.lock();
        batch.events += 1;
        batch.source_times.extend(source_ts_ms);
        match batch.next.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, offset + 1);
            }
            None => {
                batch
                    .next
                    .insert(topic.to_owned(), HashMap::from([(partition, offset + 1)]));
            }
        }
    }

    /// When the open batch is due for commit (`None` with no batch open).
    pub fn due(&self, interval: Duration) -> Option<Instant> {
        let batch = self.lock();
        batch.opened_at.map(|t| t + interval)
    }

    /// Commits the open batch with its offsets; returns how many events it held and the source
    /// times of those with target outputs. On failure the batch is aborted (when it can be) and
    /// the caller must read its input again.
    pub fn commit(
        &self,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(usize, Vec<i64>), TransactionError> {
        let mut batch = self.lock();
        if batch.opened_at.is_none() {
            return Ok((0, Vec::new()));
        }
        let events = batch.events;
        let mut offsets = TopicPartitionList::new();
        for (topic, partitions) in &batch.next {
            for (&partition, &next) in partitions {
                if let Err(e) = offsets.add_partition_offset(topic, partition, Offset::Offset(next))
                {
                    return Err(self.abort(&mut batch, &e));
                }
            }
        }
        if offsets.count() > 0 {
            let Some(group) = group else {
                return Err(
                    self.abort_with(&mut batch, "the consumer has no group metadata".into())
                );
            };
            if let Err(e) =
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, self.timeout)
            {
                return Err(self.abort(&mut batch, &e));
            }
        }
        if let Err(e) = self.producer.commit_transaction(self.timeout) {
            return Err(self.abort(&mut batch, &e));
        }
        let source_times = std::mem::take(&mut batch.source_times);
        *batch = Batch::default();
        Ok((events, source_times))
    }

    /// Aborts the open batch (a record of it was refused).
    pub fn abort_open(&self, reason: &str) -> TransactionError {
        let mut batch = self.lock();
        if batch.opened_at.is_none() {
            return TransactionError::Aborted(reason.to_owned());
        }
        self.abort_with(&mut batch, reason.to_owned())
    }

    fn abort(&self, batch: &mut Batch, error: &KafkaError) -> TransactionError {
        if let TransactionError::Fatal(e) = classify(error) {
            return TransactionError::Fatal(e);
        }
        self.abort_with(batch, error.to_string())
    }

    fn abort_with(&self, batch: &mut Batch, reason: String) -> TransactionError {
        *batch = Batch::default();
        match self.producer.abort_transaction(self.timeout) {
            Ok(()) => TransactionError::Aborted(reason),
            Err(e) => match classify(&e) {
                TransactionError::Fatal(f) => TransactionError::Fatal(f),
                TransactionError::Aborted(a) => {
                    TransactionError::Fatal(format!("{reason}; then the abort failed too: {a}"))
                }
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        // A panic while holding the lock leaves a batch that is aborted or committed whole by
        // the next call either way; the data is still consistent.
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn classify(error: &KafkaError) -> TransactionError {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => TransactionError::Fatal(error.to_string()),
        _ => TransactionError::Aborted(error.to_string()),
    }
}
