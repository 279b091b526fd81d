//! The benchmark's input: Debezium PostgreSQL change events of three systems (erp, shop, wms)
//! and two entities (products, customers), seeded so that every run reads the same bytes.
//!
//! Each record is created once in the erp; updates then fall on a skewed set of keys (a tenth
//! of the records takes most of them), each made by the system that owns the field — the erp
//! prices and names, the warehouse counts stock, the shop toggles what is its own — and each
//! carrying the row as that system holds it, which follows harmony's deliveries as a sink would
//! keep it. On top: ~5 % redeliveries of an earlier event (Kafka Connect's at-least-once),
//! ~1 % concurrent conflicting updates (erp and shop set a price or an email without seeing the
//! other's), and some deletes, each followed by its tombstone.

use serde_json::{json, Value as Json};

/// Changes whenever the same seed would make different events.
pub const VERSION: u32 = 2;

/// Seeded, fast, and the same everywhere: the workload must not depend on a crate's algorithm.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// How the connector's `JsonConverter` writes: with `schemas.enable` (Debezium's default) or
/// without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Converter {
    Schema,
    Plain,
}

impl Converter {
    pub fn name(self) -> &'static str {
        match self {
            Converter::Schema => "schema",
            Converter::Plain => "plain",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Int,
    Text,
    Bool,
    /// `decimal.handling.mode=string`
    Decimal,
    /// `io.debezium.time.MicroTimestamp`
    Micros,
}

/// A captured table: its system, its topic's suffix, its key and its columns in order.
pub struct Table {
    pub system: &'static str,
    pub table: &'static str,
    key: &'static str,
    columns: &'static [(&'static str, Column)],
}

impl Table {
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}.{}.public.{}", self.system, self.table)
    }
}

pub const ERP_PRODUCTS: Table = Table {
    system: "erp",
    table: "products",
    key: "sku",
    columns: &[
        ("sku", Column::Text),
        ("name", Column::Text),
        ("price", Column::Decimal),
        ("quantity", Column::Int),
        ("description", Column::Text),
        ("updated_at", Column::Micros),
    ],
};
pub const SHOP_ITEMS: Table = Table {
    system: "shop",
    table: "items",
    key: "item_sku",
    columns: &[
        ("item_sku", Column::Text),
        ("title", Column::Text),
        ("price", Column::Decimal),
        ("stock", Column::Int),
        ("active", Column::Bool),
        ("teaser", Column::Text),
        ("updated_at", Column::Micros),
    ],
};
pub const WMS_SKUS: Table = Table {
    system: "wms",
    table: "skus",
    key: "sku",
    columns: &[
        ("sku", Column::Text),
        ("on_hand", Column::Int),
        ("reserved", Column::Int),
        ("bin", Column::Text),
        ("updated_at", Column::Micros),
    ],
};
pub const ERP_CUSTOMERS: Table = Table {
    system: "erp",
    table: "customers",
    key: "id",
    columns: &[
        ("id", Column::Int),
        ("name", Column::Text),
        ("email", Column::Text),
        ("tier", Column::Text),
        ("credit_limit", Column::Decimal),
        ("notes", Column::Text),
        ("updated_at", Column::Micros),
    ],
};
pub const SHOP_CUSTOMERS: Table = Table {
    system: "shop",
    table: "customers",
    key: "customer_id",
    columns: &[
        ("customer_id", Column::Int),
        ("full_name", Column::Text),
        ("email", Column::Text),
        ("newsletter", Column::Bool),
        ("preferences", Column::Text),
        ("updated_at", Column::Micros),
    ],
};

pub const TABLES: [&Table; 5] = [
    &ERP_PRODUCTS,
    &SHOP_ITEMS,
    &WMS_SKUS,
    &ERP_CUSTOMERS,
    &SHOP_CUSTOMERS,
];

/// One record the workload tracks, in the values every system's row is built from.
#[derive(Clone)]
enum Record {
    Product {
        sku: u64,
        name: u64,
        cents: i64,
        quantity: i64,
        reserved: i64,
        active: bool,
        filler: usize,
    },
    Customer {
        id: u64,
        name: u64,
        email: u64,
        tier: u8,
        credit: i64,
        newsletter: bool,
        filler: usize,
    },
}

