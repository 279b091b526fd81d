//! The configuration file: one TOML document, overridable by environment variables, parsed into
//! a typed tree once at start. Nothing downstream sees strings where a `Duration`, an address
//! or a list is meant, and every error names the key at fault.
//!
//! Environment overrides address a key by its path, segments joined by `__`, under the prefix
//! `HARMONY__`:
//!
//! ```text
//! HARMONY__KAFKA__BOOTSTRAP_SERVERS=broker-1:9092   →  [kafka] bootstrap_servers = "broker-1:9092"
//! HARMONY__KAFKA__PROPERTIES__SASL.PASSWORD=…       →  [kafka.properties] "sasl.password" = "…"
//! ```
//!
//! A value is read as TOML when it parses as such (`3`, `true`, `["a", "b"]`), else as a string —
//! except under `kafka.properties`, `kafka.consumer` and `kafka.producer`, whose values are
//! librdkafka's strings, taken verbatim (`12345678` and `"quoted"` stay as written). There, since
//! a shell cannot export a name with a dot, a `_` in the last segment stands for `.`
//! (`…__PROPERTIES__SASL_PASSWORD` → `sasl.password`), except in the names librdkafka itself
//! spells with one (`log_level`, `enabled_events`).
//!
//! A variable ending in `_FILE` takes its value from the file it names (a mounted Secret), with
//! one trailing line break removed:
//!
//! ```text
//! HARMONY__KAFKA__PROPERTIES__SASL_PASSWORD_FILE=/run/secrets/kafka  →  "sasl.password" = <file>
//! ```
//!
//! No error ever shows a value set under `kafka.*`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

mod entities;
pub mod guard;
pub use entities::{
    DeleteConflict, EntityConfig, FieldConfig, OutputFormat, SourceMapping, Strategy, TargetConfig,
};

/// Prefix of environment variables that override keys of the file.
pub const ENV_PREFIX: &str = "HARMONY__";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{key}: {message}")]
    Key { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    /// The source systems and the Debezium topics each one fills.
    pub systems: Vec<SystemConfig>,
    pub output: OutputConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub input: InputConfig,
    /// Where Avro records' writer schemas are read (and targets' Avro schemas registered).
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// Logical record types and how each system's tables map onto them.
    #[serde(default)]
    pub entities: Vec<EntityConfig>,
    /// Which systems receive which entities, on which topic.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Topic → system, compiled once while the file is validated.
    #[serde(skip)]
    router: TopicRouter,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Records larger than this are dead-lettered unread, so one huge record cannot stall a
    /// partition or exhaust memory.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Records nesting arrays and objects deeper than this are dead-lettered.
    #[serde(default = "default_max_nesting_depth")]
    pub max_nesting_depth: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_record_bytes: default_max_record_bytes(),
            max_nesting_depth: default_max_nesting_depth(),
        }
    }
}

/// The decoder's defaults (`input.max_nesting_depth`, `input.max_record_bytes`). Kafka's
/// default message.max.bytes is 1 MiB; Debezium rows near it are rare and legitimate, so the
/// record limit leaves room.
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 64;
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

fn default_max_nesting_depth() -> usize {
    DEFAULT_MAX_NESTING_DEPTH
}

fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}

/// A schema registry serving Confluent's REST API (Confluent's, Apicurio's `ccompat` API,
/// Karapace, Redpanda's).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// The API's base URL: `http://registry:8081`, or Apicurio's
    /// `http://registry:8080/apis/ccompat/v7`.
    pub url: String,
    /// HTTP basic authentication (Confluent Cloud's API key and secret).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// One request's budget; a registry slower than this counts as unavailable.
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Passed to librdkafka unchanged (TLS, SASL, tuning). harmony's own delivery settings
    /// (`enable.auto.offset.store`, `enable.idempotence`, `acks`) cannot be overridden here.
    #[serde(default, deserialize_with = "librdkafka_properties")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (e.g. `fetch.min.bytes`).
    #[serde(default, deserialize_with = "librdkafka_properties")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `linger.ms`, `compression.type`).
    #[serde(default, deserialize_with = "librdkafka_properties")]
    pub producer: BTreeMap<String, String>,
}

