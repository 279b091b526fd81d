//! The vocabulary every stage shares: version vectors and dots, system, entity and field ids, column and field values, and what a stage is to the runtime.

pub mod clock;
pub mod stage;
pub mod temporal;
pub mod value;