/// One Kafka record of the workload.
pub struct Event {
    pub topic: usize,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What kind of change events to make, and how many records.
pub struct Spec {
    pub records: u64,
    pub seed: u64,
    pub converter: Converter,
    /// Source commit time of the first event; each next one is a millisecond later, unless
    /// the caller stamps its own (the latency runs stamp the intended send time).
    pub start_ms: i64,
    /// Whether the targets' own captures show them applying harmony's deliveries (echoes).
    pub echoes: bool,
}

/// Text of a column that a system has but harmony does not map: what makes real rows 0.5–2 KB.
fn filler(len: usize, seed: u64) -> String {
    const WORDS: [&str; 8] = [
        "stainless ",
        "kettle ",
        "ceramic ",
        "pack of six ",
        "dishwasher safe ",
        "blue ",
        "limited edition ",
        "warranty ",
    ];
    let mut text = String::with_capacity(len + 16);
    let mut i = seed;
    while text.len() < len {
        text.push_str(WORDS[(i % 8) as usize]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text.truncate(len);
    text
}

fn price(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

const TIERS: [&str; 3] = ["bronze", "silver", "gold"];

impl Record {
    fn table_row(&self, table: &Table, ts_ms: i64) -> Json {
        let micros = ts_ms * 1000;
        match (self, table.system, table.table) {
            (
                Record::Product {
                    sku,
                    name,
                    cents,
                    quantity,
                    filler: f,
                    ..
                },
                "erp",
                _,
            ) => json!({"sku": format!("SKU-{sku:07}"), "name": format!("Product {sku} mk{name}"),
                    "price": price(*cents), "quantity": quantity, "description": filler(*f, *sku),
                    "updated_at": micros}),
            (
                Record::Product {
                    sku,
                    name,
                    cents,
                    quantity,
                    active,
                    filler: f,
                    ..
                },
                "shop",
                _,
            ) => {
                json!({"item_sku": format!("SKU-{sku:07}"), "title": format!("Product {sku} mk{name}"),
                    "price": price(*cents), "stock": quantity, "active": active,
                    "teaser": filler(f / 2, sku + 1), "updated_at": micros})
            }
            (
                Record::Product {
                    sku,
                    quantity,
                    reserved,
                    ..
                },
                _,
                _,
            ) => json!({"sku": format!("SKU-{sku:07}"), "on_hand": quantity, "reserved": reserved,
                    "bin": format!("A-{:03}-{:02}", sku % 997, sku % 13), "updated_at": micros}),
            (
                Record::Customer {
                    id,
                    name,
                    email,
                    tier,
                    credit,
                    filler: f,
                    ..
                },
                "erp",
                _,
            ) => json!({"id": id, "name": format!("Customer {id} v{name}"),
                    "email": format!("c{id}.{email}@example.com"), "tier": TIERS[*tier as usize % 3],
                    "credit_limit": price(*credit), "notes": filler(*f, *id), "updated_at": micros}),
            (
                Record::Customer {
                    id,
                    name,
                    email,
                    newsletter,
                    filler: f,
                    ..
                },
                _,
                _,
            ) => json!({"customer_id": id, "full_name": format!("Customer {id} v{name}"),
                    "email": format!("c{id}.{email}@example.com"), "newsletter": newsletter,
                    "preferences": filler(f / 2, id + 3), "updated_at": micros}),
        }
    }

    fn key_value(&self, table: &Table) -> Json {
        let key = match self {
            Record::Product { sku, .. } => json!(format!("SKU-{sku:07}")),
            Record::Customer { id, .. } => json!(id),
        };
        let mut map = serde_json::Map::new();
        map.insert(table.key.to_owned(), key);
        Json::Object(map)
    }
}

/// Connect schemas of one table, built once.
struct Schemas {
    key: Json,
    value: Json,
}

fn column_schema(name: &str, column: Column, optional: bool) -> Json {
    let mut schema = match column {
        Column::Int => json!({"type": "int64"}),
        Column::Text | Column::Decimal => json!({"type": "string"}),
        Column::Bool => json!({"type": "boolean"}),
        Column::Micros => {
            json!({"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1})
        }
    };
    schema["optional"] = json!(optional);
    schema["field"] = json!(name);
    schema
}

fn schemas(table: &Table, prefix: &str) -> Schemas {
    let name = format!("{prefix}.{}.public.{}", table.system, table.table);
    let key_column = table.columns.iter().find(|(c, _)| *c == table.key);
    let key_fields: Vec<Json> = key_column
        .map(|(c, t)| column_schema(c, *t, false))
        .into_iter()
        .collect();
    let row: Vec<Json> = table
        .columns
        .iter()
        .map(|(c, t)| column_schema(c, *t, *c != table.key))
        .collect();
    let row_struct = |field: &str| json!({"type": "struct", "fields": row, "optional": true, "name": format!("{name}.Value"), "field": field});
    let text =
        |f: &str, optional: bool| json!({"type": "string", "optional": optional, "field": f});
    let int = |f: &str, optional: bool| json!({"type": "int64", "optional": optional, "field": f});
    let source = json!({"type": "struct", "fields": [
        text("version", false), text("connector", false), text("name", false), int("ts_ms", false),
        {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
         "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
         "default": "false", "field": "snapshot"},
        text("db", false), text("sequence", true), int("ts_us", true), int("ts_ns", true),
        text("schema", false), text("table", false), int("txId", true), int("lsn", true), int("xmin", true)
    ], "optional": false, "name": "io.debezium.connector.postgresql.Source", "version": 1, "field": "source"});
    let transaction = json!({"type": "struct", "fields": [
        text("id", false), int("total_order", false), int("data_collection_order", false)
    ], "optional": true, "name": "event.block", "version": 1, "field": "transaction"});
    Schemas {
        key: json!({"type": "struct", "fields": key_fields, "optional": false, "name": format!("{name}.Key")}),
        value: json!({"type": "struct", "fields": [
            row_struct("before"), row_struct("after"), source, text("op", false),
            int("ts_ms", true), int("ts_us", true), int("ts_ns", true), transaction
        ], "optional": false, "name": format!("{name}.Envelope"), "version": 2}),
    }
}

/// Builds the events one by one; the same spec always yields the same sequence.
pub struct Generator {
    spec: Spec,
    prefix_schemas: Vec<Schemas>,
    rng: Rng,
    records: Vec<Record>,
    deleted: Vec<bool>,
    created: u64,
    /// Per system (erp, shop, wms), the last log position used.
    lsn: [u64; 3],
    tx: u64,
    emitted: u64,
    /// Recent events, for redeliveries.
    recent: std::collections::VecDeque<(usize, Vec<u8>, Option<Vec<u8>>)>,
    queued: std::collections::VecDeque<Event>,
    /// Per record and system (erp, shop, wms): a hash of the row that system holds, 0 for none.
    held: Vec<[u64; 3]>,
    /// Per record and system: an echo is scheduled.
    echo_scheduled: Vec<[bool; 3]>,
    /// Echoes by the event count at which the system's capture shows them.
    echoes: std::collections::BTreeMap<u64, Vec<(usize, usize)>>,
}

/// How many records are created per update on average: 1M records make ~1.45M events.
const UPDATES_PER_RECORD_PERCENT: u64 = 30;

impl Generator {
    pub fn new(spec: Spec, prefix: &str) -> Self {
        let prefix_schemas = TABLES.iter().map(|t| schemas(t, prefix)).collect();
        let rng = Rng::new(spec.seed);
        Self {
            spec,
            prefix_schemas,
            rng,
            records: Vec::new(),
            deleted: Vec::new(),
            created: 0,
            lsn: [1 << 24; 3],
            tx: 1000,
            emitted: 0,
            recent: std::collections::VecDeque::with_capacity(1024),
            queued: std::collections::VecDeque::new(),
            held: Vec::new(),
            echo_scheduled: Vec::new(),
            echoes: std::collections::BTreeMap::new(),
        }
    }

    fn table_index(table: &Table) -> usize {
        TABLES
            .iter()
            .position(|t| std::ptr::eq(*t, table))
            .unwrap_or(0)
    }

    fn system_index(system: &str) -> usize {
        match system {
            "erp" => 0,
            "shop" => 1,
            _ => 2,
        }
    }

    /// A record in a table's row image, with op `c`, `u` or `d`.
    fn change(&mut self, record: usize, table: &'static Table, op: &str, ts_ms: i64) -> Event {
        let system = Self::system_index(table.system);
        self.lsn[system] += 40 + self.rng.below(400);
        self.tx += 1;
        let lsn = self.lsn[system];
        let r = &self.records[record];
        let row = r.table_row(table, ts_ms);
        let key = r.key_value(table);
        let (before, after) = if op == "d" {
            // REPLICA IDENTITY DEFAULT: a delete's before image carries the key only.
            let mut before = serde_json::Map::new();
            for (column, _) in table.columns {
                let value = if *column == table.key {
                    row[column].clone()
                } else {
                    Json::Null
                };
                before.insert((*column).to_owned(), value);
            }
            (Json::Object(before), Json::Null)
        } else {
            (Json::Null, row)
        };
        let payload = json!({
            "before": before,
            "after": after,
            "source": {"version": "3.3.1.Final", "connector": "postgresql", "name": table.system,
                       "ts_ms": ts_ms, "snapshot": "false", "db": table.system,
                       "sequence": format!(r#"["{}","{}"]"#, lsn - 8, lsn), "ts_us": ts_ms * 1000,
                       "ts_ns": ts_ms * 1_000_000, "schema": "public", "table": table.table,
                       "txId": self.tx, "lsn": lsn, "xmin": null},
            "transaction": null,
            "op": op,
            "ts_ms": ts_ms,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
        });
        let index = Self::table_index(table);
        if self.spec.echoes {
            self.track_echoes(record, system);
        }
        let (key, value) = match self.spec.converter {
            Converter::Plain => (key, payload),
            Converter::Schema => {
                let schemas = &self.prefix_schemas[index];
                (
                    json!({"schema": schemas.key, "payload": key}),
                    json!({"schema": schemas.value, "payload": payload}),
                )
            }
        };
        Event {
            topic: index,
            key: serde_json::to_vec(&key).unwrap_or_default(),
            value: serde_json::to_vec(&value).ok(),
        }
    }

    /// A key of the skewed distribution: a tenth of the records takes four fifths of the updates.
    fn hot_record(&mut self) -> Option<usize> {
        let created = self.records.len() as u64;
        if created == 0 {
            return None;
        }
        for _ in 0..8 {
            let hot = (created / 10).max(1);
            let i = if self.rng.percent(80) {
                self.rng.below(hot)
            } else {
                self.rng.below(created)
            } as usize;
            if !self.deleted[i] {
                return Some(i);
            }
        }
        None
    }

    fn create(&mut self, ts_ms: i64) -> Event {
        let n = self.created;
        self.created += 1;
        let filler = 100 + self.rng.below(900) as usize;
        // Two products for each customer.
        let (record, table) = if n % 3 == 2 {
            (
                Record::Customer {
                    id: n + 1,
                    name: 0,
                    email: 0,
                    tier: (n % 3) as u8,
                    credit: 100_000,
                    newsletter: false,
                    filler,
                },
                &ERP_CUSTOMERS,
            )
        } else {
            (
                Record::Product {
                    sku: n + 1,
                    name: 0,
                    cents: 500 + self.rng.below(20_000) as i64,
                    quantity: 100,
                    reserved: 0,
                    active: true,
                    filler,
                },
                &ERP_PRODUCTS,
            )
        };
        self.records.push(record);
        self.deleted.push(false);
        self.held.push([0; 3]);
        self.echo_scheduled.push([false; 3]);
        self.change(self.records.len() - 1, table, "c", ts_ms)
    }

    /// An update by the system that owns what it changes.
    fn update(&mut self, i: usize, ts_ms: i64) -> Event {
        let roll = self.rng.below(100);
        let delta = self.rng.below(20) as i64 + 1;
        let table = match &mut self.records[i] {
            Record::Product {
                cents,
                name,
                quantity,
                reserved,
                active,
                ..
            } => match roll {
                0..30 => {
                    *cents += delta * 5;
                    &ERP_PRODUCTS
                }
                30..40 => {
                    *name += 1;
                    &ERP_PRODUCTS
                }
                40..80 => {
                    // Receipts and picks: stock never goes below zero.
                    *quantity = (*quantity + delta - 8).max(0);
                    *reserved = delta % 4;
                    &WMS_SKUS
                }
                _ => {
                    *active = !*active;
                    &SHOP_ITEMS
                }
            },
            Record::Customer {
                tier,
                credit,
                newsletter,
                email,
                ..
            } => match roll {
                0..50 => {
                    *tier = tier.wrapping_add(1);
                    *credit += delta * 1000;
                    &ERP_CUSTOMERS
                }
                50..75 => {
                    *newsletter = !*newsletter;
                    &SHOP_CUSTOMERS
                }
                _ => {
                    *email += 1;
                    &SHOP_CUSTOMERS
                }
            },
        };
        self.change(i, table, "u", ts_ms)
    }

    /// The erp and the shop change the same field to different values, neither having seen
    /// the other's write: both events, the erp's first.
    fn conflict(&mut self, i: usize, ts_ms: i64) -> [Event; 2] {
        let (erp, shop) = match &self.records[i] {
            Record::Product { .. } => (&ERP_PRODUCTS, &SHOP_ITEMS),
            Record::Customer { .. } => (&ERP_CUSTOMERS, &SHOP_CUSTOMERS),
        };
        let bump = |record: &mut Record, by: i64| match record {
            Record::Product { cents, .. } => *cents += by,
            Record::Customer { email, .. } => *email += by as u64,
        };
        bump(&mut self.records[i], 3);
        let first = self.change(i, erp, "u", ts_ms);
        bump(&mut self.records[i], 4);
        // A millisecond later: `lww` picks the shop's, as the workload's own record says.
        let second = self.change(i, shop, "u", ts_ms + 1);
        [first, second]
    }

    fn delete(&mut self, i: usize, ts_ms: i64) -> [Event; 2] {
        let table = match &self.records[i] {
            Record::Product { .. } => &ERP_PRODUCTS,
            Record::Customer { .. } => &ERP_CUSTOMERS,
        };
        self.deleted[i] = true;
        let event = self.change(i, table, "d", ts_ms);
        let tombstone = Event {
            topic: event.topic,
            key: event.key.clone(),
            value: None,
        };
        [event, tombstone]
    }

    /// The next event stamped `ts_ms`, or `None` once every record was created and the updates
    /// that go with them are out.
    pub fn next_at(&mut self, ts_ms: i64) -> Option<Event> {
        if let Some(event) = self.queued.pop_front() {
            return Some(self.remember(event));
        }
        if let Some(event) = self.due_echo(ts_ms, false) {
            return Some(self.remember(event));
        }
        let updates_due = self.spec.records * UPDATES_PER_RECORD_PERCENT / 100;
        if self.created >= self.spec.records && self.emitted >= self.spec.records + updates_due {
            // The sinks still apply what they were sent.
            let event = self.due_echo(ts_ms, true)?;
            return Some(self.remember(event));
        }
        let roll = self.rng.below(1000);
        let event = match roll {
            // Redelivered: an exact copy of a recent record, as after a connector restart.
            0..50 if !self.recent.is_empty() => {
                let pick = self.rng.below(self.recent.len() as u64) as usize;
                let (topic, key, value) = self.recent[pick].clone();
                return Some(Event { topic, key, value });
            }
            50..60 => match self.hot_record() {
                Some(i) => {
                    let [first, second] = self.conflict(i, ts_ms);
                    self.queued.push_back(second);
                    first
                }
                None => self.create(ts_ms),
            },
            60..65 => match self.hot_record() {
                Some(i) => {
                    let [event, tombstone] = self.delete(i, ts_ms);
                    self.queued.push_back(tombstone);
                    event
                }
                None => self.create(ts_ms),
            },
            _ if self.created < self.spec.records
                && (self.rng.percent(100 - UPDATES_PER_RECORD_PERCENT)
                    || self.records.len() < 10) =>
            {
                self.create(ts_ms)
            }
            _ => match self.hot_record() {
                Some(i) => self.update(i, ts_ms),
                None => self.create(ts_ms),
            },
        };
        Some(self.remember(event))
    }

    /// The table `system` holds record `i` in, if it holds that entity at all.
    fn table_of(&self, i: usize, system: usize) -> Option<&'static Table> {
        match (&self.records[i], system) {
            (Record::Product { .. }, 0) => Some(&ERP_PRODUCTS),
            (Record::Product { .. }, 1) => Some(&SHOP_ITEMS),
            (Record::Product { .. }, _) => Some(&WMS_SKUS),
            (Record::Customer { .. }, 0) => Some(&ERP_CUSTOMERS),
            (Record::Customer { .. }, 1) => Some(&SHOP_CUSTOMERS),
            (Record::Customer { .. }, _) => None,
        }
    }

    /// A hash of what `system` holds of record `i` when it is in step: the columns harmony maps.
    fn projection(&self, i: usize, system: usize) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        if self.deleted[i] {
            return u64::MAX;
        }
        // SipHash with fixed keys: the same in every run.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        system.hash(&mut h);
        match &self.records[i] {
            Record::Product {
                name,
                cents,
                quantity,
                reserved,
                active,
                ..
            } => match system {
                0 => (name, cents, quantity).hash(&mut h),
                1 => (name, cents, quantity, active).hash(&mut h),
                _ => (quantity, reserved).hash(&mut h),
            },
            Record::Customer {
                name,
                email,
                tier,
                credit,
                newsletter,
                ..
            } => match system {
                0 => (name, email, tier, credit).hash(&mut h),
                _ => (name, email, newsletter).hash(&mut h),
            },
        }
        h.finish().max(1)
    }

    /// After `system` changed record `i`: it holds the new row, and every other system that
    /// holds the entity applies harmony's delivery a little later (its sink), which its own
    /// capture then shows.
    fn track_echoes(&mut self, i: usize, system: usize) {
        self.held[i][system] = self.projection(i, system);
        for other in 0..3 {
            if other == system
                || self.echo_scheduled[i][other]
                || self.table_of(i, other).is_none()
                || self.held[i][other] == self.projection(i, other)
            {
                continue;
            }
            let due = self.emitted + 20 + self.rng.below(400);
            self.echo_scheduled[i][other] = true;
            self.echoes.entry(due).or_default().push((i, other));
        }
    }

    /// The earliest echo due by now whose system is still behind.
    fn due_echo(&mut self, ts_ms: i64, all: bool) -> Option<Event> {
        loop {
            let mut entry = self.echoes.first_entry()?;
            if *entry.key() > self.emitted && !all {
                return None;
            }
            let due = entry.get_mut();
            let (i, system) = due.pop()?;
            if due.is_empty() {
                entry.remove();
            }
            self.echo_scheduled[i][system] = false;
            if self.held[i][system] == self.projection(i, system) {
                continue;
            }
            let table = self.table_of(i, system)?;
            let op = match (self.deleted[i], self.held[i][system]) {
                (true, _) => "d",
                (false, 0) => "c",
                (false, _) => "u",
            };
            let event = self.change(i, table, op, ts_ms);
            if op == "d" {
                self.queued.push_back(Event {
                    topic: event.topic,
                    key: event.key.clone(),
                    value: None,
                });
            }
            return Some(event);
        }
    }

    fn remember(&mut self, event: Event) -> Event {
        self.emitted += 1;
        if self.recent.len() == 1024 {
            self.recent.pop_front();
        }
        self.recent
            .push_back((event.topic, event.key.clone(), event.value.clone()));
        event
    }

    /// The next event of the preloaded workload, a millisecond after the one before.
    pub fn next_event(&mut self) -> Option<Event> {
        let ts = self.spec.start_ms + self.emitted as i64;
        self.next_at(ts)
    }

    /// An update of a created record, for the fixed-rate runs: every one of them changes a
    /// field, so every one is delivered.
    pub fn live_update(&mut self, ts_ms: i64) -> Event {
        // The erp's price changes, each delivered to both other systems; two of three records
        // are products.
        for _ in 0..16 {
            let i = self.rng.below(self.records.len().max(1) as u64) as usize;
            if let Some(Record::Product { cents, .. }) = self.records.get_mut(i) {
                *cents += 1;
                return self.change(i, &ERP_PRODUCTS, "u", ts_ms);
            }
        }
        self.create(ts_ms)
    }

    /// Creates a record without the rest of the mix: the key space of the fixed-rate runs.
    pub fn create_only(&mut self, ts_ms: i64) -> Event {
        self.create(ts_ms)
    }
}
