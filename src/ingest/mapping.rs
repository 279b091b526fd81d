//! Stage 1 of the data flow (ARCHITECTURE.md §1): a decoded change of one system's table becomes a
//! change of a logical record — entity, canonical key, entity fields — whatever the system
//! calls its table and columns.
//!
//! ```text
//! shop  public.items  {item_sku: "SKU-1", title: "Cup", stock: 95}
//!   → product ["SKU-1"]  {name: "Cup", quantity: 95}
//! ```
//!
//! Pure: built once from the configuration, then a lookup and a walk over the row per change.

use std::collections::HashMap;

use thiserror::Error;

use crate::config::Config;
use crate::ingest::envelope::{ChangeEvent, Op, Row};
use crate::ingest::schema::RowSchema;
use crate::model::value::{as_canonical, as_declared, ColumnType, Value, ValueError};

pub use crate::model::stage::{ChangeKind, EntityId, FieldId};

/// A change of one logical record, in entity terms.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedChange<'e, 'a> {
    pub entity: EntityId,
    /// The canonical key as JSON text of the key fields' values, in key order:
    /// `["SKU-1"]`, `["SKU-1","A-01"]`. Equal records have equal text in every system.
    pub key: String,
    pub kind: ChangeKind,
    /// Non-key fields the source row carries, by field. `Value::Unavailable` means the
    /// source did not send the column (unchanged).
    pub fields: Vec<(FieldId, &'e Value<'a>)>,
    /// The version the row was based on, as the version column holds it (exact mode).
    pub context: Option<&'e str>,
    /// Whether the row carries every column the source maps (and its version column): an
    /// upsert that does not lost some to DDL ([`Catalog::missing_columns`] names them).
    pub complete: bool,
}

/// Why a change cannot become a record change. Permanent: the row breaks the mapping.
#[derive(Debug, Error, PartialEq)]
pub enum MappingError {
    #[error("entity `{entity}`: key field `{field}` (column `{column}`) is missing or null")]
    MissingKey {
        entity: String,
        field: String,
        column: String,
    },
    #[error("entity `{entity}`: key field `{field}` holds a value that cannot be a key")]
    UnkeyableValue { entity: String, field: String },
}

impl MappingError {
    pub fn kind(&self) -> &'static str {
        match self {
            MappingError::MissingKey { .. } => "missing_key",
            MappingError::UnkeyableValue { .. } => "unkeyable_value",
        }
    }
}

struct SourcePlan {
    entity: EntityId,
    /// Source column → (field, position in the canonical key, if a key field).
    columns: HashMap<String, (FieldId, Option<usize>)>,
    /// Column of each key field, in key order, for error messages.
    key_columns: Vec<String>,
    /// The column carrying harmony's version (exact echo mode).
    version_column: Option<String>,
    /// Column types the configuration declares (`sources.types`).
    declared: HashMap<String, ColumnType>,
    /// Whether a field this source maps declares its canonical type (`fields.<f>.type`): a
    /// change of a table none of whose fields do is read as it came.
    any_canonical: bool,
}

/// The entities one configured table feeds.
struct TablePlans {
    /// Schema (Postgres) or database (MySQL) the table is qualified with, if it is.
    qualifier: Option<String>,
    table: String,
    plans: Vec<SourcePlan>,
}

/// Every (system, table) the configuration maps, compiled for lookup.
pub struct Catalog {
    entity_names: Vec<String>,
    entity_key_fields: Vec<Vec<String>>,
    field_names: Vec<Vec<String>>,
    /// Per entity, per `FieldId`: the field's declared canonical type.
    canonical_types: Vec<Vec<Option<ColumnType>>>,
    /// Per system index: (schema or database, table) as configured → the entities that
    /// table feeds. A handful of tables per system: scanned, so a lookup never allocates.
    plans: Vec<Vec<TablePlans>>,
}

