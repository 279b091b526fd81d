//! harmony keeps one business record consistent across systems, from their Debezium change
//! streams. `ARCHITECTURE.md` at the repository's root says what the engine does and guarantees
//! (data flow, record state, order of durability, invariants); comments cite it by section.
//!
//! # Map, in the order an event meets the modules
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML file and its `HARMONY__…` overrides, as a typed, validated tree |
//! | [`worker`] | the consume → process → produce → acknowledge pipelines (stage 1, stage 2) and their life cycle |
//! | [`envelope`] | bytes of a Debezium record → typed [`envelope::Decoded`] record (pure) |
//! | [`schema`] | the Connect schema of schema-wrapped records: declared column types, cached |
//! | [`value`] | exact column values: 64-bit integers, decimals, the unavailable placeholder |
//! | [`output`] | without entities: a change → harmony's Debezium-shaped output record (pure) |
//! | [`mapping`] | stage 1: a table's change → entity, canonical key, entity fields (pure) |
//! | [`internal`] | the internal topic's record: one logical record change, exact values, versioned |
//! | [`resolver`] | stage 2: internal record → engine → target and conflict records (pure) |
//! | [`engine`] | one record change applied to the record's state — dedup, echo, conflicts, strategies (pure) |
//! | [`figures`] | a partition's state metrics (records, bytes, targets behind, unsettled conflicts), kept change by change |
//! | [`clock`] | version vectors and dots: concurrent or causally ordered (pure) |
//! | [`guard`] | CEL guards that reject a candidate value before it is written |
//! | [`target`] | the record a target system receives, in its own columns (pure) |
//! | [`connect`] | Kafka Connect's JSON-with-schema format of target records, for schema-aware sinks |
//! | [`jsontext`] | JSON text written straight into a record's bytes, without a value tree |
//! | [`conflict`] | the conflicts-topic record: deterministic id, candidates, winner (pure) |
//! | [`changelog`] | a record's state as the changelog topic keeps it: compact, versioned, by name (pure) |
//! | [`resolution`] | an operator's settling of a held conflict, as a record change from `operator` (pure) |
//! | [`settle`] | `harmony resolve`: finds the conflict record, publishes the operator's change |
//! | [`kafka`] | client settings that carry the delivery guarantee, topic creation, [`kafka::preflight`] (settings of its own topics that would lose data, refused at start), and [`kafka::offsets`], the one owner of input offsets |
//! | [`telemetry`] | named events: each logs and counts together; the Prometheus registry |
//! | [`http`] | `/metrics`, `/health`, `/ready` |
//!
//! # The path of one event
//!
//! ```text
//! Debezium topic ─► stage 1 ─► envelope::decode ─┬─ change ─► mapping ─► internal record ─► internal topic (keyed entity:key)
//!                                                ├─ tombstone, heartbeat, tx marker (counted)
//!                                                └─ error ──► dead-letter copy ─► DLQ topic
//! internal topic ─► stage 2 ─► resolver ─► engine::apply ─┬─ target records ─► one topic per target system
//!                                                         └─ conflict records ─► conflicts topic
//! every stage: producer acks ─► kafka::offsets (in offset order) ─► store_offset ─► background commit
//! ```
//!
//! Without entities declared, stage 1 publishes each change as it is (`output`) instead.

pub mod changelog;
pub mod clock;
pub mod config;
pub mod conflict;
pub mod connect;
pub mod engine;
pub mod envelope;
pub mod figures;
pub mod guard;
pub mod http;
pub mod internal;
pub mod jsontext;
pub mod kafka;
pub mod mapping;
pub mod output;
pub mod resolution;
pub mod resolver;
pub mod schema;
pub mod settle;
pub mod target;
pub mod telemetry;
pub mod value;
pub mod worker;
