//! The local stack and harmony listen on loopback only: nothing of the test machine is
//! reachable from the network.

use std::time::Duration;

use crate::support::{self, unique, Harmony, HarmonyOptions};

/// Listening TCP sockets as (address bytes as written by the kernel, port), IPv4 and IPv6.
fn listening_sockets() -> Vec<(String, u16)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN
            if fields.len() > 3 && fields[3] == "0A" {
                if let Some((addr, port)) = fields[1].split_once(':') {
                    sockets.push((addr.to_owned(), u16::from_str_radix(port, 16).unwrap_or(0)));
                }
            }
        }
    }
    sockets
}

/// 127.0.0.0/8 as the kernel writes it (little-endian hex: 0100007F), IPv6 ::1, or
/// IPv4-mapped 127.x (::ffff:127.0.0.1, as the JVM binds).
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F"),
        32 => {
            hex == "00000000000000000000000001000000"
                || (hex.starts_with("0000000000000000FFFF0000") && hex.ends_with("7F"))
        }
        _ => false,
    }
}

#[test]
fn stack_and_harmony_listen_on_loopback_only() {
    if !support::stack_available("loopback") {
        return;
    }
    let mut harmony = Harmony::start(&HarmonyOptions::stack(unique("e2e-loopback"))).unwrap();
    let http_port: u16 = harmony
        .http_address()
        .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
        .expect("harmony logged its HTTP address");
    let port = |var: &str, default: u16| -> u16 {
        std::env::var(var)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    };
    let ours = [
        port("KAFKA_PORT", 9092),
        port("KAFKA_CONTROLLER_PORT", 9093),
        port("CONNECT_PORT", 8083),
        port("PG_PORT", 55432),
        http_port,
    ]
    .into_iter()
    .chain(support::registry_available("loopback").then(|| port("REGISTRY_PORT", 8081)))
    .collect::<Vec<_>>();
    let sockets = listening_sockets();
    for port in ours {
        let bound: Vec<&(String, u16)> = sockets.iter().filter(|(_, p)| *p == port).collect();
        assert!(
            !bound.is_empty(),
            "nothing listens on port {port}: {sockets:?}"
        );
        for (addr, _) in bound {
            assert!(
                is_loopback(addr),
                "port {port} is bound to {addr}, not loopback"
            );
        }
    }
    harmony.terminate(Duration::from_secs(30)).unwrap();
}

#[test]
fn loopback_addresses_are_recognised() {
    assert!(is_loopback("0100007F"));
    assert!(!is_loopback("00000000"));
    assert!(is_loopback("0000000000000000FFFF00000100007F"));
    assert!(!is_loopback("00000000000000000000000000000000"));
}

/// The stack's schema registry (Apicurio, built from Maven Central by `scripts/stack`) answers
/// the Confluent API as harmony and Debezium's converters use it: a schema registered under a
/// subject is served back by its id; an unknown id is 404 with Confluent's error code 40403; under
/// BACKWARD compatibility a new required field is refused (409) and an optional one accepted.
#[test]
fn the_stacks_registry_answers_the_confluent_api() {
    if !support::stack_available("registry") || !support::registry_available("registry") {
        return;
    }
    let name = format!("{}-value", unique("registry-probe"));
    let subject = format!("/subjects/{name}");
    let record = |fields: serde_json::Value| serde_json::json!({"schema": serde_json::json!({"type": "record", "name": "Probe", "fields": fields}).to_string()});
    let first = record(serde_json::json!([{"name": "a", "type": "int"}]));
    let (code, body) =
        support::registry_rest("POST", &format!("{subject}/versions"), Some(&first)).unwrap();
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    let (code, body) = support::registry_rest("GET", &format!("/schemas/ids/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["schema"], first["schema"]);
    let (code, body) = support::registry_rest("GET", "/schemas/ids/999999999", None).unwrap();
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error_code"],
        40403
    );
    let backward = serde_json::json!({"compatibility": "BACKWARD"});
    let (code, body) =
        support::registry_rest("PUT", &format!("/config/{name}"), Some(&backward)).unwrap();
    assert_eq!(code, 200, "{body}");
    let required =
        record(serde_json::json!([{"name": "a", "type": "int"}, {"name": "b", "type": "string"}]));
    let (code, body) =
        support::registry_rest("POST", &format!("{subject}/versions"), Some(&required)).unwrap();
    assert_eq!(
        code, 409,
        "a new field without a default is not backward compatible: {body}"
    );
    let optional = record(
        serde_json::json!([{"name": "a", "type": "int"}, {"name": "b", "type": ["null", "string"], "default": null}]),
    );
    let (code, body) =
        support::registry_rest("POST", &format!("{subject}/versions"), Some(&optional)).unwrap();
    assert_eq!(code, 200, "{body}");
}

/// Debezium with the registry's Avro converter (`apicurio.registry.as-confluent`), as the
/// stack's Connect offers it: each change is Confluent's wire format — magic byte 0, then the
/// 4-byte id of its writer schema — and that id is served by the registry's Confluent API,
/// with Debezium's semantic names (`connect.name`) in the schema.
#[test]
fn debezium_writes_avro_in_the_confluent_wire_format_through_the_stacks_registry() {
    if !support::stack_available("avro capture") || !support::registry_available("avro capture") {
        return;
    }
    let table = unique("avro_probe").replace('-', "_");
    support::psql(
        "erp",
        &format!(
            "CREATE TABLE {table} (sku text PRIMARY KEY, price numeric(10,2), seen timestamptz)"
        ),
    )
    .unwrap();
    let run = unique("avro").replace('-', "_");
    let settings = support::avro_converter_settings();
    let mut settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Avro's decimal logical type, rather than the deployed connectors' text.
    settings.push(("decimal.handling.mode", "precise"));
    let mut connectors = support::Connectors::default();
    connectors
        .stream_tables_with(&run, &[("erp", table.as_str())], &settings)
        .unwrap();
    support::psql(
        "erp",
        &format!("INSERT INTO {table} VALUES ('SKU-1', 4.90, '2024-02-29 12:34:56+01')"),
    )
    .unwrap();
    let topic = format!("{run}_erp.public.{table}");
    // Debezium creates the topic with its first record.
    support::wait_until(Duration::from_secs(60), "the captured topic", || {
        Ok(support::TopicReader::new(&topic).is_ok())
    })
    .unwrap();
    let mut reader = support::TopicReader::new(&topic).unwrap();
    assert!(
        reader
            .read_until(Duration::from_secs(60), |records| !records.is_empty())
            .unwrap(),
        "no change on {topic}"
    );
    let value = reader.records[0]
        .value
        .as_deref()
        .expect("a change, not a tombstone");
    assert_eq!(value[0], 0, "Confluent's magic byte");
    let id = u32::from_be_bytes(value[1..5].try_into().unwrap());
    let (code, body) = support::registry_rest("GET", &format!("/schemas/ids/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let schema: serde_json::Value = serde_json::from_str(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["schema"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let text = schema.to_string();
    assert!(
        text.contains("org.apache.kafka.connect.data.Decimal")
            && text.contains("io.debezium.time.ZonedTimestamp"),
        "{text}"
    );
    drop(connectors);
    support::psql("erp", &format!("DROP TABLE {table}")).unwrap();
}
