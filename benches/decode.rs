//! Decoding speed on records captured from the real Debezium Postgres connector
//! (tests/fixtures/postgres): the three converter shapes, per record, single-threaded.
//!
//!     cargo bench --bench decode
//!
//! Prints time per record and records per second (criterion's "thrpt"), i.e. per core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use harmony::ingest::envelope::{Decoded, Decoder, Limits, RecordHeaders};
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
