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

use serde_json::{Map, Value as Json};

use crate::clock::SystemId;
use crate::config::Config;
use crate::engine::{EntityRules, FieldValue, RecordState};
use crate::mapping::{Catalog, EntityId, FieldId};

/// How one target system receives one entity.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub topic: String,
    /// The target's table, as its source mapping names it.
    pub table: String,
    /// The target's columns: the entity field each holds, and its position in the canonical
    /// key when it is a key column.
    pub columns: Vec<(String, FieldId, Option<usize>)>,
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
                    table: source.table.clone(),
                    columns,
                },
            );
        }
    }
    plans
}

fn json_of(value: &FieldValue) -> Json {
    match value {
        FieldValue::Null => Json::Null,
        FieldValue::Bool(b) => Json::Bool(*b),
        FieldValue::Int(i) => Json::from(*i),
        // Exact, as Debezium's `decimal.handling.mode=string` renders decimals.
        FieldValue::Decimal(d) => Json::String(d.to_string()),
        FieldValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        FieldValue::Text(t) => Json::String(t.clone()),
        FieldValue::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| Json::String(j.clone())),
    }
}

/// The key and value of the record sent to a target. `key_text` is the canonical key (a JSON
/// array); `origin` the system whose change caused this delivery.
pub fn target_record(
    plan: &TargetPlan,
    rules: &EntityRules,
    entity: &str,
    key_text: &str,
    state: &RecordState,
    origin: SystemId,
) -> (Vec<u8>, Vec<u8>) {
    let key_values: Vec<Json> = serde_json::from_str(key_text).unwrap_or_default();
    let mut key = Map::new();
    let mut row = Map::new();
    for (column, field, key_pos) in &plan.columns {
        match key_pos {
            Some(pos) => {
                let value = key_values.get(*pos).cloned().unwrap_or(Json::Null);
                key.insert(column.clone(), value.clone());
                row.insert(column.clone(), value);
            }
            None => {
                // Ignored fields (each system's own `updated_at`) are the target's business.
                if rules.fields[field.0 as usize].ignored {
                    continue;
                }
                if let Some(f) = state.field(*field) {
                    row.insert(column.clone(), json_of(&f.value));
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
    let deleted = state.deleted.is_some();
    let row = Json::Object(row);
    let value = serde_json::json!({
        "before": if deleted { row.clone() } else { Json::Null },
        "after": if deleted { Json::Null } else { row },
        "op": if deleted { "d" } else { "u" },
        "source": {"connector": "harmony", "name": "harmony", "db": entity, "table": plan.table, "ts_ms": ts_ms},
        "ts_ms": ts_ms,
        "harmony": {"entity": entity, "key": key_values, "version": version, "origin": name(origin)},
    });
    (
        serde_json::to_vec(&Json::Object(key)).unwrap_or_default(),
        serde_json::to_vec(&value).unwrap_or_default(),
    )
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
                },
            );
        }
        let _ = dot;

        let shop = &plans[&(product, SystemId(1))];
        assert_eq!(shop.topic, "harmony.demo.shop.product");
        let (key, value) =
            target_record(shop, rules, "product", r#"["SKU-1"]"#, &state, SystemId(2));
        assert_eq!(String::from_utf8(key).unwrap(), r#"{"item_sku":"SKU-1"}"#);
        let v: Json = serde_json::from_slice(&value).unwrap();
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

        // The warehouse table has no name or price.
        let wms = &plans[&(product, SystemId(2))];
        let (key, value) =
            target_record(wms, rules, "product", r#"["SKU-1"]"#, &state, SystemId(2));
        assert_eq!(String::from_utf8(key).unwrap(), r#"{"sku":"SKU-1"}"#);
        let v: Json = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            v["after"],
            serde_json::json!({"sku": "SKU-1", "quantity": 93})
        );

        state.deleted = Some(Dot {
            system: SystemId(0),
            counter: 1,
        });
        let (_, value) = target_record(shop, rules, "product", r#"["SKU-1"]"#, &state, SystemId(0));
        let v: Json = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["op"], "d");
        assert_eq!(v["after"], Json::Null);
        assert_eq!(v["before"]["item_sku"], "SKU-1");
    }
}
