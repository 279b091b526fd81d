//! What a target system receives (ARCHITECTURE.md §4 step 8): the resolved record in the target's own
//! table and column names, as a Debezium-shaped envelope that Debezium's consumers and sinks
//! read unchanged, plus harmony's version of it.
//!
//! ```text
//! key:   {"item_sku":"SKU-1"}
//! value: {"before":null,"after":{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":93},
//!         "op":"u","source":{"connector":"harmony","name":"harmony","db":"product","table":"public.items","ts_ms":…},
//!         "ts_ms":…,"harmony":{"entity":"product","key":["SKU-1"],"version":{"erp":2,"shop":1,"wms":1},"origin":"wms"}}
//! ```
//!
//! Pure: the record is built from the record's state and the target's column plan.

use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::config::{Config, OutputFormat};
use crate::ingest::mapping::{Catalog, EntityId, FieldId};
use crate::model::clock::SystemId;
use crate::model::value::{ColumnType, FieldRef, Semantic};
use crate::resolve::connect::{self, SchemaText, Unrepresentable};
use crate::resolve::engine::{EntityRules, RecordState};
use crate::resolve::jsontext::{self, Members};

/// A record to publish. `value: None` is a tombstone.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// How one target system receives one entity.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub topic: String,
    pub format: OutputFormat,
    /// The target's table, as its source mapping names it.
    pub table: String,
    /// The target's columns, in its source mapping's order.
    pub columns: Vec<TargetColumn>,
    /// Exact echo mode: the column the record's version vector is written to.
    pub version_column: Option<String>,
    /// Schema-wrapped output: the key's and the change event's Connect schemas, serialized
    /// once, around the columns each record's types decide.
    pub key_schema: SchemaText,
    pub value_schema: SchemaText,
    /// The column types as the target's own capture last declared them (the internal record's
    /// `types`, as stage 1 read them from the system's schema): an unchanged declaration is
    /// recognised without being parsed again.
    captured_types: Vec<(String, String)>,
    /// Columns of no known type whose field no other system has given a type for yet.
    unasked: usize,
}

/// One column of a target's table.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    pub name: String,
    /// The entity field it holds.
    pub field: FieldId,
    /// Its position in the canonical key, when it is a key column.
    pub key_pos: Option<usize>,
    /// Its type as the configuration declares it (`sources.types`).
    pub declared: Option<ColumnType>,
    /// Its type as the target system's capture declares it, once seen.
    pub captured: Option<ColumnType>,
    /// Until then, the type another system captured the field in: the form its values came
    /// in. A value alone does not tell a `bit(8)` from a `bytea`, and a `bit` column refuses
    /// plain bytes.
    pub borrowed: Option<ColumnType>,
    /// Whether another system's type for the field has been looked at (once is enough).
    pub borrow_asked: bool,
}

impl TargetColumn {
    /// The type a value goes out as: declared, else captured, else borrowed from another
    /// system's capture, else (`None`) the value's own.
    pub fn target_type(&self) -> Option<&ColumnType> {
        self.known_type().or(self.borrowed.as_ref())
    }

    /// The type the target's own column is known to have (declared or captured): a value it
    /// cannot hold is refused. A borrowed type is only a better guess than the value's own.
    pub fn known_type(&self) -> Option<&ColumnType> {
        self.declared.as_ref().or(self.captured.as_ref())
    }

    /// The type `value` goes out as: a borrowed type only where it holds the value exactly
    /// (another system's `datetime(3)` says nothing of this one's precision), tried in
    /// `scratch`.
    fn type_for<'c>(
        &'c self,
        value: &FieldRef<'_>,
        scratch: &mut Vec<u8>,
    ) -> Option<&'c ColumnType> {
        match self.known_type() {
            Some(known) => Some(known),
            None => leniently(self.borrowed.as_ref(), value, Some(scratch)),
        }
    }
}

