//! What the end-to-end tests stand on: the local stack of `scripts/stack` (real Kafka, Kafka
//! Connect with Debezium, PostgreSQL), a harmony process per test with its own consumer group
//! and output topics, and readers of those topics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP")
        .unwrap_or_else(|_| format!("127.0.0.1:{}", env_or("KAFKA_PORT", "9092")))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Whether the stack is up. Without it, a test fails when `HARMONY_E2E=1` (CI, `scripts/test`)
/// and is skipped with a message otherwise, so `cargo test` alone still runs the unit tests.
pub fn stack_available(test: &str) -> bool {
    let kafka = TcpStream::connect_timeout(
        &bootstrap().parse().expect("KAFKA_BOOTSTRAP is host:port"),
        Duration::from_secs(2),
    )
    .is_ok();
    if kafka {
        return true;
    }
    if std::env::var("HARMONY_E2E").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: the local stack is not reachable at {}; start it with scripts/stack up",
            bootstrap()
        );
    }
    eprintln!(
        "{test}: SKIPPED, no Kafka at {} (scripts/stack up, or set HARMONY_E2E=1 to fail instead)",
        bootstrap()
    );
    false
}

/// Whether MariaDB (`scripts/stack up --with-mariadb`) is up. Required when `HARMONY_E2E=1`
/// (`scripts/test` starts it); otherwise a test leaves its MariaDB part out, saying so.
pub fn mariadb_available(test: &str) -> bool {
    let port = env_or("MARIADB_PORT", "53306");
    let up = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}")
            .parse()
            .expect("MARIADB_PORT is a port"),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up && std::env::var("HARMONY_E2E").is_ok_and(|v| v == "1") {
        panic!("{test}: MariaDB is not reachable on 127.0.0.1:{port}; start it with scripts/stack up --with-mariadb");
    }
    if !up {
        eprintln!("{test}: without its MariaDB part, no MariaDB on 127.0.0.1:{port} (scripts/stack up --with-mariadb)");
    }
    up
}

/// Runs `sql` on the stack's MariaDB as `harmony`; the rows tab-separated, one per line.
pub fn mariadb(sql: &str) -> Result<String> {
    let out = std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &env_or("MARIADB_PORT", "53306"),
            "-u",
            "harmony",
            &format!("-p{}", env_or("PG_PASSWORD", "harmony")),
            "-N",
            "-B",
            "-e",
            sql,
        ])
        .output()
        .context("running the mariadb client")?;
    if !out.status.success() {
        bail!("mariadb: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The opening of a test on the stack: its worker's options under a group of its own (named
/// from `prefix`), or `None` when the test is skipped for want of the stack (see
/// [`stack_available`]). The closing is the fixtures' own: a [`Harmony`] stops its process and
/// [`Connectors`] remove what they registered when dropped.
pub fn on_stack(prefix: &str) -> Option<HarmonyOptions> {
    stack_available(prefix).then(|| HarmonyOptions::stack(unique(prefix)))
}

/// A name no other test run has used: tests share the broker and the databases.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        nanos % 10_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs SQL against one of the stack's databases as the `harmony` user.
pub fn psql(database: &str, sql: &str) -> Result<String> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &env_or("PG_PORT", "55432"),
            "-U",
            "harmony",
            "-d",
            database,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", env_or("PG_PASSWORD", "harmony"))
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!(
            "psql on {database} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub fn create_topic(name: &str, partitions: i32) -> Result<()> {
    create_topic_with(name, partitions, &[])
}

/// Deletes `name` and waits until the broker's metadata no longer has it.
pub fn delete_topic(name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for result in runtime.block_on(admin.delete_topics(&[name], &options))? {
        result.map_err(|(topic, code)| anyhow::anyhow!("deleting {topic}: {code}"))?;
    }
    wait_until(Duration::from_secs(30), "the topic gone", || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .first()
            .is_none_or(|t| t.error().is_some() || t.partitions().is_empty()))
    })
}

