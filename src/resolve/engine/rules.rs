//! The configuration of each entity in the form resolution uses: systems, field rules, the
//! fields each system holds, and the entity's targets, all by index.

use super::{EntityRules, FieldRule, SystemInfo};
use crate::config::guard::Guard;
use crate::config::{Config, RegressionPolicy, SourceMapping};
use crate::ingest::mapping::{Catalog, EntityId, FieldId};
use crate::model::clock::SystemId;

/// One `EntityRules` per configured entity, in `EntityId` order. The configuration has been
/// validated, so every name it uses resolves. After the configured systems comes one more,
/// [`operator`](crate::model::clock::OPERATOR), the author of manual resolutions: it holds no
/// table and receives nothing, and ranks below every system.
pub fn entity_rules(config: &Config, catalog: &Catalog) -> Vec<EntityRules> {
    let systems: Vec<SystemInfo> = config
        .systems
        .iter()
        .map(|s| SystemInfo {
            name: s.name.clone(),
            rank: s.rank,
            on_position_regression: s.on_position_regression,
        })
        .chain(std::iter::once(SystemInfo {
            name: crate::model::clock::OPERATOR.to_owned(),
            rank: i32::MIN,
            on_position_regression: RegressionPolicy::Accept,
        }))
        .collect();
    let system_id = |name: &str| {
        config
            .systems
            .iter()
            .position(|s| s.name == name)
            .map(|i| SystemId(i as u16))
    };
    config
        .entities
        .iter()
        .enumerate()
        .map(|(e, entity)| {
            let entity_id = EntityId(e as u16);
            let field_names = catalog.field_names(entity_id);
            let fields = field_names
                .iter()
                .map(|name| {
                    let settings = entity.fields.get(name.as_str());
                    FieldRule {
                        strategy: entity.strategy_of(name),
                        priority: settings
                            .map(|f| f.priority.iter().filter_map(|s| system_id(s)).collect())
                            .unwrap_or_default(),
                        ignored: entity.ignore.iter().any(|i| i == name)
                            || entity.key.contains(name),
                        guard: settings
                            .and_then(|f| f.guard.as_deref())
                            .and_then(|g| Guard::compile(g).ok()),
                        name_hash: super::fingerprint::name(name),
                    }
                })
                .collect();
            // Per system id, the fields its source mappings name in `pick`, sorted.
            let per_system = |pick: &dyn Fn(&SourceMapping) -> Vec<&String>| -> Vec<Vec<FieldId>> {
                (0..systems.len())
                    .map(|s| {
                        let mut ids: Vec<FieldId> = entity
                            .sources
                            .iter()
                            .filter(|m| system_id(&m.system) == Some(SystemId(s as u16)))
                            .flat_map(pick)
                            .filter_map(|f| field_names.iter().position(|n| n == f))
                            .map(|i| FieldId(i as u16))
                            .collect();
                        ids.sort_unstable();
                        ids.dedup();
                        ids
                    })
                    .collect()
            };
            let held_fields = per_system(&|m| m.columns.values().collect());
            let required_fields = per_system(&|m| m.required.iter().collect());
            let mut targets = Vec::new();
            let mut windows = vec![0; systems.len()];
            for target in config
                .targets
                .iter()
                .filter(|t| t.entities.contains(&entity.name))
            {
                if let Some(id) = system_id(&target.system) {
                    targets.push(id);
                    windows[id.0 as usize] = target.window;
                }
            }
            EntityRules {
                systems: systems.clone(),
                fields,
                held_fields,
                required_fields,
                targets,
                windows,
                on_delete_conflict: entity.on_delete_conflict,
                operator: SystemId((systems.len() - 1) as u16),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;

    #[test]
    fn the_inventory_example_becomes_rules() {
        let config = crate::config::inventory_example(&[]);
        let catalog = Catalog::new(&config);
        let rules = entity_rules(&config, &catalog);
        assert_eq!(rules.len(), 1);
        let product = &rules[0];
        let field = |name: &str| {
            let i = catalog
                .field_names(EntityId(0))
                .iter()
                .position(|n| n == name)
                .unwrap();
            (FieldId(i as u16), &product.fields[i])
        };
        assert_eq!(field("quantity").1.strategy, Strategy::Sum);
        assert!(field("quantity").1.guard.is_some());
        assert_eq!(field("name").1.priority, vec![SystemId(0), SystemId(1)]);
        assert!(field("updated_at").1.ignored && field("sku").1.ignored);
        // The warehouse holds sku, quantity, reserved and updated_at, not name or price.
        let wms = &product.held_fields[2];
        assert!(wms.contains(&field("quantity").0) && wms.contains(&field("reserved").0));
        assert!(!wms.contains(&field("name").0));
        assert_eq!(product.targets, vec![SystemId(0), SystemId(1), SystemId(2)]);
        assert_eq!(
            product.windows,
            vec![32, 32, 32, 0],
            "the default delivery window; the operator receives nothing"
        );
        assert_eq!(product.systems[2].name, "wms");
    }
}
