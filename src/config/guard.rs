//! Guards: CEL expressions over a candidate `value` that reject it before it is written
//! (ARCHITECTURE.md §4), e.g. `value >= 0` for a stock level. Compiled once, when the configuration
//! is loaded, so a malformed guard is a configuration error naming its key.
//!
//! Numbers reach CEL as `int` when they are integers and as `double` otherwise (CEL has no
//! decimal type), text as `string`, SQL NULL as `null`. A guard that does not evaluate to
//! `true` — `false`, or an error such as comparing `null` with a number — rejects.

use std::fmt;
use std::sync::Arc;

use crate::model::value::FieldValue;

#[derive(Clone)]
pub struct Guard {
    source: String,
    program: Arc<cel::Program>,
    /// CEL's standard functions, built once: building them per evaluation took most of a
    /// guard's cost (a sixth of stage 2's time per event in benches/engine.rs).
    env: Arc<cel::Env>,
}

/// A guard that is not a CEL expression; never retriable (the configuration must change).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuardError(cel::ParseErrors);

impl Guard {
    pub fn compile(source: &str) -> Result<Self, GuardError> {
        let program = cel::Program::compile(source).map_err(GuardError)?;
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            env: Arc::new(cel::Env::stdlib()),
        })
    }

    /// Whether `value` may be written.
    pub fn admits(&self, value: &FieldValue) -> bool {
        let mut context = cel::Context::with_env(Arc::clone(&self.env));
        context.add_variable_from_value("value", to_cel(value));
        matches!(self.program.execute(&context), Ok(cel::Value::Bool(true)))
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Guard").field(&self.source).finish()
    }
}

fn to_cel(value: &FieldValue) -> cel::Value {
    match value {
        FieldValue::Null => cel::Value::Null,
        FieldValue::Bool(b) => cel::Value::Bool(*b),
        FieldValue::Int(i) => cel::Value::Int(*i),
        FieldValue::Decimal(d) if d.scale == 0 && i64::try_from(d.unscaled).is_ok() => {
            cel::Value::Int(d.unscaled as i64)
        }
        FieldValue::Decimal(d) => cel::Value::Float(d.to_f64()),
        // Beyond 38 digits a guard compares the nearest float.
        FieldValue::WideDecimal(t) => cel::Value::Float(t.parse().unwrap_or(f64::NAN)),
        FieldValue::Float(f) => cel::Value::Float(*f),
        FieldValue::Text(t) | FieldValue::Json(t) | FieldValue::Bytes(t) => {
            cel::Value::String(Arc::new(t.clone()))
        }
        // ISO 8601 text, which orders as the values do: `value >= "2024-01-01"`.
        FieldValue::Date(d) => cel::Value::String(Arc::new(d.to_string())),
        FieldValue::Time(t) => cel::Value::String(Arc::new(t.to_string())),
        FieldValue::Timestamp(t) => cel::Value::String(Arc::new(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::Decimal;

    #[test]
    fn a_stock_guard_rejects_negative_quantities() {
        let guard = Guard::compile("value >= 0").unwrap();
        assert!(guard.admits(&FieldValue::Int(0)));
        assert!(guard.admits(&FieldValue::Int(93)));
        assert!(!guard.admits(&FieldValue::Int(-5)));
        assert!(guard.admits(&FieldValue::Decimal(Decimal {
            unscaled: 1250,
            scale: 2
        })));
        assert!(!guard.admits(&FieldValue::Decimal(Decimal {
            unscaled: -1,
            scale: 2
        })));
        // Not a number: the comparison errors, and an error rejects.
        assert!(!guard.admits(&FieldValue::Null));
    }

    #[test]
    fn guards_over_text_and_malformed_guards() {
        let guard = Guard::compile("size(value) <= 5 && value != 'n/a'").unwrap();
        assert!(guard.admits(&FieldValue::Text("Cup".into())));
        assert!(!guard.admits(&FieldValue::Text("n/a".into())));
        assert!(!guard.admits(&FieldValue::Text("too long".into())));
        assert!(Guard::compile("value >= ").is_err());
    }
}