impl Catalog {
    pub fn new(config: &Config) -> Self {
        let mut catalog = Catalog {
            entity_names: Vec::new(),
            entity_key_fields: Vec::new(),
            field_names: Vec::new(),
            canonical_types: Vec::new(),
            plans: (0..config.systems.len()).map(|_| Vec::new()).collect(),
        };
        for (e, entity) in config.entities.iter().enumerate() {
            let entity_id = EntityId(e as u16);
            let fields: Vec<String> = entity
                .field_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            for source in &entity.sources {
                let Some(system) = config.systems.iter().position(|s| s.name == source.system)
                else {
                    continue; // validate() refuses this configuration
                };
                let columns = source
                    .columns
                    .iter()
                    .map(|(column, field)| {
                        let id =
                            FieldId(fields.iter().position(|f| f == field).unwrap_or(0) as u16);
                        let key_pos = entity.key.iter().position(|k| k == field);
                        (column.clone(), (id, key_pos))
                    })
                    .collect();
                let key_columns = entity
                    .key
                    .iter()
                    .map(|k| {
                        source
                            .columns
                            .iter()
                            .find(|(_, f)| *f == k)
                            .map_or_else(String::new, |(c, _)| c.clone())
                    })
                    .collect();
                let (qualifier, table) = match source.table.split_once('.') {
                    Some((q, t)) => (Some(q.to_owned()), t.to_owned()),
                    None => (None, source.table.clone()),
                };
                let plan = SourcePlan {
                    entity: entity_id,
                    columns,
                    key_columns,
                    version_column: source.version_column.clone(),
                    declared: source
                        .types
                        .keys()
                        .filter_map(|c| Some((c.clone(), source.column_type(c)?)))
                        .collect(),
                    any_canonical: source.columns.values().any(|field| {
                        entity
                            .fields
                            .get(field)
                            .is_some_and(|f| f.canonical_type().is_some())
                    }),
                };
                let tables = &mut catalog.plans[system];
                match tables
                    .iter_mut()
                    .find(|t| t.qualifier == qualifier && t.table == table)
                {
                    Some(found) => found.plans.push(plan),
                    None => tables.push(TablePlans {
                        qualifier,
                        table,
                        plans: vec![plan],
                    }),
                }
            }
            catalog.entity_names.push(entity.name.clone());
            catalog.entity_key_fields.push(entity.key.clone());
            catalog.canonical_types.push(
                fields
                    .iter()
                    .map(|f| entity.fields.get(f).and_then(|c| c.canonical_type()))
                    .collect(),
            );
            catalog.field_names.push(fields);
        }
        catalog
    }

    pub fn entity_name(&self, entity: EntityId) -> &str {
        &self.entity_names[entity.0 as usize]
    }

    /// The entity's fields by `FieldId`.
    pub fn field_names(&self, entity: EntityId) -> &[String] {
        &self.field_names[entity.0 as usize]
    }

    pub fn field_name(&self, entity: EntityId, field: FieldId) -> &str {
        &self.field_names[entity.0 as usize][field.0 as usize]
    }

    /// The field's declared canonical type (`fields.<f>.type`).
    pub fn canonical_type(&self, entity: EntityId, field: FieldId) -> Option<&ColumnType> {
        self.canonical_types[entity.0 as usize][field.0 as usize].as_ref()
    }

    /// The plans for a change's table: configured as `schema.table` (Postgres), as
    /// `database.table` (MySQL), or as the bare table name.
    fn plans_for(&self, system: usize, event: &ChangeEvent<'_>) -> &[SourcePlan] {
        let Some(table) = event.source.table.as_deref() else {
            return &[];
        };
        let schema = event.source.schema.as_deref();
        let db = event.source.db.as_ref();
        self.plans
            .get(system)
            .into_iter()
            .flatten()
            .find(|t| {
                t.table == table
                    && t.qualifier
                        .as_deref()
                        .is_none_or(|q| Some(q) == schema || q == db)
            })
            .map_or(&[], |t| t.plans.as_slice())
    }

    /// Whether any entity maps the change's table.
    pub fn maps_table(&self, system: usize, event: &ChangeEvent<'_>) -> bool {
        !self.plans_for(system, event).is_empty()
    }

    /// Whether a source of the change's table maps `column` (or keeps its version in it).
    pub fn maps_column(&self, system: usize, event: &ChangeEvent<'_>, column: &str) -> bool {
        self.plans_for(system, event)
            .iter()
            .any(|p| p.columns.contains_key(column) || p.version_column.as_deref() == Some(column))
    }

    /// How the change's table maps onto `entity`.
    fn plan_of(
        &self,
        system: usize,
        event: &ChangeEvent<'_>,
        entity: EntityId,
    ) -> Option<&SourcePlan> {
        self.plans_for(system, event)
            .iter()
            .find(|p| p.entity == entity)
    }