/// librdkafka takes every property as a string; a number or boolean written bare in the file
/// (`"batch.size" = 100000`) means the same. Anything else is refused without showing the
/// value, which may be a secret.
fn librdkafka_properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let map: BTreeMap<String, Scalar> = BTreeMap::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "librdkafka properties are a table of names to strings (numbers and booleans are taken as written)",
        )
    })?;
    Ok(map
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Scalar::Text(t) => t,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (name, text)
        })
        .collect())
}

impl KafkaConfig {
    /// The producer's `message.max.bytes` (librdkafka's default: 1 000 000): the largest record
    /// it takes, key, value and headers together.
    pub fn max_message_bytes(&self) -> usize {
        self.producer
            .get("message.max.bytes")
            .or_else(|| self.properties.get("message.max.bytes"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1_000_000)
    }
}

/// librdkafka properties harmony sets itself. Letting a user override them would silently
/// break at-least-once delivery (`enable.auto.offset.store`), per-record order
/// (`enable.idempotence`) or durability (`acks`).
const RESERVED_PROPERTIES: [&str; 10] = [
    "bootstrap.servers",
    "transactional.id",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
];

pub fn is_reserved_property(name: &str) -> bool {
    RESERVED_PROPERTIES.contains(&name)
}

/// librdkafka properties whose values are secrets: never logged, never exported.
const SECRET_PROPERTY_MARKERS: [&str; 4] = ["password", "secret", "sasl.jaas", ".pem"];

pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PROPERTY_MARKERS.iter().any(|m| name.contains(m))
        || name.ends_with(".key")
        || name == "sasl.oauthbearer.config"
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |map: &'_ BTreeMap<String, String>| -> BTreeMap<String, String> {
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_property(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), shown.to_owned())
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("properties", &redact(&self.properties))
            .field("consumer", &redact(&self.consumer))
            .field("producer", &redact(&self.producer))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Short name used in outputs, metrics and logs (`erp`, `shop`, …).
    pub name: String,
    /// Debezium topics of this system. A name starting with `^` is a regular expression, as in
    /// librdkafka's subscription.
    pub topics: Vec<String>,
    /// Tie-breaker between systems; higher wins.
    #[serde(default)]
    pub rank: i32,
    /// What a change whose source position went backwards means (the database restored from a
    /// backup, a promoted replica with another history, a binlog reset): it is behind what
    /// harmony applied from this system, yet committed later. Counted and logged either way
    /// (`harmony_position_regressions_total`); never dropped as a replay.
    #[serde(default)]
    pub on_position_regression: RegressionPolicy,
    /// What a change of a mapped table's shape means (a column added, dropped, renamed, its
    /// type changed), seen in the schema a record carries (ARCHITECTURE.md §2). Counted either
    /// way (`harmony_schema_changes_total`); a mapped column that disappears is never dropped
    /// silently.
    #[serde(default)]
    pub on_schema_change: SchemaChangePolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaChangePolicy {
    /// The new shape is taken: a changed column type reaches the targets' schemas, an added
    /// column is reported once, and a mapped column that is gone raises the alert
    /// (`harmony_schema_missing_columns`) while its field keeps its last value.
    #[default]
    Evolve,
    /// Counted and reported as under `evolve` (a mapped column gone still raises the alert), but
    /// the targets keep the column types they had.
    Ignore,
    /// A change touching a mapped column stops the partition at the first record of the new
    /// shape (read again every back-off, never skipped) until an operator updates the mapping
    /// or the policy; an added unmapped column only is reported.
    Stop,
}

