//! DDL on a mapped table while harmony runs, on the real stack, under each
//! `on_schema_change` policy: a column added is counted and changes keep flowing; a mapped
//! column renamed away is never dropped silently — under `evolve` and `ignore` its field keeps
//! its last value and the missing-column gauge (and alert) names the table, under `stop` the
//! partition waits at the first record of the new shape until the policy changes, and then
//! nothing of it is lost.

use std::time::Duration;

use crate::support::{
    self, psql, unique, wait_until, Connectors, Harmony, HarmonyOptions, TopicReader,
};

const SYSTEMS: [(&str, &str, &str); 2] =
    [("erp", "products", "sku"), ("shop", "items", "item_sku")];

fn entity_toml(prefix: &str) -> String {
    let mut out = String::from(
        "\n[[entities]]\nname = \"product\"\nkey = [\"sku\"]\ndefault_strategy = \"lww\"\n",
    );
    for (system, suffix, key) in SYSTEMS {
        out.push_str(&format!(
            "\n  [[entities.sources]]\n  system = \"{system}\"\n  table = \"public.{prefix}_{suffix}\"\n  columns = {{ {key} = \"sku\", name = \"name\", price = \"price\" }}\n"
        ));
    }
    out
}

fn options(group: &str, run: &str, prefix: &str, policy: &str) -> HarmonyOptions {
    let mut options = HarmonyOptions::stack(group.to_owned());
    options.systems = SYSTEMS
        .iter()
        .map(|(system, suffix, _)| {
            (
                (*system).to_owned(),
                vec![format!("{run}_{system}.public.{prefix}_{suffix}")],
            )
        })
        .collect();
    let targets = support::product_targets(group, &["shop"], "");
    options.extra_toml = format!("{}{targets}", entity_toml(prefix));
    // The erp's policy, written into its [[systems]] table by the generated config.
    options.system_settings = vec![("erp".into(), format!("on_schema_change = \"{policy}\""))];
    options
}

/// The shop's deliveries of `sku` so far: (name, price) of each.
fn deliveries(reader: &mut TopicReader, sku: &str) -> Vec<(String, String)> {
    let _ = reader.read_for(Duration::from_millis(300));
    reader
        .records
        .iter()
        .filter(|r| r.keyed_by(sku) && r.value.is_some())
        .map(|r| {
            let after = &r.json()["payload"]["after"];
            (
                after["name"].as_str().unwrap_or("").to_owned(),
                after["price"].to_string(),
            )
        })
        .collect()
}

fn wait_delivered(reader: &mut TopicReader, sku: &str, name: &str, harmony: &Harmony, what: &str) {
    let found = wait_until(Duration::from_secs(60), what, || {
        Ok(deliveries(reader, sku).iter().any(|(n, _)| n == name))
    });
    if let Err(e) = found {
        panic!("{e}: {:?}\n{}", deliveries(reader, sku), harmony.log());
    }
}

