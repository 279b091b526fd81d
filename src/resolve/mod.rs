//! Stage 2, pure: an internal record applied to its record's state by the engine, and the target, conflict and changelog records that come of it.

pub mod changelog;
pub mod conflict;
pub mod connect;
pub mod engine;
pub mod figures;
pub mod jsontext;
pub mod resolver;
pub mod settlement;
pub mod stage;
pub mod target;
