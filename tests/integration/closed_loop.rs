//! The closed loop on the real stack: Debezium captures erp, shop and wms; harmony resolves;
//! Debezium's JDBC sink writes each target topic back into its database; Debezium captures
//! that write too. Concurrent updates in all three databases must converge to one row, the
//! conflicts must be on the conflicts topic, and the loop must then go quiet — the proof that
//! echo suppression holds against real systems, not only in the engine's tests.
//!
//! The test owns its tables (`loop_*`, shaped like the demo's), its source connectors (streaming
//! only, `snapshot.mode=no_data`) and its sinks, so that no other test's rows are written back
//! into the databases the other tests read.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::product::{Product, GUARDED_SUM};
use crate::support::{
    self, deployed_connector, psql, unique, wait_until, Connectors, Harmony, HarmonyOptions,
    Record, TopicReader,
};

const SYSTEMS: [(&str, &str, &str); 3] = [
    // (system, its demo table the loop table copies, loop table)
    ("erp", "products", "loop_products"),
    ("shop", "items", "loop_items"),
    ("wms", "skus", "loop_skus"),
];

/// examples/inventory.toml's product entity over the loop tables.
fn product() -> String {
    let tags = ("tags", "tags");
    Product::new()
        .setting("default_strategy = \"lww\"")
        .setting("on_delete_conflict = \"delete_wins\"")
        .field("quantity", GUARDED_SUM)
        .field(
            "name",
            "strategy = \"priority\"\npriority = [\"erp\", \"shop\"]",
        )
        // Labels every system may add or remove: an observed-remove set.
        .field("tags", "strategy = \"merge\"")
        .source("erp", "loop_products", &[tags])
        .with("required = [\"name\", \"price\"]")
        .source("shop", "loop_items", &[("active", "active"), tags])
        .with("required = [\"name\", \"price\"]")
        .source(
            "wms",
            "loop_skus",
            &[("on_hand", "quantity"), ("reserved", "reserved"), tags],
        )
        .with("version_column = \"harmony_version\"")
        .toml()
}

/// One row of a loop table as (column → text), or `None` when absent.
fn row(
    db: &str,
    table: &str,
    key_column: &str,
    sku: &str,
    columns: &str,
) -> Result<Option<String>> {
    let out = psql(
        db,
        &format!("SELECT {columns} FROM {table} WHERE {key_column} = '{sku}'"),
    )?;
    Ok((!out.is_empty()).then_some(out))
}

/// The three rows of `sku` as each database holds them: erp, shop, wms.
fn rows(sku: &str) -> Result<[Option<String>; 3]> {
    Ok([
        row(
            "erp",
            "loop_products",
            "sku",
            sku,
            "name, price, quantity, array_to_string(tags, ',')",
        )?,
        row(
            "shop",
            "loop_items",
            "item_sku",
            sku,
            "title, price, stock, array_to_string(tags, ',')",
        )?,
        row(
            "wms",
            "loop_skus",
            "sku",
            sku,
            "on_hand, array_to_string(tags, ',')",
        )?,
    ])
}

fn wait_rows(sku: &str, expected: [Option<&str>; 3], what: &str, harmony: &Harmony) {
    let result = wait_until(Duration::from_secs(90), what, || {
        let now = rows(sku)?;
        Ok(now
            .iter()
            .map(Option::as_deref)
            .eq(expected.iter().copied()))
    });
    if let Err(error) = result {
        panic!(
            "{error}: rows now {:?}, expected {expected:?}\n{}",
            rows(sku),
            harmony.log()
        );
    }
}

/// Every record so far on the target topics and the conflicts topic for `sku`.
fn records_of(
    readers: &mut BTreeMap<String, TopicReader>,
    sku: &str,
) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for (topic, reader) in readers.iter_mut() {
        reader.read_for(Duration::from_millis(500))?;
        out.extend(
            reader
                .records
                .iter()
                .filter(|r| r.keyed_by(sku))
                .map(|r| (topic.clone(), r.clone())),
        );
    }
    Ok(out)
}

