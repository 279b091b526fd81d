//! Captures the decoder's fixtures from the real Debezium Postgres connector, in each
//! converter mode. The tests are ignored by a plain `cargo test` (each says why): they rewrite
//! the fixture files. `scripts/capture-fixtures` runs them, and the records land in `tests/fixtures/postgres/<connector>.jsonl`, raw, one per line.
//!
//! `every_type` holds one column of every type the Postgres connector gives a semantic name or
//! a special form: read by the snapshot, inserted again while streaming, and inserted all null.
//!
//! The cases, in order: snapshot read; multi-row insert (64-bit integers past 2^53, negative
//! and variable-scale decimals, dates, timestamps, arrays, JSON, bytes); update; primary-key
//! change; delete; TOAST-ed column left unchanged by an update; truncate; logical message;
//! plus whatever heartbeats and transaction markers the connectors write meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::support::{
    bootstrap, connect_rest as curl, mariadb, psql, wait_until, Record, TopicReader,
};

/// The connectors, their converter modes and decimal handling.
const CONNECTORS: [(&str, &str); 3] = [
    ("fx_schema", "schema"),
    ("fx_plain", "plain"),
    ("fx_flat", "flat"),
];

/// Connect keeps the source offsets of a connector after it is deleted; a connector registered
/// again under the same name would resume from a position whose slot or binlog is gone. Each
/// capture therefore registers its connectors under names of its own.
fn connector_name(prefix: &str) -> String {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    });
    format!("{prefix}-{run}")
}

/// Deletes every registered connector of these prefixes, from any capture run.
fn delete_connectors(prefixes: &[&str]) -> Result<()> {
    let (_, body) = curl("GET", "/connectors", None)?;
    let names: Vec<String> = serde_json::from_str(&body).unwrap_or_default();
    for name in names {
        if prefixes
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}-")))
        {
            curl("DELETE", &format!("/connectors/{name}"), None)?;
        }
    }
    Ok(())
}

fn connector_config(name: &str, mode: &str) -> Value {
    let pg_port = std::env::var("PG_PORT").unwrap_or_else(|_| "55432".into());
    let mut config = json!({
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": "127.0.0.1",
        "database.port": pg_port,
        "database.user": "harmony",
        "database.password": std::env::var("PG_PASSWORD").unwrap_or_else(|_| "harmony".into()),
        "database.dbname": "fixtures",
        "topic.prefix": name,
        "table.include.list": "public.kinds,public.notes,public.every_type",
        "slot.name": name,
        "publication.name": name,
        "publication.autocreate.mode": "filtered",
        // Truncates are skipped unless asked for.
        "skipped.operations": "none",
        "heartbeat.interval.ms": "1000",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    });
    let extra = match mode {
        "schema" => json!({
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "decimal.handling.mode": "precise",
            "provide.transaction.metadata": "true",
        }),
        "plain" => json!({
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "decimal.handling.mode": "string",
        }),
        _ => json!({
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "decimal.handling.mode": "double",
            "transforms": "unwrap",
            "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
            "transforms.unwrap.add.fields": "op,table,lsn,source.ts_ms",
            "transforms.unwrap.delete.tombstone.handling.mode": "rewrite-with-tombstone",
        }),
    };
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    config
}

fn reset() -> Result<()> {
    delete_connectors(&CONNECTORS.map(|(n, _)| n))?;
    wait_until(Duration::from_secs(30), "connectors to stop", || {
        let slots = psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'fx\\_%' AND active",
        )?;
        Ok(slots == "0")
    })?;
    psql("postgres", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'fx\\_%'")?;
    psql("postgres", "DROP DATABASE IF EXISTS fixtures")?;
    psql("postgres", "CREATE DATABASE fixtures")?;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/sql/fixtures.sql"
    ))?;
    psql("fixtures", &sql)?;

    let names: Vec<&str> = CONNECTORS.iter().map(|(n, _)| *n).collect();
    delete_topics_of(&names)?;
    Ok(())
}

