//! Stage 2 as a [`Stage`]: an internal record through the [`Resolver`] → its target and
//! conflict records to publish, its record's changelog writes, and what to count; a record
//! that cannot be resolved is rejected with its kind, and a change its system's policy says not
//! to apply yet halts its partition.

use crate::model::clock::SystemId;
use crate::model::stage::{Count, Effects, EntityId, FieldId, Input, Stage, StateSummary, Topic};
use crate::resolve::resolver::{ResolveError, Resolver};

impl Stage for Resolver {
    const NAME: &'static str = "resolve";
    const KEEPS_STATE: bool = true;

    fn handle(&mut self, input: &Input<'_>, effects: &mut Effects) {
        let partition = input.partition;
        let resolved = self.resolve(partition, input.payload.unwrap_or_default());
        // Records taken off go first: a change of one of their keys starts it afresh after.
        effects.changelog.tombstones = self.take_tombstones(partition);
        let mut resolved = match resolved {
            Ok(resolved) => resolved,
            Err(ResolveError::Halted(halt)) => {
                effects.counts.push(Count::Regression {
                    entity: halt.ids.1,
                    system: halt.ids.0,
                    applied: format!("{:?}", halt.applied),
                    incoming: format!("{:?}", halt.incoming),
                    stopped: true,
                });
                effects.halt = Some(ResolveError::Halted(halt).to_string());
                return;
            }
            Err(error) => return effects.reject(error.kind(), error.to_string()),
        };
        let (entity, system) = (resolved.entity, resolved.system);
        if let Some((applied, incoming)) = &resolved.position_regression {
            effects.counts.push(Count::Regression {
                entity,
                system,
                applied: format!("{applied:?}"),
                incoming: format!("{incoming:?}"),
                stopped: false,
            });
        }
        effects.counts.push(Count::RecordChange {
            entity,
            system,
            outcome: resolved.outcome,
            duplicate_reason: resolved.duplicate_reason,
        });
        for &field in &resolved.rejected {
            effects.counts.push(Count::GuardRejection {
                entity,
                field,
                system,
            });
        }
        for &(field, strategy) in &resolved.conflicts {
            effects.counts.push(Count::Conflict {
                entity,
                field,
                strategy: strategy.name(),
            });
        }
        effects.changelog.value = resolved.changelog.take();
        if !resolved.publications.is_empty() {
            effects.source_ts_ms = Some(resolved.source_ts_ms);
        }
        effects
            .publish
            .extend(
                resolved
                    .publications
                    .into_iter()
                    .map(|p| crate::model::stage::Publish {
                        topic: Topic::Named(p.topic),
                        key: Some(p.key),
                        value: p.value,
                        headers: p.headers,
                    }),
            );
    }

    fn system_name(&self, system: SystemId) -> &str {
        self.label_names(EntityId(0), system).1
    }

    fn entity_name(&self, entity: EntityId) -> &str {
        self.label_names(entity, SystemId(0)).0
    }

    fn field_name(&self, entity: EntityId, field: FieldId) -> &str {
        Resolver::field_name(self, entity, field)
    }

