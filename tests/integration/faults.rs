//! Fault injection with librdkafka's in-process mock cluster: failures a real broker rarely
//! produces on demand. The harmony process connects to the mock over loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::{unique, TopicReader};

fn valid(n: usize) -> String {
    format!(
        r#"{{"before":null,"after":{{"n":{n}}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"t","ts_ms":1700000000000,"sequence":"[null,\"{}\"]"}},"op":"c"}}"#,
        100 + n
    )
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    offsets.find_partition(topic, 0).unwrap().offset()
}

fn config(bootstrap: &str, group: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[kafka.producer]
# Fail fast instead of retrying for five minutes.
"message.timeout.ms" = "3000"
[kafka.consumer]
# The mock's coordinator holds a stopped member's partitions until its session expires.
"session.timeout.ms" = "6000"
[[systems]]
name = "erp"
topics = ["in"]
[output]
topic = "out"
dead_letter_topic = "dlq"
partitions = 1
[http]
address = "127.0.0.1:0"
[processing]
commit_interval = "200ms"
shutdown_timeout = "5s"
"#
        ),
    )
    .unwrap();
    path
}

fn run_until_exit(config: &std::path::Path, timeout: Duration) -> (Option<i32>, String) {
    let log = config.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harmony"))
        .args(["run", "--config"])
        .arg(config)
        .env("HARMONY_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return (
                status.code(),
                std::fs::read_to_string(&log).unwrap_or_default(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// Every produce request to the broker fails permanently: the worker stops with an error and
/// commits nothing past the failed output; once the broker accepts again, a restart publishes
/// every record.
#[test]
fn a_failed_output_stops_the_worker_without_committing_past_it() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for topic in ["in", "out", "dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let records: Vec<String> = (0..10).map(valid).collect();
    for (n, value) in records.iter().enumerate() {
        let key = format!(r#"{{"n":{n}}}"#);
        producer
            .send(BaseRecord::to("in").key(&key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let group = unique("mock-fail");
    let dir = std::env::temp_dir().join("harmony-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let config = config(&bootstrap, &group, &dir);

    // Every produce from now on is refused: a permanent, non-retriable error.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    let (code, log) = run_until_exit(&config, Duration::from_secs(60));
    assert_eq!(code, Some(1), "the worker must stop with an error\n{log}");
    assert!(log.contains("delivery failed"), "{log}");
    let offset = committed(&bootstrap, &group, "in");
    assert!(
        matches!(offset, Offset::Invalid | Offset::Offset(0)),
        "nothing may be committed past the failed output, got {offset:?}"
    );

    // The broker accepts again: a restart reads from the committed offset and loses nothing.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut out = TopicReader::new_at(&bootstrap, "out").unwrap();
    let log_path = config.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harmony"))
        .args(["run", "--config"])
        .arg(&config)
        .env("HARMONY_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let all = out
        .read_until(Duration::from_secs(60), |r| r.len() >= 10)
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        all,
        "{} of 10 outputs\n{}",
        out.records.len(),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(status.success());
    let mut ns: Vec<i64> = out
        .records
        .iter()
        .map(|r| r.json()["after"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    // Everything read is committed: the group's offset is the end of the input.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks("in", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(committed(&bootstrap, &group, "in"), Offset::Offset(high));
}
