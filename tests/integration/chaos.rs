//! The chaos test (issue 5): a seeded stream of changes written into the three source
//! databases while several harmony workers of one group run, are SIGKILLed and restarted at
//! random moments, and the broker is restarted; then a checker compares what came out with
//! what must have come out.
//!
//! Run by `scripts/chaos` (sizes from the environment; `scripts/test` runs the reduced size):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CHAOS_CHANGES` | changes written, over the three databases | 20000 |
//! | `CHAOS_SKUS` | products; a tenth of them take half the changes (hot keys) | 200 |
//! | `CHAOS_WORKERS` | harmony workers in the group | 3 |
//! | `CHAOS_KILLS` | SIGKILLs of a random worker (each restarted at once) | 5 |
//! | `CHAOS_BROKER_RESTARTS` | broker restarts (`scripts/stack restart-kafka`) | 1 |
//! | `CHAOS_SEED` | the generator's seed | 42 |
//! | `CHAOS_WAIT_SECS` | how long each run may take to converge after the writes | 300 |
//! | `CHAOS_LINGER_MS` | the producers' `linger.ms` (widens every in-flight window) | librdkafka's |
//! | `CHAOS_MESSAGE_TIMEOUT_MS` | the producers' retry budget; shorter than a broker restart, so outputs in flight then fail and their partitions are read again | 2000 |
//! | `CHAOS_GUARANTEE` | `at_least_once` or `exactly_once` | at_least_once |
//! | `CHAOS_MODE` | `exact`: no sinks; `loop`: the closed loop (below), version columns; `content`: the closed loop, told by content alone | exact |
//!
//! **The closed loop** (`loop`, `content`): Debezium's JDBC sink writes each target topic back
//! into its system's table, whose capture brings every delivery back as an echo. Halfway
//! through, the erp stops writing; once its source connector has captured what it wrote (its
//! slot confirms the WAL position), the connector is replaced by one without offsets on the
//! same slot, which snapshots the table again while the sinks go on writing. (Changes left
//! uncaptured would reach Kafka only folded into the snapshot, so the count below could not
//! hold, and the erp's sink could overwrite them before any capture saw them: see the README.)
//! Only the erp inserts (the sinks create the other rows), nothing is deleted, and every local
//! write is one no delivery can equal — content matching's one ambiguity, which exact mode
//! removes, is not what these runs are for: stock moves up only, each system in its own band
//! (the erp by 10¹², the shop by 10⁶, the warehouse by 1), every price written is new, and
//! every local write sets a note no one wrote before ([`marker`]). The
//! databases must converge on every product's expected stock, and the loop go quiet. There is
//! no fault-free reference run (the sinks' writes are input to whichever run reads them).
//! `content` drops the version columns; run it exactly once (`scripts/test` does): at least
//! once, harmony's replays after a crash reach the sinks, which write deliveries already seen
//! back, and content alone cannot tell those from local writes — see the README.
//!
//! The input: stock movements and price changes from all three systems, half of them on a
//! tenth of the products (hot keys), and on a twentieth of the products (churned, cold ones)
//! deletes each followed by a re-insert in the same system (one system per churned product).
//!
//! Checks, over every product of the run:
//! - **lost** / **counted twice**: every change written must be accepted exactly once, and the
//!   record's version vector counts the changes accepted from each system: in the final state
//!   on the changelog, it must equal the number of (effective) changes the generator wrote;
//! - **stock off**: the stock `quantity` is the sum of every movement (`sum`), so its final
//!   value on the erp's target topic must be 1000 plus every delta written. (A lost movement
//!   can hide here: a system reports its whole stock, so its next report carries the missed
//!   delta along; hence the count above.)
//! - **mismatched**: each target topic's final record has the values of that of a fault-free
//!   reference run (a fresh group, one worker) over the same input;
//! - **out of order**: on each target topic, the version vectors of a product's records, once
//!   exact repeats are set aside, never go backwards;
//! - **duplicates**: records repeating a version already published (replays after kills),
//!   reported; at least once they are allowed (downstream dedups them), exactly once
//!   (read_committed) there must be none.
//!
//! Churned products are left out of the stock check (a re-insert starts a new stock), not out
//! of the others.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{json, Value};

use crate::product::Product;
use crate::support::{
    self, psql, unique, wait_until, Connectors, Harmony, HarmonyOptions, Record, TopicReader,
};

