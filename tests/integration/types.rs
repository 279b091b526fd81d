//! Real column types through the closed loop on the real stack: the erp, the shop and the
//! warehouse (Postgres) and a point-of-sale on MariaDB hold the same record in columns of
//! differing types — `timestamptz`, `timestamp(6)`, `timestamp(3)` and `datetime(3)`; `jsonb`
//! and `json`; `time(6)` and `time(3)`; `uuid` and `char(36)`; `smallint` and `year`; numerics
//! of differing precision; `bit(8)` in both; MariaDB's `bigint unsigned` beyond 2^63 and a
//! Postgres `numeric(20,0)` — plus dates (the year 0001 among them) and binary. Debezium
//! captures each, harmony resolves, Debezium's JDBC sink writes each target back. Every value
//! must arrive equal (compared column by column in each database's own reading of it), the
//! loop must go quiet, and a value one target cannot hold exactly (a microsecond for a
//! `timestamp(3)`) must be refused with the column named rather than rounded.
//!
//! Every connector sends decimals as text (`decimal.handling.mode=string`) and the tables'
//! scales differ — "12.345" in the erp is "12.3450" in the warehouse — so the field declares
//! its type (`fields.amount.type = "decimal"`) and is compared as a number: as text, every
//! write-back would read as a new value and the loop would never go quiet.
//!
//! Both converter modes: schema-wrapped JSON, where harmony reads each column's type from the
//! captured schema, and schemaless JSON, where the configuration declares them
//! (`sources.types`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use crate::support::{
    self, deployed_connector, mariadb, psql, unique, wait_until, Connectors, Harmony,
    HarmonyOptions, TopicReader,
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    SchemaWrapped,
    Schemaless,
}

#[derive(Clone, Copy, PartialEq)]
enum Db {
    Postgres,
    MariaDb,
}

/// One system's table: its key column, the DDL of the other columns, the types
/// `sources.types` declares in schemaless mode.
struct Table {
    system: &'static str,
    db: Db,
    suffix: &'static str,
    key: &'static str,
    columns: &'static str,
    /// What `sources.types` declares in schemaless mode.
    types: &'static str,
}

const TABLES: [Table; 4] = [
    Table {
        system: "erp",
        db: Db::Postgres,
        suffix: "products",
        key: "sku",
        columns: "moment timestamptz, day date, clock time(6), ident uuid, amount numeric(12,3), doc jsonb, raw bytea, opened smallint, flags bit(8), big numeric(20,0), mood MOOD, wide numeric(50,10), span interval, markup xml, tags text[]",
        types: r#"{ moment = "timestamptz", day = "date", clock = "time_us", ident = "uuid", amount = "decimal(3)", doc = "json", raw = "bytes", opened = "int", flags = "bits(8)", big = "decimal(0)", mood = "enum", wide = "decimal(10)", span = "duration_us", markup = "xml", tags = "composite" }"#,
    },
    Table {
        system: "shop",
        db: Db::Postgres,
        suffix: "items",
        key: "item_sku",
        columns: "moment timestamp(6), day date, clock time(6), ident uuid, amount numeric(14,3), doc json, raw bytea, opened smallint, flags bit(8), big numeric(20,0), mood MOOD, wide numeric(50,10), span interval, markup xml, tags text[]",
        types: r#"{ moment = "timestamp_us", day = "date", clock = "time_us", ident = "uuid", amount = "decimal(3)", doc = "json", raw = "bytes", opened = "int", flags = "bits(8)", big = "decimal(0)", mood = "enum", wide = "decimal(10)", span = "duration_us", markup = "xml", tags = "composite" }"#,
    },
    Table {
        system: "wms",
        db: Db::Postgres,
        suffix: "skus",
        key: "sku",
        columns: "moment timestamp(3), day date, clock time(3), ident uuid, amount numeric(16,4), doc jsonb, raw bytea, opened smallint, flags bit(8), big numeric(20,0), mood MOOD, wide numeric(50,10), span interval, markup xml, tags text[]",
        types: r#"{ moment = "timestamp_ms", day = "date", clock = "time_ms", ident = "uuid", amount = "decimal(4)", doc = "json", raw = "bytes", opened = "int", flags = "bits(8)", big = "decimal(0)", mood = "enum", wide = "decimal(10)", span = "duration_us", markup = "xml", tags = "composite" }"#,
    },
    // MariaDB: `datetime(3)`, a uuid in `char(36)`, `year`; Debezium's binlog connector counts
    // every `time` in microseconds, and MariaDB's `json` is text (`longtext`): declared
    // `json`, the JDBC sink would write `CAST(? AS json)`, which MariaDB does not have.
    Table {
        system: "pos",
        db: Db::MariaDb,
        suffix: "tills",
        key: "sku",
        columns: "moment datetime(3), day date, clock time(3), ident char(36), amount decimal(16,4), doc json, raw varbinary(16), opened year, flags bit(8), big bigint unsigned, mood enum('calm','busy'), wide decimal(65,10)",
        types: r#"{ moment = "timestamp_ms", day = "date", clock = "time_us", ident = "string", amount = "decimal(4)", doc = "string", raw = "bytes", opened = "year", flags = "bits(8)", big = "decimal(0)", mood = "enum", wide = "decimal(10)" }"#,
    },
];

