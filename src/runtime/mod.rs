//! The only code on Kafka, tokio and the network: the pipelines that run the stages, their delivery guarantees and partition life cycle, Kafka clients and topics, the schema registry, telemetry, HTTP, and the `resolve` command's I/O.

pub mod http;
pub mod kafka;
pub mod registry;
pub mod settle;
pub mod telemetry;
pub mod worker;