const SYSTEMS: [&str; 3] = ["erp", "shop", "wms"];
/// Per system: the demo table the test's table copies, and the test's table.
const TABLES: [(&str, &str); 3] = [
    ("products", "chaos_products"),
    ("items", "chaos_items"),
    ("skus", "chaos_skus"),
];

/// The product entity over the test's own copies of the demo tables, stock under `sum` (every
/// movement counts) and the price under `lww`; no guard, so that every movement is applied and
/// the totals can be known. No sink applies harmony's deliveries here, so the tables run in
/// exact mode: their version columns stay empty, and no local write can pass for an echo.
fn entity(versioned: bool) -> String {
    let note = ("note", "note");
    Product::new()
        .field("quantity", "strategy = \"sum\"")
        .source("erp", "chaos_products", &[note])
        .source("shop", "chaos_items", &[note])
        .source("wms", "chaos_skus", &[("on_hand", "quantity"), note])
        .versioned(versioned)
        .toml()
}

/// Sinks write the target topics back into the source tables.
fn closed_loop() -> bool {
    std::env::var("CHAOS_MODE").is_ok_and(|m| m == "loop" || m == "content")
}

/// The closed loop without version columns: echoes told by content alone.
fn content_mode() -> bool {
    std::env::var("CHAOS_MODE").is_ok_and(|m| m == "content")
}

/// Per system, how much one unit of its stock movements weighs in content mode: the bands keep
/// a local write's value distinct from any delivery's.
const BANDS: [i64; 3] = [1_000_000_000_000, 1_000_000, 1];

/// Per system, its table's stock column.
const STOCK_COLUMNS: [&str; 3] = ["quantity", "stock", "on_hand"];
/// Per system, its table's key column.
const KEY_COLUMNS: [&str; 3] = ["sku", "item_sku", "sku"];

fn exactly_once() -> bool {
    std::env::var("CHAOS_GUARANTEE").is_ok_and(|g| g == "exactly_once")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    changes: usize,
    skus: usize,
    workers: usize,
    kills: usize,
    broker_restarts: usize,
    seed: u64,
}

/// What the input implies: per product, its final stock, and per system how many changes of
/// it harmony must accept (its version vector's count for that system).
struct Expected {
    /// Products never deleted.
    stock: BTreeMap<String, i64>,
    /// Every product.
    changes: BTreeMap<String, [u64; 3]>,
}