impl SchemaChangePolicy {
    /// As the configuration and the logs name it.
    pub fn name(self) -> &'static str {
        match self {
            SchemaChangePolicy::Evolve => "evolve",
            SchemaChangePolicy::Ignore => "ignore",
            SchemaChangePolicy::Stop => "stop",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressionPolicy {
    /// The source's new history is its truth: the change is applied, and its position becomes
    /// the one later changes are compared with.
    #[default]
    Accept,
    /// The partition stops at the change (read again every back-off, never skipped) until an
    /// operator decides: set `accept` and restart, or repair the source.
    Stop,
}

impl RegressionPolicy {
    /// As the configuration and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            RegressionPolicy::Accept => "accept",
            RegressionPolicy::Stop => "stop",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Topic every resolved change is published to.
    pub topic: String,
    /// Topic for input that cannot be decoded, with the reason in headers.
    pub dead_letter_topic: String,
    /// Partitions for the topics harmony creates when they are missing.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Stage 1 → stage 2 (when entities are declared): changes re-keyed by record. Default
    /// `harmony.<group_id>.changes`.
    pub internal_topic: Option<String>,
    /// Conflict records. Default `harmony.<group_id>.conflicts`.
    pub conflicts_topic: Option<String>,
    /// Stage 2's record state, compacted, partition for partition with the internal topic.
    /// Default `harmony.<group_id>.state`.
    pub state_topic: Option<String>,
}

impl OutputConfig {
    pub fn conflicts_topic(&self, group_id: &str) -> String {
        self.conflicts_topic
            .clone()
            .unwrap_or_else(|| format!("harmony.{group_id}.conflicts"))
    }

    pub fn state_topic(&self, group_id: &str) -> String {
        self.state_topic
            .clone()
            .unwrap_or_else(|| format!("harmony.{group_id}.state"))
    }

    pub fn internal_topic(&self, group_id: &str) -> String {
        self.internal_topic
            .clone()
            .unwrap_or_else(|| format!("harmony.{group_id}.changes"))
    }
}

fn default_partitions() -> i32 {
    3
}

fn default_replication_factor() -> i32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics`, `/health` and `/ready`. Loopback unless deliberately exposed.
    #[serde(default = "default_http_address")]
    pub address: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: default_http_address(),
        }
    }
}

fn default_http_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How often stored offsets are committed. Events acknowledged since the last commit are
    /// replayed after a crash, so this bounds duplicates, never loss.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Upper bound for draining in-flight events and committing on SIGTERM.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Events consumed whose outputs are not yet acknowledged; past it, consumption waits.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `at_least_once` (default): an offset is stored once its event's outputs are
    /// acknowledged; a crash replays, and dedup removes what downstream would see twice.
    /// `exactly_once`: each commit interval is one Kafka transaction (outputs, conflicts,
    /// changelog, offsets); read_committed readers see every change once.
    #[serde(default)]
    pub guarantee: Guarantee,
    /// Names this worker in its transactional ids (`exactly_once`): stable across restarts
    /// of the same worker (a StatefulSet pod name) so that a restart aborts what its previous
    /// incarnation left open; unique among live workers. The environment variable
    /// `HARMONY_INSTANCE_ID` overrides it; the default is the host name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How often stage 2 publishes the state gauges (records, state bytes, targets out of sync,
    /// unsettled manual conflicts). Their figures are kept change by change (`figures`), so
    /// publishing costs the same at any number of records.
    #[serde(default = "default_state_metrics_interval", with = "humantime_serde")]
    pub state_metrics_interval: Duration,
    /// How long a deleted record's bookkeeping (its version vector and each system's applied
    /// position, which tell a replay of its past from a new record with its key) outlives its
    /// values once the delete is final everywhere; then a tombstone takes it off the state
    /// topic. Measured in source commit time, by the partition's newest change: the same input
    /// tombstones the same records, whenever it is read. `0s` keeps it forever.
    #[serde(default = "default_deleted_retention", with = "humantime_serde")]
    pub deleted_retention: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl ProcessingConfig {
    /// This worker's name among the group's workers (see `instance_id`).
    pub fn instance(&self) -> String {
        std::env::var("HARMONY_INSTANCE_ID")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.instance_id.clone())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|v| !v.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "harmony".to_owned())
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            commit_interval: default_commit_interval(),
            shutdown_timeout: default_shutdown_timeout(),
            max_in_flight: default_max_in_flight(),
            guarantee: Guarantee::default(),
            instance_id: None,
            state_metrics_interval: default_state_metrics_interval(),
            deleted_retention: default_deleted_retention(),
        }
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_state_metrics_interval() -> Duration {
    Duration::from_secs(10)
}

/// Kafka's own `delete.retention.ms` default: a connector that restarts from older offsets
/// does so within hours, not days.
fn default_deleted_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_in_flight() -> usize {
    10_000
}

impl Config {
    /// Reads `path`, applies `HARMONY__…` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text` (named `origin` in errors) with the given environment overrides.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        apply_env_overrides(&mut doc, env)?;
        let mut config: Config =
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        config.router = config.validate()?;
        Ok(config)
    }