impl TargetPlan {
    /// Takes, for each column whose type is neither declared nor captured nor borrowed yet,
    /// the type another system's capture gives its field (`types`: field → type name). The
    /// first one taken stays, so the schema does not churn with whichever system changed last.
    pub fn borrow_types(
        &mut self,
        types: &[(impl AsRef<str>, impl AsRef<str>)],
        fields: &[String],
    ) {
        if self.unasked == 0 {
            return;
        }
        for column in &mut self.columns {
            if column.borrow_asked || column.known_type().is_some() {
                continue;
            }
            let Some(name) = fields.get(column.field.0 as usize) else {
                continue;
            };
            let Some((_, lent)) = types.iter().find(|(field, _)| field.as_ref() == name) else {
                continue;
            };
            column.borrow_asked = true;
            column.borrowed = ColumnType::parse(lent.as_ref()).filter(lendable);
        }
        self.unasked = self
            .columns
            .iter()
            .filter(|c| !c.borrow_asked && c.known_type().is_none())
            .count();
    }

    /// Takes the target system's column types from one of its captured changes (the internal
    /// record's `types`: field → type name). Returns the fields whose declared type the capture
    /// contradicts, for a warning; the declaration still wins.
    pub fn learn_types(
        &mut self,
        types: &[(impl AsRef<str>, impl AsRef<str>)],
        fields: &[String],
    ) -> Vec<(String, ColumnType)> {
        let unchanged = types.len() == self.captured_types.len()
            && types
                .iter()
                .zip(&self.captured_types)
                .all(|((f, t), (g, u))| f.as_ref() == g && t.as_ref() == u);
        if unchanged {
            return Vec::new();
        }
        self.captured_types = types
            .iter()
            .map(|(f, t)| (f.as_ref().to_owned(), t.as_ref().to_owned()))
            .collect();
        let mut contradicted = Vec::new();
        for column in &mut self.columns {
            let Some(name) = fields.get(column.field.0 as usize) else {
                continue;
            };
            let captured = types
                .iter()
                .find(|(field, _)| field.as_ref() == name)
                .and_then(|(_, t)| ColumnType::parse(t.as_ref()));
            if let (Some(declared), Some(captured)) = (&column.declared, &captured) {
                if declared != captured {
                    contradicted.push((column.name.clone(), captured.clone()));
                }
            }
            // A column the capture no longer names keeps the type it had: its values still go
            // out in that form rather than churning back to their own.
            if captured.is_some() {
                column.captured = captured;
            }
        }
        contradicted
    }
}

/// Whether another system's column type is a better guess for a target's column than the
/// value's own: only where the value cannot tell (bits are bytes to look at, and a `bit`
/// column refuses plain bytes; an interval in microseconds is a number to look at, and an
/// `interval` column refuses a `bigint`). Others are not: a semantic type one database has may be one
/// the target's lacks (Postgres `json` to a MariaDB `json`, which is text, makes Debezium's
/// JDBC sink write `CAST(? AS json)`, which MariaDB refuses).
fn lendable(column_type: &ColumnType) -> bool {
    matches!(
        column_type,
        ColumnType::Bits { .. } | ColumnType::Semantic(Semantic::DurationMicros)
    )
}

/// Every (entity, target system) the configuration delivers to.
pub fn target_plans(
    config: &Config,
    catalog: &Catalog,
) -> HashMap<(EntityId, SystemId), TargetPlan> {
    let mut plans = HashMap::new();
    for target in &config.targets {
        let Some(system) = config.systems.iter().position(|s| s.name == target.system) else {
            continue;
        };
        for (e, entity) in config.entities.iter().enumerate() {
            if !target.entities.contains(&entity.name) {
                continue;
            }
            let entity_id = EntityId(e as u16);
            let fields = catalog.field_names(entity_id);
            // A target receives the entity in the shape of its own source table.
            let Some(source) = entity.sources.iter().find(|s| s.system == target.system) else {
                continue;
            };
            let columns = source
                .columns
                .iter()
                .filter_map(|(column, field)| {
                    let id = fields.iter().position(|f| f == field)?;
                    Some(TargetColumn {
                        name: column.clone(),
                        field: FieldId(id as u16),
                        key_pos: entity.key.iter().position(|k| k == field),
                        declared: source.column_type(column),
                        captured: None,
                        borrowed: None,
                        borrow_asked: false,
                    })
                })
                .collect::<Vec<_>>();
            plans.insert(
                (entity_id, SystemId(system as u16)),
                TargetPlan {
                    key_schema: SchemaText::new(&connect::key_schema(&target.topic)),
                    value_schema: SchemaText::new(&connect::envelope_schema(&target.topic)),
                    topic: target.topic.clone(),
                    format: target.format,
                    table: source.table.clone(),
                    version_column: source.version_column.clone(),
                    captured_types: Vec::new(),
                    unasked: columns.iter().filter(|c| c.declared.is_none()).count(),
                    columns,
                },
            );
        }
    }
    plans
}

