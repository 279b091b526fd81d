//! A mapped table's shape over time (ARCHITECTURE.md §2): its columns as the schema of its
//! records declares them, compared with the shape last seen, so that a column added, dropped,
//! renamed or retyped by DDL is noticed the first time a record of the new shape arrives, and
//! the mapped columns its changes no longer carry.
//!
//! A record's schema is parsed once per distinct text ([`crate::ingest::schema::SchemaCache`]),
//! so an unchanged shape is recognised by one pointer comparison per record.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ingest::schema::ValueSchema;

/// A table's qualifier (its schema or database) and its shape.
type QualifiedShape = (String, Arc<ValueSchema>);

/// One difference between two shapes of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeChange {
    /// `add`, `drop`, `rename` or `type`.
    pub kind: &'static str,
    /// The column (`old→new` for a rename).
    pub column: String,
    /// Whether the configuration maps the column (for a rename, the old one).
    pub mapped: bool,
}

/// The shapes last seen, by system, then table and its qualifier (schema or database).
#[derive(Default)]
pub struct Shapes {
    seen: Vec<HashMap<String, Vec<QualifiedShape>>>,
    /// Mapped columns a table's changes lacked when last reported, by system and table.
    missing: HashMap<(usize, String), Vec<String>>,
}

impl Shapes {
    /// How `schema` differs from the shape last remembered for the table; `None` when it is
    /// that shape, or the first one seen (nothing to compare it with).
    pub fn differences(
        &self,
        system: usize,
        (qualifier, table): (&str, &str),
        schema: &Arc<ValueSchema>,
        mapped: impl Fn(&str) -> bool,
    ) -> Option<Vec<ShapeChange>> {
        let previous = self
            .seen
            .get(system)?
            .get(table)?
            .iter()
            .find(|(q, _)| q == qualifier)
            .map(|(_, s)| s)?;
        if Arc::ptr_eq(previous, schema) {
            return None;
        }
        Some(diff(previous, schema, mapped))
    }

    /// Whether `schema` is the shape remembered for the table: the per-record fast path.
    pub fn is_current(
        &self,
        system: usize,
        (qualifier, table): (&str, &str),
        schema: &Arc<ValueSchema>,
    ) -> bool {
        self.seen
            .get(system)
            .and_then(|tables| tables.get(table))
            .and_then(|shapes| shapes.iter().find(|(q, _)| q == qualifier))
            .is_some_and(|(_, s)| Arc::ptr_eq(s, schema))
    }