    /// Checks every setting; returns the topic router, whose patterns it compiled.
    fn validate(&self) -> Result<TopicRouter, ConfigError> {
        let key_error = |key: String, message: &str| ConfigError::Key {
            key,
            message: message.to_owned(),
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(key_error(
                "kafka.bootstrap_servers".into(),
                "must not be empty",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(key_error("kafka.group_id".into(), "must not be empty"));
        }
        for (section, map) in [
            ("properties", &self.kafka.properties),
            ("consumer", &self.kafka.consumer),
            ("producer", &self.kafka.producer),
        ] {
            for name in map.keys() {
                if is_reserved_property(name) {
                    return Err(key_error(
                        format!("kafka.{section}.\"{name}\""),
                        "is set by harmony to keep its delivery guarantee and cannot be overridden",
                    ));
                }
            }
        }
        if let Some(registry) = &self.schema_registry {
            let url = registry.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
                return Err(key_error(
                    "schema_registry.url".into(),
                    "must be an http:// or https:// URL",
                ));
            }
            if registry.password.is_some() && registry.username.is_none() {
                return Err(key_error(
                    "schema_registry.username".into(),
                    "is needed with schema_registry.password",
                ));
            }
            if registry.request_timeout.is_zero() {
                return Err(key_error(
                    "schema_registry.request_timeout".into(),
                    "must be more than zero",
                ));
            }
        }
        if self.systems.is_empty() {
            return Err(key_error("systems".into(), "declare at least one system"));
        }
        let mut seen_names = std::collections::BTreeSet::new();
        let mut router = TopicRouter::default();
        for (i, system) in self.systems.iter().enumerate() {
            if system.name.is_empty()
                || !system
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(key_error(
                    format!("systems[{i}].name"),
                    "must be non-empty ASCII letters, digits, '_' or '-'",
                ));
            }
            if system.name == crate::model::clock::OPERATOR {
                return Err(key_error(
                    format!("systems[{i}].name"),
                    "`operator` is reserved: it is who settles manual conflicts",
                ));
            }
            if !seen_names.insert(system.name.as_str()) {
                return Err(key_error(
                    format!("systems[{i}].name"),
                    &format!("system \"{}\" is declared twice", system.name),
                ));
            }
            if system.topics.is_empty() {
                return Err(key_error(
                    format!("systems[{i}].topics"),
                    "list at least one topic",
                ));
            }
            for (j, topic) in system.topics.iter().enumerate() {
                let key = || format!("systems[{i}].topics[{j}]");
                if topic.starts_with('^') {
                    match regex::Regex::new(topic) {
                        Ok(pattern) => router.patterns.push((pattern, i)),
                        Err(e) => {
                            return Err(key_error(key(), &format!("is not a valid pattern: {e}")))
                        }
                    }
                } else if is_valid_topic_name(topic) {
                    router.exact.entry(topic.clone()).or_insert(i);
                } else {
                    return Err(key_error(
                        key(),
                        "is not a valid Kafka topic name (1–249 of [a-zA-Z0-9._-]); start a pattern with '^'",
                    ));
                }
            }
        }
        for (key, topic) in [
            ("output.topic", &self.output.topic),
            ("output.dead_letter_topic", &self.output.dead_letter_topic),
        ] {
            if !is_valid_topic_name(topic) {
                return Err(key_error(
                    key.into(),
                    "is not a valid Kafka topic name (1–249 of [a-zA-Z0-9._-])",
                ));
            }
        }
        for (key, topic) in [
            (
                "output.internal_topic",
                self.output.internal_topic(&self.kafka.group_id),
            ),
            (
                "output.conflicts_topic",
                self.output.conflicts_topic(&self.kafka.group_id),
            ),
            (
                "output.state_topic",
                self.output.state_topic(&self.kafka.group_id),
            ),
        ] {
            if !is_valid_topic_name(&topic) {
                return Err(key_error(
                    key.into(),
                    "is not a valid Kafka topic name (set it, or use a group_id that makes one)",
                ));
            }
        }
        if self.output.partitions < 1 {
            return Err(key_error("output.partitions".into(), "must be at least 1"));
        }
        if self.output.replication_factor < 1 {
            return Err(key_error(
                "output.replication_factor".into(),
                "must be at least 1",
            ));
        }
        let system_names = self.systems.iter().map(|s| s.name.as_str()).collect();
        entities::validate(&self.entities, &self.targets, &system_names)?;
        if self.input.max_record_bytes < 1024 {
            return Err(key_error(
                "input.max_record_bytes".into(),
                "must be at least 1024",
            ));
        }
        if self.processing.max_in_flight == 0 {
            return Err(key_error(
                "processing.max_in_flight".into(),
                "must be at least 1",
            ));
        }
        if self.processing.commit_interval.is_zero() {
            return Err(key_error(
                "processing.commit_interval".into(),
                "must be positive",
            ));
        }
        Ok(router)
    }

