//! Settling a held (`manual`) conflict (ARCHITECTURE.md §4): the operator's choice becomes one more
//! change of the record, from the system `operator`, whose causal context is exactly the
//! conflict's candidates. Stage 2 then applies it like any change: it supersedes the candidates
//! (a plain update, delivered to every target), while a write that arrived after the conflict
//! is not covered by that context and is a new conflict rather than silently overwritten.
//!
//! The change goes to the internal topic, keyed like the record, so it meets the record's other
//! changes on their partition and in order. Pure: `harmony resolve` reads the conflict record
//! and publishes what this returns.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::ingest::internal::{FieldRef, InternalChange, Origin, Position, FORMAT_VERSION};
use crate::model::clock::OPERATOR;
use crate::model::stage::ChangeKind;
use crate::model::temporal::{Date, TimeOfDay, Timestamp};
use crate::model::value::{wide_decimal_parts, wide_decimal_text, Decimal};

/// What the operator settles the conflict with.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// The value of the candidate that system wrote.
    Pick(String),
    /// A value of the operator's own, as a JSON literal; read as the candidates' type
    /// (`4.90` for a decimal field stays exact).
    Value(String),
}

#[derive(Debug, Error, PartialEq)]
pub enum SettlementError {
    #[error("the conflict record cannot be read: {0}")]
    Record(String),
    #[error("conflict {id} is not pending: its strategy ({strategy}) resolved it")]
    NotPending { id: String, strategy: String },
    #[error("no candidate of conflict {id} comes from `{system}` (candidates: {candidates})")]
    NoSuchCandidate {
        id: String,
        system: String,
        candidates: String,
    },
    #[error("`{value}` is not a {kind} value, as the candidates of field `{field}` are")]
    WrongType {
        value: String,
        kind: &'static str,
        field: String,
    },
}

#[derive(Debug, Deserialize)]
pub struct ConflictDoc<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    entity: Cow<'a, str>,
    #[serde(borrow)]
    key: &'a RawValue,
    #[serde(borrow)]
    field: Cow<'a, str>,
    #[serde(borrow)]
    strategy: Cow<'a, str>,
    #[serde(borrow)]
    candidates: Vec<CandidateDoc<'a>>,
    pending: bool,
}

#[derive(Debug, Deserialize)]
struct CandidateDoc<'a> {
    #[serde(borrow)]
    system: Cow<'a, str>,
    #[serde(borrow)]
    value: FieldRef<'a>,
    #[serde(borrow)]
    dot: (Cow<'a, str>, u64),
}

impl<'a> ConflictDoc<'a> {
    pub fn parse(text: &'a [u8]) -> Result<Self, SettlementError> {
        serde_json::from_slice(text).map_err(|e| SettlementError::Record(e.to_string()))
    }
}

