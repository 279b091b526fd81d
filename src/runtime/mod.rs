//! The only code on Kafka and tokio: the pipelines that run the stages, their delivery guarantees and partition life cycle, Kafka clients and topics, telemetry, HTTP, and the `resolve` command's I/O.

pub mod http;
pub mod kafka;
pub mod settle;
pub mod telemetry;
pub mod worker;
