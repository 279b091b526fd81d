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
use crate::model::value::ColumnType;

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

/// What is known of one table: its qualifier (schema or database), the shape last seen, and
/// the mapped columns its changes lacked when last reported.
#[derive(Default)]
struct Table {
    qualifier: String,
    shape: Option<Arc<ValueSchema>>,
    missing: Vec<String>,
}

/// The tables seen, by system, then table name (then qualifier: a handful per name).
#[derive(Default)]
pub struct Shapes {
    seen: Vec<HashMap<String, Vec<Table>>>,
    /// How many tables have mapped columns missing: the per-record check is skipped at 0.
    tables_missing: usize,
}

impl Shapes {
    fn table(&self, system: usize, (qualifier, table): (&str, &str)) -> Option<&Table> {
        self.seen
            .get(system)?
            .get(table)?
            .iter()
            .find(|t| t.qualifier == qualifier)
    }

    fn table_mut(&mut self, system: usize, (qualifier, table): (&str, &str)) -> &mut Table {
        if self.seen.len() <= system {
            self.seen.resize_with(system + 1, HashMap::new);
        }
        let tables = self.seen[system].entry(table.to_owned()).or_default();
        let index = match tables.iter().position(|t| t.qualifier == qualifier) {
            Some(index) => index,
            None => {
                tables.push(Table {
                    qualifier: qualifier.to_owned(),
                    ..Table::default()
                });
                tables.len() - 1
            }
        };
        &mut tables[index]
    }

    /// The shape remembered for the table.
    pub fn current(&self, system: usize, at: (&str, &str)) -> Option<&Arc<ValueSchema>> {
        self.table(system, at)?.shape.as_ref()
    }

    /// Whether `schema` is the shape remembered for the table: the per-record fast path.
    pub fn is_current(&self, system: usize, at: (&str, &str), schema: &Arc<ValueSchema>) -> bool {
        self.current(system, at)
            .is_some_and(|s| Arc::ptr_eq(s, schema))
    }

    /// How `schema` differs from the shape last remembered for the table; `None` when it is
    /// that shape, or the first one seen (nothing to compare it with).
    pub fn differences(
        &self,
        system: usize,
        at: (&str, &str),
        schema: &Arc<ValueSchema>,
        mapped: impl Fn(&str) -> bool,
    ) -> Option<Vec<ShapeChange>> {
        let previous = self.current(system, at)?;
        (!Arc::ptr_eq(previous, schema)).then(|| diff(previous, schema, mapped))
    }

    /// `schema` is now the table's shape.
    pub fn remember(&mut self, system: usize, at: (&str, &str), schema: &Arc<ValueSchema>) {
        self.table_mut(system, at).shape = Some(Arc::clone(schema));
    }

    /// Whether any table's changes lack mapped columns, as last reported.
    pub fn any_missing(&self) -> bool {
        self.tables_missing > 0
    }

    /// The mapped columns a table's change lacks (`missing`, empty when it has them all), if
    /// that is news: different from what was last reported for the table.
    pub fn missing_news(
        &mut self,
        system: usize,
        at: (&str, &str),
        missing: Vec<String>,
    ) -> Option<Vec<String>> {
        let before = self
            .table(system, at)
            .map_or(&[][..], |t| t.missing.as_slice());
        if before == missing.as_slice() {
            return None;
        }
        let was_missing = !before.is_empty();
        self.table_mut(system, at).missing = missing.clone();
        match (was_missing, missing.is_empty()) {
            (false, false) => self.tables_missing += 1,
            (true, true) => self.tables_missing -= 1,
            _ => {}
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
    fn find<'c>(columns: &'c [(String, ColumnType)], name: &str) -> Option<&'c ColumnType> {
        columns.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
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
            if old_type != new_type {
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
        assert_eq!(shapes.missing_news(0, ("public", "items"), vec![]), None);
        assert_eq!(
            shapes.missing_news(0, ("public", "items"), vec!["price".into()]),
            Some(vec!["price".into()])
        );
        assert_eq!(
            shapes.missing_news(0, ("public", "items"), vec!["price".into()]),
            None
        );
        assert_eq!(
            shapes.missing_news(0, ("public", "items"), vec![]),
            Some(vec![])
        );
        assert_eq!(shapes.missing_news(0, ("public", "items"), vec![]), None);
    }
}
