//! The business model of the configuration: entities (logical record types), how each source
//! system's table maps onto one, how conflicting writes of each field are resolved, and which
//! systems receive which entities (ARCHITECTURE.md §3).
//!
//! ```toml
//! [[entities]]
//! name = "product"
//! key = ["sku"]                      # canonical key, in entity field names
//! default_strategy = "lww"
//! ignore = ["updated_at"]            # not compared when deciding what changed
//!
//!   [entities.fields.quantity]
//!   strategy = "sum"
//!   guard = "value >= 0"
//!
//!   [[entities.sources]]
//!   system = "shop"
//!   table = "public.items"
//!   columns = { item_sku = "sku", title = "name", stock = "quantity" }   # column → field
//!   required = ["name"]              # a row cannot be created without it (NOT NULL)
//!
//! [[targets]]
//! system = "erp"
//! entities = ["product"]
//! topic = "harmony.erp.product"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{is_valid_topic_name, ConfigError};
use crate::model::value::{ColumnType, ValueKind};

/// How a conflict on a field is resolved (ARCHITECTURE.md §4, "Strategies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Later source timestamp wins; ties by system rank, then name.
    #[default]
    Lww,
    /// Earlier source timestamp wins; same tie-break.
    Fww,
    /// The first system of the field's `priority` list that wrote a candidate wins.
    Priority,
    /// Additive: each system's delta against its own base counts.
    Sum,
    Max,
    Min,
    /// Set/map union with OR-set removals.
    Merge,
    /// Held; a conflict record waits for an operator's resolution.
    Manual,
}

impl Strategy {
    /// As written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Lww => "lww",
            Strategy::Fww => "fww",
            Strategy::Priority => "priority",
            Strategy::Sum => "sum",
            Strategy::Max => "max",
            Strategy::Min => "min",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
        }
    }
}

/// Whether a delete or a concurrent update survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteConflict {
    #[default]
    DeleteWins,
    UpdateWins,
}

/// How a target receives its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Kafka Connect's JSON with schemas (`JsonConverter`, `schemas.enable=true`), Debezium's
    /// default: what the Debezium JDBC sink and other schema-aware sinks need.
    #[default]
    Json,
    /// The same envelope without the schema wrapper, for consumers that read plain JSON.
    JsonSchemaless,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    pub name: String,
    /// The canonical key: entity fields whose values name one record across all systems.
    pub key: Vec<String>,
    #[serde(default)]
    pub default_strategy: Strategy,
    #[serde(default)]
    pub on_delete_conflict: DeleteConflict,
    /// Entity fields never compared when deciding what a change changed.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Per-field settings; a field without an entry takes `default_strategy`.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldConfig>,
    pub sources: Vec<SourceMapping>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub strategy: Option<Strategy>,
    /// For `priority`: systems, most authoritative first.
    #[serde(default)]
    pub priority: Vec<String>,
    /// An expression over `value` that rejects a candidate before the strategy picks.
    pub guard: Option<String>,
    /// The field's canonical type (`decimal`, `timestamp_us`, `boolean`, … as the README's type
    /// table names them): every source's value of the field is read as it — a decimal that
    /// one connector sends as text (`decimal.handling.mode=string`) is the same number as
    /// another's bytes — and every source's captured column type is checked against it at
    /// start. Undeclared, the sources' captured types must agree among themselves.
    #[serde(rename = "type")]
    pub value_type: Option<String>,
}

impl FieldConfig {
    /// The declared canonical type, once validated.
    pub fn canonical_type(&self) -> Option<ColumnType> {
        self.value_type.as_deref().and_then(ColumnType::parse)
    }
}

/// One system's table as a source of an entity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceMapping {
    pub system: String,
    /// `schema.table` (Postgres), `database.table` (MySQL/MariaDB), or the bare table name.
    pub table: String,
    /// Source column → entity field. Columns not listed are not part of the entity.
    pub columns: BTreeMap<String, String>,
    /// Fields the table cannot create a row without (its `NOT NULL` columns with no default):
    /// as a target, this system is sent a record only once the record has a value for each.
    #[serde(default)]
    pub required: Vec<String>,
    /// Exact echo mode (ARCHITECTURE.md §4 step 3): a column of this table that holds the version
    /// harmony last wrote (the sink writes it with the row; the application leaves it alone),
    /// so every captured change names the version it was based on. Not a field.
    #[serde(default)]
    pub version_column: Option<String>,
    /// Column → type (`timestamp_us`, `decimal(2)`, `uuid`, … as the README's type table names
    /// them): how a schemaless source carries the column (the JSON converter without schemas
    /// sends numbers and text alone), and the form this system is sent it in as a target,
    /// whatever its captured schema says.
    #[serde(default)]
    pub types: BTreeMap<String, String>,
}