const FIELDS: [&str; 12] = [
    "moment", "day", "clock", "ident", "amount", "doc", "raw", "opened", "flags", "big", "mood",
    "wide",
];
/// Fields of types MariaDB lacks, mapped in the Postgres tables only; read last. Intervals in
/// whole seconds: Debezium's JDBC sink 3.0 binds one as `'<n> seconds'` of its truncated
/// count (later versions keep the microseconds).
const POSTGRES_FIELDS: [&str; 3] = ["span", "markup", "tags"];

/// The tables of the run: the MariaDB one only where MariaDB is up.
fn tables(with_mariadb: bool) -> Vec<&'static Table> {
    TABLES
        .iter()
        .filter(|t| with_mariadb || t.db == Db::Postgres)
        .collect()
}

fn table_name(mode: Mode, table: &Table) -> String {
    let prefix = match mode {
        Mode::SchemaWrapped => "typed_wrapped",
        Mode::Schemaless => "typed_plain",
    };
    format!("{prefix}_{}", table.suffix)
}

/// The entity over the tables: the same field names everywhere but the key.
fn entity_toml(mode: Mode, tables: &[&Table]) -> String {
    // Every connector here sends decimals as text (`decimal.handling.mode=string`): "12.345"
    // from the erp is "12.3450" from the warehouse. Declared a decimal, the field is read as
    // the number both write. MariaDB's `bigint unsigned` (`precise`) is a decimal, the
    // Postgres `numeric(20,0)` text: declared, one number too.
    let mut out = String::from(
        "\n[[entities]]\nname = \"product\"\nkey = [\"sku\"]\ndefault_strategy = \"lww\"\n\n  [entities.fields.amount]\n  type = \"decimal\"\n\n  [entities.fields.big]\n  type = \"decimal\"\n\n  [entities.fields.wide]\n  type = \"decimal\"\n",
    );
    for table in tables {
        let postgres_only: &[&str] = match table.db {
            Db::Postgres => &POSTGRES_FIELDS,
            Db::MariaDb => &[],
        };
        let columns: Vec<String> = std::iter::once(format!("{} = \"sku\"", table.key))
            .chain(
                FIELDS
                    .iter()
                    .chain(postgres_only)
                    .map(|f| format!("{f} = \"{f}\"")),
            )
            .collect();
        let qualifier = match table.db {
            Db::Postgres => "public",
            Db::MariaDb => "pos",
        };
        out.push_str(&format!(
            "\n  [[entities.sources]]\n  system = \"{}\"\n  table = \"{qualifier}.{}\"\n  columns = {{ {} }}\n",
            table.system,
            table_name(mode, table),
            columns.join(", ")
        ));
        if mode == Mode::Schemaless {
            out.push_str(&format!("  types = {}\n", table.types));
        }
    }
    out
}

/// Each column as one reading every database gives the same for the same value: timestamps as
/// their UTC wall clock to the microsecond, JSON through `jsonb` (MariaDB keeps the text it
/// was sent), binary as hex.
const READING: &str = "to_char(moment_utc, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), day::text, clock::text, ident::text, trim_scale(amount)::text, doc::jsonb::text, encode(raw, 'hex'), opened::text, flags::text, big::text, mood::text, trim_scale(wide)::text, extract(epoch from span)::text, markup::text, tags::text";
const MARIADB_READING: &str = "CONCAT_WS('|', DATE_FORMAT(moment, '%Y-%m-%dT%H:%i:%s.%f'), DATE_FORMAT(day, '%Y-%m-%d'), TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(clock AS CHAR))), ident, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(amount AS CHAR))), doc, LOWER(HEX(raw)), CAST(opened AS CHAR), LPAD(BIN(flags), 8, '0'), CAST(big AS CHAR), mood, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(wide AS CHAR))))";

