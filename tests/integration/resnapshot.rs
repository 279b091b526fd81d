//! A source connector that snapshots again (its offsets reset: here, a connector of another
//! name on the same slot), against the real Debezium connector: the change made while it was
//! stopped reaches harmony only as a snapshot read (`op = r`, `sequence = [null, LSN]`), and the
//! first changes streamed after the snapshot have no previous commit LSN either. Before, harmony
//! compared the `sequence` pair as a whole, read both as behind what it had applied, and dropped
//! them as replays: the targets never received them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::product::Product;
use crate::support::{self, psql, unique, Connectors, Harmony, HarmonyOptions, TopicReader};

#[test]
fn changes_after_a_connector_resnapshot_reach_the_targets() {
    if !support::stack_available("resnapshot") {
        return;
    }
    let run = unique("resnap").replace('-', "_");
    let table = format!("{run}_products");
    psql(
        "erp",
        &format!("CREATE TABLE {table} (LIKE products INCLUDING ALL)"),
    )
    .unwrap();
    let mut connectors = Connectors::default();
    connectors.stream_tables(&run, &[("erp", &table)]).unwrap();
    let source = format!("{run}_erp");
    let group = run.replace('_', "-");
    let mut options = HarmonyOptions::stack(group.clone());
    options.systems = vec![
        ("erp".into(), vec![format!("{source}.public.{table}")]),
        // Not streamed here: the shop only receives.
        ("shop".into(), vec![format!("{run}_shop_unused")]),
    ];
    support::create_topic(&format!("{run}_shop_unused"), 1).unwrap();
    let product = Product::new()
        .source("erp", &table, &[])
        .source("shop", "items", &[]);
    options.extra_toml = format!(
        "{}{}",
        product.toml(),
        support::product_targets(&group, &["shop"], "")
    );
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("RS");
    psql(
        "erp",
        &format!(
            "INSERT INTO {table} (sku, name, price, quantity) VALUES ('{sku}', 'Kettle', 30.00, 5)"
        ),
    )
    .unwrap();
    psql(
        "erp",
        &format!("UPDATE {table} SET price = 31.00 WHERE sku = '{sku}'"),
    )
    .unwrap();
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();
    let prices = |shop: &TopicReader| -> Vec<Value> {
        shop.records
            .iter()
            .map(|r| r.json()["payload"]["after"]["price"].clone())
            .collect()
    };
    let sent = |shop: &mut TopicReader, price: &str| {
        shop.read_until(Duration::from_secs(60), |rs| {
            rs.iter()
                .any(|r| r.json()["payload"]["after"]["price"] == json!(price))
        })
        .unwrap()
    };
    assert!(
        sent(&mut shop, "31.00"),
        "{:?}\n{}",
        prices(&shop),
        harmony.log()
    );

    // The connector goes away; the price changes meanwhile. A connector without offsets on the
    // same slot snapshots the table again: the change arrives as a snapshot read.
    connectors.remove(&source).unwrap();
    psql(
        "erp",
        &format!("UPDATE {table} SET price = 32.00 WHERE sku = '{sku}'"),
    )
    .unwrap();
    connectors.resnapshot_removed(&run, "erp", &table).unwrap();
    assert!(
        sent(&mut shop, "32.00"),
        "the snapshot read of the change made while the connector was away: {:?}\n{}",
        prices(&shop),
        harmony.log()
    );
    // Streamed after the snapshot.
    psql(
        "erp",
        &format!("UPDATE {table} SET price = 33.00 WHERE sku = '{sku}'"),
    )
    .unwrap();
    assert!(
        sent(&mut shop, "33.00"),
        "the first change streamed after the snapshot: {:?}\n{}",
        prices(&shop),
        harmony.log()
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
    psql("erp", &format!("DROP TABLE {table}")).unwrap();
}

/// A Debezium change of `public.items` row `sku` at LSN `lsn`, committed at `ts_ms`.
fn item_change(sku: &str, price: &str, lsn: u64, ts_ms: i64) -> Vec<u8> {
    format!(
        r#"{{"before":null,"after":{{"sku":"{sku}","price":"{price}"}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"items","ts_ms":{ts_ms},"sequence":"[\"{lsn}\",\"{lsn}\"]"}},"op":"u","ts_ms":{ts_ms}}}"#
    )
    .into_bytes()
}

/// A source whose positions went backwards (restored from a backup), on the real broker, under
/// each policy: `accept` applies the change and counts it; `stop` holds the partition at it —
/// neither it nor anything after it reaches the target — and counts it. Before, both were
/// dropped as replays without a trace.
#[test]
fn a_source_whose_positions_go_back_is_applied_or_stops_its_partition_by_policy() {
    if !support::stack_available("position regression") {
        return;
    }
    for policy in ["accept", "stop"] {
        let source = unique("e2e-regress-erp");
        let target = unique("e2e-regress-shop");
        support::create_topic(&source, 1).unwrap();
        support::create_topic(&target, 1).unwrap();
        let mut options = HarmonyOptions::stack(unique("e2e-regress"));
        // The erp's own [[systems]] entry, with its policy; the shop only receives.
        options.systems.clear();
        let unused = format!("{source}-shop-unused");
        support::create_topic(&unused, 1).unwrap();
        options.extra_toml = format!(
            r#"
[[systems]]
name = "erp"
topics = ["{source}"]
on_position_regression = "{policy}"

[[systems]]
name = "shop"
topics = ["{unused}"]

[[entities]]
name = "item"
key = ["sku"]

  [[entities.sources]]
  system = "erp"
  table = "public.items"
  columns = {{ sku = "sku", price = "price" }}

  [[entities.sources]]
  system = "shop"
  table = "public.items"
  columns = {{ sku = "sku", price = "price" }}

[[targets]]
system = "shop"
entities = ["item"]
topic = "{target}"
"#
        );
        let mut harmony = Harmony::start(&options).unwrap();
        let sku = unique("REG");
        let key = format!(r#"{{"sku":"{sku}"}}"#);
        let changes = [
            item_change(&sku, "10.00", 5_000, 1_700_000_100_000),
            // The database restored from last night's backup: behind, committed later.
            item_change(&sku, "11.00", 3_000, 1_700_000_900_000),
            item_change(&sku, "12.00", 3_100, 1_700_000_901_000),
        ];
        let records: Vec<_> = changes
            .iter()
            .map(|v| (Some(key.as_bytes()), Some(v.as_slice())))
            .collect();
        support::produce_raw(&source, &records).unwrap();
        let mut shop = TopicReader::new(&target).unwrap();
        let prices = |shop: &TopicReader| -> Vec<String> {
            shop.records
                .iter()
                .filter_map(|r| {
                    r.json()["payload"]["after"]["price"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        };
        match policy {
            "accept" => {
                assert!(
                    shop.read_until(Duration::from_secs(60), |rs| rs.len() >= 3)
                        .unwrap(),
                    "{:?}\n{}",
                    prices(&shop),
                    harmony.log()
                );
                assert_eq!(prices(&shop), ["10.00", "11.00", "12.00"]);
            }
            _ => {
                shop.read_until(Duration::from_secs(20), |rs| rs.len() >= 3)
                    .unwrap();
                assert_eq!(prices(&shop), ["10.00"], "{}", harmony.log());
                assert!(harmony.log().contains("on_position_regression"));
            }
        }
        // Only the erp's changes went back (its series is labelled with its policy).
        let counted = harmony.metric("harmony_position_regressions_total");
        assert!(counted >= 1.0, "{policy}: {counted}\n{}", harmony.log());
        // Every system's series, at zero from the start, labelled with its policy.
        assert_eq!(
            harmony.metric_labels("harmony_position_regressions_total", "policy"),
            if policy == "stop" {
                vec!["accept", "stop"]
            } else {
                vec!["accept"]
            }
        );
        assert!(harmony
            .terminate(Duration::from_secs(30))
            .unwrap()
            .success());
    }
}
