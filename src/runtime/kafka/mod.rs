//! Kafka clients as harmony needs them: the settings that carry its delivery guarantee, the
//! topics it creates, the checks of their settings before start ([`preflight`]), and the one
//! owner of input offsets ([`offsets`]).

pub mod offsets;
pub mod preflight;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::{is_secret_property, KafkaConfig};

fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
}

/// The consumer of input topics.
pub fn consumer_config(kafka: &KafkaConfig, commit_interval_ms: u64) -> ClientConfig {
    let mut config = ClientConfig::new();
    // A new group starts at the beginning: Debezium's initial snapshot is part of the input.
    config.set("auto.offset.reset", "earliest");
    // Debezium creates a table's topic with its first change, often after harmony subscribed;
    // librdkafka's default (5 min) would leave such a system unread that long.
    config.set("topic.metadata.refresh.interval.ms", "10000");
    // A rebalance moves only the partitions that change owner: the others keep their state
    // and their in-flight work.
    config.set("partition.assignment.strategy", "cooperative-sticky");
    // Consumer lag per partition for `harmony_consumer_lag`.
    config.set("statistics.interval.ms", "5000");
    let base = base_config(kafka);
    for (name, value) in base.config_map() {
        config.set(name, value);
    }
    for (name, value) in &kafka.consumer {
        config.set(name, value);
    }
    config
        .set("group.id", &kafka.group_id)
        // Offsets are stored by kafka::offsets after acknowledgement, never on read.
        .set("enable.auto.offset.store", "false")
        // The background committer commits what was stored; it never commits unacknowledged work.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", commit_interval_ms.to_string());
    config
}

/// The producer of outputs and dead-letter records.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    // Small batches, sent soon: latency matters more than the last percent of throughput.
    config.set("linger.ms", "5").set("compression.type", "lz4");
    let base = base_config(kafka);
    for (name, value) in base.config_map() {
        config.set(name, value);
    }
    for (name, value) in &kafka.producer {
        config.set(name, value);
    }
    // Idempotence brings acks=all and keeps per-partition order across retries.
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// Exactly-once mode: offsets are committed only inside transactions, and only committed
/// records are read (the internal topic and the changelog are written transactionally).
pub fn exactly_once_consumer(config: &mut ClientConfig) {
    config
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
}

/// Exactly-once mode: a transactional producer. Its transaction timeout bounds how long an
/// open batch of a killed worker blocks read_committed readers when no successor with the
/// same id starts, so it defaults to a little more than two commit intervals.
pub fn transactional_producer(
    producer: &ClientConfig,
    transactional_id: &str,
    commit_interval_ms: u64,
) -> ClientConfig {
    let mut config = producer.clone();
    if config.get("transaction.timeout.ms").is_none() {
        let timeout = (2 * commit_interval_ms + 5_000).max(10_000);
        config.set("transaction.timeout.ms", timeout.to_string());
    }
    config.set("transactional.id", transactional_id);
    config
}

/// Wall-clock milliseconds since the epoch, as Kafka and Debezium timestamp records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The client settings for a log line, secrets replaced.
pub fn redacted(config: &ClientConfig) -> Vec<(String, String)> {
    let mut shown: Vec<(String, String)> = config
        .config_map()
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_property(k) {
                "<redacted>".to_owned()
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect();
    shown.sort();
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "g".into(),
            properties: [("sasl.password".to_string(), "hunter2".to_string())].into(),
            consumer: [("auto.offset.reset".to_string(), "latest".to_string())].into(),
            producer: [("linger.ms".to_string(), "50".to_string())].into(),
        }
    }

    #[test]
    fn delivery_settings_cannot_be_weakened_and_user_settings_apply() {
        let consumer = consumer_config(&kafka(), 5000);
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("auto.commit.interval.ms"), Some("5000"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        let producer = producer_config(&kafka());
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("auto.offset.reset"), None);
    }

    #[test]
    fn exactly_once_reads_committed_and_commits_only_in_transactions() {
        let mut consumer = consumer_config(&kafka(), 5000);
        exactly_once_consumer(&mut consumer);
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        let producer =
            transactional_producer(&producer_config(&kafka()), "harmony.g.resolve.w1", 5000);
        assert_eq!(
            producer.get("transactional.id"),
            Some("harmony.g.resolve.w1")
        );
        assert_eq!(producer.get("transaction.timeout.ms"), Some("15000"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn redaction_hides_secrets() {
        let shown = redacted(&producer_config(&kafka()));
        assert!(shown
            .iter()
            .any(|(k, v)| k == "sasl.password" && v == "<redacted>"));
        assert!(!shown.iter().any(|(_, v)| v.contains("hunter2")));
    }
}
