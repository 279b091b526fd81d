//! The vocabulary every stage shares: version vectors and dots, system ids, column and field values.

pub mod clock;
pub mod value;
