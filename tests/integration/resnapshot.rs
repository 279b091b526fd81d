//! A source connector that snapshots again (its offsets reset: here, a connector of another
//! name on the same slot), against the real Debezium connector: the change made while it was
//! stopped reaches harmony only as a snapshot read (`op = r`, `sequence = [null, LSN]`), and the
//! first changes streamed after the snapshot have no previous commit LSN either. Before, harmony
//! compared the `sequence` pair as a whole, read both as behind what it had applied, and dropped
//! them as replays: the targets never received them.

use std::time::Duration;

use serde_json::{json, Value};

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
    options.extra_toml = format!(
        r#"
[[entities]]
name = "product"
key = ["sku"]
ignore = ["updated_at"]

  [[entities.sources]]
  system = "erp"
  table = "public.{table}"
  columns = {{ sku = "sku", name = "name", price = "price", quantity = "quantity", updated_at = "updated_at" }}

  [[entities.sources]]
  system = "shop"
  table = "public.items"
  columns = {{ item_sku = "sku", title = "name", price = "price", stock = "quantity", updated_at = "updated_at" }}

[[targets]]
system = "shop"
entities = ["product"]
topic = "{group}.shop.product"
"#
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