impl SourceMapping {
    /// The declared type of `column`, once validated.
    pub fn column_type(&self, column: &str) -> Option<ColumnType> {
        self.types.get(column).and_then(|t| ColumnType::parse(t))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub system: String,
    pub entities: Vec<String>,
    pub topic: String,
    #[serde(default)]
    pub format: OutputFormat,
    /// Deliveries of one record on their way to this system and not yet seen back (its sink's
    /// write captured again), at most; further versions wait, coalesced into the latest, until
    /// an echo frees a place. 0: no limit, every version is sent — only for a target whose topic
    /// is not written back into the tables harmony captures from it (nothing ever echoes), since
    /// with echoes a forgotten delivery's echo reads as a fresh write of stale values.
    #[serde(default = "default_window")]
    pub window: usize,
}

fn default_window() -> usize {
    32
}

/// The largest window: every pending delivery travels in its record's changelog value, which
/// must stay well under the producer's message size.
pub const MAX_WINDOW: usize = 1024;

impl EntityConfig {
    /// Every field some source maps a column onto, in name order.
    pub fn field_names(&self) -> BTreeSet<&str> {
        self.sources
            .iter()
            .flat_map(|s| s.columns.values().map(String::as_str))
            .collect()
    }

    /// The strategy that resolves `field`.
    pub fn strategy_of(&self, field: &str) -> Strategy {
        self.fields
            .get(field)
            .and_then(|f| f.strategy)
            .unwrap_or(self.default_strategy)
    }
}

fn key_error(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        message: message.into(),
    }
}

