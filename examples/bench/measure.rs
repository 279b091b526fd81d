//! What the benchmark reads from outside the processes it measures: their CPU time and memory
//! from `/proc`, offsets and watermarks from the broker, figures from harmony's `/metrics`,
//! topic sizes from the broker's log directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// CPU seconds (user + system) a process used so far, and its resident memory now and at peak.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: 100 on every Linux this runs on, but
/// asked for rather than assumed.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl ProcStats {
    pub fn read(pid: u32, ticks: f64) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let cpu_seconds = (tick(11) + tick(12)) / ticks;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(Self {
            cpu_seconds,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}

/// The local stack's directory (`scripts/stack`): the broker's pid file and log directory.
pub fn stack_dir() -> PathBuf {
    std::env::var_os("HARMONY_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/harmony-stack"))
}

pub fn broker_pid() -> Option<u32> {
    std::fs::read_to_string(stack_dir().join("kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bytes the broker holds on disk for `topic` (every partition's segments and indexes).
pub fn topic_bytes(topic: &str) -> u64 {
    let dir = stack_dir().join("kafka");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(name, p)| name == topic && p.parse::<u32>().is_ok())
        })
        .map(|e| dir_bytes(&e.path()))
        .sum()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Offsets as the broker sees them.
pub struct Offsets {
    bootstrap: String,
    client: BaseConsumer,
    groups: HashMap<String, BaseConsumer>,
}

pub type Positions = HashMap<(String, i32), i64>;

impl Offsets {
    pub fn new(bootstrap: &str) -> anyhow::Result<Self> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .context("metadata client")?;
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            client,
            groups: HashMap::new(),
        })
    }

    /// The end offset of every partition of `topics`; a topic that does not exist yet has none.
    pub fn ends(&self, topics: &[String]) -> anyhow::Result<Positions> {
        let mut ends = HashMap::new();
        for topic in topics {
            let metadata = self.client.fetch_metadata(Some(topic), TIMEOUT)?;
            let Some(t) = metadata.topics().first().filter(|t| t.error().is_none()) else {
                continue;
            };
            for p in t.partitions() {
                let (_, high) = self.client.fetch_watermarks(topic, p.id(), TIMEOUT)?;
                ends.insert((topic.clone(), p.id()), high);
            }
        }
        Ok(ends)
    }

    /// What `group` committed for each of `positions`' partitions (absent: nothing committed).
    pub fn committed(&mut self, group: &str, positions: &Positions) -> anyhow::Result<Positions> {
        if !self.groups.contains_key(group) {
            // A consumer that never subscribes does not join the group; it only asks.
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("group.id", group)
                .create()
                .context("offset client")?;
            self.groups.insert(group.to_owned(), consumer);
        }
        let consumer = &self.groups[group];
        let mut list = TopicPartitionList::new();
        for (topic, partition) in positions.keys() {
            list.add_partition(topic, *partition);
        }
        let committed = consumer.committed_offsets(list, TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Whether `group` committed the end of every partition in `ends`.
    pub fn caught_up(&mut self, group: &str, ends: &Positions) -> anyhow::Result<bool> {
        if ends.is_empty() {
            return Ok(false);
        }
        let committed = self.committed(group, ends)?;
        Ok(ends
            .iter()
            .all(|(tp, end)| *end == 0 || committed.get(tp).is_some_and(|c| c >= end)))
    }
}

pub fn total(positions: &Positions) -> u64 {
    positions.values().map(|v| (*v).max(0) as u64).sum()
}

/// The sum of every series of `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The series of `name` whose labels contain `label` (`outcome="applied"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A plain HTTP/1.1 GET on loopback: the body, or `None` while nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Percentile `p` (0–100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