fn drive_changes() -> Result<()> {
    // One transaction, two rows: a multi-row insert.
    psql(
        "fixtures",
        "INSERT INTO kinds (id, name, price, ratio, quantity, big, flag, score, born, seen, seen_tz, tags, doc, blob) VALUES \
         (2, 'multi a', -1.0000, 3.14159, -5, -9223372036854775808, false, -0.5, '1970-01-01', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', ARRAY[]::text[], '[]', '\\x00'), \
         (3, 'multi b ü \"quoted\"', 12345678.1234, 100, 2147483647, 9223372036854775807, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )?;
    psql(
        "fixtures",
        "UPDATE kinds SET price = 11.2500, quantity = 8 WHERE id = 1",
    )?;
    psql("fixtures", "UPDATE kinds SET id = 20 WHERE id = 2")?;
    // Every type streamed (the snapshot read the first row), and every type null.
    psql(
        "fixtures",
        "INSERT INTO every_type SELECT 3, small + 1, -wide, free, money_col, real_col, day + 1, clock, clock_us, clock_tz, moment_ms, moment_us, moment_tz, span, ident, doc_json, doc_jsonb, raw, 'calm', flags, flags_var, ints, address, label, code, markup FROM every_type WHERE id = 1",
    )?;
    psql("fixtures", "INSERT INTO every_type (id) VALUES (4)")?;
    psql("fixtures", "DELETE FROM kinds WHERE id = 3")?;
    // 12 KB of incompressible-looking text, stored out of line.
    psql(
        "fixtures",
        "INSERT INTO notes (id, title, body) SELECT 1, 'toasted', string_agg(md5(i::text), '') FROM generate_series(1, 400) AS i",
    )?;
    psql(
        "fixtures",
        "UPDATE notes SET title = 'toasted, retitled' WHERE id = 1",
    )?;
    psql("fixtures", "TRUNCATE notes")?;
    psql(
        "fixtures",
        "SELECT pg_logical_emit_message(true, 'harmony', 'hello from a transaction')",
    )?;
    Ok(())
}

#[test]
#[ignore = "captures fixtures from the running stack; run scripts/capture-fixtures"]
fn capture_postgres_fixtures() -> Result<()> {
    reset()?;
    for (name, mode) in CONNECTORS {
        let (code, body) = curl(
            "PUT",
            &format!("/connectors/{}/config", connector_name(name)),
            Some(&connector_config(name, mode)),
        )?;
        if code >= 300 {
            bail!("registering {name}: {code} {body}");
        }
    }
    for (name, _) in CONNECTORS {
        wait_until(Duration::from_secs(120), &format!("{name} RUNNING"), || {
            let (_, body) = curl(
                "GET",
                &format!("/connectors/{}/status", connector_name(name)),
                None,
            )?;
            let status: Value = serde_json::from_str(&body).unwrap_or_default();
            Ok(status["tasks"][0]["state"] == "RUNNING")
        })?;
    }
    // The snapshot must be done before the streamed changes, so they are ordered after it.
    wait_until(Duration::from_secs(60), "snapshots", || {
        Ok(CONNECTORS.iter().all(|(name, _)| {
            TopicReader::new(&format!("{name}.public.kinds"))
                .and_then(|mut r| r.read_until(Duration::from_secs(2), |rs| !rs.is_empty()))
                .unwrap_or(false)
        }))
    })?;
    drive_changes()?;
    // Let heartbeats and the last changes arrive.
    std::thread::sleep(Duration::from_secs(4));

    for (name, _) in CONNECTORS {
        write_fixture_file("postgres", name)?;
    }
    delete_connectors(&CONNECTORS.map(|(n, _)| n))?;
    Ok(())
}

/// MariaDB through Debezium's MariaDB connector (binlog): schema-wrapped with precise decimals,
/// and schemaless with string decimals.
const MARIADB_CONNECTORS: [(&str, &str); 2] = [("mdb_schema", "schema"), ("mdb_plain", "plain")];

fn mariadb_connector_config(name: &str, mode: &str) -> Value {
    let port = std::env::var("MARIADB_PORT").unwrap_or_else(|_| "53306".into());
    let schemas = (mode == "schema").to_string();
    json!({
        "connector.class": "io.debezium.connector.mariadb.MariaDbConnector",
        "tasks.max": "1",
        "database.hostname": "127.0.0.1",
        "database.port": port,
        "database.user": "harmony",
        "database.password": std::env::var("PG_PASSWORD").unwrap_or_else(|_| "harmony".into()),
        "database.ssl.mode": "disabled",
        "database.server.id": if mode == "schema" { "5401" } else { "5402" },
        "topic.prefix": name,
        "database.include.list": "fixtures",
        "schema.history.internal.kafka.bootstrap.servers": bootstrap(),
        "schema.history.internal.kafka.topic": format!("_schema-history.{name}"),
        "include.schema.changes": "true",
        "skipped.operations": "none",
        "heartbeat.interval.ms": "1000",
        "provide.transaction.metadata": schemas,
        "decimal.handling.mode": if mode == "schema" { "precise" } else { "string" },
        "bigint.unsigned.handling.mode": "precise",
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": schemas,
        "value.converter.schemas.enable": schemas,
    })
}

/// Deletes every topic whose name starts with one of `prefixes` (or ends with `.{prefix}`).
fn delete_topics_of(prefixes: &[&str]) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let ours: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| {
            prefixes
                .iter()
                .any(|p| t == p || t.starts_with(&format!("{p}.")) || t.ends_with(&format!(".{p}")))
        })
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let names: Vec<&str> = ours.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
    wait_until(Duration::from_secs(30), "topic deletion", || {
        let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(!md
            .topics()
            .iter()
            .any(|t| ours.iter().any(|o| o == t.name())))
    })
}

