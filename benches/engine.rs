//! Stage 2's work per event, single-threaded, without Kafka: reading the internal record,
//! dedup, echo, conflict detection and resolution, the target records and the changelog value
//! (`resolve`); a redelivered change known by its position (`dedup`); rebuilding a partition's
//! state from its changelog (`restore`); writing the changelog value and the target records
//! (`encode`); and the version vector operations every change makes (`clock`).
//!
//!     cargo bench --bench engine
//!
//! The workload is seeded: 2 000 products created by the erp, then 8 000 changes with a hot
//! tenth of the products taking half of them — shop sales (`sum`), warehouse receipts, erp
//! price changes, concurrent edits — and one in twenty a replay of the change before it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use harmony::config::Config;
use harmony::ingest::internal::{FieldRef, InternalChange, Origin, Position, FORMAT_VERSION};
use harmony::ingest::mapping::{Catalog, EntityId};
use harmony::model::clock::{SystemId, VersionVector};
use harmony::model::stage::ChangeKind;
use harmony::resolve::changelog;
use harmony::resolve::engine::FieldValue;
use harmony::resolve::engine::{entity_rules, RecordState};
use harmony::resolve::resolver::Resolver;
use harmony::resolve::target::{target_plans, target_records, Provenance};

const PRODUCTS: u64 = 2_000;
const CHANGES: u64 = 8_000;

fn config() -> Config {
    let text = include_str!("../examples/inventory.toml");
    Config::from_toml(text, "inventory.toml", std::iter::empty()).unwrap()
}

/// A small, seeded generator: the workload must be the same in every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn change(system: &str, n: u64, sku: u64, fields: &[(&str, FieldValue)]) -> Vec<u8> {
    InternalChange {
        v: FORMAT_VERSION,
        entity: "product".into(),
        key: format!(r#"["SKU-{sku:06}"]"#).into(),
        system: system.into(),
        kind: ChangeKind::Upsert,
        ts_ms: 1_700_000_000_000 + n as i64,
        ts_us: None,
        snapshot: false,
        position: Position::Postgres([n, n]),
        fields: fields
            .iter()
            .map(|(name, value)| (Cow::Borrowed(*name), FieldRef::from(value)))
            .collect(),
        context: None,
        // As stage 1 writes them from a schema-wrapped capture: every change carries them.
        types: [
            ("name", "string"),
            ("price", "decimal(2)"),
            ("quantity", "int"),
        ]
        .iter()
        .map(|(f, t)| (Cow::Borrowed(*f), Cow::Borrowed(*t)))
        .collect::<Vec<_>>()
        .into(),
        origin: Origin {
            topic: "t".into(),
            partition: 0,
            offset: n as i64,
        },
    }
    .encode()
}

fn workload() -> Vec<Vec<u8>> {
    let mut rng = Lcg(7);
    let mut out = Vec::new();
    for sku in 0..PRODUCTS {
        out.push(change(
            "erp",
            sku + 1,
            sku,
            &[
                ("name", FieldValue::Text(format!("Product {sku}"))),
                ("price", FieldValue::Text("19.90".into())),
                ("quantity", FieldValue::Int(100)),
            ],
        ));
    }
    // Positions per system grow; the erp's continue after its creates.
    let mut position = [PRODUCTS + 1, 1, 1];
    for i in 0..CHANGES {
        let sku = if rng.next(2) == 0 {
            rng.next(PRODUCTS / 10)
        } else {
            rng.next(PRODUCTS)
        };
        let which = rng.next(3) as usize;
        position[which] += 1;
        let n = position[which];
        let payload = match which {
            0 => change(
                "erp",
                n,
                sku,
                &[("price", FieldValue::Text(format!("{}.90", 10 + i % 50)))],
            ),
            1 => change(
                "shop",
                n,
                sku,
                &[
                    ("name", FieldValue::Text(format!("Product {sku}"))),
                    ("quantity", FieldValue::Int(100 - (i % 7) as i64)),
                ],
            ),
            _ => change(
                "wms",
                n,
                sku,
                &[("quantity", FieldValue::Int(100 + (i % 5) as i64))],
            ),
        };
        out.push(payload.clone());
        if rng.next(20) == 0 {
            out.push(payload);
        }
    }
    out
}

