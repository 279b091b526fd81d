//! harmony keeps one business record consistent across systems, from their Debezium change
//! streams. See `DESIGN.md` in the shared folder for the full engine; this crate is built up
//! towards it issue by issue.
//!
//! # Map
//!
//! | module | owns |
//! |---|---|
//! | [`clock`] | version vectors and dots: concurrent or causally ordered (pure) |
//! | [`config`] | the TOML file and its `HARMONY__…` overrides, as a typed, validated tree |
//! | [`conflict`] | the conflicts-topic record: deterministic id, candidates, winner (pure) |
//! | [`engine`] | stage 2: one record change applied to the record's state — dedup, echo, conflicts, strategies (pure) |
//! | [`envelope`] | bytes of a Debezium record → typed [`envelope::Decoded`] record (pure) |
//! | [`resolver`] | stage 2: internal record → engine → target and conflict records (pure) |
//! | [`schema`] | the Connect schema of schema-wrapped records: declared column types, cached |
//! | [`value`] | exact column values: 64-bit integers, decimals, the unavailable placeholder |
//! | [`mapping`] | stage 1: a table's change → entity, canonical key, entity fields (pure) |
//! | [`output`] | a change → harmony's Debezium-shaped output record (pure) |
//! | [`internal`] | the internal topic's record: one logical record change, exact values, versioned |
//! | [`kafka`] | client settings that carry the delivery guarantee, topic creation, and [`kafka::offsets`], the one owner of input offsets |
//! | [`worker`] | the consume → process → produce → acknowledge loop and its life cycle |
//! | [`target`] | the record a target system receives, in its own columns (pure) |
//! | [`telemetry`] | named events: each logs and counts together; the Prometheus registry |
//! | [`guard`] | CEL guards that reject a candidate value before it is written |
//! | [`http`] | `/metrics`, `/health`, `/ready` |
//!
//! # The path of one event
//!
//! ```text
//! Debezium topic ─► worker (recv) ─► envelope::decode ─┬─ change ──► output::encode_change ─► producer ─► output topic
//!                                                      ├─ tombstone (counted, no output)
//!                                                      └─ error ───► dead-letter copy ───► producer ─► DLQ topic
//!                        producer acks ─► kafka::offsets (in offset order) ─► store_offset ─► background commit
//! ```

pub mod clock;
pub mod config;
pub mod conflict;
pub mod engine;
pub mod envelope;
pub mod guard;
pub mod http;
pub mod internal;
pub mod kafka;
pub mod mapping;
pub mod output;
pub mod resolver;
pub mod schema;
pub mod target;
pub mod telemetry;
pub mod value;
pub mod worker;
