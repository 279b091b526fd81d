//! Stage 1 against the real stack: with entities declared, each system's change of its own
//! table arrives on the internal topic as a change of one logical record, keyed so that every
//! system's changes to that record share a partition.

use std::time::Duration;

use serde_json::{json, Value};

use crate::product::{Product, GUARDED_SUM};
use crate::support::{self, psql, unique, Harmony, Record, TopicReader};

/// The product of the stack's demo tables (the warehouse's `stock`), stock summed and guarded,
/// without targets.
pub(crate) fn product() -> String {
    Product::new()
        .field("quantity", GUARDED_SUM)
        .source("erp", "products", &[])
        .source("shop", "items", &[("active", "active")])
        .source(
            "wms",
            "stock",
            &[("quantity", "quantity"), ("reserved", "reserved")],
        )
        .toml()
}

fn field<'v>(record: &'v Value, name: &str) -> &'v Value {
    record["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f[0] == name))
        .map_or(&Value::Null, |f| &f[1])
}

#[test]
fn each_systems_change_becomes_a_change_of_one_record_on_one_partition() {
    let Some(mut options) = support::on_stack("e2e-ingest") else {
        return;
    };
    let group = options.group_id.clone();
    options.extra_toml = product();
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("ING");

    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Scale', 24.90, 30)")).unwrap();
    psql("shop", &format!("INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Kitchen scale', 26.50, 30)")).unwrap();
    psql("wms", &format!("INSERT INTO stock (sku, location, quantity, reserved) VALUES ('{sku}', 'S-01-1', 28, 2)")).unwrap();
    psql(
        "shop",
        &format!("DELETE FROM items WHERE item_sku = '{sku}'"),
    )
    .unwrap();

    let key = format!(r#"product:["{sku}"]"#);
    let mut internal = TopicReader::new(&format!("harmony.{group}.changes")).unwrap();
    let ours = |records: &[Record]| {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_str()))
            .count()
    };
    assert!(
        internal
            .read_until(Duration::from_secs(60), |r| ours(r) >= 4)
            .unwrap(),
        "{} of 4 record changes arrived\n{}",
        ours(&internal.records),
        harmony.log()
    );
    let records: Vec<&Record> = internal
        .records
        .iter()
        .filter(|r| r.key.as_deref() == Some(key.as_str()))
        .collect();
    assert!(
        records.iter().all(|r| r.partition == records[0].partition),
        "one record, one partition"
    );
    let by = |system: &str, kind: &str| {
        records
            .iter()
            .map(|r| r.json())
            .find(|v| v["system"] == system && v["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} from {system}"))
    };

    let erp = by("erp", "upsert");
    assert_eq!(erp["entity"], "product");
    assert_eq!(erp["key"], format!(r#"["{sku}"]"#));
    assert_eq!(field(&erp, "name"), &json!({"text": "Scale"}));
    assert_eq!(
        field(&erp, "price"),
        &json!({"text": "24.90"}),
        "string decimal mode: exact text"
    );
    assert_eq!(field(&erp, "quantity"), &json!({"int": 30}));
    assert!(erp["position"]["postgres"][1].as_u64().unwrap() > 0);
    assert_eq!(erp["origin"]["topic"], "erp.public.products");

    // The shop's own column names become the entity's field names.
    let shop = by("shop", "upsert");
    assert_eq!(field(&shop, "name"), &json!({"text": "Kitchen scale"}));
    assert_eq!(field(&shop, "quantity"), &json!({"int": 30}));
    assert_eq!(field(&shop, "active"), &json!({"bool": true}));
    assert_eq!(
        field(&shop, "sku"),
        &Value::Null,
        "the key is the record's key, not a field"
    );

    // The warehouse's composite key (sku, location) maps onto the product by sku alone.
    let wms = by("wms", "upsert");
    assert_eq!(field(&wms, "quantity"), &json!({"int": 28}));
    assert_eq!(field(&wms, "reserved"), &json!({"int": 2}));

    let deleted = by("shop", "delete");
    assert_eq!(
        deleted["fields"],
        json!([]),
        "a delete carries the key only"
    );

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// Stage 2 against the real stack: the resolved record reaches every other system's target
/// topic in that system's own columns, and a concurrent write becomes a conflict record.
#[test]
fn resolved_records_reach_each_target_in_its_own_columns_and_conflicts_are_recorded() {
    let Some(mut options) = support::on_stack("e2e-resolve") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(
        &group,
        &["erp", "shop", "wms"],
        "format = \"json_schemaless\"
",
    );
    options.extra_toml = format!("{}{targets}", product());
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("RES");

    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Scale', 24.90, 30)")).unwrap();
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();
    let ours = |key: &'static str| {
        let sku = sku.clone();
        move |r: &Record| {
            serde_json::from_str::<Value>(r.key.as_deref().unwrap_or("null"))
                .ok()
                .is_some_and(|k| k[key] == sku.as_str())
        }
    };
    let in_shop = ours("item_sku");
    assert!(
        shop.read_until(Duration::from_secs(60), |r| r.iter().any(&in_shop))
            .unwrap(),
        "{}",
        harmony.log()
    );
    let record = shop.records.iter().find(|r| in_shop(r)).unwrap().json();
    assert_eq!(record["op"], "u");
    assert_eq!(record["after"]["item_sku"], sku.as_str());
    assert_eq!(
        record["after"]["title"], "Scale",
        "the erp's name in the shop's column"
    );
    assert_eq!(record["after"]["price"], "24.90");
    assert_eq!(record["after"]["stock"], 30);
    assert_eq!(record["source"]["table"], "public.items");
    assert_eq!(record["harmony"]["origin"], "erp");
    assert_eq!(record["harmony"]["version"]["erp"], 1);

    // The warehouse writes its own count without having applied the erp's delivery: a
    // concurrent write. Its first report cannot be a movement (sum), so 30 stands, the
    // conflict is recorded, and the warehouse is sent 30.
    psql("wms", &format!("INSERT INTO stock (sku, location, quantity, reserved) VALUES ('{sku}', 'S-01-1', 28, 2)")).unwrap();
    let mut conflicts = TopicReader::new(&format!("harmony.{group}.conflicts")).unwrap();
    let key = format!(r#"product:["{sku}"]"#);
    let is_ours = |r: &Record| r.key.as_deref() == Some(key.as_str());
    assert!(
        conflicts
            .read_until(Duration::from_secs(60), |r| r.iter().any(is_ours))
            .unwrap(),
        "{}",
        harmony.log()
    );
    let conflict = conflicts
        .records
        .iter()
        .find(|r| is_ours(r))
        .unwrap()
        .json();
    assert_eq!(conflict["field"], "quantity");
    assert_eq!(conflict["strategy"], "sum");
    assert_eq!(conflict["resolved"], json!({"int": 30}));
    assert!(conflict["id"].as_str().unwrap().starts_with("c-"));

    let mut wms = TopicReader::new(&format!("{group}.wms.product")).unwrap();
    let in_wms = ours("sku");
    assert!(
        wms.read_until(Duration::from_secs(60), |r| r
            .iter()
            .filter(|x| in_wms(x))
            .count()
            >= 2)
            .unwrap(),
        "{}",
        harmony.log()
    );
    let last = wms.records.iter().rev().find(|r| in_wms(r)).unwrap().json();
    assert_eq!(
        last["after"],
        json!({"sku": sku, "quantity": 30, "reserved": 2})
    );

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// A `manual` field holds its value on a conflict until an operator settles it with
/// `harmony resolve`; the settled value then reaches every target.
#[test]
fn a_held_conflict_is_settled_by_harmony_resolve() {
    let Some(mut options) = support::on_stack("e2e-manual") else {
        return;
    };
    let group = options.group_id.clone();
    let targets = support::product_targets(&group, &["erp", "shop"], "");
    options.extra_toml = format!(
        "{}\n  [entities.fields.name]\n  strategy = \"manual\"\n{targets}",
        product()
    );
    let mut harmony = Harmony::start(&options).unwrap();
    let sku = unique("MAN");

    psql("erp", &format!("INSERT INTO products (sku, name, price, quantity) VALUES ('{sku}', 'Scale', 24.90, 30)")).unwrap();
    let mut erp = TopicReader::new(&format!("{group}.erp.product")).unwrap();
    let mut conflicts = TopicReader::new(&format!("harmony.{group}.conflicts")).unwrap();
    // The shop lists the product under its own name without having seen the erp's.
    psql("shop", &format!("INSERT INTO items (item_sku, title, price, stock) VALUES ('{sku}', 'Kitchen scale', 24.90, 30)")).unwrap();
    let key = format!(r#"product:["{sku}"]"#);
    let held = |r: &Record| r.key.as_deref() == Some(key.as_str()) && r.json()["field"] == "name";
    assert!(
        conflicts
            .read_until(Duration::from_secs(60), |rs| rs.iter().any(held))
            .unwrap(),
        "{}",
        harmony.log()
    );
    let conflict = conflicts.records.iter().find(|r| held(r)).unwrap().json();
    assert_eq!(conflict["strategy"], "manual");
    assert_eq!(conflict["pending"], true);
    assert_eq!(conflict["winner"], Value::Null);
    // Held: whichever of the two the engine met first (the topics are read independently).
    let held_name = conflict["resolved"]["text"].as_str().unwrap();
    assert!(
        ["Scale", "Kitchen scale"].contains(&held_name),
        "{conflict}"
    );
    let (pick, picked_name) = if held_name == "Scale" {
        ("shop", "Kitchen scale")
    } else {
        ("erp", "Scale")
    };
    let id = conflict["id"].as_str().unwrap();

    // Asking for a system that wrote no candidate is refused and changes nothing.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_harmony"))
        .args(["resolve", "--config"])
        .arg(&harmony.config_path)
        .args([id, "--pick", "wms"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no candidate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let settled = std::process::Command::new(env!("CARGO_BIN_EXE_harmony"))
        .args(["resolve", "--config"])
        .arg(&harmony.config_path)
        .args([id, "--pick", pick])
        .output()
        .unwrap();
    assert!(
        settled.status.success(),
        "{}",
        String::from_utf8_lossy(&settled.stderr)
    );
    assert!(String::from_utf8_lossy(&settled.stdout).contains("settled"));

    let by_operator = |r: &Record| {
        let v = r.json();
        v["payload"]["harmony"]["origin"] == "operator"
            && v["payload"]["after"]["sku"] == sku.as_str()
    };
    assert!(
        erp.read_until(Duration::from_secs(60), |rs| rs.iter().any(by_operator))
            .unwrap(),
        "{}",
        harmony.log()
    );
    let settled = erp.records.iter().find(|r| by_operator(r)).unwrap().json();
    assert_eq!(settled["payload"]["after"]["name"], picked_name);

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}