/// What every applied change writes: the changelog value of the record's state, and the record
/// each target receives (Kafka Connect JSON with its schema), for the workload's final states.
fn encode(c: &mut Criterion, config: &Config, log: &[(String, Vec<u8>)]) {
    let catalog = Catalog::new(config);
    let rules = entity_rules(config, &catalog);
    let product = EntityId(0);
    let resolver = Resolver::new(config);
    let names = resolver.names(product);
    let states: Vec<(String, RecordState)> = log
        .iter()
        .map(|(key, value)| {
            let key = key.split_once(':').map_or("", |(_, k)| k).to_owned();
            (key, changelog::decode(value, &names).unwrap())
        })
        .collect();
    let plans = target_plans(config, &catalog);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(states.len() as u64));
    group.bench_function("changelog", |b| {
        b.iter(|| {
            for (_, state) in &states {
                black_box(changelog::encode(state, &names));
            }
        })
    });
    group.bench_function("target_records_3_targets", |b| {
        b.iter(|| {
            let targets: Vec<_> = (0..3).map(|s| &plans[&(product, SystemId(s))]).collect();
            for (key, state) in &states {
                let provenance = Provenance {
                    entity: "product",
                    key_text: key,
                    origin: SystemId(0),
                    conflicts: &[],
                };
                black_box(target_records(
                    targets.iter().copied(),
                    &rules[0],
                    state,
                    &provenance,
                    &mut Vec::new(),
                ));
            }
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let config = config();
    let events = workload();
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!(
        "workload: {} internal records, {} bytes on average",
        events.len(),
        bytes / events.len()
    );

    let mut group = c.benchmark_group("stage2");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("internal_decode", |b| {
        b.iter(|| {
            for e in &events {
                black_box(InternalChange::decode(e).unwrap());
            }
        })
    });
    group.bench_function("resolve", |b| {
        b.iter_batched(
            || Resolver::new(&config),
            |mut resolver| {
                for e in &events {
                    black_box(resolver.resolve(0, e).unwrap());
                }
                resolver
            },
            BatchSize::LargeInput,
        )
    });

    // What a restore installs: the latest changelog value of each record the workload wrote
    // (the changelog reader keeps no other).
    let mut resolver = Resolver::new(&config);
    let mut latest: HashMap<String, Vec<u8>> = HashMap::new();
    for e in &events {
        if let Some((key, value)) = resolver.resolve(0, e).unwrap().changelog {
            latest.insert(key, value);
        }
    }
    let log: Vec<(String, Vec<u8>)> = latest.into_iter().collect();
    let records = resolver.state_summary(0).records;
    println!(
        "changelog: {} values for {} records, {} bytes per value on average",
        log.len(),
        records,
        log.iter().map(|(_, v)| v.len()).sum::<usize>() / log.len()
    );
    group.throughput(Throughput::Elements(log.len() as u64));
    group.bench_function("restore", |b| {
        b.iter_batched(
            || Resolver::new(&config),
            |mut restored| {
                let (count, _) = restored.install(
                    0,
                    log.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_slice()))),
                );
                assert_eq!(count, records);
                restored
            },
            BatchSize::LargeInput,
        )
    });
    // Dedup: every change of the workload again, as a redelivery after a rewind brings it;
    // each is known by its source position and changes nothing.
    let mut seen = Resolver::new(&config);
    for e in &events {
        seen.resolve(0, e).unwrap();
    }
    group.bench_function("dedup", |b| {
        b.iter(|| {
            for e in &events {
                let resolved = seen.resolve(0, e).unwrap();
                assert_eq!(resolved.outcome, "duplicate");
                black_box(resolved);
            }
        })
    });
    group.finish();

    encode(c, &config, &log);

    let mut clock = c.benchmark_group("clock");
    let mut a = VersionVector::new();
    let mut b = VersionVector::new();
    for (s, n) in [(0u16, 40u64), (1, 7), (2, 19)] {
        a.set(SystemId(s), n);
        b.set(SystemId(s), n + u64::from(s));
    }
    let dot = b.clone().increment(SystemId(1));
    clock.bench_function("covers", |bench| {
        bench.iter(|| black_box(&a).covers(black_box(dot)))
    });
    clock.bench_function("merge", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut merged| {
                merged.merge(black_box(&b));
                merged
            },
            BatchSize::SmallInput,
        )
    });
    clock.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
