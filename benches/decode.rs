//! Decoding speed on records captured from the real Debezium Postgres connector
//! (tests/fixtures/postgres): the three converter shapes, per record, single-threaded; and the
//! same changes written by the JSON converter with schemas and by the Avro converter
//! (tests/fixtures/avro: 19 columns of every type, writer schemas from the registry).
//!
//!     cargo bench --bench decode
//!
//! Prints time per record and records per second (criterion's "thrpt"), i.e. per core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use harmony::ingest::avro::{AvroSchemas, Lookup, WriterSchema};
use harmony::ingest::envelope::{Decoded, Decoder, Limits, RecordHeaders, Transcoded};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    topic: String,
    key: Option<String>,
    value: Option<String>,
}

/// The change records of the `kinds` table (14 columns of every type) of one connector.
fn changes(connector: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let path = format!(
        "{}/tests/fixtures/postgres/{connector}.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Fixture>(l).unwrap())
        .filter(|f| f.topic.ends_with(".public.kinds"))
        .filter_map(|f| Some((f.key?.into_bytes(), f.value?.into_bytes())))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, connector) in [
        ("json_schemaless", "fx_plain"),
        ("json_with_schema", "fx_schema"),
        ("json_flattened", "fx_flat"),
    ] {
        let records = changes(connector);
        let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        println!(
            "{name}: {} records, {} bytes on average",
            records.len(),
            bytes / records.len()
        );
        let mut decoder = Decoder::new(Limits::default());
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for (key, value) in &records {
                    let decoded = decoder
                        .decode(Some(key), Some(value), RecordHeaders::default())
                        .unwrap();
                    black_box(matches!(decoded, Decoded::Change(_)));
                }
            })
        });
    }
    avro_beside_json(&mut group);
    group.finish();
}

#[derive(Deserialize)]
struct AvroFixture {
    schemas: std::collections::BTreeMap<u32, String>,
    records: Vec<AvroRecord>,
}

#[derive(Deserialize)]
struct AvroRecord {
    json_key: String,
    json_value: String,
    avro_key: String,
    avro_value: String,
}

fn avro_beside_json(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use base64::Engine;
    let path = format!(
        "{}/tests/fixtures/avro/postgres_types.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: AvroFixture =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schemas = std::sync::Arc::new(AvroSchemas::default());
    for (id, text) in &fixture.schemas {
        let writer = WriterSchema::parse(*id, text).unwrap();
        schemas.insert(*id, Lookup::Found(std::sync::Arc::new(writer)));
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    let avro: Vec<(Vec<u8>, Vec<u8>)> = fixture
        .records
        .iter()
        .map(|r| (b64(&r.avro_key), b64(&r.avro_value)))
        .collect();
    let json: Vec<(Vec<u8>, Vec<u8>)> = fixture
        .records
        .iter()
        .map(|r| {
            (
                r.json_key.clone().into_bytes(),
                r.json_value.clone().into_bytes(),
            )
        })
        .collect();
    for (name, records) in [("types_json_with_schema", &json), ("types_avro", &avro)] {
        let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        println!(
            "{name}: {} records, {} bytes on average",
            records.len(),
            bytes / records.len()
        );
        let mut decoder =
            Decoder::new(Limits::default()).with_avro(std::sync::Arc::clone(&schemas));
        let mut scratch = Transcoded::default();
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for (key, value) in records.iter() {
                    let decoded = decoder
                        .decode_with(
                            Some(key),
                            Some(value),
                            RecordHeaders::default(),
                            &mut scratch,
                        )
                        .unwrap();
                    black_box(matches!(decoded, Decoded::Change(_)));
                }
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