    /// The columns `entity`'s source maps that the change's row does not carry, sorted.
    pub fn missing_columns(
        &self,
        system: usize,
        event: &ChangeEvent<'_>,
        entity: EntityId,
    ) -> Vec<String> {
        let row = event.after.as_ref().or(event.before.as_ref());
        let Some(plan) = self.plan_of(system, event, entity) else {
            return Vec::new();
        };
        let mut missing: Vec<String> = plan
            .columns
            .keys()
            .chain(plan.version_column.as_ref())
            .filter(|c| row.is_none_or(|r| r.get(c).is_none()))
            .cloned()
            .collect();
        missing.sort();
        missing
    }

    /// The types a table's captured schema declares for the fields it maps onto `entity`
    /// (field → `ColumnType` text), for the internal record.
    pub fn field_types(
        &self,
        system: usize,
        event: &ChangeEvent<'_>,
        entity: EntityId,
        schema: &RowSchema,
    ) -> Vec<(String, String)> {
        let Some(plan) = self.plan_of(system, event, entity) else {
            return Vec::new();
        };
        let fields = &self.field_names[entity.0 as usize];
        schema
            .columns
            .iter()
            .filter_map(|(column, column_type)| {
                let (field, _) = plan.columns.get(column)?;
                Some((fields[field.0 as usize].clone(), column_type.to_string()))
            })
            .collect()
    }

    /// Reads a change's columns as the configuration declares their types. A schemaless
    /// change's by `sources.types` (else the field's type): a count of microseconds as the
    /// timestamp it is, base64 or text as the decimal it is. A schema-wrapped change has its
    /// columns' types from its schema; a field's declared type (`fields.<f>.type`) still reads
    /// a string-mode decimal as the number it writes, so two systems' values compare as
    /// numbers.
    pub fn apply_declared_types(
        &self,
        system: usize,
        event: &mut ChangeEvent<'_>,
    ) -> Result<(), (String, ValueError)> {
        let schema_wrapped = event.schema.is_some();
        let plans = self.plans_for(system, event);
        if plans
            .iter()
            .all(|p| !p.any_canonical && (schema_wrapped || p.declared.is_empty()))
        {
            return Ok(());
        }
        // A column's field's canonical type, by the source that maps it.
        let canonical = |column: &str| {
            plans.iter().find_map(|p| {
                let (field, _) = p.columns.get(column)?;
                self.canonical_type(p.entity, *field)
            })
        };
        let rows = [event.before.as_mut(), event.after.as_mut()];
        for row in rows.into_iter().flatten() {
            for (column, value) in &mut row.columns {
                let column = column.as_ref();
                let read = if schema_wrapped {
                    let Some(canonical) = canonical(column) else {
                        continue;
                    };
                    as_canonical(std::mem::replace(value, Value::Null), canonical)
                } else {
                    let declared = plans.iter().find_map(|p| p.declared.get(column));
                    let Some(declared) = declared.or_else(|| canonical(column)) else {
                        continue;
                    };
                    as_declared(std::mem::replace(value, Value::Null), declared)
                };
                *value = read.map_err(|error| (column.to_owned(), error))?;
            }
        }
        Ok(())
    }

    /// The record changes one source change makes: one per entity its table feeds, none for
    /// a table no entity maps (or an op that changes no row: truncate, message).
    pub fn map<'e, 'a>(
        &self,
        system: usize,
        event: &'e ChangeEvent<'a>,
    ) -> Result<Vec<MappedChange<'e, 'a>>, MappingError> {
        let (kind, row) = match event.op {
            Op::Create | Op::Update | Op::Read => (ChangeKind::Upsert, event.after.as_ref()),
            Op::Delete => (ChangeKind::Delete, event.before.as_ref()),
            Op::Truncate | Op::Message => return Ok(Vec::new()),
        };
        let Some(row) = row else {
            return Ok(Vec::new());
        };
        self.plans_for(system, event)
            .iter()
            .map(|plan| self.map_row(plan, kind, row))
            .collect()
    }