/// The seeded input: per system, the SQL creating its rows and its changes after, in order;
/// and what they imply.
fn generate(sizes: &Sizes, prefix: &str) -> ([String; 3], [String; 3], Expected) {
    let content = closed_loop();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&sizes.seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let skus: Vec<String> = (0..sizes.skus)
        .map(|i| format!("{prefix}-{i:04}"))
        .collect();
    let mut expected: BTreeMap<String, i64> = skus.iter().map(|s| (s.clone(), 1000)).collect();
    // The inserts count once per system; in content mode only the erp inserts.
    let inserted = if content { [1, 0, 0] } else { [1; 3] };
    let mut changes: BTreeMap<String, [u64; 3]> =
        skus.iter().map(|s| (s.clone(), inserted)).collect();
    let mut prices: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let mut inserts: [String; 3] = Default::default();
    let mut sql: [String; 3] = Default::default();
    for sku in &skus {
        inserts[0].push_str(&format!("INSERT INTO chaos_products (sku, name, price, quantity) VALUES ('{sku}', 'Chaos', 10.00, 1000);\n"));
        if !content {
            inserts[1].push_str(&format!("INSERT INTO chaos_items (item_sku, title, price, stock) VALUES ('{sku}', 'Chaos', 10.00, 1000);\n"));
            inserts[2].push_str(&format!(
                "INSERT INTO chaos_skus (sku, on_hand) VALUES ('{sku}', 1000);\n"
            ));
        }
    }
    let hot = (sizes.skus / 10).max(1);
    let churned: &[String] = if content {
        &[]
    } else {
        &skus[skus.len() - (sizes.skus / 20).max(1)..]
    };
    for sku in churned {
        expected.remove(sku);
    }
    for n in 0..sizes.changes {
        let system = rng.random_range(0..3usize);
        if !churned.is_empty() && rng.random_bool(0.02) {
            // Delete and re-insert: two changes of the system, the second a fresh row. One
            // system churns a given product: a delete of a record another system's delete
            // already removed is no new version (harmony sees nothing change), so with two
            // deleting systems the count would depend on how their changes interleave.
            let churn = rng.random_range(0..churned.len());
            let sku = &churned[churn];
            let system = churn % 3;
            changes.get_mut(sku).unwrap()[system] += 2;
            prices.remove(&(system, sku.clone()));
            sql[system].push_str(&match system {
                0 => format!("DELETE FROM chaos_products WHERE sku = '{sku}';\nINSERT INTO chaos_products (sku, name, price, quantity) VALUES ('{sku}', 'Chaos', 10.00, 1000);\n"),
                1 => format!("DELETE FROM chaos_items WHERE item_sku = '{sku}';\nINSERT INTO chaos_items (item_sku, title, price, stock) VALUES ('{sku}', 'Chaos', 10.00, 1000);\n"),
                _ => format!("DELETE FROM chaos_skus WHERE sku = '{sku}';\nINSERT INTO chaos_skus (sku, on_hand) VALUES ('{sku}', 1000);\n"),
            });
            continue;
        }
        let sku = if rng.random_bool(0.5) {
            &skus[rng.random_range(0..hot)]
        } else {
            &skus[rng.random_range(0..skus.len())]
        };
        // The warehouse holds no price: it only moves stock.
        if system < 2 && rng.random_bool(0.15) {
            // Content mode: a price no system ever wrote before, so no delivery can equal it.
            let cents = if content {
                1001 + n as u32
            } else {
                rng.random_range(100..10_000u32)
            };
            // Setting the price a row already has changes nothing, and is no change.
            let previous = prices.insert((system, sku.clone()), cents).unwrap_or(1000);
            if previous != cents {
                changes.get_mut(sku).unwrap()[system] += 1;
            }
            let price = format!("{}.{:02}", cents / 100, cents % 100);
            let note = marker(system, n);
            sql[system].push_str(&match system {
                0 => format!(
                    "UPDATE chaos_products SET price = {price}{note} WHERE sku = '{sku}';\n"
                ),
                _ => format!(
                    "UPDATE chaos_items SET price = {price}{note} WHERE item_sku = '{sku}';\n"
                ),
            });
            continue;
        }
        let delta = if content {
            rng.random_range(1..=5i64) * BANDS[system]
        } else {
            match rng.random_range(-5..=5i64) {
                0 => 1,
                d => d,
            }
        };
        if let Some(stock) = expected.get_mut(sku) {
            *stock += delta;
        }
        changes.get_mut(sku).unwrap()[system] += 1;
        let (table, key, column) = (TABLES[system].1, KEY_COLUMNS[system], STOCK_COLUMNS[system]);
        let note = marker(system, n);
        sql[system].push_str(&format!(
            "UPDATE {table} SET {column} = {column} + {delta}{note} WHERE {key} = '{sku}';\n"
        ));
    }
    (
        inserts,
        sql,
        Expected {
            stock: expected,
            changes,
        },
    )
}

/// Closed loop: what makes local write `n` of `system` one no delivery can equal — a note no
/// one wrote before. (Bands and new prices alone do not: a sink that writes an older delivery
/// over the row takes it back to an earlier state, and the system's next moves can retrace
/// values harmony already delivered, which content matching takes for their echo.)
fn marker(system: usize, n: usize) -> String {
    if closed_loop() {
        format!(", note = '{}-{n}'", SYSTEMS[system])
    } else {
        String::new()
    }
}

fn run_sql(database: &str, script: &str) {
    let path = std::env::temp_dir().join(format!("chaos-{database}-{}.sql", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let status = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &std::env::var("PG_PORT").unwrap_or_else(|_| "55432".into()),
        ])
        .args(["-U", "harmony", "-d", database, "-f"])
        .arg(&path)
        .env(
            "PGPASSWORD",
            std::env::var("PG_PASSWORD").unwrap_or_else(|_| "harmony".into()),
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "psql -f on {database} failed");
}

/// The last record per product on a target topic, and the order checks over all of them.
#[derive(Debug, Default)]
struct TopicCheck {
    last: HashMap<String, Value>,
    duplicates: usize,
    out_of_order: usize,
}

