//! harmony keeps one business record consistent across systems, from their Debezium change
//! streams. `ARCHITECTURE.md` at the repository's root says what the engine does and guarantees
//! (data flow, record state, order of durability, invariants); comments cite it by section.
//!
//! # Map
//!
//! One folder per layer; a layer imports only those above it in this table
//! (`tests/integration/architecture.rs` checks it).
//!
//! | layer / module | owns |
//! |---|---|
//! | [`model`] | the vocabulary every layer shares (pure) |
//! | [`model::clock`] | version vectors and dots: concurrent or causally ordered; system ids |
//! | [`model::value`] | exact column values (64-bit integers, decimals, the unavailable placeholder), column types and semantic names, field values, and `FieldRef`, a field value as any topic's record holds it |
//! | [`model::temporal`] | dates, times of day and timestamps in one canonical form, whatever unit or text a connector carried them in |
//! | [`model::stage`] | what a stage is to the runtime: an input record in, its [`model::stage::Effects`] (records to publish, a rejection, changelog writes, counts) out; entity and field ids |
//! | [`config`] | the TOML file and its `HARMONY__…` overrides, as a typed, validated tree; [`config::guard`]: CEL guards |
//! | [`ingest`] | stage 1 (pure) |
//! | [`ingest::envelope`] | bytes of a Debezium record → typed [`ingest::envelope::Decoded`] record |
//! | [`ingest::schema`] | the Connect schema of schema-wrapped records: declared column types, cached |
//! | [`ingest::shape`] | a mapped table's shape over time: DDL changes seen in its records' schema, mapped columns gone |
//! | [`ingest::mapping`] | a table's change → entity, canonical key, entity fields; declared column types of schemaless input |
//! | [`ingest::internal`] | the internal topic's record: one logical record change, exact values, versioned |
//! | [`ingest::output`] | without entities: a change → harmony's Debezium-shaped output record |
//! | [`ingest::stage`] | stage 1 as a `Stage`: route by topic → decode → map (or pass through); reject what cannot be handled |
//! | [`resolve`] | stage 2 (pure) |
//! | [`resolve::resolver`] | internal record → engine → target and conflict records, state per partition |
//! | [`resolve::engine`] | one record change applied to the record's state — dedup, echo, conflicts, strategies |
//! | [`resolve::figures`] | a partition's state metrics (records, bytes, targets behind, unsettled conflicts), kept change by change |
//! | [`resolve::target`] | the record a target system receives, in its own columns |
//! | [`resolve::connect`] | Kafka Connect's JSON-with-schema format of target records, each column in its target type, converted exactly or refused |
//! | [`resolve::jsontext`] | JSON text written straight into a record's bytes, without a value tree |
//! | [`resolve::conflict`] | the conflicts-topic record: deterministic id, candidates, winner |
//! | [`resolve::changelog`] | a record's state as the changelog topic keeps it: compact, versioned, by name |
//! | [`resolve::settlement`] | an operator's settling of a held conflict, as a record change from `operator` |
//! | [`resolve::stage`] | stage 2 as a `Stage`: the resolver's outcome as effects |
//! | [`runtime`] | the only code on Kafka and tokio |
//! | [`runtime::worker`] | one `Pipeline<S: Stage>` per stage: consume → stage → produce → acknowledge under its delivery mode; the partitions' life cycle and readiness; the settings resolved once; the targets' captured column types read at start |
//! | [`runtime::kafka`] | client settings that carry the delivery guarantee, topic creation, [`runtime::kafka::preflight`] (settings of its own topics that would lose data, refused at start), and [`runtime::kafka::offsets`], the one owner of input offsets |
//! | [`runtime::settle`] | `harmony resolve`: finds the conflict record, publishes the operator's change |
//! | [`runtime::telemetry`] | named events: each logs and counts together; the Prometheus registry |
//! | [`runtime::http`] | `/metrics`, `/health`, `/ready` |
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

pub mod config;
pub mod ingest;
pub mod model;
pub mod resolve;
pub mod runtime;