    fn map_row<'e, 'a>(
        &self,
        plan: &SourcePlan,
        kind: ChangeKind,
        row: &'e Row<'a>,
    ) -> Result<MappedChange<'e, 'a>, MappingError> {
        let entity = plan.entity.0 as usize;
        let mut key_values: Vec<Option<&Value<'a>>> = vec![None; plan.key_columns.len()];
        let mut fields = Vec::with_capacity(row.columns.len());
        let mut context = None;
        let mut carried = 0;
        for (column, value) in &row.columns {
            if plan.version_column.as_deref() == Some(column.as_ref()) {
                carried += 1;
                context = match value {
                    Value::Text(text) => Some(text.as_ref()),
                    // A row harmony never wrote: it is based on no version of harmony's.
                    Value::Null => Some("{}"),
                    _ => None,
                };
                continue;
            }
            let Some(&(field, key_pos)) = plan.columns.get(column.as_ref()) else {
                continue;
            };
            carried += 1;
            match key_pos {
                Some(pos) => key_values[pos] = Some(value),
                // A delete's before-image holds the key; under the default replica identity its
                // other columns are placeholders, not values, so they are not passed on.
                None if kind == ChangeKind::Delete => {}
                None => fields.push((field, value)),
            }
        }
        let mut key = String::from("[");
        for (pos, value) in key_values.iter().enumerate() {
            let field = || self.entity_key_fields[entity][pos].clone();
            let value = value.filter(|v| !matches!(v, Value::Null)).ok_or_else(|| {
                MappingError::MissingKey {
                    entity: self.entity_names[entity].clone(),
                    field: field(),
                    column: plan.key_columns[pos].clone(),
                }
            })?;
            if pos > 0 {
                key.push(',');
            }
            push_key_value(&mut key, value).ok_or_else(|| MappingError::UnkeyableValue {
                entity: self.entity_names[entity].clone(),
                field: field(),
            })?;
        }
        key.push(']');
        fields.sort_by_key(|&(f, _)| f);
        Ok(MappedChange {
            entity: plan.entity,
            key,
            kind,
            fields,
            context,
            complete: carried == plan.columns.len() + usize::from(plan.version_column.is_some()),
        })
    }
}