    /// The shape remembered for the table.
    pub fn current(
        &self,
        system: usize,
        (qualifier, table): (&str, &str),
    ) -> Option<Arc<ValueSchema>> {
        self.seen
            .get(system)?
            .get(table)?
            .iter()
            .find(|(q, _)| q == qualifier)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Whether any table's changes lack mapped columns, as last reported.
    pub fn any_missing(&self) -> bool {
        !self.missing.is_empty()
    }

    /// `schema` is now the table's shape.
    pub fn remember(
        &mut self,
        system: usize,
        (qualifier, table): (&str, &str),
        schema: &Arc<ValueSchema>,
    ) {
        if self.seen.len() <= system {
            self.seen.resize_with(system + 1, HashMap::new);
        }
        let shapes = self.seen[system].entry(table.to_owned()).or_default();
        match shapes.iter_mut().find(|(q, _)| q == qualifier) {
            Some((_, s)) => *s = Arc::clone(schema),
            None => shapes.push((qualifier.to_owned(), Arc::clone(schema))),
        }
    }

    /// The mapped columns a table's change lacks (`missing`, empty when it has them all), if
    /// that is news: different from what was last reported for the table.
    pub fn missing_news(
        &mut self,
        system: usize,
        table: &str,
        missing: Vec<String>,
    ) -> Option<Vec<String>> {
        if missing.is_empty() && self.missing.is_empty() {
            return None;
        }
        let key = (system, table.to_owned());
        let before = self.missing.get(&key).map_or(&[][..], Vec::as_slice);
        if before == missing.as_slice() {
            return None;
        }
        if missing.is_empty() {
            self.missing.remove(&key);
        } else {
            self.missing.insert(key, missing.clone());
        }
        Some(missing)
    }
}

/// The changes from `before` to `after`. A column gone and one new of the same type, and
/// nothing else, is read as a rename: Debezium's schema says no more than that.
fn diff(
    before: &ValueSchema,
    after: &ValueSchema,
    mapped: impl Fn(&str) -> bool,
) -> Vec<ShapeChange> {
    let old = &before.row.columns;
    let new = &after.row.columns;
    let find = |columns: &[(String, crate::model::value::ColumnType)], name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    };
    let dropped: Vec<_> = old.iter().filter(|(n, _)| find(new, n).is_none()).collect();
    let added: Vec<_> = new.iter().filter(|(n, _)| find(old, n).is_none()).collect();
    let mut changes = Vec::new();
    if let ([(from, old_type)], [(to, new_type)]) = (dropped.as_slice(), added.as_slice()) {
        if old_type == new_type {
            changes.push(ShapeChange {
                kind: "rename",
                column: format!("{from}→{to}"),
                mapped: mapped(from),
            });
        }
    }
    if changes.is_empty() {
        changes.extend(dropped.iter().map(|(n, _)| ShapeChange {
            kind: "drop",
            column: n.clone(),
            mapped: mapped(n),
        }));
        changes.extend(added.iter().map(|(n, _)| ShapeChange {
            kind: "add",
            column: n.clone(),
            mapped: mapped(n),
        }));
    }
    for (name, new_type) in new {
        if let Some(old_type) = find(old, name) {
            if &old_type != new_type {
                changes.push(ShapeChange {
                    kind: "type",
                    column: format!("{name} ({old_type}→{new_type})"),
                    mapped: mapped(name),
                });
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::schema::RowSchema;
    use crate::model::value::ColumnType;

    fn shape(columns: &[(&str, ColumnType)]) -> Arc<ValueSchema> {
        Arc::new(ValueSchema {
            row: RowSchema {
                columns: columns
                    .iter()
                    .map(|(n, t)| ((*n).to_owned(), t.clone()))
                    .collect(),
            },
        })
    }

    #[test]
    fn each_ddl_change_is_named_once_and_a_new_shape_becomes_the_baseline() {
        let mapped = |c: &str| ["sku", "price", "title"].contains(&c);
        let table = ("public", "items");
        let mut shapes = Shapes::default();
        let v1 = shape(&[
            ("sku", ColumnType::String),
            ("price", ColumnType::Decimal { scale: 2 }),
        ]);
        assert_eq!(
            shapes.differences(0, table, &v1, mapped),
            None,
            "first sight"
        );
        shapes.remember(0, table, &v1);
        assert!(shapes.is_current(0, table, &v1));
        // ALTER TABLE … ADD COLUMN note text
        let v2 = shape(&[
            ("sku", ColumnType::String),
            ("price", ColumnType::Decimal { scale: 2 }),
            ("note", ColumnType::String),
        ]);
        let added = shapes.differences(0, table, &v2, mapped).unwrap();
        assert_eq!(
            added,
            vec![ShapeChange {
                kind: "add",
                column: "note".into(),
                mapped: false
            }]
        );
        shapes.remember(0, table, &v2);
        assert_eq!(
            shapes.differences(0, table, &v2, mapped),
            None,
            "reported once"
        );
        // ALTER TABLE … ALTER COLUMN price TYPE numeric(12,3); RENAME note TO remark
        let v3 = shape(&[
            ("sku", ColumnType::String),
            ("price", ColumnType::Decimal { scale: 3 }),
            ("remark", ColumnType::String),
        ]);
        let changes = shapes.differences(0, table, &v3, mapped).unwrap();
        assert_eq!(
            changes,
            vec![
                ShapeChange {
                    kind: "rename",
                    column: "note→remark".into(),
                    mapped: false
                },
                ShapeChange {
                    kind: "type",
                    column: "price (decimal(2)→decimal(3))".into(),
                    mapped: true
                },
            ]
        );
        // DROP COLUMN price
        let v4 = shape(&[("sku", ColumnType::String), ("remark", ColumnType::String)]);
        shapes.remember(0, table, &v3);
        let dropped = shapes.differences(0, table, &v4, mapped).unwrap();
        assert_eq!(
            dropped,
            vec![ShapeChange {
                kind: "drop",
                column: "price".into(),
                mapped: true
            }]
        );
        // Another schema's table of the same name is a table of its own.
        assert_eq!(shapes.differences(0, ("other", "items"), &v4, mapped), None);
    }

    #[test]
    fn missing_mapped_columns_are_news_only_when_they_change() {
        let mut shapes = Shapes::default();
        assert_eq!(shapes.missing_news(0, "items", vec![]), None);
        assert_eq!(
            shapes.missing_news(0, "items", vec!["price".into()]),
            Some(vec!["price".into()])
        );
        assert_eq!(shapes.missing_news(0, "items", vec!["price".into()]), None);
        assert_eq!(shapes.missing_news(0, "items", vec![]), Some(vec![]));
        assert_eq!(shapes.missing_news(0, "items", vec![]), None);
    }
}
