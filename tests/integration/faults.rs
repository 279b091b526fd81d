//! Fault injection with librdkafka's in-process mock cluster: failures a real broker rarely
//! produces on demand. The harmony process connects to the mock over loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::{unique, wait_until, Harmony, Record, TopicReader};

fn valid(n: usize) -> String {
    format!(
        r#"{{"before":null,"after":{{"n":{n}}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"t","ts_ms":1700000000000,"sequence":"[null,\"{}\"]"}},"op":"c"}}"#,
        100 + n
    )
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Offset {
    committed_at(bootstrap, group, topic, 0)
}

fn committed_at(bootstrap: &str, group: &str, topic: &str, partition: i32) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    offsets.find_partition(topic, partition).unwrap().offset()
}

fn config(bootstrap: &str, group: &str, dir: &std::path::Path) -> std::path::PathBuf {
    config_reading(bootstrap, group, dir, "in")
}

fn config_reading(
    bootstrap: &str,
    group: &str,
    dir: &std::path::Path,
    input: &str,
) -> std::path::PathBuf {
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
topics = ["{input}"]
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

fn mock_with_input(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("in", partitions, 1).unwrap();
    for topic in ["out", "dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    cluster
}

fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        // The broker goes away in some tests: retries must neither duplicate nor reorder.
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Records `n` in `ns` go to the input with key `n % keys`, so a key sees a rising `n`.
fn produce_numbered(
    producer: &ThreadedProducer<DefaultProducerContext>,
    ns: std::ops::Range<usize>,
    keys: usize,
) {
    for n in ns {
        let key = format!(r#"{{"id":{}}}"#, n % keys);
        let value = valid(n);
        loop {
            match producer.send(BaseRecord::to("in").key(&key).payload(&value)) {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    // A flush can outlast one timeout while the mock broker is down or slow: it is the
    // feeder's job to get the input in, however long that takes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = producer.flush(Duration::from_secs(10)) {
        assert!(Instant::now() < deadline, "input not flushed: {e}");
    }
}

fn n_of(record: &Record) -> i64 {
    record.json()["after"]["n"].as_i64().unwrap()
}

/// Per output key, the numbers in the order they first appear: re-deliveries are duplicates,
/// but a record's first appearances must never go back.
fn first_appearances_go_back(records: &[Record]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<Option<String>, i64> = Default::default();
    let mut backwards = Vec::new();
    for r in records {
        let n = n_of(r);
        if !seen.insert(n) {
            continue;
        }
        if let Some(&prev) = last.get(&r.key) {
            if n < prev {
                backwards.push(format!("key {:?}: {n} after {prev}", r.key));
            }
        }
        last.insert(r.key.clone(), n);
    }
    backwards
}

fn distinct_ns(records: &[Record]) -> std::collections::BTreeSet<i64> {
    records.iter().map(n_of).collect()
}

/// The broker refuses produces with a retriable error for longer than the producer's retry
/// budget (`message.timeout.ms`): the worker does not stop and does not skip; it pauses the
/// partition, reads it again from its last stored offset once the back-off is over, and when
/// the broker accepts again every record is published, in order, and committed.
#[test]
fn outputs_failing_past_the_retry_budget_are_read_again_without_stopping_the_worker() {
    let cluster = mock_with_input(1);
    let bootstrap = cluster.bootstrap_servers();
    produce_numbered(&producer(&bootstrap), 0..30, 3);
    let group = unique("mock-retry");
    let dir = std::env::temp_dir().join("harmony-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let config = config(&bootstrap, &group, &dir);

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 2000],
    );
    let mut worker = Harmony::on_config(config, "worker").unwrap();
    wait_until(Duration::from_secs(60), "a rewind", || {
        Ok(worker.log().contains("partition paused; it is read again"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.log()));
    assert!(
        worker.exited().is_none(),
        "the worker must keep running\n{}",
        worker.log()
    );
    assert!(
        matches!(
            committed(&bootstrap, &group, "in"),
            Offset::Invalid | Offset::Offset(0)
        ),
        "nothing may be committed while no output is acknowledged"
    );

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut out = TopicReader::new_at(&bootstrap, "out").unwrap();
    let all = out
        .read_until(Duration::from_secs(90), |r| distinct_ns(r).len() >= 30)
        .unwrap();
    assert!(
        all,
        "{} of 30 outputs\n{}",
        distinct_ns(&out.records).len(),
        worker.log()
    );
    assert_eq!(
        first_appearances_go_back(&out.records),
        Vec::<String>::new()
    );
    wait_until(Duration::from_secs(20), "the commit of the end", || {
        Ok(committed(&bootstrap, &group, "in") == Offset::Offset(30))
    })
    .unwrap();
    assert!(
        worker.log().contains("partition read again"),
        "{}",
        worker.log()
    );
    assert!(worker.terminate(Duration::from_secs(30)).unwrap().success());
}

/// A slow broker, then one that does not answer for a while: at every moment the group's
/// committed offset covers only input whose output is on the output topic.
#[test]
fn under_a_slow_and_then_absent_broker_the_committed_offset_never_passes_an_unpublished_output() {
    let cluster = mock_with_input(1);
    let bootstrap = cluster.bootstrap_servers();
    let total = 600;
    let feeder = {
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let producer = producer(&bootstrap);
            for chunk in 0..20 {
                produce_numbered(&producer, chunk * 30..(chunk + 1) * 30, 7);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let group = unique("mock-slow");
    let dir = std::env::temp_dir().join("harmony-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let config = config(&bootstrap, &group, &dir);
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .unwrap();
    let mut worker = Harmony::on_config(config, "worker").unwrap();
    let mut out = TopicReader::new_at(&bootstrap, "out").unwrap();
    let mut input = TopicReader::new_at(&bootstrap, "in").unwrap();
    let started = Instant::now();
    let mut samples = 0;
    let mut went_down = false;
    loop {
        let offset = match committed(&bootstrap, &group, "in") {
            Offset::Offset(o) => o,
            _ => 0,
        };
        // Every input record below the committed offset must be published: read until seen.
        assert!(input
            .read_until(Duration::from_secs(15), |r| r.len() as i64 >= offset)
            .unwrap());
        let below: Vec<i64> = input
            .records
            .iter()
            .filter(|r| r.offset < offset)
            .map(n_of)
            .collect();
        let covered = out
            .read_until(Duration::from_secs(15), |r| {
                let ns = distinct_ns(r);
                below.iter().all(|n| ns.contains(n))
            })
            .unwrap();
        assert!(covered, "offset {offset} committed with outputs missing");
        samples += 1;
        if offset >= total {
            break;
        }
        if !went_down && offset >= 100 {
            // Absent: no answer within the producer's 3 s budget. (Taking the mock broker's
            // listener down instead races other sockets for its port on the way back up, and
            // librdkafka aborts the process when it loses.)
            cluster
                .broker_round_trip_time(1, Duration::from_secs(5))
                .unwrap();
            std::thread::sleep(Duration::from_secs(4));
            cluster
                .broker_round_trip_time(1, Duration::from_millis(300))
                .unwrap();
            went_down = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "stuck at {offset}\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    feeder.join().unwrap();
    assert!(went_down && samples >= 5, "{samples} samples");
    assert_eq!(
        first_appearances_go_back(&out.records),
        Vec::<String>::new()
    );
    assert!(worker.terminate(Duration::from_secs(30)).unwrap().success());
}

/// A second worker joins while records stream in, then the first leaves: each rebalance
/// hands partitions over with their work drained, nothing is lost, and the group ends
/// committed at the end of both partitions.
#[test]
fn a_second_worker_joining_and_the_first_leaving_hand_over_cleanly() {
    let cluster = mock_with_input(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique("mock-rebalance");
    let dir = std::env::temp_dir().join("harmony-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let config = config_reading(&bootstrap, &group, &dir, "in");
    let total = 3000;
    let feeder = {
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let producer = producer(&bootstrap);
            for chunk in 0..30 {
                produce_numbered(&producer, chunk * 100..(chunk + 1) * 100, 11);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let mut first = Harmony::on_config(config.clone(), "first").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut second = Harmony::on_config(config, "second").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the second worker's assignment",
        || Ok(second.log().contains("partition assigned")),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    std::thread::sleep(Duration::from_secs(3));
    let left = first.terminate(Duration::from_secs(30)).unwrap();
    assert!(left.success(), "{}", first.log());
    feeder.join().unwrap();

    let mut out = TopicReader::new_at(&bootstrap, "out").unwrap();
    let all = out
        .read_until(Duration::from_secs(90), |r| distinct_ns(r).len() >= total)
        .unwrap();
    assert!(
        all,
        "{} of {total} outputs\n{}",
        distinct_ns(&out.records).len(),
        second.log()
    );
    assert_eq!(
        first_appearances_go_back(&out.records),
        Vec::<String>::new()
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for partition in 0..2 {
        let (_, high) = consumer
            .fetch_watermarks("in", partition, Duration::from_secs(10))
            .unwrap();
        wait_until(Duration::from_secs(20), "the commit of the end", || {
            Ok(committed_at(&bootstrap, &group, "in", partition) == Offset::Offset(high))
        })
        .unwrap();
    }
    assert!(second.exited().is_none(), "{}", second.log());
    assert!(second.terminate(Duration::from_secs(30)).unwrap().success());
}

/// SIGTERM while start-up waits for a broker that never answers: the first signal asks for a
/// drain, a second one exits at once. Before, both waited for the metadata request's timeout
/// (~27 s).
#[test]
fn a_second_signal_exits_at_once_while_start_up_waits_for_the_broker() {
    let dir = std::env::temp_dir().join("harmony-tests");
    std::fs::create_dir_all(&dir).unwrap();
    // Nothing listens on port 1 of loopback.
    let path = config_reading("127.0.0.1:1", &unique("no-broker"), &dir, "in");
    let log = path.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_harmony"))
        .args(["run", "--config"])
        .arg(&path)
        .env("HARMONY_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(20), "start-up", || {
        Ok(read_log().contains("harmony starting"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    let signal = || Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    signal();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none() || read_log().contains("stopped"));
    signal();
    let second = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if second.elapsed() > Duration::from_secs(5) {
            child.kill().unwrap();
            panic!("no exit within 5 s of the second signal\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = read_log();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(log.contains("second termination signal"), "{log}");
}