/// Checks entities and targets against each other and the declared systems.
pub(super) fn validate(
    entities: &[EntityConfig],
    targets: &[TargetConfig],
    systems: &BTreeSet<&str>,
) -> Result<(), ConfigError> {
    let mut entity_names = BTreeSet::new();
    for (i, entity) in entities.iter().enumerate() {
        let at = |rest: &str| format!("entities[{i}].{rest}");
        if entity.name.is_empty() || !entity_names.insert(entity.name.as_str()) {
            return Err(key_error(at("name"), "must be non-empty and unique"));
        }
        if entity.sources.is_empty() {
            return Err(key_error(at("sources"), "map at least one system's table"));
        }
        if entity.key.is_empty() {
            return Err(key_error(at("key"), "name at least one field"));
        }
        let fields = entity.field_names();
        for (j, source) in entity.sources.iter().enumerate() {
            let at_source = |rest: &str| at(&format!("sources[{j}].{rest}"));
            if !systems.contains(source.system.as_str()) {
                return Err(key_error(
                    at_source("system"),
                    format!("`{}` is not a declared system", source.system),
                ));
            }
            if source.table.is_empty() {
                return Err(key_error(at_source("table"), "must not be empty"));
            }
            let mapped: BTreeSet<&str> = source.columns.values().map(String::as_str).collect();
            if mapped.len() != source.columns.len() {
                return Err(key_error(
                    at_source("columns"),
                    "maps two columns onto one field",
                ));
            }
            if let Some(missing) = entity.key.iter().find(|k| !mapped.contains(k.as_str())) {
                return Err(key_error(
                    at_source("columns"),
                    format!("maps no column onto key field `{missing}`"),
                ));
            }
            if let Some(column) = &source.version_column {
                if column.is_empty() || source.columns.contains_key(column) {
                    return Err(key_error(
                        at_source("version_column"),
                        "must name a column that is not mapped onto a field",
                    ));
                }
            }
            for (column, name) in &source.types {
                if !source.columns.contains_key(column) {
                    return Err(key_error(
                        at_source(&format!("types.{column}")),
                        "is not a column this source maps",
                    ));
                }
                if ColumnType::parse(name).is_none() {
                    return Err(key_error(
                        at_source(&format!("types.{column}")),
                        format!("`{name}` is not a column type (see the README's type table)"),
                    ));
                }
            }
            for (k, field) in source.required.iter().enumerate() {
                if !mapped.contains(field.as_str()) {
                    return Err(key_error(
                        at_source(&format!("required[{k}]")),
                        format!("`{field}` is not a field this source maps"),
                    ));
                }
            }
        }
        for (j, field) in entity.ignore.iter().enumerate() {
            if !fields.contains(field.as_str()) {
                return Err(key_error(
                    at(&format!("ignore[{j}]")),
                    format!("`{field}` is not a field any source maps"),
                ));
            }
        }
        for (name, field) in &entity.fields {
            let at_field = |rest: &str| at(&format!("fields.{name}.{rest}"));
            if !fields.contains(name.as_str()) {
                return Err(key_error(
                    at(&format!("fields.{name}")),
                    "is not a field any source maps",
                ));
            }
            let strategy = field.strategy.unwrap_or(entity.default_strategy);
            match (strategy, field.priority.is_empty()) {
                (Strategy::Priority, true) => {
                    return Err(key_error(
                        at_field("priority"),
                        "strategy `priority` needs the list of systems, most authoritative first",
                    ))
                }
                (Strategy::Priority, false) => {}
                (_, false) => {
                    return Err(key_error(
                        at_field("priority"),
                        "is only meaningful with strategy = \"priority\"",
                    ))
                }
                (_, true) => {}
            }
            for (k, system) in field.priority.iter().enumerate() {
                if !systems.contains(system.as_str()) {
                    return Err(key_error(
                        at_field(&format!("priority[{k}]")),
                        format!("`{system}` is not a declared system"),
                    ));
                }
            }
            if let Some(type_name) = &field.value_type {
                let Some(canonical) = ColumnType::parse(type_name) else {
                    return Err(key_error(
                        at_field("type"),
                        format!("`{type_name}` is not a column type (see the README's type table)"),
                    ));
                };
                if canonical.kind() == ValueKind::Composite {
                    return Err(key_error(
                        at_field("type"),
                        "structs, arrays and maps pass through as they are: declare no type",
                    ));
                }
                // A source's declared column type must hold what the field is.
                for (j, source) in entity.sources.iter().enumerate() {
                    let declared = source
                        .columns
                        .iter()
                        .find(|(_, f)| *f == name)
                        .and_then(|(column, _)| Some((column, source.column_type(column)?)));
                    if let Some((column, declared)) = declared {
                        if !declared.reads_as(&canonical) {
                            return Err(key_error(
                                at(&format!("sources[{j}].types.{column}")),
                                format!(
                                    "`{declared}` holds {}, but fields.{name}.type is `{canonical}`, {}",
                                    declared.kind().name(),
                                    canonical.kind().name()
                                ),
                            ));
                        }
                    }
                }
            }
            if let Some(guard) = &field.guard {
                crate::config::guard::Guard::compile(guard).map_err(|e| {
                    key_error(
                        at_field("guard"),
                        format!("is not a valid CEL expression: {e}"),
                    )
                })?;
            }
        }
        if entity.default_strategy == Strategy::Priority {
            return Err(key_error(
                at("default_strategy"),
                "`priority` needs a per-field list; set it on the fields",
            ));
        }
        if entity.key.iter().any(|k| entity.ignore.contains(k)) {
            return Err(key_error(at("ignore"), "lists a key field"));
        }
    }
    for (i, target) in targets.iter().enumerate() {
        let at = |rest: &str| format!("targets[{i}].{rest}");
        if !systems.contains(target.system.as_str()) {
            return Err(key_error(
                at("system"),
                format!("`{}` is not a declared system", target.system),
            ));
        }
        if target.entities.is_empty() {
            return Err(key_error(at("entities"), "list at least one entity"));
        }
        for (j, entity) in target.entities.iter().enumerate() {
            if !entity_names.contains(entity.as_str()) {
                return Err(key_error(
                    at(&format!("entities[{j}]")),
                    format!("`{entity}` is not a declared entity"),
                ));
            }
        }
        if !is_valid_topic_name(&target.topic) {
            return Err(key_error(
                at("topic"),
                "is not a valid Kafka topic name (1–249 of [a-zA-Z0-9._-])",
            ));
        }
        if target.window > MAX_WINDOW {
            return Err(key_error(
                at("window"),
                format!(
                    "is {}, above {MAX_WINDOW}: every pending delivery is kept in its record's changelog value",
                    target.window
                ),
            ));
        }
    }
    Ok(())
}
