//! Stage 1, pure: a Debezium record decoded, mapped to record changes of entities, written as internal records (or, without entities, as output records).

pub mod avro;
pub mod envelope;
pub mod internal;
pub mod mapping;
pub mod output;
pub mod schema;
pub mod shape;
pub mod stage;