fn ddl_while_running(policy: &str) {
    if !support::stack_available(&format!("schema change, {policy}")) {
        return;
    }
    let prefix = format!("ddl_{policy}");
    for (system, suffix, key) in SYSTEMS {
        let table = format!("{prefix}_{suffix}");
        psql(system, &format!("DROP TABLE IF EXISTS {table}")).unwrap();
        psql(
            system,
            &format!(
                "CREATE TABLE {table} ({key} text PRIMARY KEY, name text, price numeric(10,2))"
            ),
        )
        .unwrap();
    }
    let run = unique("ddl").replace('-', "_");
    let mut stack = Connectors::default();
    let tables: Vec<(&'static str, String)> = SYSTEMS
        .iter()
        .map(|(system, suffix, _)| (*system, format!("{prefix}_{suffix}")))
        .collect();
    let tables: Vec<(&'static str, &str)> = tables.iter().map(|(s, t)| (*s, t.as_str())).collect();
    stack.stream_tables(&run, &tables).unwrap();
    let group = run.replace('_', "-");
    let mut harmony = Harmony::start(&options(&group, &run, &prefix, policy)).unwrap();
    let erp_table = format!("{prefix}_products");
    let label = format!("public.{erp_table}");
    wait_until(Duration::from_secs(30), "harmony's topics", || {
        Ok(TopicReader::new(&format!("{group}.shop.product")).is_ok())
    })
    .unwrap();
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();

    // 1. Before any DDL.
    let sku = unique("DDL");
    psql(
        "erp",
        &format!("INSERT INTO {erp_table} VALUES ('{sku}', 'Kettle', 10.00)"),
    )
    .unwrap();
    wait_delivered(&mut shop, &sku, "Kettle", &harmony, "the first delivery");

    // 2. A column added: counted once, under every policy, and changes keep flowing.
    psql(
        "erp",
        &format!("ALTER TABLE {erp_table} ADD COLUMN note text"),
    )
    .unwrap();
    psql(
        "erp",
        &format!("UPDATE {erp_table} SET name = 'Kettle 2', note = 'n' WHERE sku = '{sku}'"),
    )
    .unwrap();
    wait_delivered(
        &mut shop,
        &sku,
        "Kettle 2",
        &harmony,
        "a change after ADD COLUMN",
    );
    // The sum of `name`'s series that carry every one of `labels` (`key="value"`).
    let series = |harmony: &Harmony, name: &str, labels: &[&str]| -> Option<f64> {
        let body = support::http_get(&harmony.http_address()?, "/metrics")
            .ok()?
            .1;
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    };
    let table_label = format!("table=\"{label}\"");
    wait_until(Duration::from_secs(10), "the added column counted", || {
        Ok(series(
            &harmony,
            "harmony_schema_changes_total",
            &[table_label.as_str(), "kind=\"add\""],
        ) == Some(1.0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", harmony.log()));

    // 3. The mapped column `name` renamed away.
    psql(
        "erp",
        &format!("ALTER TABLE {erp_table} RENAME COLUMN name TO title"),
    )
    .unwrap();
    psql(
        "erp",
        &format!("UPDATE {erp_table} SET price = 11.00 WHERE sku = '{sku}'"),
    )
    .unwrap();
    let missing = |harmony: &Harmony| {
        series(
            harmony,
            "harmony_schema_missing_columns",
            &[table_label.as_str()],
        )
    };
    if policy == "stop" {
        // The partition waits at the change: nothing at 11.00 goes out.
        wait_until(Duration::from_secs(30), "the rename seen", || {
            Ok(harmony.log().contains("on_schema_change = \\\"stop\\\""))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", harmony.log()));
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            deliveries(&mut shop, &sku)
                .iter()
                .all(|(_, p)| p != "\"11.00\""),
            "{:?}",
            deliveries(&mut shop, &sku)
        );
        assert!(harmony.log().contains("name"), "the column is named");
        // The operator lets it evolve: the waiting change goes on, its name kept.
        assert!(harmony
            .terminate(Duration::from_secs(30))
            .unwrap()
            .success());
        harmony = Harmony::start(&options(&group, &run, &prefix, "evolve")).unwrap();
    }
    let moved_on = wait_until(
        Duration::from_secs(60),
        "the change after the rename",
        || {
            Ok(deliveries(&mut shop, &sku)
                .iter()
                .any(|(n, p)| n == "Kettle 2" && p.contains("11")))
        },
    );
    if let Err(e) = moved_on {
        panic!("{e}: {:?}\n{}", deliveries(&mut shop, &sku), harmony.log());
    }
    wait_until(
        Duration::from_secs(30),
        "the missing column reported",
        || Ok(missing(&harmony) == Some(1.0)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", harmony.log()));
    assert!(
        harmony.log().contains("mapped columns are gone"),
        "{}",
        harmony.log()
    );

    // 4. Renamed back: the gauge clears and the field flows again.
    psql(
        "erp",
        &format!("ALTER TABLE {erp_table} RENAME COLUMN title TO name"),
    )
    .unwrap();
    psql(
        "erp",
        &format!("UPDATE {erp_table} SET name = 'Kettle 3' WHERE sku = '{sku}'"),
    )
    .unwrap();
    wait_delivered(&mut shop, &sku, "Kettle 3", &harmony, "the column back");
    wait_until(Duration::from_secs(30), "the alert cleared", || {
        Ok(missing(&harmony) == Some(0.0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", harmony.log()));
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

#[test]
fn ddl_while_running_evolve() {
    ddl_while_running("evolve");
}

#[test]
fn ddl_while_running_ignore() {
    ddl_while_running("ignore");
}

#[test]
fn ddl_while_running_stop() {
    ddl_while_running("stop");
}