/// The internal record that settles `conflict` with `choice`, and its record key.
pub fn settlement_change<'a>(
    conflict: &'a ConflictDoc<'a>,
    choice: &Choice,
    now_ms: i64,
) -> Result<(String, InternalChange<'a>), SettlementError> {
    if !conflict.pending {
        return Err(SettlementError::NotPending {
            id: conflict.id.to_string(),
            strategy: conflict.strategy.to_string(),
        });
    }
    let value = match choice {
        Choice::Pick(system) => conflict
            .candidates
            .iter()
            .find(|c| c.system == system.as_str())
            .map(|c| c.value.clone())
            .ok_or_else(|| SettlementError::NoSuchCandidate {
                id: conflict.id.to_string(),
                system: system.clone(),
                candidates: conflict
                    .candidates
                    .iter()
                    .map(|c| c.system.as_ref())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        Choice::Value(literal) => typed_like(literal, conflict)?,
    };
    // The join of the candidates' dots: what the operator saw when deciding.
    let mut context: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &conflict.candidates {
        let counter = context.entry(c.dot.0.as_ref()).or_default();
        *counter = (*counter).max(c.dot.1);
    }
    let context = serde_json::to_string(&context).unwrap_or_default();
    let change = InternalChange {
        v: FORMAT_VERSION,
        entity: Cow::Borrowed(&conflict.entity),
        key: Cow::Borrowed(conflict.key.get()),
        system: Cow::Borrowed(OPERATOR),
        kind: ChangeKind::Upsert,
        ts_ms: now_ms,
        ts_us: None,
        snapshot: false,
        position: Position::Unknown,
        fields: vec![(Cow::Borrowed(&conflict.field), value)],
        context: Some(Cow::Owned(context)),
        types: Cow::Borrowed(&[]),
        origin: Origin {
            topic: Cow::Borrowed("harmony resolve"),
            partition: -1,
            offset: -1,
        },
    };
    Ok((change.record_key(), change))
}

/// The operator's literal as the type the candidates have.
fn typed_like<'a>(
    literal: &str,
    conflict: &ConflictDoc<'_>,
) -> Result<FieldRef<'a>, SettlementError> {
    let parsed: serde_json::Value =
        serde_json::from_str(literal).unwrap_or_else(|_| serde_json::Value::String(literal.into()));
    let wrong = |kind| SettlementError::WrongType {
        value: literal.to_owned(),
        kind,
        field: conflict.field.to_string(),
    };
    let like = conflict
        .candidates
        .iter()
        .map(|c| &c.value)
        .find(|v| !matches!(v, FieldRef::Null));
    if parsed.is_null() {
        return Ok(FieldRef::Null);
    }
    Ok(match like {
        Some(FieldRef::Int(_)) => FieldRef::Int(parsed.as_i64().ok_or_else(|| wrong("integer"))?),
        Some(FieldRef::Decimal(_) | FieldRef::WideDecimal(_)) => {
            // The literal's own digits, not a float's: 4.90 stays 4.90.
            let text = match &parsed {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(_) => literal.trim().to_owned(),
                _ => return Err(wrong("decimal")),
            };
            match Decimal::parse(&text) {
                Some(decimal) => FieldRef::Decimal(decimal),
                None => {
                    let (unscaled, scale) = wide_decimal_parts(text.trim_start_matches('+'))
                        .ok_or_else(|| wrong("decimal"))?;
                    FieldRef::WideDecimal(Cow::Owned(wide_decimal_text(&unscaled, scale)))
                }
            }
        }
        Some(FieldRef::Float(_)) => {
            FieldRef::Float(parsed.as_f64().ok_or_else(|| wrong("number"))?)
        }
        Some(FieldRef::Bool(_)) => {
            FieldRef::Bool(parsed.as_bool().ok_or_else(|| wrong("boolean"))?)
        }
        Some(FieldRef::Json(_)) => FieldRef::Json(Cow::Owned(parsed.to_string())),
        Some(FieldRef::Bytes(_)) => match parsed {
            serde_json::Value::String(s) => FieldRef::Bytes(Cow::Owned(s)),
            _ => return Err(wrong("base64 text")),
        },
        Some(FieldRef::Date(_)) => FieldRef::Date(
            parsed
                .as_str()
                .and_then(Date::parse)
                .ok_or_else(|| wrong("date"))?,
        ),
        Some(FieldRef::Time(_)) => FieldRef::Time(
            parsed
                .as_str()
                .and_then(TimeOfDay::parse)
                .ok_or_else(|| wrong("time of day"))?,
        ),
        Some(FieldRef::Timestamp(_)) => FieldRef::Timestamp(
            parsed
                .as_str()
                .and_then(Timestamp::parse)
                .ok_or_else(|| wrong("timestamp"))?,
        ),
        Some(FieldRef::Text(_)) | Some(FieldRef::Null) | None => match parsed {
            serde_json::Value::String(s) => FieldRef::Text(Cow::Owned(s)),
            _ => return Err(wrong("text")),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD: &str = r#"{"id":"c-00000000000000aa","entity":"product","key":["SKU-1"],"field":"price","strategy":"manual",
        "candidates":[{"system":"erp","value":{"decimal":"4.90"},"dot":["erp",3],"ts_ms":1},
                      {"system":"shop","value":{"decimal":"5.20"},"dot":["shop",2],"ts_ms":2}],
        "winner":null,"resolved":{"decimal":"4.90"},"pending":true,"ts_ms":2}"#;

    #[test]
    fn a_pick_becomes_an_operator_change_based_on_the_candidates() {
        let doc = ConflictDoc::parse(HELD.as_bytes()).unwrap();
        let (key, change) = settlement_change(&doc, &Choice::Pick("shop".into()), 99).unwrap();
        assert_eq!(key, r#"product:["SKU-1"]"#);
        assert_eq!(change.system, OPERATOR);
        assert_eq!(
            change.fields,
            vec![(
                Cow::Borrowed("price"),
                FieldRef::Decimal(Decimal::parse("5.20").unwrap())
            )]
        );
        assert_eq!(change.context.as_deref(), Some(r#"{"erp":3,"shop":2}"#));
        // What the CLI writes, stage 2 reads back.
        let bytes = change.encode();
        assert_eq!(InternalChange::decode(&bytes).unwrap(), change);
    }

    #[test]
    fn a_value_of_the_operators_own_takes_the_candidates_type() {
        let doc = ConflictDoc::parse(HELD.as_bytes()).unwrap();
        let (_, change) = settlement_change(&doc, &Choice::Value("4.95".into()), 99).unwrap();
        assert_eq!(
            change.fields[0].1,
            FieldRef::Decimal(Decimal::parse("4.95").unwrap())
        );
        let err = settlement_change(&doc, &Choice::Value("\"cheap\"".into()), 99).unwrap_err();
        assert!(
            matches!(
                err,
                SettlementError::WrongType {
                    kind: "decimal",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn only_pending_conflicts_and_real_candidates_can_be_settled() {
        let doc = ConflictDoc::parse(HELD.as_bytes()).unwrap();
        let err = settlement_change(&doc, &Choice::Pick("wms".into()), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no candidate of conflict c-00000000000000aa comes from `wms` (candidates: erp, shop)"
        );
        let done = HELD
            .replace(r#""pending":true"#, r#""pending":false"#)
            .replace("manual", "lww");
        let doc = ConflictDoc::parse(done.as_bytes()).unwrap();
        let err = settlement_change(&doc, &Choice::Pick("erp".into()), 0).unwrap_err();
        assert!(matches!(err, SettlementError::NotPending { .. }), "{err}");
        assert!(ConflictDoc::parse(b"{}").is_err());
    }
}