/// What `table` reads for a row whose Postgres reading is `expected`: MariaDB's lacks the
/// Postgres-only fields at its end.
fn expected_for<'e>(table: &Table, expected: &'e str) -> &'e str {
    match table.db {
        Db::Postgres => expected,
        Db::MariaDb => expected
            .rsplitn(POSTGRES_FIELDS.len() + 1, '|')
            .last()
            .unwrap_or(expected),
    }
}

fn row(mode: Mode, table: &Table, sku: &str) -> Result<Option<String>> {
    let out = match table.db {
        Db::Postgres => {
            let moment_utc = if table.system == "erp" {
                "moment AT TIME ZONE 'UTC'"
            } else {
                "moment"
            };
            psql(
                table.system,
                &format!(
                    "SELECT {} FROM {} WHERE {} = '{sku}'",
                    READING.replace("moment_utc", moment_utc),
                    table_name(mode, table),
                    table.key
                ),
            )?
        }
        Db::MariaDb => mariadb(&format!(
            "SELECT {MARIADB_READING} FROM pos.{} WHERE {} = '{sku}'",
            table_name(mode, table),
            table.key
        ))?,
    };
    Ok((!out.is_empty()).then_some(out))
}

fn rows(mode: Mode, tables: &[&Table], sku: &str) -> Result<Vec<Option<String>>> {
    tables.iter().map(|t| row(mode, t, sku)).collect()
}

fn wait_rows(
    mode: Mode,
    tables: &[&Table],
    sku: &str,
    expected: &str,
    what: &str,
    harmony: &Harmony,
) {
    let result = wait_until(Duration::from_secs(90), what, || {
        Ok(rows(mode, tables, sku)?
            .iter()
            .zip(tables)
            .all(|(r, t)| r.as_deref() == Some(expected_for(t, expected))))
    });
    if let Err(error) = result {
        panic!(
            "{error}: rows now {:?}, expected {expected}\n{}",
            rows(mode, tables, sku),
            harmony.log()
        );
    }
}