/// Appends a key value as JSON text that is the same for the same value in every system: an
/// integer `42` and a decimal `42.00` both become `42`. Text stays text (`"007"` is not 7).
fn push_key_value(out: &mut String, value: &Value<'_>) -> Option<()> {
    use std::fmt::Write;
    match value {
        Value::Text(t) => {
            out.push_str(&serde_json::to_string(t.as_ref()).ok()?);
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(_) | Value::Decimal(_) => {
            let d = value.as_decimal()?;
            write!(out, "{d}").ok()?;
        }
        // Normalized text already: the same for the same number.
        Value::WideDecimal(t) => out.push_str(t),
        // ISO text: the same for the same date or instant in every system.
        Value::Date(d) => write!(out, "\"{d}\"").ok()?,
        Value::Time(t) => write!(out, "\"{t}\"").ok()?,
        Value::Timestamp(t) => write!(out, "\"{t}\"").ok()?,
        Value::Bytes(b) => out.push_str(&serde_json::to_string(b.as_ref()).ok()?),
        Value::Null | Value::Unavailable | Value::Float(_) | Value::Raw(_) => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::envelope::{decode, Decoded};

    fn config() -> Config {
        crate::config::inventory_example(&[])
    }

    fn envelope(db: &str, table: &str, op: &str, before: &str, after: &str) -> String {
        format!(
            r#"{{"before":{before},"after":{after},"source":{{"connector":"postgresql","name":"{db}","db":"{db}","schema":"public","table":"{table}","ts_ms":1,"sequence":"[null,\"1\"]"}},"op":"{op}"}}"#
        )
    }

    fn mapped(
        catalog: &Catalog,
        system: usize,
        value: &str,
        check: impl FnOnce(Vec<MappedChange<'_, '_>>),
    ) {
        let Decoded::Change(event) = decode(None, Some(value.as_bytes())).unwrap() else {
            panic!()
        };
        check(catalog.map(system, &event).unwrap());
    }

    #[test]
    fn each_system_names_its_columns_its_own_way_and_maps_onto_one_record() {
        let config = config();
        let catalog = Catalog::new(&config);
        let shop = envelope(
            "shop",
            "items",
            "u",
            "null",
            r#"{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":95,"active":true,"updated_at":"t"}"#,
        );
        mapped(&catalog, 1, &shop, |changes| {
            assert_eq!(changes.len(), 1);
            let c = &changes[0];
            assert_eq!(catalog.entity_name(c.entity), "product");
            assert_eq!(c.key, r#"["SKU-1"]"#);
            assert_eq!(c.kind, ChangeKind::Upsert);
            let named: Vec<(&str, &Value<'_>)> = c
                .fields
                .iter()
                .map(|&(f, v)| (catalog.field_name(c.entity, f), v))
                .collect();
            assert!(named.contains(&("name", &Value::Text("Cup".into()))));
            assert!(named.contains(&("quantity", &Value::Int(95))));
            assert!(
                named.iter().all(|(n, _)| *n != "sku"),
                "the key is not a field change"
            );
        });
        let wms = envelope(
            "wms",
            "skus",
            "c",
            "null",
            r#"{"sku":"SKU-1","on_hand":98,"reserved":2,"bin":"A-01","updated_at":"t"}"#,
        );
        mapped(&catalog, 2, &wms, |changes| {
            assert_eq!(changes[0].key, r#"["SKU-1"]"#);
            assert_eq!(changes[0].fields.len(), 3, "an unmapped column is no field");
            let c = &changes[0];
            assert!(c.fields.iter().any(
                |&(f, v)| catalog.field_name(c.entity, f) == "quantity" && *v == Value::Int(98)
            ));
        });
    }

    #[test]
    fn the_version_column_is_the_changes_context_not_a_field() {
        // The example's warehouse runs in exact mode.
        let catalog = Catalog::new(&config());
        let wms = envelope(
            "wms",
            "skus",
            "u",
            "null",
            r#"{"sku":"SKU-1","on_hand":95,"reserved":0,"harmony_version":"{\"erp\":1}"}"#,
        );
        mapped(&catalog, 2, &wms, |changes| {
            assert_eq!(changes[0].context, Some(r#"{"erp":1}"#));
            assert_eq!(changes[0].fields.len(), 2, "quantity and reserved only");
        });
        let fresh = envelope(
            "wms",
            "skus",
            "c",
            "null",
            r#"{"sku":"SKU-2","on_hand":5,"reserved":0,"harmony_version":null}"#,
        );
        mapped(&catalog, 2, &fresh, |changes| {
            assert_eq!(changes[0].context, Some("{}"), "a row harmony never wrote");
        });
    }

    #[test]
    fn deletes_carry_the_key_only() {
        let catalog = Catalog::new(&config());
        let delete = envelope(
            "shop",
            "items",
            "d",
            r#"{"item_sku":"SKU-1","title":"","price":"0.00","stock":0,"active":true,"updated_at":"t"}"#,
            "null",
        );
        mapped(&catalog, 1, &delete, |changes| {
            assert_eq!(changes[0].kind, ChangeKind::Delete);
            assert_eq!(changes[0].key, r#"["SKU-1"]"#);
            assert!(
                changes[0].fields.is_empty(),
                "placeholder columns of a key-only image are not values"
            );
        });
    }

    #[test]
    fn unmapped_tables_truncates_and_other_systems_tables_map_to_nothing() {
        let catalog = Catalog::new(&config());
        let other = envelope("erp", "invoices", "c", "null", r#"{"id":1}"#);
        mapped(&catalog, 0, &other, |changes| assert!(changes.is_empty()));
        // The shop's table name under the erp system is not the erp's table.
        let wrong_system = envelope("shop", "items", "c", "null", r#"{"item_sku":"SKU-1"}"#);
        mapped(&catalog, 0, &wrong_system, |changes| {
            assert!(changes.is_empty())
        });
        let truncate = r#"{"before":null,"after":null,"source":{"db":"erp","schema":"public","table":"products","ts_ms":1},"op":"t"}"#;
        mapped(&catalog, 0, truncate, |changes| assert!(changes.is_empty()));
    }

    #[test]
    fn a_missing_or_null_key_is_a_permanent_error() {
        let catalog = Catalog::new(&config());
        let value = envelope("erp", "products", "c", "null", r#"{"sku":null,"name":"x"}"#);
        let Decoded::Change(event) = decode(None, Some(value.as_bytes())).unwrap() else {
            panic!()
        };
        let err = catalog.map(0, &event).unwrap_err();
        assert_eq!(err.kind(), "missing_key");
        assert!(
            err.to_string().contains("key field `sku` (column `sku`)"),
            "{err}"
        );
    }

    #[test]
    fn numeric_keys_are_the_same_text_whatever_their_rendering() {
        for (value, expected) in [
            (Value::Int(42), "42"),
            (
                Value::Decimal(crate::model::value::Decimal {
                    unscaled: 4200,
                    scale: 2,
                }),
                "42",
            ),
            (Value::Text("SKU \"1\"".into()), r#""SKU \"1\"""#),
        ] {
            let mut out = String::new();
            push_key_value(&mut out, &value).unwrap();
            assert_eq!(out, expected);
        }
        assert!(push_key_value(&mut String::new(), &Value::Float(1.5)).is_none());
    }
}