#[test]
fn concurrent_updates_in_three_databases_converge_through_the_jdbc_sink_and_the_loop_goes_quiet() {
    if !support::stack_available("closed loop") {
        return;
    }
    let run = unique("loop").replace('-', "_");
    for (db, demo_table, table) in SYSTEMS {
        psql(
            db,
            &format!("CREATE TABLE IF NOT EXISTS {table} (LIKE {demo_table} INCLUDING ALL)"),
        )
        .unwrap();
    }
    for (db, _, table) in SYSTEMS {
        psql(
            db,
            &format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS tags text[]"),
        )
        .unwrap();
    }
    // The warehouse runs in exact echo mode, the erp and the shop in content mode.
    psql(
        "wms",
        "ALTER TABLE loop_skus ADD COLUMN IF NOT EXISTS harmony_version text",
    )
    .unwrap();
    let mut stack = Connectors::default();

    // Sources: streaming only, from a slot of their own.
    let tables = SYSTEMS.map(|(system, _, table)| (system, table));
    stack.stream_tables(&run, &tables).unwrap();

    let group = run.replace('_', "-");
    let mut options = HarmonyOptions::stack(group.clone());
    options.systems = SYSTEMS
        .iter()
        .map(|(system, _, table)| {
            (
                (*system).to_owned(),
                vec![format!("{run}_{system}.public.{table}")],
            )
        })
        .collect();
    let targets = support::product_targets(&group, &SYSTEMS.map(|(s, _, _)| s), "");
    options.extra_toml = format!("{}{targets}", product());
    let mut harmony = Harmony::start(&options).unwrap();
    let conflicts_topic = format!("harmony.{group}.conflicts");
    wait_until(Duration::from_secs(30), "harmony's topics", || {
        Ok(TopicReader::new(&conflicts_topic).is_ok())
    })
    .unwrap();

    // Sinks: the deployed configs, on this run's topics and tables.
    let mut sinks = Vec::new();
    for (system, _, table) in SYSTEMS {
        let name = format!("{run}_{system}_sink");
        let mut config = deployed_connector(&format!("{system}-sink")).unwrap();
        config.insert("topics".into(), json!(format!("{group}.{system}.product")));
        config.insert("table.name.format".into(), json!(table));
        stack.register(&name, config).unwrap();
        sinks.push(name);
    }
    stack.wait_state(&sinks, "RUNNING").unwrap();

    let sku = unique("LOOP");
    // 1. A product created in the erp reaches the shop and the warehouse.
    psql(
        "erp",
        &format!("INSERT INTO loop_products (sku, name, price, quantity, tags) VALUES ('{sku}', 'Kettle', 59.00, 100, ARRAY['new'])"),
    )
    .unwrap();
    wait_rows(
        &sku,
        [
            Some("Kettle|59.00|100|new"),
            Some("Kettle|59.00|100|new"),
            Some("100|new"),
        ],
        "the erp's product in every database",
        &harmony,
    );

    // 2. Concurrent updates: the sinks are held, so no system sees another's change before
    // making its own. The shop sells 5 and renames; the warehouse ships 2; the erp renames
    // and reprices.
    stack.set_paused(&sinks, true).unwrap();
    psql(
        "shop",
        &format!("UPDATE loop_items SET stock = stock - 5, title = 'Kettle (web)', tags = array_append(tags, 'sale') WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    psql(
        "wms",
        &format!(
            "UPDATE loop_skus SET on_hand = on_hand - 2, tags = ARRAY['bulky'] WHERE sku = '{sku}'"
        ),
    )
    .unwrap();
    psql(
        "erp",
        &format!(
            "UPDATE loop_products SET name = 'Kettle 1.7 l', price = 57.50 WHERE sku = '{sku}'"
        ),
    )
    .unwrap();

    let mut conflicts = TopicReader::new(&conflicts_topic).unwrap();
    let record_key = format!(r#"product:["{sku}"]"#);
    let ours = |r: &Record| r.key.as_deref() == Some(record_key.as_str());
    assert!(
        conflicts
            .read_until(Duration::from_secs(60), |rs| rs
                .iter()
                .filter(|r| ours(r))
                .count()
                >= 3)
            .unwrap(),
        "three conflicts expected\n{}",
        harmony.log()
    );
    let mut by_field: BTreeMap<String, Value> = BTreeMap::new();
    for record in conflicts.records.iter().filter(|r| ours(r)) {
        let c = record.json();
        by_field.insert(c["field"].as_str().unwrap().to_owned(), c);
    }
    assert_eq!(
        by_field.keys().collect::<Vec<_>>(),
        ["name", "quantity", "tags"],
        "the price changed in one system only: {by_field:?}"
    );
    // The shop added "sale"; the warehouse, which held "new", replaced it by "bulky".
    let tags = &by_field["tags"];
    assert_eq!(tags["strategy"], "merge");
    assert_eq!(tags["resolved"], json!({"json": r#"["bulky","sale"]"#}));
    let quantity = &by_field["quantity"];
    assert_eq!(quantity["strategy"], "sum");
    assert_eq!(quantity["resolved"], json!({"int": 93}), "100 - 5 - 2");
    assert_eq!(quantity["winner"], Value::Null);
    let name = &by_field["name"];
    assert_eq!(name["strategy"], "priority");
    assert_eq!(name["winner"], "erp");
    assert_eq!(name["resolved"], json!({"text": "Kettle 1.7 l"}));
    let systems: Vec<&str> = name["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["system"].as_str().unwrap())
        .collect();
    assert!(
        systems.contains(&"erp") && systems.contains(&"shop"),
        "{name}"
    );

    // 3. The sinks apply every version harmony sent meanwhile; the databases converge.
    stack.set_paused(&sinks, false).unwrap();
    let converged = [
        Some("Kettle 1.7 l|57.50|93|bulky,sale"),
        Some("Kettle 1.7 l|57.50|93|bulky,sale"),
        Some("93|bulky,sale"),
    ];
    wait_rows(&sku, converged, "the three databases to converge", &harmony);
    // Exact mode: the warehouse's row carries the version it was last sent.
    let version: Value = serde_json::from_str(
        &psql(
            "wms",
            &format!("SELECT harmony_version FROM loop_skus WHERE sku = '{sku}'"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        version["erp"].as_u64().unwrap() >= 2 && version["wms"].as_u64().unwrap() >= 1,
        "{version}"
    );

    // What the sinks read is Kafka Connect JSON with schemas, harmony's version in a block and
    // in headers, and the conflicts it resolved named.
    let mut readers: BTreeMap<String, TopicReader> = SYSTEMS
        .iter()
        .map(|(s, _, _)| {
            let topic = format!("{group}.{s}.product");
            let reader = TopicReader::new(&topic).unwrap();
            (topic, reader)
        })
        .collect();
    let delivered = records_of(&mut readers, &sku).unwrap();
    let (_, last_wms) = delivered
        .iter()
        .rev()
        .find(|(t, _)| t.ends_with(".wms.product"))
        .unwrap();
    let value = last_wms.json();
    assert_eq!(
        value["schema"]["name"],
        format!("{group}.wms.product.Envelope")
    );
    assert_eq!(value["payload"]["after"]["on_hand"], 93);
    assert!(last_wms.headers.contains_key("harmony.version"));
    let with_conflicts = delivered
        .iter()
        .filter(|(_, r)| r.headers.contains_key("harmony.conflicts"))
        .count();
    assert!(
        with_conflicts > 0,
        "deliveries name the conflicts they carry"
    );

    // 4. Quiet: each database's write of a delivery comes back as an echo, and nothing more
    // is published for the record.
    let settle = |readers: &mut BTreeMap<String, TopicReader>| -> usize {
        let mut last = records_of(readers, &sku).unwrap().len();
        wait_until(Duration::from_secs(60), "no further deliveries", || {
            std::thread::sleep(Duration::from_secs(6));
            let now = records_of(readers, &sku)?.len();
            let quiet = now == last;
            last = now;
            Ok(quiet)
        })
        .unwrap();
        last
    };
    let quiet = settle(&mut readers);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        records_of(&mut readers, &sku).unwrap().len(),
        quiet,
        "the loop keeps publishing\n{}",
        harmony.log()
    );
    wait_rows(&sku, converged, "the databases to stay converged", &harmony);
    let metrics = support::http_get(&harmony.http_address().unwrap(), "/metrics")
        .unwrap()
        .1;
    let echoes: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("harmony_record_changes_total{") && l.contains("outcome=\"echo\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(echoes >= 3.0, "echoes suppressed: {echoes}\n{metrics}");

    // 5. A guard: the shop oversells to -1; the write is refused and the shop is sent 93 back.
    psql(
        "shop",
        &format!("UPDATE loop_items SET stock = -1 WHERE item_sku = '{sku}'"),
    )
    .unwrap();
    wait_rows(
        &sku,
        converged,
        "the shop's stock restored by the guard",
        &harmony,
    );

    // 6. A delete in the erp removes the row everywhere, and its echoes end the loop too.
    psql(
        "erp",
        &format!("DELETE FROM loop_products WHERE sku = '{sku}'"),
    )
    .unwrap();
    wait_rows(&sku, [None, None, None], "the delete everywhere", &harmony);
    let before = settle(&mut readers);
    let tombstones = records_of(&mut readers, &sku)
        .unwrap()
        .iter()
        .filter(|(_, r)| r.value.is_none())
        .count();
    assert!(
        tombstones >= 2,
        "shop and wms get a delete and its tombstone"
    );
    assert_eq!(records_of(&mut readers, &sku).unwrap().len(), before);

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}