/// Creates a topic with topic-level settings (e.g. `max.message.bytes`).
pub fn create_topic_with(name: &str, partitions: i32, settings: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let results = runtime.block_on(admin.create_topics(
        &[topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// A raw record to produce: key and value bytes, either absent.
pub type RawRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Produces raw records to a topic and waits for every acknowledgement.
pub fn produce_raw(topic: &str, records: &[RawRecord<'_>]) -> Result<()> {
    produce_raw_with(topic, records, &[])
}

/// Like [`produce_raw`], with extra producer settings (e.g. a larger `message.max.bytes`).
pub fn produce_raw_with(
    topic: &str,
    records: &[RawRecord<'_>],
    settings: &[(&str, &str)],
) -> Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    for (key, value) in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// One record read back from an output or dead-letter topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    /// The key as written (an Avro key is not text).
    pub key_bytes: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    /// Whether the record's key names `value` as a JSON string (a product's sku, say).
    pub fn keyed_by(&self, value: &str) -> bool {
        self.key
            .as_deref()
            .is_some_and(|k| k.contains(&format!("\"{value}\"")))
    }

    pub fn json(&self) -> serde_json::Value {
        self.value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Reads a topic from the beginning of every partition, without a consumer group.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub records: Vec<Record>,
}

impl TopicReader {
    pub fn new(topic: &str) -> Result<Self> {
        Self::new_at(&bootstrap(), topic)
    }

    /// A reader that also sees records of open and aborted transactions.
    pub fn new_uncommitted(topic: &str) -> Result<Self> {
        Self::with_isolation(&bootstrap(), topic, "read_uncommitted")
    }

    /// A reader of a topic on another cluster (e.g. librdkafka's mock cluster).
    pub fn new_at(bootstrap: &str, topic: &str) -> Result<Self> {
        Self::with_isolation(bootstrap, topic, "read_committed")
    }

    fn with_isolation(bootstrap: &str, topic: &str, isolation: &str) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("isolation.level", isolation)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            bail!("topic {topic} does not exist");
        }
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            records: Vec::new(),
        })
    }

    /// Reads until `done(records)` holds or `timeout` passes; returns whether it held.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.records) {
                return Ok(true);
            }
            // Drain whatever is there before asking `done` again: predicates that scan every
            // record would otherwise make a long read quadratic.
            let mut wait = Duration::from_millis(200);
            while let Some(message) = self.consumer.poll(wait) {
                wait = Duration::ZERO;
                let message = match message {
                    // The broker going away (a fault test's doing) is reported, then recovered.
                    Err(rdkafka::error::KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                        | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                    )) => continue,
                    other => other?,
                };
                let mut headers = BTreeMap::new();
                if let Some(hs) = message.headers() {
                    for h in hs.iter() {
                        headers.insert(
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                self.records.push(Record {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    key_bytes: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                    partition: message.partition(),
                    offset: message.offset(),
                });
                if self.records.len().is_multiple_of(10_000) {
                    break;
                }
            }
        }
        Ok(done(&self.records))
    }

    /// Reads whatever arrives within `quiet`, for counting after the fact.
    pub fn read_for(&mut self, quiet: Duration) -> Result<()> {
        self.read_until(quiet, |_| false).map(|_| ())
    }
}

/// A harmony worker process with its own config, group and topics.
pub struct Harmony {
    child: Option<Child>,
    /// Given to `harmony run` after `--config` (e.g. `--rebuild-state`).
    pub args: Vec<String>,
    /// `HARMONY_INSTANCE_ID`: the worker's name, kept across its restarts (exactly-once mode
    /// names its transactional ids with it).
    pub instance: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub output_topic: String,
    pub dead_letter_topic: String,
}

pub struct HarmonyOptions {
    pub group_id: String,
    pub systems: Vec<(String, Vec<String>)>,
    pub commit_interval: &'static str,
    /// `processing.guarantee = "exactly_once"`.
    pub exactly_once: bool,
    /// Appended to the generated config file (whole TOML tables).
    pub extra_toml: String,
    /// Lines added to the generated `[processing]` table.
    pub extra_processing: String,
    /// Lines added to a system's `[[systems]]` table: (system, lines).
    pub system_settings: Vec<(String, String)>,
}

impl HarmonyOptions {
    /// The three systems of the local stack.
    pub fn stack(group_id: String) -> Self {
        Self {
            group_id,
            systems: vec![
                ("erp".into(), vec!["erp.public.products".into()]),
                ("shop".into(), vec!["shop.public.items".into()]),
                ("wms".into(), vec!["^wms[.]public[.].*".into()]),
            ],
            commit_interval: "1s",
            exactly_once: false,
            extra_toml: String::new(),
            extra_processing: String::new(),
            system_settings: Vec::new(),
        }
    }
}

impl Harmony {
    pub fn start(options: &HarmonyOptions) -> Result<Self> {
        let name = options.group_id.clone();
        let dir = std::env::temp_dir().join("harmony-tests");
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        let output_topic = format!("{name}.out");
        let dead_letter_topic = format!("{name}.dlq");
        let mut toml = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n\n[output]\ntopic = \"{output_topic}\"\ndead_letter_topic = \"{dead_letter_topic}\"\n\n[http]\naddress = \"127.0.0.1:0\"\n\n[processing]\ncommit_interval = \"{}\"\nshutdown_timeout = \"20s\"\nstate_metrics_interval = \"1s\"\nguarantee = \"{}\"\n{}\n[kafka.consumer]\n# A SIGKILLed member blocks the group until its session expires; the broker's minimum.\n\"session.timeout.ms\" = \"6000\"\n",
            bootstrap(),
            options.group_id,
            options.commit_interval,
            if options.exactly_once {
                "exactly_once"
            } else {
                "at_least_once"
            },
            options.extra_processing,
        );
        for (system, topics) in &options.systems {
            toml.push_str(&format!(
                "\n[[systems]]\nname = \"{system}\"\ntopics = {topics:?}\n"
            ));
            for (_, lines) in options.system_settings.iter().filter(|(s, _)| s == system) {
                toml.push_str(lines);
                toml.push('\n');
            }
        }
        toml.push('\n');
        toml.push_str(&options.extra_toml);
        std::fs::write(&config_path, toml)?;
        let mut harmony = Self {
            child: None,
            args: Vec::new(),
            instance: "w0".into(),
            config_path,
            log_path,
            output_topic,
            dead_letter_topic,
        };
        harmony.spawn()?;
        Ok(harmony)
    }

    /// A worker on a config file written by the test (e.g. for the mock cluster).
    pub fn on_config(config_path: PathBuf, name: &str) -> Result<Self> {
        let mut worker = Self {
            child: None,
            args: Vec::new(),
            instance: name.to_owned(),
            log_path: config_path.with_extension(format!("{name}.log")),
            config_path,
            output_topic: String::new(),
            dead_letter_topic: String::new(),
        };
        let _ = std::fs::remove_file(&worker.log_path);
        worker.spawn()?;
        Ok(worker)
    }

    /// Whether the process has exited (and with what) without being asked to.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts (again) the process on the same config, appending to the same log.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_harmony"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(&self.args)
            .env("HARMONY_LOG_FORMAT", "json")
            .env("HARMONY_LOG", "info,harmony=debug")
            .env("HARMONY_INSTANCE_ID", &self.instance)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting harmony")?;
        self.child = Some(child);
        // A worker started just after a broker restart waits, rightly, until the group
        // coordinator has loaded its offsets; on a broker holding thousands of partitions that
        // took more than 30 s here (the chaos test's kill after its broker restart).
        self.wait_for_log("subscribed", Duration::from_secs(90))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Another worker of the same group, on the same config, with a log of its own.
    pub fn another_worker(&self, name: &str) -> Result<Self> {
        let mut worker = Self {
            child: None,
            args: Vec::new(),
            instance: name.to_owned(),
            config_path: self.config_path.clone(),
            log_path: self.log_path.with_extension(format!("{name}.log")),
            output_topic: self.output_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
        };
        worker.spawn()?;
        Ok(worker)
    }

    /// A counter or gauge of this worker's `/metrics`, summed over its labelled series; 0 when
    /// absent.
    /// The values of `label` on the series of `name` it exports now, sorted.
    pub fn metric_labels(&self, name: &str, label: &str) -> Vec<String> {
        let body = self
            .http_address()
            .and_then(|a| http_get(&a, "/metrics").ok())
            .map(|(_, body)| body)
            .unwrap_or_default();
        let needle = format!("{label}=\"");
        let mut values: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
            .filter_map(|l| {
                let start = l.find(&needle)? + needle.len();
                Some(l[start..].split('"').next()?.to_owned())
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.http_address()
            .and_then(|a| http_get(&a, "/metrics").ok())
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| {
                        l.strip_prefix(name)
                            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Waits until the current process has logged `message` (counted from its start).
    fn wait_for_log(&mut self, message: &str, timeout: Duration) -> Result<()> {
        let starts = self.log().matches("harmony starting").count();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let log = self.log();
            let current = log
                .split("harmony starting")
                .nth(starts + 1)
                .unwrap_or_default();
            if current.contains(message) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("harmony did not log `{message}`; its log:\n{}", self.log())
    }

    /// The address of the HTTP endpoints the current process bound.
    pub fn http_address(&self) -> Option<String> {
        self.log()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "serving /metrics, /health, /ready")
            .and_then(|l| l["address"].as_str().map(str::to_owned))
    }

    pub fn kill_hard(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then the exit status, which must come within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("harmony is not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!(
                    "harmony did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Harmony {
    fn drop(&mut self) {
        let _ = self.kill_hard();
    }
}

/// A plain HTTP GET on loopback: status code and body.
pub fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// For each partition of `topic`: the group's committed offset and the partition's end.
pub fn committed_and_end(group: &str, topic: &str) -> Result<Vec<(i32, Offset, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    (0..partitions)
        .map(|p| {
            let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            let offset = committed
                .find_partition(topic, p)
                .map_or(Offset::Invalid, |e| e.offset());
            Ok((p, offset, end))
        })
        .collect()
}

/// Kafka Connect's REST API on the stack: status code and body.
pub fn connect_rest(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{}{path}", env_or("CONNECT_PORT", "8083"));
    rest(method, &url, "application/json", body)
}

/// The schema registry's Confluent-compatible API on the stack (`scripts/stack up
/// --with-registry`): status code and body.
pub fn registry_rest(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let url = format!("{}{path}", registry_url());
    rest(method, &url, "application/vnd.schemaregistry.v1+json", body)
}

/// The base URL of the stack's schema registry API.
pub fn registry_url() -> String {
    format!(
        "http://127.0.0.1:{}/apis/ccompat/v7",
        env_or("REGISTRY_PORT", "8081")
    )
}

/// Connector settings that make Debezium write Avro in Confluent's wire format through the
/// stack's registry (Apicurio's converter: `as-confluent`, ids of content, no id headers).
pub fn avro_converter_settings() -> Vec<(String, String)> {
    let url = format!(
        "http://127.0.0.1:{}/apis/registry/v2",
        env_or("REGISTRY_PORT", "8081")
    );
    let mut settings = Vec::new();
    for side in ["key", "value"] {
        for (key, value) in [
            ("", "io.apicurio.registry.utils.converter.AvroConverter"),
            (".apicurio.registry.url", url.as_str()),
            (".apicurio.registry.auto-register", "true"),
            (".apicurio.registry.find-latest", "true"),
            (".apicurio.registry.as-confluent", "true"),
            (".apicurio.registry.use-id", "contentId"),
            (".apicurio.registry.headers.enabled", "false"),
        ] {
            settings.push((format!("{side}.converter{key}"), value.to_owned()));
        }
    }
    settings
}

/// Whether the schema registry (`scripts/stack up --with-registry`) is up. Required when
/// `HARMONY_E2E=1` (`scripts/test` starts it); otherwise the test is skipped, saying so.
pub fn registry_available(test: &str) -> bool {
    let up = registry_rest("GET", "/subjects", None).is_ok_and(|(code, _)| code == 200);
    if !up && std::env::var("HARMONY_E2E").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: no schema registry at {}; start it with scripts/stack up --with-registry",
            registry_url()
        );
    }
    if !up {
        eprintln!("{test}: SKIPPED, no schema registry at {}", registry_url());
    }
    up
}

fn rest(
    method: &str,
    url: &str,
    content_type: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "-H",
        &format!("Content-Type: {content_type}"),
    ]);
    if let Some(b) = body {
        cmd.args(["--data-binary", &b.to_string()]);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// The config of a connector of `deploy/connectors/`, its placeholders filled in for the
/// stack as `scripts/stack` fills them.
pub fn deployed_connector(file: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = format!(
        "{}/deploy/connectors/{file}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path)
        .with_context(|| path.clone())?
        .replace("${PG_HOST}", "127.0.0.1")
        .replace("${PG_PORT}", &env_or("PG_PORT", "55432"))
        .replace("${PG_PASSWORD}", &env_or("PG_PASSWORD", "harmony"))
        .replace("${REPLICATION_FACTOR}", "1");
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    match doc.get("config") {
        Some(serde_json::Value::Object(config)) => Ok(config.clone()),
        _ => bail!("{path} has no config object"),
    }
}

/// Polls `ok` every half second until it holds or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Kafka Connect connectors, replication slots and publications a test registers, removed when
/// the test ends however it ends.
#[derive(Default)]
pub struct Connectors {
    connectors: Vec<String>,
    /// (database, slot and publication name)
    slots: Vec<(&'static str, String)>,
}

impl Connectors {
    pub fn register(
        &mut self,
        name: &str,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        self.connectors.push(name.to_owned());
        let (code, body) = connect_rest(
            "PUT",
            &format!("/connectors/{name}/config"),
            Some(&serde_json::Value::Object(config)),
        )?;
        if code >= 300 {
            bail!("registering {name}: {code} {body}");
        }
        Ok(())
    }

    /// Streams each `(system, table)` of the stack's databases into Kafka with a Debezium
    /// connector of this test's own (`<run>_<system>`, topics `<run>_<system>.public.<table>`),
    /// changes only (`snapshot.mode=no_data`), from a slot of its own; returns once every slot
    /// streams, so that no later change is missed.
    pub fn stream_tables(&mut self, run: &str, tables: &[(&'static str, &str)]) -> Result<()> {
        self.stream_tables_with(run, tables, &[])
    }

    /// [`Connectors::stream_tables`] with `settings` over the deployed ones (e.g. schemaless
    /// converters).
    pub fn stream_tables_with(
        &mut self,
        run: &str,
        tables: &[(&'static str, &str)],
        settings: &[(&str, &str)],
    ) -> Result<()> {
        let mut sources = Vec::new();
        for (system, table) in tables {
            let name = format!("{run}_{system}");
            let mut config = deployed_connector(&format!("{system}-postgres"))?;
            for (key, value) in [
                ("topic.prefix", name.as_str()),
                ("table.include.list", &format!("public.{table}")),
                ("slot.name", &name),
                ("publication.name", &name),
                ("snapshot.mode", "no_data"),
                ("heartbeat.interval.ms", "1000"),
            ]
            .into_iter()
            .chain(settings.iter().copied())
            {
                config.insert(key.into(), serde_json::json!(value));
            }
            self.slots.push((system, name.clone()));
            self.register(&name, config)?;
            sources.push(name);
        }
        self.wait_state(&sources, "RUNNING")?;
        for (db, slot) in &self.slots {
            wait_until(
                Duration::from_secs(60),
                "replication slot streaming",
                || {
                    Ok(psql(
                    db,
                    &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"),
                )? == "1")
                },
            )?;
        }
        Ok(())
    }

    fn state(name: &str) -> String {
        connect_rest("GET", &format!("/connectors/{name}/status"), None)
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .map_or_else(String::new, |s| {
                let tasks: Vec<&str> = s["tasks"]
                    .as_array()
                    .map(|ts| ts.iter().filter_map(|t| t["state"].as_str()).collect())
                    .unwrap_or_default();
                format!(
                    "{}/{}",
                    s["connector"]["state"].as_str().unwrap_or("?"),
                    tasks.join(",")
                )
            })
    }

    pub fn wait_state(&self, names: &[String], wanted: &str) -> Result<()> {
        wait_until(
            Duration::from_secs(90),
            &format!("{names:?} {wanted}"),
            || {
                for name in names {
                    let state = Self::state(name);
                    if state.contains("FAILED") {
                        let (_, body) =
                            connect_rest("GET", &format!("/connectors/{name}/status"), None)?;
                        bail!("connector {name} failed: {body}");
                    }
                    if state != format!("{wanted}/{wanted}") {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
    }

    /// Deletes connector `name` (its offsets stay in Connect, under its name) and waits until
    /// its replication slot is released.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let (code, body) = connect_rest("DELETE", &format!("/connectors/{name}"), None)?;
        if code >= 300 {
            bail!("deleting {name}: {code} {body}");
        }
        self.connectors.retain(|c| c != name);
        for (db, slot) in &self.slots {
            if slot == name {
                wait_until(Duration::from_secs(30), "slot released", || {
                    Ok(psql(
                        db,
                        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"),
                    )? == "0")
                })?;
            }
        }
        Ok(())
    }

    /// Waits until the source connector `<run>_<system>` has captured every change its database
    /// had written when called: its slot confirms that position, which Debezium does once the
    /// changes up to it are in Kafka.
    pub fn wait_captured(&self, run: &str, system: &str) -> Result<()> {
        let slot = format!("{run}_{system}");
        let written = psql(system, "SELECT pg_current_wal_lsn()")?;
        wait_until(Duration::from_secs(120), "changes captured", || {
            Ok(psql(
                system,
                &format!("SELECT confirmed_flush_lsn >= '{written}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            )? == "t")
        })
    }

    /// The source connector `<run>_<system>` of [`Connectors::stream_tables`] replaced by one
    /// of another name (so without offsets) on the same slot, publication and topics, which
    /// snapshots `table` again (`snapshot.mode=initial`) before it streams: what a reset of the
    /// connector's offsets does. Returns once the new one runs.
    pub fn resnapshot(&mut self, run: &str, system: &'static str, table: &str) -> Result<()> {
        self.remove(&format!("{run}_{system}"))?;
        self.resnapshot_removed(run, system, table)
    }

    /// [`Connectors::resnapshot`] after the old connector was removed (changes made meanwhile
    /// reach Kafka only through the new snapshot).
    pub fn resnapshot_removed(
        &mut self,
        run: &str,
        system: &'static str,
        table: &str,
    ) -> Result<()> {
        let source = format!("{run}_{system}");
        let mut config = deployed_connector(&format!("{system}-postgres"))?;
        for (key, value) in [
            ("topic.prefix", source.as_str()),
            ("table.include.list", &format!("public.{table}")),
            ("slot.name", &source),
            ("publication.name", &source),
            ("snapshot.mode", "initial"),
            ("heartbeat.interval.ms", "1000"),
        ] {
            config.insert(key.into(), serde_json::json!(value));
        }
        let again = format!("{source}_again");
        self.register(&again, config)?;
        self.wait_state(std::slice::from_ref(&again), "RUNNING")
    }

    pub fn set_paused(&self, names: &[String], paused: bool) -> Result<()> {
        let verb = if paused { "pause" } else { "resume" };
        for name in names {
            connect_rest("PUT", &format!("/connectors/{name}/{verb}"), None)?;
        }
        self.wait_state(names, if paused { "PAUSED" } else { "RUNNING" })
    }
}

impl Drop for Connectors {
    fn drop(&mut self) {
        for name in &self.connectors {
            let _ = connect_rest("DELETE", &format!("/connectors/{name}"), None);
        }
        // A slot can be dropped only once its connector has let go of it; a kept slot would
        // hold back WAL for good.
        for (db, slot) in &self.slots {
            let _ = wait_until(Duration::from_secs(30), "slot released", || {
                Ok(psql(
                    db,
                    &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"),
                )? == "0")
            });
            let _ = psql(
                db,
                &format!("SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            );
            let _ = psql(db, &format!("DROP PUBLICATION IF EXISTS {slot}"));
        }
    }
}

/// `[[targets]]` tables: each system receives the `product` entity on `<group>.<system>.product`,
/// with `extra` lines (e.g. `format = "json_schemaless"`) in each.
pub fn product_targets(group: &str, systems: &[&str], extra: &str) -> String {
    systems
        .iter()
        .map(|s| {
            format!("\n[[targets]]\nsystem = \"{s}\"\nentities = [\"product\"]\ntopic = \"{group}.{s}.product\"\n{extra}")
        })
        .collect()
}

/// Runs `program` in `dir` with `stdin`: whether it succeeded, and its stdout and stderr.
pub fn run_tool(program: &str, args: &[&str], dir: &str, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