fn version_of(record: &Value) -> BTreeMap<String, u64> {
    record["payload"]["harmony"]["version"]
        .as_object()
        .map(|v| {
            v.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// `a` is behind `b`: no count greater and one smaller.
fn behind(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> bool {
    let get = |v: &BTreeMap<String, u64>, k: &str| v.get(k).copied().unwrap_or(0);
    let keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.iter().all(|k| get(a, k) <= get(b, k)) && keys.iter().any(|k| get(a, k) < get(b, k))
}

fn check_topic(records: &[Record], prefix: &str) -> TopicCheck {
    let mut check = TopicCheck::default();
    let mut seen: HashMap<String, Vec<BTreeMap<String, u64>>> = HashMap::new();
    let mut latest: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    for record in records {
        let value = record.json();
        let payload = &value["payload"];
        let row = if payload["op"] == "d" {
            &payload["before"]
        } else {
            &payload["after"]
        };
        let Some(sku) = row
            .get("sku")
            .or_else(|| row.get("item_sku"))
            .and_then(Value::as_str)
            .filter(|s| s.starts_with(prefix))
            .map(str::to_owned)
        else {
            continue;
        };
        let version = version_of(&value);
        let versions = seen.entry(sku.clone()).or_default();
        if versions.contains(&version) {
            check.duplicates += 1;
            continue;
        }
        versions.push(version.clone());
        if latest.get(&sku).is_some_and(|prev| behind(&version, prev)) {
            check.out_of_order += 1;
        }
        latest.insert(sku.clone(), version);
        // The values, not the version they came with: which of the record's versions a target
        // was last sent depends on how the systems' changes interleaved, and the reference
        // run interleaves them differently.
        // A delete's last state is its absence.
        let mut after = payload["after"].clone();
        if let Some(row) = after.as_object_mut() {
            row.remove("harmony_version");
        }
        check.last.insert(sku, after);
    }
    check
}

/// Per product, the version vector of its final state on the run's changelog topic.
fn final_clocks(
    config_path: &std::path::Path,
    group: &str,
    expected: &Expected,
) -> HashMap<String, BTreeMap<String, u64>> {
    let config = harmony::config::Config::load(config_path).unwrap();
    let mut resolver = harmony::resolve::resolver::Resolver::new(&config);
    let log = read_all(&format!("harmony.{group}.state"), Duration::from_secs(3));
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for record in &log {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record);
    }
    for (partition, records) in by_partition {
        resolver.install(
            partition,
            records
                .iter()
                .filter_map(|r| Some((r.key.as_deref()?.as_bytes(), r.value.as_deref()))),
        );
    }
    expected
        .changes
        .keys()
        .filter_map(|sku| {
            let clock = resolver.version_of_record("product", &format!(r#"["{sku}"]"#))?;
            Some((sku.clone(), clock.into_iter().collect()))
        })
        .collect()
}

fn restart_broker() {
    let ok = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
        .arg("restart-kafka")
        .status()
        .unwrap()
        .success();
    assert!(ok, "broker restart failed");
}

fn read_all(topic: &str, settle: Duration) -> Vec<Record> {
    let mut reader = TopicReader::new(topic).unwrap();
    reader.read_for(settle).unwrap();
    reader.records
}

fn options(group: &str, run: &str) -> HarmonyOptions {
    let mut options = HarmonyOptions::stack(group.to_owned());
    options.systems = SYSTEMS
        .iter()
        .zip(TABLES)
        .map(|(system, (_, table))| {
            (
                (*system).to_owned(),
                vec![format!("{run}_{system}.public.{table}")],
            )
        })
        .collect();
    // Without sinks nothing echoes, so every version is sent; in the closed loop the sinks
    // echo every delivery, within the default window.
    let entity = entity(!content_mode());
    let window = if closed_loop() { "" } else { "window = 0\n" };
    let targets = support::product_targets(group, &SYSTEMS, window);
    // A long linger keeps records in the producer for that long: the window in which a build
    // that stored offsets before acknowledgements would lose them when killed.
    let linger = std::env::var("CHAOS_LINGER_MS")
        .map(|ms| format!("\"linger.ms\" = \"{ms}\"\n"))
        .unwrap_or_default();
    let timeout = env_usize("CHAOS_MESSAGE_TIMEOUT_MS", 2000);
    options.exactly_once = exactly_once();
    options.extra_toml = format!(
        "{entity}{targets}\n[kafka.producer]\n\"message.timeout.ms\" = \"{timeout}\"\n{linger}"
    );
    options
}

/// Waits until the erp's topic shows every product at its expected stock, or `timeout`.
fn wait_for_totals(group: &str, prefix: &str, expected: &BTreeMap<String, i64>, timeout: Duration) {
    let mut reader = TopicReader::new(&format!("{group}.erp.product")).unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut consumed = 0;
    while Instant::now() < deadline {
        reader.read_for(Duration::from_secs(1)).unwrap();
        for record in &reader.records[consumed..] {
            let v = record.json();
            let after = &v["payload"]["after"];
            if let (Some(sku), Some(q)) = (after["sku"].as_str(), after["quantity"].as_i64()) {
                if sku.starts_with(prefix) {
                    last.insert(sku.to_owned(), q);
                }
            }
        }
        consumed = reader.records.len();
        if expected.iter().all(|(sku, q)| last.get(sku) == Some(q)) {
            return;
        }
    }
}

/// Per system, each product's stock as its database holds it.
fn stocks_in_databases(prefix: &str) -> [HashMap<String, i64>; 3] {
    std::array::from_fn(|i| {
        let (table, key, column) = (TABLES[i].1, KEY_COLUMNS[i], STOCK_COLUMNS[i]);
        psql(
            SYSTEMS[i],
            &format!("SELECT {key}, {column} FROM {table} WHERE {key} LIKE '{prefix}-%'"),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (sku, stock) = l.split_once('|')?;
            Some((sku.to_owned(), stock.parse().ok()?))
        })
        .collect()
    })
}

/// Content mode: waits until every database holds every product at `expected` (or, with
/// `None`, merely holds it), or `timeout`; returns the products some database differs on.
fn wait_for_databases(
    prefix: &str,
    expected: &BTreeMap<String, i64>,
    exact: bool,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let stocks = stocks_in_databases(prefix);
        let off = expected
            .iter()
            .filter(|(sku, q)| {
                stocks
                    .iter()
                    .any(|db| db.get(*sku).is_none_or(|s| exact && s != *q))
            })
            .count();
        if off == 0 || Instant::now() >= deadline {
            return off;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Content mode: the sinks, one per system, writing its target topic into its table.
fn register_sinks(connectors: &mut Connectors, run: &str, group: &str) {
    let mut sinks = Vec::new();
    for (system, (_, table)) in SYSTEMS.iter().zip(TABLES) {
        let name = format!("{run}_{system}_sink");
        let mut config = support::deployed_connector(&format!("{system}-sink")).unwrap();
        config.insert("topics".into(), json!(format!("{group}.{system}.product")));
        config.insert("table.name.format".into(), json!(table));
        // Exactly once, what an aborted batch published is never written back.
        config.insert(
            "consumer.override.isolation.level".into(),
            json!("read_committed"),
        );
        connectors.register(&name, config).unwrap();
        sinks.push(name);
    }
    connectors.wait_state(&sinks, "RUNNING").unwrap();
}

#[test]
#[ignore = "minutes long and restarts the broker; run by scripts/chaos (scripts/test runs it reduced)"]
fn chaos() {
    assert!(
        support::stack_available("chaos"),
        "the chaos test needs the stack"
    );
    let sizes = Sizes {
        changes: env_usize("CHAOS_CHANGES", 20_000),
        skus: env_usize("CHAOS_SKUS", 200),
        workers: env_usize("CHAOS_WORKERS", 3),
        kills: env_usize("CHAOS_KILLS", 5),
        broker_restarts: env_usize("CHAOS_BROKER_RESTARTS", 1),
        seed: env_usize("CHAOS_SEED", 42) as u64,
    };
    let content = closed_loop();
    let prefix = unique("CH").replace('-', "");
    let (inserts, updates, expected) = generate(&sizes, &prefix);
    for (system, (demo, table)) in SYSTEMS.iter().zip(TABLES) {
        psql(
            system,
            &format!("CREATE TABLE IF NOT EXISTS {table} (LIKE {demo} INCLUDING ALL); ALTER TABLE {table} ADD COLUMN IF NOT EXISTS harmony_version text; ALTER TABLE {table} ADD COLUMN IF NOT EXISTS note text"),
        )
        .unwrap();
    }
    // Content mode's bands need 64 bits.
    for (i, system) in SYSTEMS.iter().enumerate() {
        let (table, column) = (TABLES[i].1, STOCK_COLUMNS[i]);
        psql(
            system,
            &format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint"),
        )
        .unwrap();
    }
    let run = unique("chaos").replace('-', "_");
    let mut connectors = Connectors::default();
    let streamed: Vec<(&'static str, &str)> = SYSTEMS
        .iter()
        .copied()
        .zip(TABLES.map(|(_, t)| t))
        .collect();
    connectors.stream_tables(&run, &streamed).unwrap();
    let started = Instant::now();

    let group = run.replace('_', "-");
    let first = Harmony::start(&options(&group, &run)).unwrap();
    let workers: Arc<Mutex<Vec<Harmony>>> = Arc::new(Mutex::new(vec![first]));
    for i in 1..sizes.workers {
        let w = workers.lock().unwrap()[0]
            .another_worker(&format!("w{i}"))
            .unwrap();
        workers.lock().unwrap().push(w);
    }
    let scripts: [String; 3] = if content {
        // The loop closed first; then the erp's products, which the sinks create everywhere
        // before any system moves stock.
        wait_until(Duration::from_secs(30), "harmony's target topics", || {
            Ok(SYSTEMS
                .iter()
                .all(|s| TopicReader::new(&format!("{group}.{s}.product")).is_ok()))
        })
        .unwrap();
        register_sinks(&mut connectors, &run, &group);
        run_sql("erp", &inserts[0]);
        let missing = wait_for_databases(&prefix, &expected.stock, false, Duration::from_secs(120));
        assert_eq!(missing, 0, "the sinks did not create every product's rows");
        updates
    } else {
        std::array::from_fn(|i| format!("{}{}", inserts[i], updates[i]))
    };

    // The three systems write concurrently, each in its own order. Content mode: the erp
    // stops halfway while its connector is replaced by one that snapshots again.
    let (halfway_tx, halfway) = std::sync::mpsc::channel::<()>();
    let (resume, resume_rx) = std::sync::mpsc::channel::<()>();
    let mut resume_rx = Some(resume_rx);
    let mut halfway_tx = Some(halfway_tx);
    let writers: Vec<_> = SYSTEMS
        .iter()
        .zip(scripts)
        .map(|(db, sql)| {
            let db = (*db).to_owned();
            let pause = (content && db == "erp")
                .then(|| (halfway_tx.take().unwrap(), resume_rx.take().unwrap()));
            std::thread::spawn(move || match pause {
                None => run_sql(&db, &sql),
                Some((halfway, resume)) => {
                    let lines: Vec<&str> = sql.lines().collect();
                    let (first, second) = lines.split_at(lines.len() / 2);
                    run_sql(&db, &first.join("\n"));
                    halfway.send(()).unwrap();
                    resume.recv().unwrap();
                    run_sql(&db, &second.join("\n"));
                }
            })
        })
        .collect();
    let mut resnapshotted = false;

    // Faults while the changes flow: kills spread over the write phase, broker restarts
    // in between.
    let mut fault_rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]);
    let mut kills = 0;
    let mut restarts = 0;
    let faults = sizes.kills + sizes.broker_restarts;
    for fault in 0..faults {
        std::thread::sleep(Duration::from_millis(fault_rng.random_range(1_000..5_000)));
        if fault == faults / 2 && restarts < sizes.broker_restarts {
            restart_broker();
            restarts += 1;
            // The nastiest moment for a worker to die: the broker just came back, and what
            // piled up while it was away is being acknowledged and committed.
            if kills < sizes.kills {
                std::thread::sleep(Duration::from_millis(fault_rng.random_range(200..1_500)));
                let mut ws = workers.lock().unwrap();
                let victim = fault_rng.random_range(0..ws.len());
                ws[victim].kill_hard().unwrap();
                ws[victim].spawn().unwrap();
                kills += 1;
            }
            continue;
        }
        if kills < sizes.kills {
            let mut ws = workers.lock().unwrap();
            let victim = fault_rng.random_range(0..ws.len());
            ws[victim].kill_hard().unwrap();
            ws[victim].spawn().unwrap();
            kills += 1;
        }
        if content && !resnapshotted && fault == 1 {
            halfway.recv().unwrap();
            connectors.wait_captured(&run, "erp").unwrap();
            connectors.resnapshot(&run, "erp", TABLES[0].1).unwrap();
            resume.send(()).unwrap();
            resnapshotted = true;
        }
    }
    if content && !resnapshotted {
        halfway.recv().unwrap();
        connectors.wait_captured(&run, "erp").unwrap();
        connectors.resnapshot(&run, "erp", TABLES[0].1).unwrap();
        resume.send(()).unwrap();
        resnapshotted = true;
    }
    while restarts < sizes.broker_restarts {
        restart_broker();
        restarts += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    let written = started.elapsed();
    let wait = Duration::from_secs(env_usize("CHAOS_WAIT_SECS", 300) as u64);
    // Content mode: the databases themselves, all three, at every product's expected stock.
    let databases_off = if content {
        wait_for_databases(&prefix, &expected.stock, true, wait)
    } else {
        wait_for_totals(&group, &prefix, &expected.stock, wait);
        0
    };
    let chaotic_done = started.elapsed();
    // The loop goes quiet: once converged, nothing more is sent to any target.
    let target_records = || -> usize {
        SYSTEMS
            .iter()
            .map(|s| read_all(&format!("{group}.{s}.product"), Duration::from_secs(2)).len())
            .sum()
    };
    let quiet = !content || {
        std::thread::sleep(Duration::from_secs(5));
        let before = target_records();
        std::thread::sleep(Duration::from_secs(10));
        before == target_records()
    };

    // The reference: a fresh group, one worker, no faults, over the same input. Not in content
    // mode, where the sinks' writes of this run's deliveries are part of the input.
    let reference_group = unique("chaosref");
    let reference = (!content).then(|| {
        let reference = Harmony::start(&options(&reference_group, &run)).unwrap();
        wait_for_totals(&reference_group, &prefix, &expected.stock, wait);
        reference
    });

    let mut report = json!({
        "changes": sizes.changes, "skus": sizes.skus, "workers": sizes.workers,
        "kills": kills, "broker_restarts": restarts,
        "write_seconds": written.as_secs_f64(), "converged_seconds": chaotic_done.as_secs_f64(),
    });
    let mut mismatched = 0;
    let mut out_of_order = 0;
    let mut duplicates = 0;
    let mut examples = Vec::new();
    let mut stock_off = 0;
    for system in SYSTEMS {
        let chaotic = check_topic(
            &read_all(&format!("{group}.{system}.product"), Duration::from_secs(3)),
            &prefix,
        );
        out_of_order += chaotic.out_of_order;
        duplicates += chaotic.duplicates;
        report[format!("{system}_duplicates")] = json!(chaotic.duplicates);
        if content {
            continue;
        }
        let fault_free = check_topic(
            &read_all(
                &format!("{reference_group}.{system}.product"),
                Duration::from_secs(3),
            ),
            &prefix,
        );
        for sku in expected.changes.keys() {
            let (a, b) = (chaotic.last.get(sku), fault_free.last.get(sku));
            if a != b {
                mismatched += 1;
                if examples.len() < 5 {
                    examples
                        .push(json!({"topic": system, "sku": sku, "chaotic": a, "reference": b}));
                }
            }
        }
        if system == "erp" {
            stock_off = expected
                .stock
                .iter()
                .filter(|(sku, q)| {
                    chaotic.last.get(*sku).and_then(|a| a["quantity"].as_i64()) != Some(**q)
                })
                .count();
        }
    }
    if content {
        stock_off = databases_off;
        // Which system's movements a product's stock misses shows in the band it is off by.
        let stocks = stocks_in_databases(&prefix);
        let off: Vec<Value> = expected
            .stock
            .iter()
            .filter(|(sku, q)| stocks.iter().any(|db| db.get(*sku) != Some(q)))
            .take(5)
            .map(|(sku, q)| {
                let held: Vec<Option<i64>> =
                    stocks.iter().map(|db| db.get(sku).map(|s| s - q)).collect();
                json!({"sku": sku, "expected": q, "off_by_in_erp_shop_wms": held})
            })
            .collect();
        report["stock_off_examples"] = json!(off);
    }
    let rebalances: f64 = workers
        .lock()
        .unwrap()
        .iter()
        .map(|w| w.metric("harmony_rebalances_total"))
        .sum();
    let restore_log: Vec<String> = workers
        .lock()
        .unwrap()
        .iter()
        .flat_map(|w| {
            w.log()
                .lines()
                .filter(|l| l.contains("partition state restored"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    // Every change written must have been accepted exactly once: its system's count in the
    // record's version vector says how many were. Read from the final state the workers left on
    // the changelog (an accepted change that altered no target's content publishes nothing, so
    // the target topics alone would undercount).
    let config_path = workers.lock().unwrap()[0].config_path.clone();
    let clocks = final_clocks(&config_path, &group, &expected);
    let reference_clocks = if content {
        HashMap::new()
    } else {
        final_clocks(&config_path, &reference_group, &expected)
    };
    let (mut lost, mut counted_twice) = (0u64, 0u64);
    let mut count_examples = Vec::new();
    for (sku, counts) in &expected.changes {
        for (i, system) in SYSTEMS.iter().enumerate() {
            let seen_in = |clocks: &HashMap<String, BTreeMap<String, u64>>| {
                clocks
                    .get(sku)
                    .and_then(|v| v.get(*system))
                    .copied()
                    .unwrap_or(0)
            };
            let seen = seen_in(&clocks);
            lost += counts[i].saturating_sub(seen);
            counted_twice += seen.saturating_sub(counts[i]);
            if seen != counts[i] && count_examples.len() < 5 {
                count_examples.push(json!({"sku": sku, "system": system, "written": counts[i],
                    "accepted": seen, "accepted_by_reference": seen_in(&reference_clocks)}));
            }
        }
    }
    report["count_examples"] = json!(count_examples);
    // For whoever debugs a mismatch: the record's changes as each run's stage 2 read them.
    if let Some(sku) = examples.first().and_then(|e| e["sku"].as_str()) {
        for g in [&group, &reference_group] {
            let path = std::env::temp_dir().join(format!("chaos-changes-{g}.jsonl"));
            let lines: Vec<String> =
                read_all(&format!("harmony.{g}.changes"), Duration::from_secs(3))
                    .iter()
                    .filter(|r| r.key.as_deref().is_some_and(|k| k.contains(sku)))
                    .filter_map(|r| {
                        let change =
                            harmony::ingest::internal::InternalChange::decode(r.value.as_deref()?)
                                .ok()?;
                        Some(format!(
                            "{} {}",
                            r.partition,
                            serde_json::to_string(&change).ok()?
                        ))
                    })
                    .collect();
            std::fs::write(&path, lines.join("\n")).unwrap();
            report[format!("changes_of_{g}")] = json!(path);
        }
    }
    report["lost"] = json!(lost);
    report["counted_twice"] = json!(counted_twice);
    report["stock_off"] = json!(stock_off);
    report["mismatched_records"] = json!(mismatched);
    report["mismatch_examples"] = json!(examples);
    report["out_of_order"] = json!(out_of_order);
    report["duplicates"] = json!(duplicates);
    report["rebalances_seen_by_live_workers"] = json!(rebalances);
    report["restores_logged"] = json!(restore_log.len());
    let mut restore_seconds: Vec<f64> = restore_log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seconds"].as_f64())
        .collect();
    restore_seconds.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (restore_seconds.first(), restore_seconds.last()) {
        report["restore_seconds_min_median_max"] =
            json!([first, restore_seconds[restore_seconds.len() / 2], last]);
    }
    let logged = |needle: &str| -> usize {
        workers
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.log().lines().filter(|l| l.contains(needle)).count())
            .sum()
    };
    report["guarantee"] = json!(if exactly_once() {
        "exactly_once"
    } else {
        "at_least_once"
    });
    report["partition_rewinds_logged"] = json!(logged("partition paused; it is read again"));
    report["aborted_batches_logged"] = json!(logged("batch aborted"));
    report["churned_products"] = json!(expected.changes.len() - expected.stock.len());
    report["mode"] = json!(std::env::var("CHAOS_MODE").unwrap_or_else(|_| "exact".into()));
    report["resnapshotted"] = json!(resnapshotted);
    report["loop_quiet"] = json!(quiet);
    println!("CHAOS REPORT {report}");
    eprintln!("CHAOS REPORT {report}");
    drop(reference);
    assert_eq!(lost, 0, "{report}");
    assert_eq!(counted_twice, 0, "{report}");
    assert_eq!(stock_off, 0, "{report}");
    assert_eq!(mismatched, 0, "{report}");
    assert_eq!(out_of_order, 0, "{report}");
    assert!(quiet, "the loop kept sending after convergence: {report}");
    if exactly_once() {
        assert_eq!(duplicates, 0, "{report}");
    }
}
