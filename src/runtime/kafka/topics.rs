//! Creates the topics harmony writes to when they are missing, so that a fresh deployment
//! needs no manual step and a broker with `auto.create.topics.enable=false` works. Topics that
//! exist are left alone and not even asked for: a principal without CREATE rights works with
//! pre-provisioned topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// How many partitions `topic` has (0 when it does not exist).
pub fn partition_count(client_config: &ClientConfig, topic: &str) -> Result<usize, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len()))
}

/// Ensures each topic exists, created with `settings` (e.g. `cleanup.policy=compact`); an
/// existing topic is left as it is (partitions and settings included).
pub async fn ensure_topics(
    client_config: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication_factor: i32,
    settings: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let metadata = admin.inner().fetch_metadata(None, METADATA_TIMEOUT)?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none() && !m.partitions().is_empty())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            settings.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(replication_factor)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, replication_factor, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    // The controller answers before every broker's metadata has the new partitions: a busy
    // broker was seen reporting a just-created topic with none, which the partition check
    // that follows took for a misconfigured topic.
    let deadline = tokio::time::Instant::now() + METADATA_TIMEOUT;
    for topic in missing {
        while partition_count(client_config, topic)? == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaError::AdminOp(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
