//! End-to-end tests against the real local stack (`scripts/stack up`): PostgreSQL →
//! Debezium → Kafka → harmony → output topics. One test binary with modules, so librdkafka is
//! linked once.

mod architecture;
mod avro;
mod capture;
mod chaos;
mod closed_loop;
mod decoding;
mod deploy;
mod durability;
mod exactly_once;
mod faults;
mod ingest;
mod operability;
mod pipeline;
mod poison;
mod product;
mod resnapshot;
mod schema_changes;
mod stack;
mod support;
mod types;