/// What caused a delivery, for its `harmony` block and headers.
pub struct Provenance<'a> {
    pub entity: &'a str,
    /// The canonical key as JSON array text.
    pub key_text: &'a str,
    /// The system whose change caused this delivery.
    pub origin: SystemId,
    /// Ids of the conflicts the change raised.
    pub conflicts: &'a [String],
}

/// What every target's record of one change shares, made once per change.
struct Shared<'a> {
    /// The canonical key's values; `None` when its text is not a JSON array.
    key_values: Option<Vec<&'a RawValue>>,
    /// The record's version as JSON text (`{"erp":2,"shop":1}`).
    version: String,
    /// The latest source commit time of the record's fields.
    ts_ms: i64,
    deleted: bool,
    origin: &'a str,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// A value a target's column cannot hold exactly, met while its record was being written. The
/// resolver refuses such values before applying them; one met here got into the state before
/// the column's type was known (or arose from a `sum`), and goes out in its own type instead.
#[derive(Debug)]
pub struct Mistyped {
    pub topic: String,
    pub column: String,
    pub error: Unrepresentable,
}

/// The records `plans`' targets receive for the record's current state: per target the change
/// event, and after a delete a tombstone, as Debezium writes one, so that compacted target
/// topics drop the key. Values a column's type cannot hold exactly are listed in `mistyped`.
pub fn target_records<'p>(
    plans: impl IntoIterator<Item = &'p TargetPlan>,
    rules: &EntityRules,
    state: &RecordState,
    provenance: &Provenance<'_>,
    mistyped: &mut Vec<Mistyped>,
) -> Vec<Publication> {
    let mut plans = plans.into_iter().peekable();
    let mut records = Vec::new();
    if plans.peek().is_none() {
        return records;
    }
    let name = |s: SystemId| {
        rules
            .systems
            .get(s.0 as usize)
            .map_or("?", |i| i.name.as_str())
    };
    let mut version = Vec::with_capacity(64);
    let mut entries = Members::object(&mut version);
    for (system, counter) in state.clock.iter() {
        jsontext::uint(entries.key(name(system)), counter);
    }
    entries.end();
    let version = String::from_utf8(version).unwrap_or_default();
    let origin = name(provenance.origin);
    let mut headers = vec![
        ("harmony.entity", provenance.entity.as_bytes().to_vec()),
        ("harmony.origin", origin.as_bytes().to_vec()),
        ("harmony.version", version.as_bytes().to_vec()),
    ];
    if !provenance.conflicts.is_empty() {
        headers.push((
            "harmony.conflicts",
            provenance.conflicts.join(",").into_bytes(),
        ));
    }
    let shared = Shared {
        key_values: serde_json::from_str(provenance.key_text).ok(),
        version,
        ts_ms: state
            .fields
            .iter()
            .map(|(_, f)| f.ts_us.div_euclid(1000))
            .max()
            .unwrap_or_default(),
        deleted: state.deleted.is_some(),
        origin,
        headers,
    };
    for plan in plans {
        let strict = target_records_of(plan, rules, state, provenance, &shared, None);
        match strict {
            Ok(written) => records.extend(written),
            Err((column, error)) => {
                mistyped.push(Mistyped {
                    topic: plan.topic.clone(),
                    column,
                    error,
                });
                let mut scratch = Vec::new();
                if let Ok(written) =
                    target_records_of(plan, rules, state, provenance, &shared, Some(&mut scratch))
                {
                    records.extend(written);
                }
            }
        }
    }
    records
}

