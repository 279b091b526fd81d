//! The settings a worker runs by, resolved once from the configuration: its groups, the names
//! of its own topics, and (with entities declared) the compiled
//! catalog both stages share.

use std::sync::Arc;

use crate::config::Config;
use crate::ingest::mapping::Catalog;
use crate::model::stage::Topic;

pub(super) struct Plan {
    /// Stage 1's consumer group (`kafka.group_id`).
    pub group: String,
    /// Stage 2's consumer group over the internal topic.
    pub resolve_group: String,
    /// The group-less reader that restores stage 2's partitions from the changelog.
    pub restore_group: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub internal_topic: String,
    pub state_topic: String,
    /// With entities declared: stage 1 maps onto them and stage 2 resolves them.
    pub catalog: Option<Arc<Catalog>>,
}

impl Plan {
    pub fn new(config: &Config) -> Self {
        let group = config.kafka.group_id.clone();
        Self {
            resolve_group: format!("{group}.resolve"),
            restore_group: format!("{group}.restore"),
            output_topic: config.output.topic.clone(),
            dead_letter_topic: config.output.dead_letter_topic.clone(),
            internal_topic: config.output.internal_topic(&group),
            state_topic: config.output.state_topic(&group),
            catalog: (!config.entities.is_empty()).then(|| Arc::new(Catalog::new(config))),
            group,
        }
    }

    pub fn topic_name<'t>(&'t self, topic: &'t Topic) -> &'t str {
        match topic {
            Topic::Output => &self.output_topic,
            Topic::Internal => &self.internal_topic,
            Topic::Named(name) => name,
        }
    }
}