    /// Resolves topics to the system that owns them.
    pub fn topic_router(&self) -> &TopicRouter {
        &self.router
    }

    /// Every topic and pattern to subscribe to, in declaration order.
    pub fn subscription(&self) -> Vec<&str> {
        self.systems
            .iter()
            .flat_map(|s| s.topics.iter().map(String::as_str))
            .collect()
    }
}

/// Topic → index into `Config::systems`. Exact names win over `^…` patterns, which are tried
/// in declaration order, as librdkafka's subscription would match them.
#[derive(Debug, Default, Clone)]
pub struct TopicRouter {
    exact: std::collections::HashMap<String, usize>,
    patterns: Vec<(regex::Regex, usize)>,
}

impl TopicRouter {
    pub fn system_index(&self, topic: &str) -> Option<usize> {
        self.exact.get(topic).copied().or_else(|| {
            self.patterns
                .iter()
                .find(|(re, _)| re.is_match(topic))
                .map(|(_, index)| *index)
        })
    }
}

/// Kafka's own rule for topic names.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The librdkafka property names that have `_` in them: every other `_` in an overriding
/// variable's property name stands for a `.`.
const LIBRDKAFKA_UNDERSCORE_NAMES: [&str; 2] = ["log_level", "enabled_events"];

fn apply_env_overrides(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic, whatever order the process environment comes in.
    overrides.sort();
    for (var, raw) in overrides {
        let mut path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::Key {
                key: var,
                message: "has an empty path segment".into(),
            });
        }
        let last = path.len() - 1;
        let from_file = path[last].len() > "_file".len() && path[last].ends_with("_file");
        if from_file {
            let name_len = path[last].len() - "_file".len();
            path[last].truncate(name_len);
        }
        let librdkafka = path.len() == 3
            && path[0] == "kafka"
            && matches!(path[1].as_str(), "properties" | "consumer" | "producer");
        if librdkafka && !LIBRDKAFKA_UNDERSCORE_NAMES.contains(&path[last].as_str()) {
            path[last] = path[last].replace('_', ".");
        }
        let raw = if from_file {
            read_secret_file(&var, &raw)?
        } else {
            raw
        };
        let value = if librdkafka {
            toml::Value::String(raw)
        } else {
            parse_override_value(&raw)
        };
        let mut table = &mut *doc;
        for segment in &path[..last] {
            let entry = table
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::Key {
                key: var.clone(),
                message: format!("`{segment}` is not a table in the file"),
            })?;
        }
        table.insert(path[last].clone(), value);
    }
    Ok(())
}