/// The column's type, or none (the value's own) where a `lenient` writer finds the value
/// does not fit it.
fn leniently<'t>(
    target: Option<&'t ColumnType>,
    value: &FieldRef<'_>,
    lenient: Option<&mut Vec<u8>>,
) -> Option<&'t ColumnType> {
    match (lenient, target) {
        (Some(scratch), Some(t)) => connect::check(value, t, scratch).is_ok().then_some(t),
        _ => target,
    }
}

/// One target's records. `lenient`: a scratch buffer to try each value in first, so that one
/// its column cannot hold goes out in its own type; without, such a value fails the record
/// with the column it was meant for.
fn target_records_of(
    plan: &TargetPlan,
    rules: &EntityRules,
    state: &RecordState,
    provenance: &Provenance<'_>,
    shared: &Shared<'_>,
    mut lenient: Option<&mut Vec<u8>>,
) -> Result<Vec<Publication>, (String, Unrepresentable)> {
    let mut records = Vec::with_capacity(2);
    let key_value = |pos: usize| {
        shared
            .key_values
            .as_ref()
            .and_then(|values| values.get(pos))
            .map_or("null", |value| value.get())
    };
    let version = &shared.version;

    // The key and the row image in the target's column order; with a Connect schema, the
    // schemas of their fields beside them.
    let wrapped = plan.format == OutputFormat::Json;
    let (mut key, mut image) = (Vec::with_capacity(64), Vec::with_capacity(512));
    let (mut key_fields, mut row_fields) = (Vec::new(), Vec::new());
    // Where a borrowed type is tried (never allocated while no column borrows).
    let mut guess = Vec::new();
    {
        let mut key = Members::object(&mut key);
        let mut image = Members::object(&mut image);
        let mut key_fields = Members::array(&mut key_fields);
        let mut row_fields = Members::array(&mut row_fields);
        for column in &plan.columns {
            let failed = |error| (column.name.clone(), error);
            if let Some(pos) = column.key_pos {
                let text = key_value(pos);
                if wrapped {
                    let value = connect::key_value(text);
                    let target = column.type_for(&value, &mut guess);
                    let target = leniently(target, &value, lenient.as_deref_mut());
                    for (fields, members) in
                        [(&mut key_fields, &mut key), (&mut row_fields, &mut image)]
                    {
                        connect::field(fields, members, &column.name, &value, target, false)
                            .map_err(failed)?;
                    }
                } else {
                    jsontext::raw(key.key(&column.name), text);
                    jsontext::raw(image.key(&column.name), text);
                }
                continue;
            }
            // Ignored fields (each system's own `updated_at`) are the target's business.
            if rules.fields[column.field.0 as usize].ignored {
                continue;
            }
            let Some(state) = state.field(column.field) else {
                continue;
            };
            let value = FieldRef::from(&state.value);
            if wrapped {
                let target = column.type_for(&value, &mut guess);
                let target = leniently(target, &value, lenient.as_deref_mut());
                connect::field(
                    &mut row_fields,
                    &mut image,
                    &column.name,
                    &value,
                    target,
                    true,
                )
                .map_err(failed)?;
            } else {
                connect::plain_payload(image.key(&column.name), &value);
            }
        }
        if let Some(column) = &plan.version_column {
            jsontext::string(image.key(column), version);
            if wrapped {
                connect::string_field(&mut row_fields, column);
            }
        }
        key.end();
        image.end();
        key_fields.end();
        row_fields.end();
    }

    let (ts_ms, deleted, entity) = (shared.ts_ms, shared.deleted, provenance.entity);
    let mut event = Vec::with_capacity(image.len() + 320);
    let mut members = Members::object(&mut event);
    let (before, after) = if deleted {
        (&image[..], &b"null"[..])
    } else {
        (&b"null"[..], &image[..])
    };
    members.key("before").extend_from_slice(before);
    members.key("after").extend_from_slice(after);
    jsontext::string(members.key("op"), if deleted { "d" } else { "u" });
    let mut source = Members::object(members.key("source"));
    jsontext::string(source.key("connector"), "harmony");
    jsontext::string(source.key("name"), "harmony");
    jsontext::string(source.key("db"), entity);
    jsontext::string(source.key("table"), &plan.table);
    jsontext::int(source.key("ts_ms"), ts_ms);
    source.end();
    jsontext::int(members.key("ts_ms"), ts_ms);
    let mut harmony = Members::object(members.key("harmony"));
    jsontext::string(harmony.key("entity"), entity);
    // The canonical key itself where JSON is schemaless, its text where a Connect schema
    // must name one type for it.
    match (&shared.key_values, wrapped) {
        (_, true) => jsontext::string(harmony.key("key"), provenance.key_text),
        (Some(_), false) => jsontext::raw(harmony.key("key"), provenance.key_text.trim()),
        (None, false) => jsontext::raw(harmony.key("key"), "[]"),
    }
    jsontext::raw(harmony.key("version"), version);
    jsontext::string(harmony.key("origin"), shared.origin);
    let mut conflicts = Members::array(harmony.key("conflicts"));
    for id in provenance.conflicts {
        jsontext::string(conflicts.item(), id);
    }
    conflicts.end();
    harmony.end();
    members.end();

    let (key, value) = if wrapped {
        let mut wrapped_key = Vec::with_capacity(key.len() + 128);
        plan.key_schema.wrap(&mut wrapped_key, &key_fields, &key);
        let mut wrapped_event = Vec::with_capacity(event.len() + 2 * row_fields.len() + 1024);
        plan.value_schema
            .wrap(&mut wrapped_event, &row_fields, &event);
        (wrapped_key, wrapped_event)
    } else {
        (key, event)
    };
    records.push(Publication {
        topic: plan.topic.clone(),
        key: key.clone(),
        value: Some(value),
        headers: shared.headers.clone(),
    });
    if deleted {
        records.push(Publication {
            topic: plan.topic.clone(),
            key,
            value: None,
            headers: shared.headers.clone(),
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::Dot;
    use crate::model::value::Decimal;
    use crate::model::value::FieldValue;
    use crate::resolve::engine::{entity_rules, FieldState};
    use serde_json::Value as Json;

    #[test]
    fn a_borrowed_type_is_a_guess_a_value_it_cannot_hold_goes_in_its_own() {
        let mut column = TargetColumn {
            name: "price".into(),
            field: FieldId(0),
            key_pos: None,
            declared: None,
            captured: None,
            borrowed: ColumnType::parse("decimal(2)"),
            borrow_asked: true,
        };
        let fine = FieldRef::Decimal(crate::model::value::Decimal {
            unscaled: 4999,
            scale: 3,
        });
        let whole = FieldRef::Int(5);
        let scratch = &mut Vec::new();
        assert_eq!(column.type_for(&whole, scratch), column.borrowed.as_ref());
        assert_eq!(
            column.type_for(&fine, scratch),
            None,
            "not refused: the value's own type"
        );
        assert_eq!(
            column.known_type(),
            None,
            "so the resolver refuses nothing for it"
        );
        column.captured = ColumnType::parse("decimal(2)");
        assert_eq!(column.type_for(&fine, scratch), column.captured.as_ref());
    }

    #[test]
    fn each_target_gets_the_record_in_its_own_columns() {
        let config = crate::config::inventory_example(&[]);
        let catalog = Catalog::new(&config);
        let rules = &entity_rules(&config, &catalog)[0];
        let plans = target_plans(&config, &catalog);
        let product = EntityId(0);
        let field = |name: &str| {
            FieldId(
                catalog
                    .field_names(product)
                    .iter()
                    .position(|n| n == name)
                    .unwrap() as u16,
            )
        };
        let mut state = RecordState::default();
        let dot = state.clock.increment(SystemId(2));
        for (name, value) in [
            ("name", FieldValue::Text("Cup".into())),
            (
                "price",
                FieldValue::Decimal(Decimal {
                    unscaled: 490,
                    scale: 2,
                }),
            ),
            ("quantity", FieldValue::Int(93)),
            ("updated_at", FieldValue::Text("t".into())),
        ] {
            state.set_field(
                field(name),
                FieldState {
                    value,
                    dot: Dot {
                        system: SystemId(2),
                        counter: 1,
                    },
                    ts_us: 1_700_000,
                    tags: Vec::new(),
                },
            );
        }
        let _ = dot;
        let record = |plan: &TargetPlan, state: &RecordState, origin: u16| {
            let provenance = Provenance {
                entity: "product",
                key_text: r#"["SKU-1"]"#,
                origin: SystemId(origin),
                conflicts: &[],
            };
            target_records([plan], rules, state, &provenance, &mut Vec::new())
        };
        let json = |bytes: &[u8]| serde_json::from_slice::<Json>(bytes).unwrap();

        let mut shop = plans[&(product, SystemId(1))].clone();
        assert_eq!(shop.topic, "harmony.demo.shop.product");
        assert_eq!(shop.format, OutputFormat::Json, "schema-wrapped by default");
        shop.format = OutputFormat::JsonSchemaless;
        let out = record(&shop, &state, 2);
        assert_eq!(out.len(), 1);
        assert_eq!(
            String::from_utf8(out[0].key.clone()).unwrap(),
            r#"{"item_sku":"SKU-1"}"#
        );
        let v = json(out[0].value.as_deref().unwrap());
        assert_eq!(v["op"], "u");
        assert_eq!(v["after"]["item_sku"], "SKU-1");
        assert_eq!(v["after"]["title"], "Cup");
        assert_eq!(v["after"]["price"], "4.90");
        assert_eq!(v["after"]["stock"], 93);
        assert!(
            v["after"].get("updated_at").is_none(),
            "ignored fields are the target's own"
        );
        assert!(v["after"].get("active").is_none(), "no value, no column");
        assert_eq!(v["source"]["table"], "public.items");
        assert_eq!(v["harmony"]["version"]["wms"], 1);
        assert_eq!(v["harmony"]["origin"], "wms");
        let header = |name: &str| {
            out[0]
                .headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header("harmony.origin").as_deref(), Some("wms"));
        assert_eq!(header("harmony.version").as_deref(), Some(r#"{"wms":1}"#));
        assert_eq!(header("harmony.conflicts"), None);

        // The warehouse's item master has no name or price; its own column names.
        let wms = &plans[&(product, SystemId(2))];
        let out = record(wms, &state, 2);
        let key = json(&out[0].key);
        assert_eq!(key["payload"], serde_json::json!({"sku": "SKU-1"}));
        assert_eq!(key["schema"]["name"], "harmony.demo.wms.product.Key");
        let v = json(out[0].value.as_deref().unwrap());
        assert_eq!(
            v["payload"]["after"],
            serde_json::json!({"sku": "SKU-1", "on_hand": 93, "harmony_version": r#"{"wms":1}"#}),
            "exact mode: the version column carries the record's version"
        );
        assert_eq!(v["schema"]["name"], "harmony.demo.wms.product.Envelope");
        let after_schema = &v["schema"]["fields"][1];
        assert_eq!(after_schema["field"], "after");
        let types: Vec<_> = after_schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["field"].as_str().unwrap(), f["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            types,
            [
                ("on_hand", "int64"),
                ("sku", "string"),
                ("harmony_version", "string")
            ],
            "the target's column order, the version column last"
        );
        assert_eq!(v["payload"]["before"], Json::Null);

        // Schema-wrapped decimals are Connect decimals.
        let erp = &plans[&(product, SystemId(0))];
        let v = json(record(erp, &state, 2)[0].value.as_deref().unwrap());
        let after = &v["schema"]["fields"][1]["fields"];
        let price = after
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "price")
            .unwrap();
        assert_eq!(price["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(price["parameters"]["scale"], "2");
        assert_eq!(v["payload"]["after"]["price"], "Aeo=");

        state.deleted = Some(Dot {
            system: SystemId(0),
            counter: 1,
        });
        let out = record(&shop, &state, 0);
        assert_eq!(out.len(), 2, "a delete, then its tombstone");
        let v = json(out[0].value.as_deref().unwrap());
        assert_eq!(v["op"], "d");
        assert_eq!(v["after"], Json::Null);
        assert_eq!(v["before"]["item_sku"], "SKU-1");
        assert_eq!(out[1].value, None);
        assert_eq!(out[1].key, out[0].key);
    }
}