/// Reads every topic of `name` (data, transaction, schema change, heartbeat) into its file.
fn write_fixture_file(dir: &str, name: &str) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| {
            t == name
                || t.starts_with(&format!("{name}."))
                || *t == format!("__debezium-heartbeat.{name}")
        })
        .collect();
    topics.sort();
    let mut lines = Vec::new();
    for topic in &topics {
        let mut reader = TopicReader::new(topic)?;
        reader.read_for(Duration::from_secs(3))?;
        let mut records: Vec<Record> = reader.records.clone();
        records.sort_by_key(|r| (r.partition, r.offset));
        let keep = if topic.starts_with("__debezium-heartbeat") {
            2
        } else {
            records.len()
        };
        for r in records.into_iter().take(keep) {
            let headers: BTreeMap<&str, &str> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            lines.push(
                json!({
                    "topic": topic,
                    "offset": r.offset,
                    "headers": headers,
                    "key": r.key,
                    "value": r.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
                })
                .to_string(),
            );
        }
    }
    let path = format!(
        "{}/tests/fixtures/{dir}/{name}.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::create_dir_all(format!(
        "{}/tests/fixtures/{dir}",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    std::fs::write(&path, lines.join("\n") + "\n")?;
    eprintln!(
        "wrote {} records from {} topics to {path}",
        lines.len(),
        topics.len()
    );
    Ok(())
}

#[test]
#[ignore = "captures fixtures from the running stack; run scripts/capture-fixtures"]
fn capture_mariadb_fixtures() -> Result<()> {
    delete_connectors(&MARIADB_CONNECTORS.map(|(n, _)| n))?;
    std::thread::sleep(Duration::from_secs(2));
    let names: Vec<&str> = MARIADB_CONNECTORS.iter().map(|(n, _)| *n).collect();
    let mut history: Vec<String> = names
        .iter()
        .map(|n| format!("_schema-history.{n}"))
        .collect();
    history.extend(names.iter().map(|n| n.to_string()));
    delete_topics_of(&history.iter().map(String::as_str).collect::<Vec<_>>())?;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/sql/fixtures-mariadb.sql"
    ))?;
    mariadb(&sql)?;

    for (name, mode) in MARIADB_CONNECTORS {
        let (code, body) = curl(
            "PUT",
            &format!("/connectors/{}/config", connector_name(name)),
            Some(&mariadb_connector_config(name, mode)),
        )?;
        if code >= 300 {
            bail!("registering {name}: {code} {body}");
        }
    }
    wait_until(Duration::from_secs(90), "MariaDB snapshots", || {
        Ok(MARIADB_CONNECTORS.iter().all(|(name, _)| {
            TopicReader::new(&format!("{name}.fixtures.kinds"))
                .and_then(|mut r| r.read_until(Duration::from_secs(2), |rs| !rs.is_empty()))
                .unwrap_or(false)
        }))
    })?;
    mariadb(
        "USE fixtures; \
         INSERT INTO kinds VALUES \
           (2, 'multi a', -1.0000, -5, -9223372036854775808, 0, false, -0.5, '1970-01-01', '1999-12-31 23:59:59.999999', '[]', X'00'), \
           (3, 'multi b ü \"quoted\"', 12345678.1234, 2147483647, 9223372036854775807, 9223372036854775808, NULL, NULL, NULL, NULL, NULL, NULL); \
         UPDATE kinds SET price = 11.2500, quantity = 8 WHERE id = 1; \
         UPDATE kinds SET id = 20 WHERE id = 2; \
         DELETE FROM kinds WHERE id = 3; \
         ALTER TABLE kinds ADD COLUMN note varchar(20); \
         INSERT INTO kinds (id, name, note) VALUES (4, 'after ddl', 'new column'); \
         TRUNCATE kinds; \
         INSERT INTO every_type VALUES (2, '1970-01-01 00:00:00.001', '2038-01-19 03:14:07.999999', '-838:59:59.000000', 1901, b'000000000001', b'0', 0, 'calm', '', 0, -0.000000000000000000000000000001, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '', X'');",
    )?;
    std::thread::sleep(Duration::from_secs(5));
    for (name, _) in MARIADB_CONNECTORS {
        write_fixture_file("mariadb", name)?;
    }
    delete_connectors(&MARIADB_CONNECTORS.map(|(n, _)| n))?;
    Ok(())
}