/// The value of a `…_FILE` variable: the named file's text, less one trailing line break (as an
/// editor or `echo` leaves it). Errors name the variable and the path, never the contents.
fn read_secret_file(var: &str, path: &str) -> Result<String, ConfigError> {
    let mut text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
        key: var.to_owned(),
        message: format!("cannot read the file it names, {path}: {e}"),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn parse_override_value(raw: &str) -> toml::Value {
    // `key = <raw>` parses only if raw is a TOML value; a bare word like `broker:9092` is not.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// examples/inventory.toml, the configuration the unit tests share, with `env` overrides.
#[cfg(test)]
pub(crate) fn inventory_example(env: &[(&str, &str)]) -> Config {
    Config::from_toml(
        include_str!("../../examples/inventory.toml"),
        "inventory.toml",
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .unwrap_or_else(|e| panic!("examples/inventory.toml: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        group_id = "harmony"

        [[systems]]
        name = "erp"
        topics = ["erp.public.products", "^erp[.]inventory[.].*"]

        [output]
        topic = "harmony.out"
        dead_letter_topic = "harmony.dlq"
    "#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_fill_optional_sections() {
        let config = parse(MINIMAL, &[]).unwrap();
        assert_eq!(config.http.address, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(config.processing.commit_interval, Duration::from_secs(5));
        assert_eq!(config.output.partitions, 3);
    }

    #[test]
    fn env_overrides_reach_nested_keys_and_keep_types() {
        let config = parse(
            MINIMAL,
            &[
                ("HARMONY__KAFKA__BOOTSTRAP_SERVERS", "broker-1:9092"),
                ("HARMONY__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "ssl"),
                ("HARMONY__PROCESSING__COMMIT_INTERVAL", "250ms"),
                ("HARMONY__OUTPUT__PARTITIONS", "12"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "broker-1:9092");
        assert_eq!(config.kafka.properties["security.protocol"], "ssl");
        assert_eq!(
            config.processing.commit_interval,
            Duration::from_millis(250)
        );
        assert_eq!(config.output.partitions, 12);
    }

    #[test]
    fn librdkafka_values_from_the_environment_are_taken_verbatim_and_never_shown() {
        let secret_file =
            std::env::temp_dir().join(format!("harmony-secret-{}", std::process::id()));
        std::fs::write(&secret_file, "s3cr3t pass\n").unwrap();
        let config = parse(
            MINIMAL,
            &[
                // Before: read as the TOML integer 12345678 and refused, the value printed.
                ("HARMONY__KAFKA__PROPERTIES__SASL.PASSWORD", "12345678"),
                // Before: read as a TOML string, its quotes lost.
                ("HARMONY__KAFKA__PROPERTIES__SASL.USERNAME", "\"quoted\""),
                // Settable from a shell: `_` for `.`.
                ("HARMONY__KAFKA__CONSUMER__FETCH_MIN_BYTES", "1"),
                ("HARMONY__KAFKA__PRODUCER__LOG_LEVEL", "7"),
                (
                    "HARMONY__KAFKA__PROPERTIES__SSL_KEY_PASSWORD_FILE",
                    secret_file.to_str().unwrap(),
                ),
            ],
        )
        .unwrap();
        std::fs::remove_file(&secret_file).unwrap();
        assert_eq!(config.kafka.properties["sasl.password"], "12345678");
        assert_eq!(config.kafka.properties["sasl.username"], "\"quoted\"");
        assert_eq!(config.kafka.consumer["fetch.min.bytes"], "1");
        assert_eq!(config.kafka.producer["log_level"], "7");
        assert_eq!(config.kafka.properties["ssl.key.password"], "s3cr3t pass");

        let missing = parse(
            MINIMAL,
            &[(
                "HARMONY__KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                "/nonexistent/pw",
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.starts_with("HARMONY__KAFKA__PROPERTIES__SASL_PASSWORD_FILE")
                && missing.contains("/nonexistent/pw"),
            "{missing}"
        );
    }

    #[test]
    fn librdkafka_values_in_the_file_may_be_bare_numbers_and_a_bad_one_is_not_shown() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"sasl.password\" = 12345678\n\"socket.keepalive.enable\" = true\n"
        );
        let config = parse(&text, &[]).unwrap();
        assert_eq!(config.kafka.properties["sasl.password"], "12345678");
        assert_eq!(config.kafka.properties["socket.keepalive.enable"], "true");
        let bad = format!("{MINIMAL}\n[kafka.properties]\n\"sasl.password\" = [\"hunter2\"]\n");
        let err = parse(&bad, &[]).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("properties"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("group_id", "group_idd");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("group_idd"), "{err}");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let text = format!("{MINIMAL}\n[processing]\ncommit_interval = \"soon\"\n");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("commit_interval"), "{err}");
    }

    #[test]
    fn reserved_librdkafka_property_is_refused() {
        let text =
            format!("{MINIMAL}\n[kafka.properties]\n\"enable.auto.offset.store\" = \"true\"\n");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("kafka.properties.\"enable.auto.offset.store\""),
            "{err}"
        );
    }

    #[test]
    fn invalid_topic_and_duplicate_system_are_named() {
        let err = parse(&MINIMAL.replace("harmony.out", "bad topic"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("output.topic"), "{err}");
        let twice = format!("{MINIMAL}\n[[systems]]\nname = \"erp\"\ntopics = [\"x\"]\n");
        let err = parse(&twice, &[]).unwrap_err().to_string();
        assert!(err.starts_with("systems[1].name"), "{err}");
    }

    #[test]
    fn topics_map_to_systems_by_name_and_prefix_pattern() {
        let config = parse(MINIMAL, &[]).unwrap();
        let router = config.topic_router();
        assert_eq!(router.system_index("erp.public.products"), Some(0));
        assert_eq!(router.system_index("erp.inventory.bins"), Some(0));
        assert_eq!(router.system_index("erp.other"), None);
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let demo = parse(include_str!("../../examples/demo.toml"), &[]).unwrap();
        assert_eq!(demo.systems.len(), 3);
        assert_eq!(
            demo.topic_router().system_index("wms.public.stock"),
            Some(2)
        );
    }

    #[test]
    fn inventory_example_declares_entities_and_targets() {
        let config = parse(include_str!("../../examples/inventory.toml"), &[]).unwrap();
        let product = &config.entities[0];
        assert_eq!(product.name, "product");
        assert_eq!(product.strategy_of("quantity"), Strategy::Sum);
        assert_eq!(product.strategy_of("price"), Strategy::Lww);
        assert_eq!(product.strategy_of("name"), Strategy::Priority);
        assert!(product.field_names().contains("reserved"));
        assert_eq!(config.targets.len(), 3);
    }

    fn with_inventory_edit(from: &str, to: &str) -> String {
        let text = include_str!("../../examples/inventory.toml");
        assert!(
            text.contains(from),
            "the example no longer contains {from:?}"
        );
        parse(&text.replacen(from, to, 1), &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn entity_errors_name_the_key_at_fault() {
        let cases = [
            (
                r#"system = "wms""#,
                r#"system = "warehouse""#,
                "entities[0].sources[2].system",
            ),
            (r#"strategy = "sum""#, r#"strategy = "summ""#, "examples"),
            (
                r#"priority = ["erp", "shop"]"#,
                r#"priority = ["erp", "crm"]"#,
                "entities[0].fields.name.priority[1]",
            ),
            (
                r#"item_sku = "sku""#,
                r#"item_sku = "code""#,
                "entities[0].sources[1].columns",
            ),
            (
                r#"topic = "harmony.demo.erp.product""#,
                r#"topic = "bad topic""#,
                "targets[0].topic",
            ),
            (
                r#"entities = ["product"]"#,
                r#"entities = ["products"]"#,
                "targets[0].entities[0]",
            ),
            (
                r#"ignore = ["updated_at"]"#,
                r#"ignore = ["updatedat"]"#,
                "entities[0].ignore[0]",
            ),
            (
                r#"required = ["name", "price"]"#,
                r#"required = ["name", "reserved"]"#,
                "entities[0].sources[0].required[1]",
            ),
            (
                r#"version_column = "harmony_version""#,
                r#"version_column = "on_hand""#,
                "entities[0].sources[2].version_column",
            ),
            (
                r#"topic = "harmony.demo.shop.product""#,
                "topic = \"harmony.demo.shop.product\"\nwindow = 5000",
                "targets[1].window",
            ),
        ];
        for (from, to, key) in cases {
            let err = with_inventory_edit(from, to);
            if key == "examples" {
                assert!(err.contains("summ"), "{err}");
            } else {
                assert!(err.starts_with(key), "{to}: {err}");
            }
        }
    }

    #[test]
    fn a_fields_type_is_named_when_bad_or_when_a_sources_declared_type_cannot_hold_it() {
        let err = with_inventory_edit(
            "[entities.fields.price]",
            "[entities.fields.price]\n  type = \"decimel\"",
        );
        assert!(err.starts_with("entities[0].fields.price.type"), "{err}");
        assert!(err.contains("`decimel` is not a column type"), "{err}");
        let text = include_str!("../../examples/inventory.toml")
            .replacen(
                "[entities.fields.price]",
                "[entities.fields.price]\n  type = \"decimal\"",
                1,
            )
            .replacen(
                "required = [\"name\", \"price\"]",
                "required = [\"name\", \"price\"]\n  types = { price = \"date\" }",
                1,
            );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("entities[0].sources[0].types.price"),
            "{err}"
        );
        assert!(
            err.contains(
                "`date` holds a date or timestamp, but fields.price.type is `decimal`, a number"
            ),
            "{err}"
        );
        // Text a connector sends for a number (`decimal.handling.mode=string`) reads as one.
        let text = text.replace(
            "types = { price = \"date\" }",
            "types = { price = \"string\" }",
        );
        let config = parse(&text, &[]).unwrap();
        assert_eq!(
            config.entities[0].fields["price"].canonical_type(),
            Some(crate::model::value::ColumnType::VariableScaleDecimal)
        );
    }

    #[test]
    fn bad_topic_pattern_is_named() {
        let err = parse(
            &MINIMAL.replace("^erp[.]inventory[.].*", "^erp[.inventory"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("systems[0].topics[1]"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let text = format!("{MINIMAL}\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n");
        let config = parse(&text, &[]).unwrap();
        let shown = format!("{:?}", config.kafka);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
