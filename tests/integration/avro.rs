//! Debezium's Avro records (Kafka Connect's Avro converter, Confluent's wire format, the
//! stack's Apicurio registry) read by harmony: the same changes as the JSON converter's, value
//! for value; and what the registry cannot give — an unknown id, an unreadable datum, no
//! registry at all — each with its own outcome.

use std::time::Duration;

use harmony::ingest::avro::Lookup;
use harmony::ingest::envelope::{DecodeError, Decoded, Decoder, Limits, RecordHeaders, Transcoded};
use harmony::runtime::registry::{Registry, RegistryError};
use harmony::runtime::telemetry::Metrics;

use crate::support::{self, unique, Connectors, Record, TopicReader};

fn registry_at(url: &str) -> Registry {
    let config: harmony::config::SchemaRegistryConfig =
        toml::from_str(&format!("url = \"{url}\"\nrequest_timeout = \"3s\"")).unwrap();
    Registry::new(&config).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn metrics() -> Metrics {
    Metrics::new(&prometheus::Registry::new()).unwrap()
}

/// Every column type of the Postgres closed loop, captured twice: by a connector writing JSON
/// with schemas and by one writing Avro.
const TYPES: &str = "id int PRIMARY KEY, small smallint, big bigint, price numeric(10,2), \
    ratio numeric, real_col real, dbl double precision, flag boolean, name text, day date, \
    clock time, moment timestamp, moment_tz timestamptz, ident uuid, doc jsonb, raw bytea, \
    bits bit(8), ints int[], span interval";

const CHANGES: [&str; 5] = [
    "INSERT INTO {t} VALUES (1, -32768, 9223372036854775807, 12345678.91, 3.14159265358979, \
     1.5, -2.25e-300, true, 'Grüße \"quoted\"\n', '0001-01-01', '23:59:59.999999', \
     '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+05:30', \
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, {\"b\": null}]}', '\\xdeadbeef00', \
     B'10100101', '{1,NULL,3}', '1 year 2 months 3 days 04:05:06.5')",
    "INSERT INTO {t} (id) VALUES (2)",
    "INSERT INTO {t} (id, real_col, dbl, ratio) VALUES (3, 'NaN', '-Infinity', 'NaN')",
    "UPDATE {t} SET price = -0.01, name = '', day = '9999-12-31' WHERE id = 1",
    "DELETE FROM {t} WHERE id = 2",
];

fn read(topic: &str, count: usize) -> Vec<Record> {
    support::wait_until(Duration::from_secs(60), "the captured topic", || {
        Ok(TopicReader::new(topic).is_ok())
    })
    .unwrap();
    let mut reader = TopicReader::new(topic).unwrap();
    let changes = |records: &[Record]| records.iter().filter(|r| r.value.is_some()).count();
    assert!(
        reader
            .read_until(Duration::from_secs(90), |records| changes(records) >= count)
            .unwrap(),
        "{topic}: {} of {count} changes",
        changes(&reader.records)
    );
    reader.records.retain(|r| r.value.is_some());
    reader.records
}

#[test]
fn avro_records_decode_to_the_same_changes_as_the_json_converters() {
    if !support::stack_available("avro decoding") || !support::registry_available("avro decoding") {
        return;
    }
    let table = unique("avro_types").replace('-', "_");
    support::psql("erp", &format!("CREATE TABLE {table} ({TYPES})")).unwrap();
    support::psql("erp", &format!("ALTER TABLE {table} REPLICA IDENTITY FULL")).unwrap();
    let (json_run, avro_run) = (
        unique("json").replace('-', "_"),
        unique("avro").replace('-', "_"),
    );
    let mut connectors = Connectors::default();
    // Exact decimals (Connect's Decimal: bytes) and microsecond times on both sides.
    let common = [("decimal.handling.mode", "precise")];
    connectors
        .stream_tables_with(&json_run, &[("erp", table.as_str())], &common)
        .unwrap();
    let avro_settings = support::avro_converter_settings();
    let avro: Vec<(&str, &str)> = avro_settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(common)
        .collect();
    connectors
        .stream_tables_with(&avro_run, &[("erp", table.as_str())], &avro)
        .unwrap();
    for change in CHANGES {
        support::psql("erp", &change.replace("{t}", &table)).unwrap();
    }
    let json = read(&format!("{json_run}_erp.public.{table}"), CHANGES.len());
    let avro = read(&format!("{avro_run}_erp.public.{table}"), CHANGES.len());

    let registry = registry_at(&support::registry_url());
    let metrics = metrics();
    let limits = Limits {
        max_record_bytes: 1 << 20,
        max_nesting_depth: 64,
    };
    let mut json_decoder = Decoder::new(limits);
    let mut avro_decoder = Decoder::new(limits).with_avro(registry.schemas());
    let runtime = runtime();
    let mut compared = 0;
    let lsn = |p: &harmony::ingest::envelope::SourcePosition| match p {
        harmony::ingest::envelope::SourcePosition::Postgres { lsn, .. } => *lsn,
        other => panic!("{other:?}"),
    };
    // The topics have several partitions: a change is found on the other side by its LSN.
    let mut json_by_lsn = std::collections::HashMap::new();
    for (i, j) in json.iter().enumerate() {
        let Decoded::Change(change) = json_decoder
            .decode(
                j.key_bytes.as_deref(),
                j.value.as_deref(),
                RecordHeaders::default(),
            )
            .unwrap()
        else {
            panic!("not a change")
        };
        json_by_lsn.insert(lsn(&change.source.position), i);
    }
    for a in &avro {
        let (a_key, a_value) = (a.key_bytes.as_deref(), a.value.as_deref());
        assert_eq!(a_value.unwrap()[0], 0, "Confluent's magic byte");
        runtime
            .block_on(registry.ensure(a_key, a_value, &metrics))
            .unwrap();
        let mut scratch = Transcoded::default();
        let from_avro = avro_decoder
            .decode_with(a_key, a_value, RecordHeaders::default(), &mut scratch)
            .unwrap_or_else(|e| panic!("offset {}: {e}", a.offset));
        let Decoded::Change(avro_change) = &from_avro else {
            panic!("offset {}: not a change", a.offset)
        };
        let j = &json[json_by_lsn[&lsn(&avro_change.source.position)]];
        let from_json = json_decoder
            .decode(
                j.key_bytes.as_deref(),
                j.value.as_deref(),
                RecordHeaders::default(),
            )
            .unwrap();
        let (Decoded::Change(from_avro), Decoded::Change(from_json)) = (from_avro, from_json)
        else {
            panic!("offset {}: not both changes", a.offset)
        };
        let context = format!("offset {} ({:?})", a.offset, from_json.op);
        assert_eq!(from_avro.op, from_json.op, "{context}");
        // Two connectors: their names and the previous commit each saw differ, nothing else.
        let mut source = from_avro.source.clone();
        source.name = from_json.source.name.clone();
        assert_eq!(
            source.ts_ms, from_json.source.ts_ms,
            "{context}: source block"
        );
        assert_eq!(
            source.tx_id, from_json.source.tx_id,
            "{context}: source block"
        );
        assert_eq!(
            lsn(&source.position),
            lsn(&from_json.source.position),
            "{context}: source block"
        );
        let key = |k: Option<&serde_json::value::RawValue>| {
            serde_json::from_str::<serde_json::Value>(k.unwrap().get()).unwrap()
        };
        assert_eq!(key(from_avro.key), key(from_json.key), "{context}: key");
        for (avro_row, json_row) in [
            (&from_avro.before, &from_json.before),
            (&from_avro.after, &from_json.after),
        ] {
            assert_eq!(avro_row.is_some(), json_row.is_some(), "{context}");
            let (Some(avro_row), Some(json_row)) = (avro_row, json_row) else {
                continue;
            };
            assert_eq!(avro_row.columns.len(), json_row.columns.len(), "{context}");
            for ((name, from_avro), (json_name, from_json)) in
                avro_row.columns.iter().zip(&json_row.columns)
            {
                assert_eq!(name, json_name, "{context}");
                // Nested values (arrays, JSON) are compared as the JSON they are.
                let same = match (from_avro, from_json) {
                    (
                        harmony::model::value::Value::Raw(a),
                        harmony::model::value::Value::Raw(j),
                    ) => {
                        serde_json::from_str::<serde_json::Value>(a.get()).unwrap()
                            == serde_json::from_str::<serde_json::Value>(j.get()).unwrap()
                    }
                    (
                        harmony::model::value::Value::Float(a),
                        harmony::model::value::Value::Float(j),
                    ) => a.to_bits() == j.to_bits(),
                    (a, j) => a == j,
                };
                assert!(
                    same,
                    "{context}: column {name}: Avro {from_avro:?}, JSON {from_json:?}"
                );
                compared += 1;
            }
        }
        // Each Avro record's column types are the JSON converter's.
        assert_eq!(
            from_avro.schema.as_ref().unwrap().row,
            from_json.schema.as_ref().unwrap().row,
            "{context}: declared types"
        );
    }
    assert_eq!(json.len(), avro.len());
    // scripts/capture-fixtures: the same changes in both formats, with the writer schemas, for
    // the unit tests and benches/decode.rs.
    if let Ok(path) = std::env::var("HARMONY_CAPTURE_AVRO") {
        write_fixture(&path, &json, &avro, &json_by_lsn, &registry);
    }
    assert!(compared >= 19 * 5, "only {compared} values compared");
    drop(connectors);
    support::psql("erp", &format!("DROP TABLE {table}")).unwrap();
}

#[test]
fn what_the_registry_cannot_give_is_refused_by_kind_or_waited_for() {
    if !support::stack_available("avro refusals") || !support::registry_available("avro refusals") {
        return;
    }
    let runtime = runtime();
    let metrics = metrics();
    let registry = registry_at(&support::registry_url());
    let schemas = registry.schemas();
    let mut decoder = Decoder::new(Limits::default()).with_avro(std::sync::Arc::clone(&schemas));
    let mut scratch = Transcoded::default();

    // An id the registry never gave: dead-lettered, with the reason.
    let unknown = [0, 0x7f, 0xff, 0xff, 0x01, 2, 0];
    runtime
        .block_on(registry.ensure(None, Some(&unknown), &metrics))
        .unwrap();
    assert!(matches!(schemas.get(0x7fff_ff01), Some(Lookup::Refused(_))));
    let error = decoder
        .decode_with(None, Some(&unknown), RecordHeaders::default(), &mut scratch)
        .unwrap_err();
    assert_eq!(error.kind(), "unknown_schema", "{error}");

    // A schema the registry has, and bytes that are not a datum of it.
    let (code, body) = support::registry_rest(
        "POST",
        &format!("/subjects/{}-value/versions", unique("refusals")),
        Some(&serde_json::json!({"schema": r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}"#})),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let id: u32 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap() as u32;
    let mut datum = vec![0];
    datum.extend_from_slice(&id.to_be_bytes());
    // A string of 60 bytes, two of them present.
    datum.extend_from_slice(&[120, b'h', b'i']);
    runtime
        .block_on(registry.ensure(None, Some(&datum), &metrics))
        .unwrap();
    let error = decoder
        .decode_with(None, Some(&datum), RecordHeaders::default(), &mut scratch)
        .unwrap_err();
    assert_eq!(error.kind(), "invalid_avro", "{error}");
    // Bytes after the datum: not a datum of the schema either.
    datum.truncate(5);
    datum.extend_from_slice(&[4, b'h', b'i', 0xff]);
    let error = decoder
        .decode_with(None, Some(&datum), RecordHeaders::default(), &mut scratch)
        .unwrap_err();
    assert!(
        error.to_string().contains("left after the datum"),
        "{error}"
    );

    // Without a registry, an Avro record says which setting is missing.
    let error = Decoder::new(Limits::default())
        .decode(None, Some(&datum), RecordHeaders::default())
        .unwrap_err();
    assert!(
        matches!(error, DecodeError::AvroWithoutRegistry { id: i } if i == id),
        "{error}"
    );
    assert!(error.to_string().contains("schema_registry.url"), "{error}");

    // A registry that does not answer decides nothing: nothing is kept for the id, and the
    // record is asked about again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = registry_at(&format!("http://127.0.0.1:{port}"));
    let error = runtime
        .block_on(down.ensure(None, Some(&datum), &metrics))
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error}"
    );
    assert!(down.schemas().get(id).is_none());
}

fn write_fixture(
    path: &str,
    json: &[Record],
    avro: &[Record],
    json_by_lsn: &std::collections::HashMap<u64, usize>,
    registry: &Registry,
) {
    use base64::Engine;
    let b64 = |bytes: &Option<Vec<u8>>| {
        bytes
            .as_deref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    };
    let mut order: Vec<(u64, usize)> = json_by_lsn.iter().map(|(l, i)| (*l, *i)).collect();
    order.sort();
    let mut records = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (lsn, json_index) in order {
        let j = &json[json_index];
        let a = avro
            .iter()
            .find(|a| {
                let mut scratch = Transcoded::default();
                let mut avro_decoder = Decoder::new(Limits::default()).with_avro(registry.schemas());
                matches!(
                    avro_decoder.decode_with(a.key_bytes.as_deref(), a.value.as_deref(), RecordHeaders::default(), &mut scratch),
                    Ok(Decoded::Change(c)) if matches!(c.source.position, harmony::ingest::envelope::SourcePosition::Postgres { lsn: l, .. } if l == lsn)
                )
            })
            .unwrap();
        for bytes in [&a.key_bytes, &a.value].into_iter().flatten() {
            ids.insert(u32::from_be_bytes(bytes[1..5].try_into().unwrap()));
        }
        records.push(serde_json::json!({
            "json_key": j.key, "json_value": String::from_utf8_lossy(j.value.as_deref().unwrap()),
            "avro_key": b64(&a.key_bytes), "avro_value": b64(&a.value),
        }));
    }
    let schemas: serde_json::Map<String, serde_json::Value> = ids
        .into_iter()
        .map(|id| {
            let (_, body) =
                support::registry_rest("GET", &format!("/schemas/ids/{id}"), None).unwrap();
            let schema =
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["schema"].clone();
            (id.to_string(), schema)
        })
        .collect();
    let fixture = serde_json::json!({"schemas": schemas, "records": records});
    std::fs::write(path, serde_json::to_string_pretty(&fixture).unwrap() + "\n").unwrap();
}
