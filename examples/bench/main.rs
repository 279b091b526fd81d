//! harmony's benchmark against the practical ceiling, on the local broker (`scripts/bench`).
//!
//! ```text
//! bench run --size quick|full      everything below, one contender after another; a table and JSON
//! bench preload …                  the seeded workload onto the input topics (reused when present)
//! bench plain --config F           ceiling (a): consume → produce, offsets stored after acks
//! bench io --config F              ceiling (b): harmony's Kafka hops without its work
//! ```
//!
//! Each contender drains the same preloaded input with a fresh consumer group. A drain runs
//! from the contender's first output record to its last commit covering the input's end, so
//! start-up (and harmony's state restore) is not counted, the final commit is. CPU time comes
//! from `/proc` for the contender and for the broker, each over the same interval.

mod measure;
mod relay;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value as Json};

use harmony::config::Config;
use measure::{Offsets, Positions, ProcStats};
use workload::{Converter, Generator, Spec};

const TEMPLATE: &str = include_str!("../../benches/workload.toml");
const SEED: u64 = 7;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "harmony's benchmark against the practical ceiling"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:9092", global = true)]
    bootstrap: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure every contender and print the table (and write the JSON).
    Run {
        #[arg(long, value_enum, default_value_t = Size::Quick)]
        size: Size,
        /// Records of the drained workload (overrides the size's).
        #[arg(long)]
        records: Option<u64>,
        /// Converter modes of the input (overrides the size's).
        #[arg(long, value_enum, value_delimiter = ',')]
        converter: Vec<Converter>,
        /// Rounds of the three contenders, each round in the reverse order of the one before.
        #[arg(long)]
        rounds: Option<u32>,
        /// Offered loads of the latency runs, events per second (overrides the size's).
        #[arg(long, value_delimiter = ',')]
        rates: Vec<u64>,
        /// The harmony binary (default: next to this one's directory, as cargo builds both).
        #[arg(long)]
        harmony: Option<PathBuf>,
        /// Where the raw figures go.
        #[arg(long, default_value = "target/bench/results.json")]
        json: PathBuf,
    },
    /// Preload the workload's input topics.
    Preload {
        #[arg(long, value_enum, default_value_t = Converter::Schema)]
        converter: Converter,
        #[arg(long, default_value_t = 20_000)]
        records: u64,
    },
    /// Ceiling (a).
    Plain {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ceiling (b).
    Io {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
enum Size {
    Quick,
    Full,
}

struct Plan {
    records: u64,
    converters: Vec<Converter>,
    rounds: u32,
    rates: Vec<u64>,
    rate_seconds: u64,
    live_records: u64,
}

impl Size {
    fn plan(self) -> Plan {
        match self {
            Size::Quick => Plan {
                records: 50_000,
                converters: vec![Converter::Schema],
                rounds: 1,
                rates: vec![1_000, 5_000],
                rate_seconds: 5,
                live_records: 3_000,
            },
            Size::Full => Plan {
                records: 1_000_000,
                converters: vec![Converter::Schema, Converter::Plain],
                rounds: 2,
                rates: vec![1_000, 10_000, 50_000],
                rate_seconds: 20,
                live_records: 30_000,
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Plain,
    Io,
    Harmony,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Plain => "plain",
            Contender::Io => "io",
            Contender::Harmony => "harmony",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Contender::Plain => "(a) plain consume→produce",
            Contender::Io => "(b) I/O-equivalent pass-through",
            Contender::Harmony => "harmony, full pipeline",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Preload { converter, records } => {
            let prefix = input_prefix(converter, records);
            let events = preload(&cli.bootstrap, &prefix, converter, records)?;
            println!("{prefix}: {events} events");
            Ok(())
        }
        Cmd::Plain { config } => runtime.block_on(ceiling(Contender::Plain, &config)),
        Cmd::Io { config } => runtime.block_on(ceiling(Contender::Io, &config)),
        Cmd::Run {
            size,
            records,
            converter,
            rounds,
            rates,
            harmony,
            json,
        } => {
            let mut plan = size.plan();
            plan.records = records.unwrap_or(plan.records);
            plan.rounds = rounds.unwrap_or(plan.rounds);
            if !converter.is_empty() {
                plan.converters = converter;
            }
            if !rates.is_empty() {
                plan.rates = rates;
            }
            let harmony = match harmony {
                Some(path) => path,
                None => std::env::current_exe()?
                    .parent()
                    .and_then(Path::parent)
                    .map(|dir| dir.join("harmony"))
                    .context("no directory for the harmony binary")?,
            };
            let mut bench = Bench::new(&cli.bootstrap, harmony)?;
            let figures = bench.run(size, &plan)?;
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&figures)?)?;
            println!("\nraw figures: {}", json.display());
            Ok(())
        }
    }
}

/// Named by everything that decides its content, so a preloaded input is reused only when
/// it is the same workload.
fn input_prefix(converter: Converter, records: u64) -> String {
    format!(
        "bench.in.w{}.{}.r{records}.s{SEED}",
        workload::VERSION,
        converter.name()
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The workload's configuration for one run.
fn render(input: &str, run: &str, port: u16) -> String {
    TEMPLATE
        .replace("{input}", input)
        .replace("{run}", run)
        .replace("{port}", &port.to_string())
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

fn create_topics(
    bootstrap: &str,
    topics: &[String],
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    let config = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .clone();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(harmony::runtime::kafka::topics::ensure_topics(
        &config, &names, 3, 1, settings,
    ))?;
    Ok(())
}

fn delete_topics(bootstrap: &str, topics: &[String]) {
    let Ok(admin) = admin(bootstrap) else { return };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let _ = runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()));
}

/// Counts deliveries that failed, so a preload that lost records says so.
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Sender = ThreadedProducer<Failures>;

fn sender(bootstrap: &str, linger_ms: u32) -> anyhow::Result<Sender> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .set("enable.idempotence", "true")
        .create_with_context(Failures::default())?)
}

fn send(producer: &Sender, topic: &str, event: &workload::Event) -> anyhow::Result<()> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(&event.key);
    if let Some(value) = &event.value {
        record = record.payload(value);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

fn input_topics(prefix: &str) -> Vec<String> {
    workload::TABLES.iter().map(|t| t.topic(prefix)).collect()
}

/// Writes the workload onto fresh input topics, or finds it there from an earlier run.
fn preload(
    bootstrap: &str,
    prefix: &str,
    converter: Converter,
    records: u64,
) -> anyhow::Result<u64> {
    let topics = input_topics(prefix);
    // Beside the broker's data, so it lives and goes with what it vouches for (a fresh clone
    // on the same machine reuses the input; `scripts/stack purge` removes both).
    let marker = measure::stack_dir().join("bench-preloaded").join(prefix);
    let offsets = Offsets::new(bootstrap)?;
    let present = measure::total(&offsets.ends(&topics)?);
    if let Some(count) = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        if count == present {
            eprintln!("[bench] reusing {present} preloaded events on {prefix}.*");
            return Ok(present);
        }
    }
    if present > 0 {
        bail!("{prefix}.* hold {present} events of an interrupted preload: delete them (scripts/stack purge) and run again");
    }
    create_topics(bootstrap, &topics, &[])?;
    let started = Instant::now();
    let producer = sender(bootstrap, 50)?;
    let mut generator = Generator::new(
        Spec {
            records,
            seed: SEED,
            converter,
            start_ms: 1_790_000_000_000,
            echoes: true,
        },
        prefix,
    );
    let (mut events, mut bytes) = (0u64, 0u64);
    while let Some(event) = generator.next_event() {
        bytes += event.value.as_ref().map_or(0, Vec::len) as u64 + event.key.len() as u64;
        send(&producer, &topics[event.topic], &event)?;
        events += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {events} preloaded events were not delivered");
    }
    std::fs::create_dir_all(marker.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&marker, events.to_string())?;
    eprintln!(
        "[bench] preloaded {events} events ({:.0} MB, {:.0} bytes each on average) in {:.1} s",
        bytes as f64 / 1e6,
        bytes as f64 / events.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(events)
}

/// The ceilings' topics, named as harmony names its own for the same configuration.
struct Hops {
    inputs: Vec<String>,
    internal: String,
    targets: Vec<String>,
    changelog: String,
    plain_output: String,
}

fn hops(config: &Config) -> Hops {
    let group = &config.kafka.group_id;
    Hops {
        inputs: config
            .systems
            .iter()
            .flat_map(|s| s.topics.iter().cloned())
            .collect(),
        internal: config.output.internal_topic(group),
        targets: config.targets.iter().map(|t| t.topic.clone()).collect(),
        changelog: config.output.state_topic(group),
        plain_output: format!("{group}.plain"),
    }
}

async fn ceiling(which: Contender, path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let hops = hops(&config);
    let commit_ms = config.processing.commit_interval.as_millis() as u64;
    let consumer = harmony::runtime::kafka::consumer_config(&config.kafka, commit_ms);
    let producer = Arc::new(
        harmony::runtime::kafka::producer_config(&config.kafka)
            .create()
            .context("producer")?,
    );
    match which {
        Contender::Plain => {
            relay::relay(
                consumer,
                producer,
                &hops.inputs,
                std::slice::from_ref(&hops.plain_output),
            )
            .await
        }
        _ => {
            let mut resolve = consumer.clone();
            resolve.set("group.id", format!("{}.resolve", config.kafka.group_id));
            let mut outputs = hops.targets.clone();
            outputs.push(hops.changelog.clone());
            let stage1 = relay::relay(
                consumer,
                producer.clone(),
                &hops.inputs,
                std::slice::from_ref(&hops.internal),
            );
            let stage2 = relay::relay(
                resolve,
                producer,
                std::slice::from_ref(&hops.internal),
                &outputs,
            );
            tokio::try_join!(stage1, stage2).map(|_| ())
        }
    }
}

/// The topics a contender writes.
fn written_topics(which: Contender, config: &Config) -> Vec<String> {
    let hops = hops(config);
    match which {
        Contender::Plain => vec![hops.plain_output],
        _ => {
            let mut topics = hops.targets;
            topics.push(hops.internal);
            topics.push(hops.changelog);
            topics.push(config.output.conflicts_topic(&config.kafka.group_id));
            topics
        }
    }
}

/// One drain of the preloaded input by one contender.
#[derive(serde::Serialize, Clone)]
struct Drain {
    contender: &'static str,
    converter: &'static str,
    round: u32,
    events: u64,
    seconds: f64,
    events_per_second: f64,
    cpu_seconds: f64,
    cpu_seconds_per_million: f64,
    broker_cpu_seconds_per_million: f64,
    peak_rss_mib: f64,
    /// What the contender wrote to the broker per input event, as stored (compressed).
    written_bytes_per_event: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    harmony: Option<Json>,
}

/// One run's configuration, written where its logs go: started once to drain, and for harmony
/// once more to restore.
struct Prepared {
    which: Contender,
    run: String,
    path: PathBuf,
    config: Config,
    port: u16,
}

struct Running {
    child: Child,
    prepared: Prepared,
}

impl Running {
    /// Stops the process (SIGTERM, then SIGKILL after 30 s); the run can be started again.
    fn stop(mut self) -> anyhow::Result<Prepared> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(self.prepared);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(self.prepared)
    }
}

struct Bench {
    bootstrap: String,
    harmony: PathBuf,
    offsets: Offsets,
    ticks: f64,
    runs: u32,
    started: u64,
}

impl Bench {
    fn new(bootstrap: &str, harmony: PathBuf) -> anyhow::Result<Self> {
        if !harmony.exists() {
            bail!(
                "{} is missing: cargo build --release first",
                harmony.display()
            );
        }
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            harmony,
            offsets: Offsets::new(bootstrap)?,
            ticks: measure::clock_ticks(),
            runs: 0,
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// A fresh run of `which` on `input`: its own group, outputs and metrics port.
    fn prepare(&mut self, which: Contender, input: &str, tag: &str) -> anyhow::Result<Prepared> {
        self.runs += 1;
        let run = format!("{}-{tag}-{}-{}", which.name(), self.started, self.runs);
        let port = 19_100 + (self.runs % 800) as u16;
        let dir = PathBuf::from("target/bench/runs");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{run}.toml"));
        std::fs::write(&path, render(input, &run, port))?;
        let config = Config::load(&path)?;
        Ok(Prepared {
            which,
            run,
            path,
            config,
            port,
        })
    }

    /// Starts a prepared run; its output goes to `target/bench/runs/<run><log_suffix>.log`.
    fn start(&self, prepared: Prepared, log_suffix: &str) -> anyhow::Result<Running> {
        let which = prepared.which;
        let log = std::fs::File::create(
            PathBuf::from("target/bench/runs").join(format!("{}{log_suffix}.log", prepared.run)),
        )?;
        let mut command = match which {
            Contender::Harmony => {
                let mut c = Command::new(&self.harmony);
                c.args(["--log-format", "json", "run", "--config"])
                    .arg(&prepared.path);
                c
            }
            _ => {
                // The ceilings create the topics harmony would create for itself.
                let hops = hops(&prepared.config);
                create_topics(
                    &self.bootstrap,
                    &[hops.internal.clone(), hops.plain_output.clone()],
                    &[],
                )?;
                create_topics(&self.bootstrap, &hops.targets, &[])?;
                create_topics(
                    &self.bootstrap,
                    std::slice::from_ref(&hops.changelog),
                    &[("cleanup.policy", "compact")],
                )?;
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["--bootstrap", &self.bootstrap, which.name(), "--config"])
                    .arg(&prepared.path);
                c
            }
        };
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", which.name()))?;
        Ok(Running { child, prepared })
    }

    /// The run's topics, deleted once measured: the inputs stay for the next contender.
    fn cleanup(&self, config: &Config) {
        let hops = hops(config);
        let mut topics = vec![
            hops.internal,
            hops.changelog,
            hops.plain_output,
            config.output.topic.clone(),
            config.output.dead_letter_topic.clone(),
            config.output.conflicts_topic(&config.kafka.group_id),
        ];
        topics.extend(hops.targets);
        delete_topics(&self.bootstrap, &topics);
    }

    /// Waits until `running` has committed the end of its input (and, for two stages, of its
    /// internal topic), measuring from its first output.
    fn drain(
        &mut self,
        which: Contender,
        running: &mut Running,
        input_ends: &Positions,
    ) -> anyhow::Result<(f64, ProcStats, ProcStats, f64)> {
        let hops = hops(&running.prepared.config);
        let group = running.prepared.config.kafka.group_id.clone();
        let first_output = match which {
            Contender::Plain => hops.plain_output.clone(),
            _ => hops.internal.clone(),
        };
        let broker = measure::broker_pid().context("no broker pid: is scripts/stack up?")?;
        let pid = running.child.id();
        let events = measure::total(input_ends);
        let deadline = Instant::now() + Duration::from_secs(120 + events / 1_000);
        let mut start: Option<(Instant, ProcStats, ProcStats)> = None;
        loop {
            if let Some(status) = running.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before draining: see target/bench/runs/{}.log",
                    which.name(),
                    running.prepared.run
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not drain its input in time", which.name());
            }
            // A topic the contender has just created may have no leader yet: asked again.
            let produced = self
                .offsets
                .ends(std::slice::from_ref(&first_output))
                .map_or(0, |ends| measure::total(&ends));
            if start.is_none() && produced > 0 {
                start = Some((
                    Instant::now(),
                    ProcStats::read(pid, self.ticks)?,
                    ProcStats::read(broker, self.ticks)?,
                ));
            }
            if start.is_some() && self.offsets.caught_up(&group, input_ends).unwrap_or(false) {
                let done = match which {
                    Contender::Plain => true,
                    _ => self
                        .offsets
                        .ends(std::slice::from_ref(&hops.internal))
                        .and_then(|internal| {
                            self.offsets
                                .caught_up(&format!("{group}.resolve"), &internal)
                        })
                        .unwrap_or(false),
                };
                if done {
                    let (started, process0, broker0) = start.context("started")?;
                    let seconds = started.elapsed().as_secs_f64();
                    let process = ProcStats::read(pid, self.ticks)?;
                    let broker = ProcStats::read(broker, self.ticks)?;
                    let broker_cpu = broker.cpu_seconds - broker0.cpu_seconds;
                    let process = ProcStats {
                        cpu_seconds: process.cpu_seconds - process0.cpu_seconds,
                        rss_bytes: process.rss_bytes.saturating_sub(process0.rss_bytes),
                        peak_rss_bytes: process.peak_rss_bytes,
                    };
                    return Ok((seconds, process, process0, broker_cpu));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn measure_drain(
        &mut self,
        which: Contender,
        converter: Converter,
        round: u32,
        input: &str,
        input_ends: &Positions,
        state: bool,
    ) -> anyhow::Result<Drain> {
        let prepared = self.prepare(which, input, converter.name())?;
        let mut running = self.start(prepared, "")?;
        eprintln!(
            "[bench] {} ({}) draining {input}.*",
            which.name(),
            running.prepared.run
        );
        let result = self.drain(which, &mut running, input_ends);
        let (seconds, process, process_at_start, broker_cpu) = match result {
            Ok(figures) => figures,
            Err(e) => {
                self.cleanup(&running.stop()?.config);
                return Err(e);
            }
        };
        let events = measure::total(input_ends);
        let million = events as f64 / 1e6;
        let written: u64 = written_topics(which, &running.prepared.config)
            .iter()
            .map(|t| measure::topic_bytes(t))
            .sum();
        let harmony_figures = if which == Contender::Harmony && state {
            Some(self.state_figures(running, process, process_at_start)?)
        } else {
            self.cleanup(&running.stop()?.config);
            None
        };
        let drain = Drain {
            contender: which.name(),
            converter: converter.name(),
            round,
            events,
            seconds,
            events_per_second: events as f64 / seconds,
            cpu_seconds: process.cpu_seconds,
            cpu_seconds_per_million: process.cpu_seconds / million,
            broker_cpu_seconds_per_million: broker_cpu / million,
            peak_rss_mib: process.peak_rss_bytes as f64 / (1 << 20) as f64,
            written_bytes_per_event: written as f64 / events.max(1) as f64,
            harmony: harmony_figures,
        };
        eprintln!(
            "[bench]   {:.0} events/s, {:.2} CPU-s per million events (broker {:.2}), peak RSS {:.0} MiB, {:.0} bytes written per event",
            drain.events_per_second,
            drain.cpu_seconds_per_million,
            drain.broker_cpu_seconds_per_million,
            drain.peak_rss_mib,
            drain.written_bytes_per_event,
        );
        Ok(drain)
    }

    /// After a drain: harmony's own count of its state and what its changelog holds; then a
    /// restart of the same worker, which rebuilds every partition's state from the changelog.
    fn state_figures(
        &mut self,
        running: Running,
        process: ProcStats,
        at_start: ProcStats,
    ) -> anyhow::Result<Json> {
        // The state metrics come from a pass every 10 s (the default): one after the drain.
        std::thread::sleep(Duration::from_millis(11_000));
        let metrics = measure::http_get(running.prepared.port, "/metrics").unwrap_or_default();
        let records = measure::metric_sum(&metrics, "harmony_state_records");
        let state_bytes = measure::metric_sum(&metrics, "harmony_state_bytes");
        let outcome = |o: &str| {
            measure::metric_with(
                &metrics,
                "harmony_record_changes_total",
                &format!("outcome=\"{o}\""),
            )
        };
        let changelog_bytes = measure::topic_bytes(&hops(&running.prepared.config).changelog);
        // Restore: the same run again, so the same group and changelog.
        let prepared = running.stop()?;
        let port = prepared.port;
        let restarted = self.start(prepared, "-restore")?;
        let started = Instant::now();
        let mut restore = None;
        while started.elapsed() < Duration::from_secs(600) {
            if let Some(text) = measure::http_get(port, "/metrics") {
                if measure::metric_sum(&text, "harmony_ready") >= 1.0 {
                    restore = Some((
                        started.elapsed().as_secs_f64(),
                        measure::metric_sum(&text, "harmony_state_restore_seconds_sum"),
                        measure::metric_sum(&text, "harmony_state_restore_seconds_count"),
                        measure::metric_sum(&text, "harmony_state_restored_records_total"),
                    ));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.cleanup(&restarted.stop()?.config);
        let (ready_after, restore_seconds, partitions, restored) =
            restore.context("the restarted worker never became ready")?;
        let per_record = |bytes: f64| bytes / records.max(1.0);
        Ok(json!({
            "state_records": records,
            "outcomes": {"applied": outcome("applied"), "echo": outcome("echo"), "duplicate": outcome("duplicate")},
            "conflicts": measure::metric_sum(&metrics, "harmony_conflicts_total"),
            "state_bytes": state_bytes,
            "state_bytes_per_record": per_record(state_bytes),
            "rss_at_first_output_mib": at_start.rss_bytes as f64 / (1 << 20) as f64,
            "rss_growth_bytes_per_record": per_record(process.rss_bytes as f64),
            "changelog_bytes_on_disk": changelog_bytes,
            "changelog_bytes_per_record": per_record(changelog_bytes as f64),
            "restore": {
                "partitions": partitions,
                "records": restored,
                "seconds": restore_seconds,
                "records_per_second": restored / restore_seconds.max(1e-9),
                "ready_after_start_seconds": ready_after,
            },
        }))
    }

    fn run(&mut self, size: Size, plan: &Plan) -> anyhow::Result<Json> {
        let mut drains = Vec::new();
        let mut latency = Vec::new();
        for (turn, &converter) in plan.converters.iter().enumerate() {
            let input = input_prefix(converter, plan.records);
            preload(&self.bootstrap, &input, converter, plan.records)?;
            let input_ends = self.offsets.ends(&input_topics(&input))?;
            for round in 0..plan.rounds {
                // Each round in the other order than the one before, across converters too:
                // whatever drifts during a run (page cache, broker compaction) favours no one.
                let mut order = [Contender::Plain, Contender::Io, Contender::Harmony];
                if (turn as u32 * plan.rounds + round) % 2 == 1 {
                    order.reverse();
                }
                for which in order {
                    // State and restore once per converter: the last round's harmony.
                    let state = round + 1 == plan.rounds;
                    drains.push(self.measure_drain(
                        which,
                        converter,
                        round,
                        &input,
                        &input_ends,
                        state,
                    )?);
                }
            }
        }
        let converter = plan.converters[0];
        for which in [Contender::Io, Contender::Harmony] {
            latency.push(self.latency(which, converter, plan)?);
        }
        let figures = json!({
            "size": size,
            "records": plan.records,
            "machine": machine(),
            "drains": drains,
            "latency": latency,
        });
        print_table(&drains, &latency);
        Ok(figures)
    }

    /// Latency at fixed offered loads: events are sent on a schedule (open loop) and each
    /// output's latency runs from its event's intended send time, so a stall of the sender or
    /// of the contender counts, to the broker's append time of the output.
    fn latency(
        &mut self,
        which: Contender,
        converter: Converter,
        plan: &Plan,
    ) -> anyhow::Result<Json> {
        self.runs += 1;
        let input = format!("bench.live.{}.{}", self.started, self.runs);
        let topics = input_topics(&input);
        create_topics(&self.bootstrap, &topics, &[])?;
        let prepared = self.prepare(which, &input, "live")?;
        // The erp's price changes reach the shop (the warehouse has no price). Its topic exists
        // before the contender starts, stamped by the broker.
        let probed: Vec<String> = hops(&prepared.config)
            .targets
            .into_iter()
            .filter(|t| t.ends_with(".shop"))
            .collect();
        create_topics(
            &self.bootstrap,
            &probed,
            &[("message.timestamp.type", "LogAppendTime")],
        )?;
        let mut running = self.start(prepared, "")?;
        let result = self.offer(which, &mut running, &topics, &probed, converter, plan);
        self.cleanup(&running.stop()?.config);
        delete_topics(&self.bootstrap, &topics);
        result
    }

    fn offer(
        &mut self,
        which: Contender,
        running: &mut Running,
        topics: &[String],
        probed: &[String],
        converter: Converter,
        plan: &Plan,
    ) -> anyhow::Result<Json> {
        let producer = sender(&self.bootstrap, 5)?;
        let mut generator = Generator::new(
            Spec {
                records: plan.live_records,
                seed: SEED + 1,
                converter,
                start_ms: now_ms(),
                // Live updates are spread thin over the key space: deliveries never pile up.
                echoes: false,
            },
            topics[0].rsplit_once(".erp.").map_or("", |(p, _)| p),
        );
        // The key space first, as fast as it goes; the contender drains it before the clock runs.
        for _ in 0..plan.live_records {
            let event = generator.create_only(now_ms());
            send(&producer, &topics[event.topic], &event)?;
        }
        producer.flush(Duration::from_secs(60))?;
        let input_ends = self.offsets.ends(topics)?;
        self.drain(which, running, &input_ends)?;

        let samples: Arc<Mutex<Vec<(i64, f64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("group.id", format!("{}.probe", running.prepared.run))
                .set("enable.auto.commit", "false")
                .create()?;
            let mut list = TopicPartitionList::new();
            for ((topic, partition), end) in self.offsets.ends(probed)? {
                list.add_partition_offset(&topic, partition, Offset::Offset(end))?;
            }
            consumer.assign(&list)?;
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let (Some(appended), Some(intended)) = (
                        message.timestamp().to_millis(),
                        message.payload().and_then(first_ts_ms),
                    ) else {
                        continue;
                    };
                    if let Ok(mut s) = samples.lock() {
                        s.push((intended, (appended - intended) as f64));
                    }
                }
            })
        };

        let mut phases = Vec::new();
        for &rate in &plan.rates {
            let total = rate * plan.rate_seconds;
            let start = now_ms() + 200;
            let started = Instant::now() + Duration::from_millis(200);
            let mut sent = 0u64;
            for i in 0..total {
                let due = Duration::from_micros(i * 1_000_000 / rate);
                let elapsed = started.saturating_duration_since(Instant::now());
                if elapsed.is_zero() {
                    let behind = Instant::now().duration_since(started);
                    if due > behind {
                        std::thread::sleep(due - behind);
                    }
                } else {
                    std::thread::sleep(elapsed + due);
                }
                let intended = start + due.as_millis() as i64;
                let event = generator.live_update(intended);
                send(&producer, &topics[event.topic], &event)?;
                sent += 1;
            }
            let send_seconds = started.elapsed().as_secs_f64();
            let end = start + (plan.rate_seconds * 1000) as i64;
            let expected = sent as usize;
            let waited = Instant::now();
            loop {
                let have = samples
                    .lock()
                    .map(|s| s.iter().filter(|(t, _)| *t >= start && *t < end).count())
                    .unwrap_or(0);
                if have >= expected || waited.elapsed() > Duration::from_secs(30) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // The first second warms up: connections, batches, caches.
            let mut latencies: Vec<f64> = samples
                .lock()
                .map(|s| {
                    s.iter()
                        .filter(|(t, _)| *t >= start + 1000 && *t < end)
                        .map(|(_, l)| *l)
                        .collect()
                })
                .unwrap_or_default();
            let received = samples
                .lock()
                .map(|s| s.iter().filter(|(t, _)| *t >= start && *t < end).count())
                .unwrap_or(0);
            latencies.sort_by(f64::total_cmp);
            let p = |q: f64| measure::percentile(&latencies, q);
            eprintln!(
                "[bench] {} at {rate} events/s: p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms, max {:.0} ms ({received} of {expected} outputs)",
                which.name(), p(50.0), p(99.0), p(99.9), p(100.0)
            );
            phases.push(json!({
                "offered_per_second": rate,
                "sent_per_second": sent as f64 / send_seconds,
                "outputs_expected": expected,
                "outputs_received": received,
                "p50_ms": p(50.0),
                "p99_ms": p(99.0),
                "p999_ms": p(99.9),
                "max_ms": p(100.0),
            }));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = probe.join();
        Ok(json!({"contender": which.name(), "converter": converter.name(), "phases": phases}))
    }
}

/// The first `"ts_ms":` number of a record: the source commit time in harmony's output (its
/// `source` block and envelope carry the same), in the pass-through's copy of the input.
/// Found in the bytes rather than parsed, so the probe does not compete for the CPU.
fn first_ts_ms(bytes: &[u8]) -> Option<i64> {
    const NEEDLE: &[u8] = b"\"ts_ms\":";
    let at = bytes.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn machine() -> Json {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "model": model})
}

fn print_table(drains: &[Drain], latency: &[Json]) {
    println!();
    let mut converters: Vec<&str> = drains.iter().map(|d| d.converter).collect();
    converters.dedup();
    for converter in converters {
        let of = |name: &str| -> Vec<&Drain> {
            drains
                .iter()
                .filter(|d| d.converter == converter && d.contender == name)
                .collect()
        };
        let mean = |rows: &[&Drain], f: fn(&Drain) -> f64| {
            rows.iter().map(|d| f(d)).sum::<f64>() / rows.len().max(1) as f64
        };
        let rate = |name: &str| mean(&of(name), |d| d.events_per_second);
        let (a, b) = (rate("plain"), rate("io"));
        let events = drains.first().map_or(0, |d| d.events);
        println!(
            "input: {converter} converter, {events} events; mean of {} round(s)",
            of("harmony").len()
        );
        println!(
            "{:<34} {:>11} {:>8} {:>8} {:>12} {:>14} {:>10} {:>12}",
            "",
            "events/s",
            "÷ (a)",
            "÷ (b)",
            "CPU-s/M ev",
            "broker CPU-s/M",
            "peak RSS",
            "written B/ev"
        );
        for which in [Contender::Plain, Contender::Io, Contender::Harmony] {
            let rows = of(which.name());
            let r = mean(&rows, |d| d.events_per_second);
            println!(
                "{:<34} {:>11.0} {:>8.2} {:>8.2} {:>12.2} {:>14.2} {:>6.0} MiB {:>12.0}",
                which.label(),
                r,
                r / a,
                r / b,
                mean(&rows, |d| d.cpu_seconds_per_million),
                mean(&rows, |d| d.broker_cpu_seconds_per_million),
                mean(&rows, |d| d.peak_rss_mib),
                mean(&rows, |d| d.written_bytes_per_event),
            );
        }
        if let Some(h) = of("harmony").last().and_then(|d| d.harmony.as_ref()) {
            println!(
                "harmony state: {} records, {:.0} B/record own metadata, {:.0} B/record RSS growth, changelog {:.0} B/record on disk; restore {:.0} records/s ({:.0} records in {:.3} s)",
                h["state_records"], h["state_bytes_per_record"].as_f64().unwrap_or(0.0),
                h["rss_growth_bytes_per_record"].as_f64().unwrap_or(0.0),
                h["changelog_bytes_per_record"].as_f64().unwrap_or(0.0),
                h["restore"]["records_per_second"].as_f64().unwrap_or(0.0),
                h["restore"]["records"].as_f64().unwrap_or(0.0),
                h["restore"]["seconds"].as_f64().unwrap_or(0.0),
            );
        }
        println!();
    }
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "latency (intended send → appended)",
        "offered/s",
        "sent/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "outputs"
    );
    for run in latency {
        for phase in run["phases"].as_array().into_iter().flatten() {
            let f = |k: &str| phase[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<34} {:>10.0} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>4}/{:<4}",
                run["contender"].as_str().unwrap_or("?"),
                f("offered_per_second"),
                f("sent_per_second"),
                f("p50_ms"),
                f("p99_ms"),
                f("p999_ms"),
                phase["outputs_received"],
                phase["outputs_expected"],
            );
        }
    }
}