    fn install<'l>(
        &mut self,
        partition: i32,
        log: &mut dyn Iterator<Item = (&'l [u8], Option<&'l [u8]>)>,
    ) -> (usize, usize) {
        Resolver::install(self, partition, log)
    }

    fn drop_partition(&mut self, partition: i32) {
        Resolver::drop_partition(self, partition);
    }

    fn partitions(&self) -> Vec<i32> {
        Resolver::partitions(self)
    }

    fn state_summary(&self, partition: i32) -> StateSummary<'_> {
        Resolver::state_summary(self, partition)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::ingest::mapping::Catalog;
    use crate::ingest::stage::Ingest;

    fn inventory() -> Config {
        crate::config::inventory_example(&[])
    }

    fn input<'a>(topic: &'a str, payload: &'a [u8]) -> Input<'a> {
        Input {
            topic,
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(payload),
            headers: &(),
            read_at_ms: 0,
        }
    }

    /// Both stages, without a broker: a shop change through stage 1, its internal record
    /// through stage 2.
    #[test]
    fn a_change_resolves_into_target_records_a_changelog_value_and_counts() {
        let config = inventory();
        let catalog = Arc::new(Catalog::new(&config));
        let mut ingest = Ingest::new(&config, Some(catalog.clone()));
        let mut resolver = Resolver::with_catalog(&config, catalog);
        let change = br#"{"before":null,"after":{"item_sku":"SKU-1","title":"Cup","price":"4.90","stock":95,"active":true,"updated_at":"t"},"source":{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"items","ts_ms":5,"sequence":"[null,\"1\"]"},"op":"c"}"#;
        let mut internal = Effects::default();
        ingest.handle(&input("shop.public.items", change), &mut internal);
        let record = internal.publish[0].value.clone().unwrap();

        let mut effects = Effects::default();
        resolver.handle(&input("internal", &record), &mut effects);
        assert_eq!(effects.reject, None);
        assert_eq!(effects.source_ts_ms, Some(5));
        assert!(!effects.publish.is_empty());
        assert!(effects
            .publish
            .iter()
            .all(|p| matches!(&p.topic, Topic::Named(_)) && p.key.is_some()));
        let (key, _) = effects.changelog.value.as_ref().unwrap();
        assert_eq!(key, r#"product:["SKU-1"]"#);
        assert!(effects.counts.contains(&Count::RecordChange {
            entity: EntityId(0),
            system: resolver.system_id("shop").unwrap(),
            outcome: "applied",
            duplicate_reason: None,
        }));
        assert_eq!(resolver.partitions(), vec![0]);

        // The same record again: a duplicate, nothing published, nothing to write.
        effects.clear();
        resolver.handle(&input("internal", &record), &mut effects);
        assert!(effects.publish.is_empty() && effects.changelog.is_empty());
    }

    #[test]
    fn an_unreadable_internal_record_is_rejected_with_its_kind() {
        let config = inventory();
        let mut resolver = Resolver::new(&config);
        let mut effects = Effects::default();
        resolver.handle(&input("internal", b"{"), &mut effects);
        assert_eq!(
            effects.reject.as_ref().map(|r| r.kind),
            Some("invalid_internal")
        );
        assert!(effects.publish.is_empty() && effects.halt.is_none());
    }

    /// The changelog value format 3 wrote for a record (by the build before `FieldRef` took
    /// the place of the changelog's own value type): written again byte for byte, and read
    /// back. A changelog on a user's broker must stay readable, and compaction must see equal
    /// states as equal bytes.
    #[test]
    fn a_changelog_value_is_byte_for_byte_what_format_3_wrote() {
        const INTERNAL: &str = r#"{"v":1,"entity":"product","key":"[\"SKU-1\"]","system":"shop","kind":"upsert","ts_ms":5,"snapshot":false,"position":{"postgres":[0,1]},"fields":[["active",{"bool":true}],["name",{"text":"Cup é"}],["price",{"decimal":"4.90"}],["quantity",{"int":95}],["updated_at",{"text":"t"}]],"origin":{"topic":"shop.public.items","partition":0,"offset":1}}"#;
        const WRITTEN: &str = "03010473686f7001040661637469766501010473686f70010a00046e616d65050643757020c3a90473686f70010a0005707269636503d407020473686f70010a00087175616e7469747902be010473686f70010a000003036572700000000001010473686f7001e4efc7bfe4ecd1938c0103046e616d65050643757020c3a905707269636503d40702087175616e7469747902be0100000473686f70010473686f700105066163746976650101046e616d65050643757020c3a905707269636503d40702087175616e7469747902be010a757064617465645f61740501740001000001000003776d730000000001010473686f7001e48ccbbbedf8f6c2f90101087175616e7469747902be010000000203657270010a03776d73010a010473686f700a00";
        let config = inventory();
        let mut resolver = Resolver::new(&config);
        let mut effects = Effects::default();
        resolver.handle(&input("internal", INTERNAL.as_bytes()), &mut effects);
        let (key, value) = effects.changelog.value.take().unwrap();
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, WRITTEN);

        let mut restored = Resolver::new(&config);
        let bytes: Vec<u8> = (0..WRITTEN.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&WRITTEN[i..i + 2], 16).unwrap())
            .collect();
        let mut log = [(key.as_bytes(), Some(bytes.as_slice()))].into_iter();
        assert_eq!(Stage::install(&mut restored, 0, &mut log), (1, 0));
        // Restored, the same change again is a duplicate: the state read back is the one written.
        effects.clear();
        restored.handle(&input("internal", INTERNAL.as_bytes()), &mut effects);
        assert!(effects.publish.is_empty() && effects.changelog.is_empty());
    }
}
