//! What a target system receives (DESIGN §4 step 8): the resolved record in the target's own
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

use serde_json::{json, Map, Value as Json};

use crate::clock::SystemId;
use crate::config::{Config, OutputFormat};
use crate::connect;
use crate::engine::{EntityRules, FieldValue, RecordState};
use crate::mapping::{Catalog, EntityId, FieldId};
use crate::resolver::Publication;

/// How one target system receives one entity.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub topic: String,
    pub format: OutputFormat,
    /// The target's table, as its source mapping names it.
    pub table: String,
    /// The target's columns: the entity field each holds, and its position in the canonical
    /// key when it is a key column.
    pub columns: Vec<(String, FieldId, Option<usize>)>,
    /// Exact echo mode: the column the record's version vector is written to.
    pub version_column: Option<String>,
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
                    let key_pos = entity.key.iter().position(|k| k == field);
                    Some((column.clone(), FieldId(id as u16), key_pos))
                })
                .collect();
            plans.insert(
                (entity_id, SystemId(system as u16)),
                TargetPlan {
                    topic: target.topic.clone(),
                    format: target.format,
                    table: source.table.clone(),
                    columns,
                    version_column: source.version_column.clone(),
                },
            );
        }
    }
    plans
}

fn json_of(value: &FieldValue) -> Json {
    match value {
        // Exact, as Debezium's `decimal.handling.mode=string` renders decimals.
        FieldValue::Decimal(d) => Json::String(d.to_string()),
        FieldValue::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| Json::String(j.clone())),
        other => connect::field_payload(other),
    }
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

/// The records sent to a target for the record's current state: the change event, and after
/// a delete a tombstone, as Debezium writes one, so that compacted target topics drop the key.
pub fn target_records(
    plan: &TargetPlan,
    rules: &EntityRules,
    state: &RecordState,
    provenance: &Provenance<'_>,
) -> Vec<Publication> {
    let key_values: Vec<Json> = serde_json::from_str(provenance.key_text).unwrap_or_default();
    // (column, value) of the key and of the row, in the target's column order.
    let mut key: Vec<(&str, Json)> = Vec::new();
    let mut row: Vec<(&str, &FieldValue)> = Vec::new();
    let mut key_row: Vec<(&str, Json)> = Vec::new();
    for (column, field, key_pos) in &plan.columns {
        match key_pos {
            Some(pos) => {
                let value = key_values.get(*pos).cloned().unwrap_or(Json::Null);
                key.push((column, value.clone()));
                key_row.push((column, value));
            }
            None => {
                // Ignored fields (each system's own `updated_at`) are the target's business.
                if rules.fields[field.0 as usize].ignored {
                    continue;
                }
                if let Some(f) = state.field(*field) {
                    row.push((column, &f.value));
                }
            }
        }
    }
    let ts_ms = state
        .fields
        .iter()
        .map(|(_, f)| f.ts_ms)
        .max()
        .unwrap_or_default();
    let name = |s: SystemId| {
        rules
            .systems
            .get(s.0 as usize)
            .map_or("?", |i| i.name.as_str())
    };
    let version: Map<String, Json> = state
        .clock
        .iter()
        .map(|(s, n)| (name(s).to_owned(), Json::from(n)))
        .collect();
    let version_text = Json::Object(version.clone()).to_string();
    let deleted = state.deleted.is_some();
    let op = if deleted { "d" } else { "u" };
    let origin = name(provenance.origin);
    let entity = provenance.entity;

    // The change event around a row image: `harmony.key` is the canonical key itself where
    // JSON is schemaless, its text where a Connect schema must name one type for it.
    let change_event = |image: Json, harmony_key: Json| {
        json!({
            "before": if deleted { image.clone() } else { Json::Null },
            "after": if deleted { Json::Null } else { image },
            "op": op,
            "source": {"connector": "harmony", "name": "harmony", "db": entity, "table": plan.table, "ts_ms": ts_ms},
            "ts_ms": ts_ms,
            "harmony": {"entity": entity, "key": harmony_key, "version": version,
                        "origin": origin, "conflicts": provenance.conflicts},
        })
    };
    let version_column = plan
        .version_column
        .as_ref()
        .map(|c| (c, Json::String(version_text.clone())));
    let (key_bytes, value_bytes) = match plan.format {
        OutputFormat::JsonSchemaless => {
            let image: Map<String, Json> = key_row
                .iter()
                .map(|(column, value)| ((*column).to_owned(), value.clone()))
                .chain(row.iter().map(|(c, v)| ((*c).to_owned(), json_of(v))))
                .chain(version_column.map(|(c, v)| (c.clone(), v)))
                .collect();
            let key: Map<String, Json> = key.into_iter().map(|(c, v)| (c.to_owned(), v)).collect();
            let value = change_event(Json::Object(image), Json::Array(key_values.clone()));
            (Json::Object(key), value)
        }
        OutputFormat::Json => {
            let mut key_schema = Vec::new();
            let mut key_payload = Map::new();
            let mut row_schema = Vec::new();
            let mut image = Map::new();
            for (column, value) in key {
                key_schema.push(connect::key_field_schema(column, &value));
                row_schema.push(connect::key_field_schema(column, &value));
                key_payload.insert(column.to_owned(), value.clone());
                image.insert(column.to_owned(), value);
            }
            for (column, value) in &row {
                row_schema.push(connect::field_schema(column, value));
                image.insert((*column).to_owned(), connect::field_payload(value));
            }
            if let Some((column, version)) = version_column {
                row_schema.push(connect::field_schema(column, &FieldValue::Null));
                image.insert(column.clone(), version);
            }
            let topic = &plan.topic;
            let value = change_event(
                Json::Object(image),
                Json::String(provenance.key_text.to_owned()),
            );
            let key_schema =
                connect::struct_schema(Some(&format!("{topic}.Key")), false, key_schema);
            (
                connect::wrap(key_schema, Json::Object(key_payload)),
                connect::wrap(connect::envelope_schema(topic, row_schema), value),
            )
        }
    };
    let key_bytes = serde_json::to_vec(&key_bytes).unwrap_or_default();
    let mut headers = vec![
        ("harmony.entity", entity.as_bytes().to_vec()),
        ("harmony.origin", origin.as_bytes().to_vec()),
        ("harmony.version", version_text.into_bytes()),
    ];
    if !provenance.conflicts.is_empty() {
        headers.push((
            "harmony.conflicts",
            provenance.conflicts.join(",").into_bytes(),
        ));
    }
    let mut records = vec![Publication {
        topic: plan.topic.clone(),
        key: key_bytes.clone(),
        value: serde_json::to_vec(&value_bytes).ok(),
        headers: headers.clone(),
    }];
    if deleted {
        records.push(Publication {
            topic: plan.topic.clone(),
            key: key_bytes,
            value: None,
            headers,
        });
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Dot;
    use crate::engine::{entity_rules, FieldState};
    use crate::value::Decimal;

    #[test]
    fn each_target_gets_the_record_in_its_own_columns() {
        let config = Config::from_toml(
            include_str!("../examples/inventory.toml"),
            "inventory.toml",
            std::iter::empty(),
        )
        .unwrap();
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
                    ts_ms: 1_700,
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
            target_records(plan, rules, state, &provenance)
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
        assert_eq!(after_schema["fields"][1]["field"], "on_hand");
        assert_eq!(after_schema["fields"][1]["type"], "int64");

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
