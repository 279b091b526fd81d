//! `merge` for set-valued fields (ARCHITECTURE.md §4): a JSON array is a set of elements, and
//! concurrent changes merge as an observed-remove set. Each element keeps the dots of the
//! changes that added it; a system's removal drops only the dots it had seen (its causal
//! context), so an element another system added concurrently survives (add wins), and the
//! result does not depend on the order the changes arrive in.
//!
//! A change is read as a delta against what its system held: elements it now has and did not
//! hold are added, elements it held and no longer has are removed.

use std::collections::BTreeMap;

use super::FieldValue;
use crate::model::clock::{Dot, VersionVector};

/// Elements (canonical JSON text) with the dots that added them, in element order.
pub type Tags = Vec<(String, Vec<Dot>)>;

/// The elements of a set value; `None` when the value is not a set (not a JSON array).
/// `null` is the empty set: a cleared column.
fn elements(value: &FieldValue) -> Option<Vec<String>> {
    match value {
        FieldValue::Null => Some(Vec::new()),
        FieldValue::Json(text) => match serde_json::from_str::<serde_json::Value>(text).ok()? {
            serde_json::Value::Array(items) => {
                let mut out: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                out.sort();
                out.dedup();
                Some(out)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The set value of `tags`: its elements as a JSON array, in element order.
pub fn value_of(tags: &Tags) -> FieldValue {
    let mut text = String::from("[");
    for (i, (element, _)) in tags.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(element);
    }
    text.push(']');
    FieldValue::Json(text)
}

/// Applies a system's new set to the field: its additions tagged with `dot`, its removals
/// dropping the dots `context` covers. `current` is the field's tags and value, `base` what
/// the system held. `None` when the incoming or held value is not a set.
pub fn merge(
    current: Option<(&Tags, &FieldValue, Dot)>,
    base: Option<&FieldValue>,
    incoming: &FieldValue,
    dot: Dot,
    context: &VersionVector,
) -> Option<Tags> {
    let new = elements(incoming)?;
    let held = match base {
        Some(b) => elements(b)?,
        None => Vec::new(),
    };
    let mut tags: BTreeMap<String, Vec<Dot>> = BTreeMap::new();
    match current {
        Some((existing, _, _)) if !existing.is_empty() => {
            tags.extend(existing.iter().cloned());
        }
        // A value written before the field was a set (or under another strategy): its
        // elements count as added by the change that wrote it.
        Some((_, value, written_by)) => {
            for element in elements(value).unwrap_or_default() {
                tags.insert(element, vec![written_by]);
            }
        }
        None => {}
    }
    for element in new.iter().filter(|e| held.binary_search(e).is_err()) {
        let dots = tags.entry(element.clone()).or_default();
        if !dots.contains(&dot) {
            dots.push(dot);
        }
    }
    for element in held.iter().filter(|e| new.binary_search(e).is_err()) {
        if let Some(dots) = tags.get_mut(element) {
            dots.retain(|d| !context.covers(*d));
        }
    }
    Some(
        tags.into_iter()
            .filter(|(_, dots)| !dots.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::SystemId;

    fn set(items: &str) -> FieldValue {
        FieldValue::Json(items.to_owned())
    }

    #[test]
    fn elements_are_canonical_and_non_arrays_are_not_sets() {
        assert_eq!(
            elements(&set(r#"["b","a","b"]"#)),
            Some(vec!["\"a\"".to_owned(), "\"b\"".to_owned()])
        );
        assert_eq!(elements(&FieldValue::Null), Some(vec![]));
        assert_eq!(elements(&set(r#"{"a":1}"#)), None);
        assert_eq!(elements(&FieldValue::Int(3)), None);
    }

    #[test]
    fn a_removal_drops_only_what_its_system_had_seen() {
        let a = Dot {
            system: SystemId(0),
            counter: 1,
        };
        let b = Dot {
            system: SystemId(1),
            counter: 1,
        };
        // x was added by a; the shop (b) adds y concurrently.
        let tags: Tags = vec![("\"x\"".into(), vec![a])];
        let tags = merge(
            Some((&tags, &set(r#"["x"]"#), a)),
            Some(&set(r#"["x"]"#)),
            &set(r#"["x","y"]"#),
            b,
            &VersionVector::from_dot(a),
        )
        .unwrap();
        assert_eq!(value_of(&tags), set(r#"["x","y"]"#));
        // A system that had seen only a's write removes both x and y: y's add it never saw.
        let c = Dot {
            system: SystemId(2),
            counter: 1,
        };
        let tags = merge(
            Some((&tags, &set(r#"["x","y"]"#), b)),
            Some(&set(r#"["x","y"]"#)),
            &set("[]"),
            c,
            &VersionVector::from_dot(a),
        )
        .unwrap();
        assert_eq!(
            value_of(&tags),
            set(r#"["y"]"#),
            "add wins over an unseen add"
        );
    }
}
