//! The `product` entity the end-to-end tests declare over the stack's three databases, built
//! rather than copied: each test states its tables, the columns beyond each system's usual
//! ones, and its field rules, and nothing else differs between them.
//!
//! Every product is keyed by `sku` and ignores `updated_at`, as examples/inventory.toml's. A
//! system's usual columns are the demo's: the erp's `sku, name, price, quantity`, the shop's
//! `item_sku, title, price, stock` (its names for the same fields), the warehouse's `sku`.

use std::fmt::Write as _;

#[derive(Default)]
pub struct Product {
    /// Entity-level lines (e.g. `default_strategy = "lww"`).
    settings: Vec<String>,
    /// `[entities.fields.<name>]` and its lines.
    fields: Vec<(String, String)>,
    sources: Vec<Source>,
    /// Exact echo mode on every source: `version_column = "harmony_version"`.
    versioned: bool,
}

struct Source {
    system: String,
    table: String,
    /// (column, field), beyond the system's usual ones.
    columns: Vec<(String, String)>,
    /// Lines of the source's table (e.g. `required = [...]`).
    lines: Vec<String>,
}

/// The usual columns of a system's product table, and the field each holds.
fn usual_columns(system: &str) -> &'static [(&'static str, &'static str)] {
    match system {
        "erp" => &[
            ("sku", "sku"),
            ("name", "name"),
            ("price", "price"),
            ("quantity", "quantity"),
        ],
        "shop" => &[
            ("item_sku", "sku"),
            ("title", "name"),
            ("price", "price"),
            ("stock", "quantity"),
        ],
        _ => &[("sku", "sku")],
    }
}

/// The quantity as examples/inventory.toml resolves it: movements add up, never below zero.
pub const GUARDED_SUM: &str = "strategy = \"sum\"\nguard = \"value >= 0\"";

impl Product {
    pub fn new() -> Self {
        Self::default()
    }

    /// An entity-level setting, as a TOML line.
    pub fn setting(mut self, line: &str) -> Self {
        self.settings.push(line.to_owned());
        self
    }

    /// The rule of `field`, as the lines of its `[entities.fields.<field>]` table.
    pub fn field(mut self, field: &str, rule: &str) -> Self {
        self.fields.push((field.to_owned(), rule.to_owned()));
        self
    }

    /// A source: `system`'s `table` (`public.` added), with its usual columns and `columns`
    /// (column, field) besides.
    pub fn source(mut self, system: &str, table: &str, columns: &[(&str, &str)]) -> Self {
        self.sources.push(Source {
            system: system.to_owned(),
            table: format!("public.{table}"),
            columns: columns
                .iter()
                .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
                .collect(),
            lines: Vec::new(),
        });
        self
    }

    /// A line of the last source's table.
    pub fn with(mut self, line: &str) -> Self {
        if let Some(source) = self.sources.last_mut() {
            source.lines.push(line.to_owned());
        }
        self
    }

    /// Every source in exact echo mode (`version_column = "harmony_version"`), or none.
    pub fn versioned(mut self, versioned: bool) -> Self {
        self.versioned = versioned;
        self
    }

    pub fn toml(&self) -> String {
        let mut out = String::from(
            "\n[[entities]]\nname = \"product\"\nkey = [\"sku\"]\nignore = [\"updated_at\"]\n",
        );
        for line in &self.settings {
            let _ = writeln!(out, "{line}");
        }
        for (field, rule) in &self.fields {
            let _ = writeln!(out, "\n  [entities.fields.{field}]");
            for line in rule.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        for source in &self.sources {
            let _ = writeln!(
                out,
                "\n  [[entities.sources]]\n  system = \"{}\"\n  table = \"{}\"",
                source.system, source.table
            );
            if self.versioned {
                let _ = writeln!(out, "  version_column = \"harmony_version\"");
            }
            for line in &source.lines {
                let _ = writeln!(out, "  {line}");
            }
            let columns: Vec<String> = usual_columns(&source.system)
                .iter()
                .map(|&(c, f)| (c.to_owned(), f.to_owned()))
                .chain(source.columns.iter().cloned())
                .chain([("updated_at".to_owned(), "updated_at".to_owned())])
                .map(|(column, field)| format!("{column} = \"{field}\""))
                .collect();
            let _ = writeln!(out, "  columns = {{ {} }}", columns.join(", "));
        }
        out
    }
}

#[test]
fn a_built_product_is_a_valid_entity_with_every_column_mapped() {
    let toml = Product::new()
        .field("quantity", GUARDED_SUM)
        .source("erp", "products", &[("note", "note")])
        .with("required = [\"name\", \"price\"]")
        .source("wms", "skus", &[("on_hand", "quantity")])
        .versioned(true)
        .toml();
    let config = format!(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\ngroup_id = \"g\"\n\n[output]\ntopic = \"o\"\ndead_letter_topic = \"d\"\n\n[[systems]]\nname = \"erp\"\ntopics = [\"e\"]\n\n[[systems]]\nname = \"wms\"\ntopics = [\"w\"]\n{toml}"
    );
    let parsed = harmony::config::Config::from_toml(&config, "built.toml", std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let product = &parsed.entities[0];
    assert_eq!(product.sources.len(), 2);
    let erp = &product.sources[0];
    assert_eq!(erp.table, "public.products");
    assert_eq!(erp.columns.get("note").map(String::as_str), Some("note"));
    assert_eq!(
        erp.columns.get("updated_at").map(String::as_str),
        Some("updated_at")
    );
    assert_eq!(erp.version_column.as_deref(), Some("harmony_version"));
    assert!(toml.contains("guard = \"value >= 0\""), "{toml}");
}