/// Debezium's MariaDB connector on `table`, changes only, in `mode`'s converter.
fn mariadb_source(
    run: &str,
    mode: Mode,
    table: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let schemas = (mode == Mode::SchemaWrapped).to_string();
    let server_id = 5500 + (std::process::id() % 400) + u32::from(mode == Mode::Schemaless) * 400;
    let config = serde_json::json!({
        "connector.class": "io.debezium.connector.mariadb.MariaDbConnector",
        "tasks.max": "1",
        "database.hostname": "127.0.0.1",
        "database.port": std::env::var("MARIADB_PORT").unwrap_or_else(|_| "53306".into()),
        "database.user": "harmony",
        "database.password": std::env::var("PG_PASSWORD").unwrap_or_else(|_| "harmony".into()),
        "database.ssl.mode": "disabled",
        "database.server.id": server_id.to_string(),
        "topic.prefix": format!("{run}_pos"),
        "database.include.list": "pos",
        "table.include.list": format!("pos.{table}"),
        "snapshot.mode": "no_data",
        "schema.history.internal.kafka.bootstrap.servers": support::bootstrap(),
        "schema.history.internal.kafka.topic": format!("_schema-history.{run}_pos"),
        "decimal.handling.mode": "string",
        // Beyond 2^63: `long` would wrap an unsigned bigint into a negative number.
        "bigint.unsigned.handling.mode": "precise",
        // On by default, it reads the years 0000-0069 as 2000-2069 (MySQL's two-digit years):
        // the sink writes 0001-01-01, its capture says 2001-01-01, and harmony would carry
        // that as the point of sale's change to every system.
        "enable.time.adjuster": "false",
        "heartbeat.interval.ms": "1000",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "3",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": schemas,
        "value.converter.schemas.enable": schemas,
    });
    match config {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Debezium's JDBC sink into the point-of-sale's table.
fn mariadb_sink(topic: &str, table: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut config = deployed_connector("shop-sink").unwrap();
    let port = std::env::var("MARIADB_PORT").unwrap_or_else(|_| "53306".into());
    config.insert(
        "connection.url".into(),
        serde_json::json!(format!("jdbc:mariadb://127.0.0.1:{port}/pos")),
    );
    config.insert("topics".into(), serde_json::json!(topic));
    config.insert("table.name.format".into(), serde_json::json!(table));
    config
}

/// The Connect schema a delivered change event gives `column` of its row.
fn column_schema(event: &serde_json::Value, column: &str) -> serde_json::Value {
    event["schema"]["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f["field"] == "after"))
        .and_then(|after| after["fields"].as_array())
        .and_then(|fields| fields.iter().find(|f| f["field"] == column))
        .cloned()
        .unwrap_or_else(|| panic!("no schema for `{column}` in {event}"))
}

/// Records on `readers`' topics so far for `sku`.
fn delivered(readers: &mut BTreeMap<String, TopicReader>, sku: &str) -> Result<usize> {
    let mut count = 0;
    for reader in readers.values_mut() {
        reader.read_for(Duration::from_millis(500))?;
        count += reader.records.iter().filter(|r| r.keyed_by(sku)).count();
    }
    Ok(count)
}

fn typed_columns_travel_the_closed_loop(mode: Mode) {
    let label = match mode {
        Mode::SchemaWrapped => "typed columns, schema-wrapped",
        Mode::Schemaless => "typed columns, schemaless",
    };
    if !support::stack_available(label) {
        return;
    }
    let tables = tables(support::mariadb_available(label));
    for table in &tables {
        let name = table_name(mode, table);
        match table.db {
            // Created afresh: the shape is this build's, whatever an earlier one left.
            // An enum type per converter mode: the two modes run side by side.
            Db::Postgres => psql(
                table.system,
                &format!(
                    "DROP TABLE IF EXISTS {name}; DROP TYPE IF EXISTS {name}_mood; CREATE TYPE {name}_mood AS ENUM ('calm', 'busy'); CREATE TABLE {name} ({} text PRIMARY KEY, {})",
                    table.key,
                    table.columns.replace("MOOD", &format!("{name}_mood"))
                ),
            ),
            Db::MariaDb => mariadb(&format!(
                "CREATE DATABASE IF NOT EXISTS pos; DROP TABLE IF EXISTS pos.{name}; CREATE TABLE pos.{name} ({} varchar(64) PRIMARY KEY, {})",
                table.key, table.columns
            )),
        }
        .unwrap();
    }
    let run = unique(match mode {
        Mode::SchemaWrapped => "typw",
        Mode::Schemaless => "typp",
    })
    .replace('-', "_");
    let mut stack = Connectors::default();
    let names: Vec<String> = tables.iter().map(|t| table_name(mode, t)).collect();
    let postgres: Vec<(&'static str, &str)> = tables
        .iter()
        .zip(&names)
        .filter(|(t, _)| t.db == Db::Postgres)
        .map(|(t, name)| (t.system, name.as_str()))
        .collect();
    let schemas = if mode == Mode::Schemaless {
        "false"
    } else {
        "true"
    };
    stack
        .stream_tables_with(
            &run,
            &postgres,
            &[
                ("key.converter.schemas.enable", schemas),
                ("value.converter.schemas.enable", schemas),
            ],
        )
        .unwrap();
    if let Some((_, name)) = tables.iter().zip(&names).find(|(t, _)| t.db == Db::MariaDb) {
        let source = format!("{run}_pos");
        stack
            .register(&source, mariadb_source(&run, mode, name))
            .unwrap();
        stack.wait_state(&[source], "RUNNING").unwrap();
    }

    let group = run.replace('_', "-");
    let mut options = HarmonyOptions::stack(group.clone());
    options.systems = tables
        .iter()
        .zip(&names)
        .map(|(table, name)| {
            let qualifier = match table.db {
                Db::Postgres => "public",
                Db::MariaDb => "pos",
            };
            (
                table.system.to_owned(),
                vec![format!("{run}_{}.{qualifier}.{name}", table.system)],
            )
        })
        .collect();
    let systems: Vec<&str> = tables.iter().map(|t| t.system).collect();
    let targets = support::product_targets(&group, &systems, "");
    options.extra_toml = format!("{}{targets}", entity_toml(mode, &tables));
    let mut harmony = Harmony::start(&options).unwrap();
    wait_until(Duration::from_secs(30), "harmony's topics", || {
        Ok(TopicReader::new(&harmony.dead_letter_topic).is_ok())
    })
    .unwrap();
    let mut sinks = Vec::new();
    for (table, name) in tables.iter().zip(&names) {
        let sink = format!("{run}_{}_sink", table.system);
        let topic = format!("{group}.{}.product", table.system);
        let config = match table.db {
            Db::Postgres => {
                let mut config = deployed_connector(&format!("{}-sink", table.system)).unwrap();
                config.insert("topics".into(), serde_json::json!(topic));
                config.insert("table.name.format".into(), serde_json::json!(name));
                config
            }
            Db::MariaDb => mariadb_sink(&topic, name),
        };
        stack.register(&sink, config).unwrap();
        sinks.push(sink);
    }
    stack.wait_state(&sinks, "RUNNING").unwrap();

    // 1. Created in the erp, with a zone: the same instant everywhere, in each one's column.
    let sku = unique("TYPED");
    psql(
        "erp",
        &format!(
            "INSERT INTO {} VALUES ('{sku}', '2024-02-29 12:34:56.789+01', '0001-01-01', '23:59:59.999', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 12.345, '{{\"k\": [1, 2]}}', '\\x00ff', 2024, B'01011010', 18446744073709551615, 'busy', 1234567890123456789012345678901234567890.0123456789, '1 day 02:03:04', '<a>1</a>', '{{x,y}}')",
            names[0]
        ),
    )
    .unwrap();
    let first = "2024-02-29T11:34:56.789000|0001-01-01|23:59:59.999|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|12.345|{\"k\": [1, 2]}|00ff|2024|01011010|18446744073709551615|busy|1234567890123456789012345678901234567890.0123456789|93784.000000|<a>1</a>|{x,y}";
    wait_rows(
        mode,
        &tables,
        &sku,
        first,
        "the erp's typed row in every database",
        &harmony,
    );

    // 2. Updated in the shop, in its own types: back in the erp and the warehouse.
    psql(
        "shop",
        &format!(
            "UPDATE {} SET moment = '1969-12-31 23:59:59.999', clock = '00:00:00.001', amount = -0.5, doc = '{{\"k\": null}}', raw = '\\xdeadbeef', opened = 1999, flags = B'00000001', big = 9223372036854775808, mood = 'calm', span = '-00:00:01', tags = '{{z}}' WHERE item_sku = '{sku}'",
            names[1]
        ),
    )
    .unwrap();
    let second = "1969-12-31T23:59:59.999000|0001-01-01|00:00:00.001|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|-0.5|{\"k\": null}|deadbeef|1999|00000001|9223372036854775808|calm|1234567890123456789012345678901234567890.0123456789|-1.000000|<a>1</a>|{z}";
    wait_rows(
        mode,
        &tables,
        &sku,
        second,
        "the shop's update in every database",
        &harmony,
    );

    // 3. Quiet: every database's write of a delivery comes back as an echo.
    let mut readers: BTreeMap<String, TopicReader> = systems
        .iter()
        .map(|s| {
            let topic = format!("{group}.{s}.product");
            (topic.clone(), TopicReader::new(&topic).unwrap())
        })
        .collect();
    let mut last = delivered(&mut readers, &sku).unwrap();
    wait_until(Duration::from_secs(60), "no further deliveries", || {
        std::thread::sleep(Duration::from_secs(6));
        let now = delivered(&mut readers, &sku)?;
        let quiet = now == last;
        last = now;
        Ok(quiet)
    })
    .unwrap();

    // The warehouse's deliveries carry its own column types: milliseconds for its
    // `timestamp(3)`, its time(3) in milliseconds; a null there would be typed the same.
    let wms_topic = format!("{group}.wms.product");
    let last_wms = readers[&wms_topic]
        .records
        .iter()
        .rev()
        .find(|r| r.keyed_by(&sku) && r.value.is_some())
        .unwrap()
        .json();
    let column = |name: &str| column_schema(&last_wms, name);
    assert_eq!(column("moment")["name"], "io.debezium.time.Timestamp");
    assert_eq!(column("clock")["name"], "io.debezium.time.Time");
    assert_eq!(column("day")["name"], "io.debezium.time.Date");
    assert_eq!(column("ident")["name"], "io.debezium.data.Uuid");
    assert_eq!(column("raw")["type"], "bytes");
    assert_eq!(
        last_wms["payload"]["after"]["moment"],
        serde_json::json!(-1),
        "1969-12-31T23:59:59.999 in milliseconds"
    );

    // 5. Restarted, the first delivery to the warehouse is in its captured column types
    // already (read at start from the newest records of its topic; it has captured nothing
    // since), not in the value's own: the schema does not churn across a restart.
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
    let wms_before = readers[&wms_topic].records.len();
    harmony = Harmony::start(&options).unwrap();
    psql(
        "erp",
        &format!(
            "UPDATE {} SET moment = '2030-06-01 00:00:00.5+00' WHERE sku = '{sku}'",
            names[0]
        ),
    )
    .unwrap();
    let third = second.replace("1969-12-31T23:59:59.999000", "2030-06-01T00:00:00.500000");
    wait_rows(
        mode,
        &tables,
        &sku,
        &third,
        "the erp's change after the restart everywhere",
        &harmony,
    );
    let wms_reader = readers.get_mut(&wms_topic).unwrap();
    wms_reader.read_for(Duration::from_secs(1)).unwrap();
    let first_after = wms_reader.records[wms_before..]
        .iter()
        .find(|r| r.keyed_by(&sku) && r.value.is_some())
        .unwrap()
        .json();
    let moment_schema = column_schema(&first_after, "moment");
    assert_eq!(
        moment_schema["name"],
        "io.debezium.time.Timestamp",
        "{first_after}\n{}",
        harmony.log()
    );
    let second = third.as_str();

    // 6. A microsecond the warehouse's timestamp(3) cannot hold: refused, the column named, and
    // nothing of the change applied anywhere (no target is rounded).
    let mut dlq = TopicReader::new(&harmony.dead_letter_topic).unwrap();
    psql(
        "erp",
        &format!(
            "UPDATE {} SET moment = '2030-01-01 00:00:00.000001+00' WHERE sku = '{sku}'",
            names[0]
        ),
    )
    .unwrap();
    assert!(
        dlq.read_until(Duration::from_secs(60), |records| records.iter().any(|r| r
            .headers
            .get("harmony.error.kind")
            .map(String::as_str)
            == Some("unrepresentable")))
            .unwrap(),
        "the change is dead-lettered\n{}",
        harmony.log()
    );
    let refused = dlq
        .records
        .iter()
        .find(|r| {
            r.headers.get("harmony.error.kind").map(String::as_str) == Some("unrepresentable")
        })
        .unwrap();
    let message = &refused.headers["harmony.error.message"];
    assert!(
        message.contains("wms") && message.contains("`moment`"),
        "{message}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let now = rows(mode, &tables, &sku).unwrap();
    for (table, row) in tables.iter().zip(&now).skip(1) {
        assert_eq!(
            row.as_deref(),
            Some(expected_for(table, second)),
            "{} keeps its value, not rounded",
            table.system
        );
    }

    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());

    // 7. A field declared a type that a system's captured column cannot be read as: refused
    // at start, the field and each system's captured type named. (Schemaless, the sources'
    // declared types are checked when the configuration is read.)
    if mode == Mode::SchemaWrapped {
        options.group_id = format!("{group}-refused");
        options.extra_toml = options.extra_toml.replacen(
            "[entities.fields.amount]",
            "[entities.fields.raw]\n  type = \"uuid\"\n\n  [entities.fields.amount]",
            1,
        );
        let log = match Harmony::start(&options) {
            Err(error) => error.to_string(),
            Ok(mut refused) => {
                wait_until(Duration::from_secs(30), "harmony to stop", || {
                    Ok(refused.exited().is_some())
                })
                .unwrap();
                refused.log()
            }
        };
        assert!(
            log.contains("entities[0].fields.raw.type is `uuid` (text), but erp captures it as `bytes` (bytes)"),
            "{log}"
        );
    }
}

#[test]
fn typed_columns_travel_the_closed_loop_schema_wrapped() {
    typed_columns_travel_the_closed_loop(Mode::SchemaWrapped);
}

#[test]
fn typed_columns_travel_the_closed_loop_schemaless_with_declared_types() {
    typed_columns_travel_the_closed_loop(Mode::Schemaless);
}
