//! What operators run against harmony, checked with their own tools: Prometheus' `promtool`
//! validates the alert rules (and their unit tests) and a live `/metrics` scrape of a worker on
//! the real stack, which must carry readiness and per-partition consumer lag.

use std::process::Command;
use std::time::Duration;

use crate::ingest::product;
use crate::product::{Product, GUARDED_SUM};
use crate::support::{
    self, http_get, psql, run_tool as run, unique, wait_until, Harmony, HarmonyOptions,
};

/// promtool, or `None` (skipped) when absent and not under `HARMONY_E2E=1`, where it must be.
fn promtool(test: &str) -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    assert!(
        !std::env::var("HARMONY_E2E").is_ok_and(|v| v == "1"),
        "{test}: promtool is missing (Debian package prometheus; scripts/test installs it)"
    );
    eprintln!("{test}: SKIPPED, no promtool");
    None
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool("alert rules") else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["check", "config", "prometheus.yml"],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let (ok, output) = run(promtool, args, dir, None);
        assert!(ok, "promtool {args:?}:\n{output}");
    }
}

#[test]
fn a_live_scrape_passes_promtool_and_shows_readiness_and_consumer_lag() {
    if !support::stack_available("operability") {
        return;
    }
    let Some(promtool) = promtool("live scrape") else {
        return;
    };
    let group = unique("e2e-ops");
    let mut options = HarmonyOptions::stack(group.clone());
    let targets = support::product_targets(&group, &["erp", "shop", "wms"], "");
    // A secret among the client settings (unused on this plaintext listener): the log shows the
    // settings, never it.
    options.extra_toml = format!(
        "{}{targets}\n[kafka.properties]\n\"ssl.key.password\" = \"hunter2-in-the-file\"\n",
        product()
    );
    let mut harmony = Harmony::start(&options).unwrap();
    psql(
        "erp",
        &format!(
            "INSERT INTO products (sku, name, price, quantity) VALUES ('{}', 'Gauge', 1.00, 1)",
            unique("OPS")
        ),
    )
    .unwrap();
    let address = harmony.http_address().unwrap();
    let scrape = || {
        http_get(&address, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    // librdkafka reports statistics every 5 s: both stages' groups show up with lag series.
    wait_until(
        Duration::from_secs(60),
        "lag series of both stages and readiness",
        || {
            let body = scrape();
            let lag = |group: &str, topic: &str| {
                body.lines().any(|l| {
                    l.starts_with(&format!("harmony_consumer_lag{{group=\"{group}\","))
                        && l.contains(&format!("topic=\"{topic}\""))
                })
            };
            Ok(body.contains("harmony_ready 1")
                && body.contains("harmony_producer_queue_messages{producer=\"shared\"}")
                && lag(&group, "erp.public.products")
                && lag(
                    &format!("{group}.resolve"),
                    &format!("harmony.{group}.changes"),
                ))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    let body = scrape();
    // Present from the start (at zero before the first dead letter, so that the first one shows
    // as an increase; the shared tables may hold a poison record another run left).
    assert!(
        body.contains(&format!(
            "harmony_dead_letter_records_total{{topic=\"{group}.dlq\"}} "
        )),
        "{body}"
    );
    let (ok, output) = run(promtool, &["check", "metrics"], ".", Some(&body));
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics:\n{output}\n{body}"
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
    let log = harmony.log();
    assert!(
        log.contains("ssl.key.password") && log.contains("<redacted>"),
        "the settings are logged, the secret redacted\n{log}"
    );
    assert!(!log.contains("hunter2"), "a secret in the log\n{log}");
}

/// Asserts the sum of `name`'s series labelled with `labels` in a scrape.
fn expect(body: &str, name: &str, labels: &[(&str, &str)], amount: f64) {
    assert_eq!(
        metric_sum(body, name, labels),
        amount,
        "{name} {labels:?}\n{body}"
    );
}

/// The sum of a metric's series whose labels include every `name="value"` of `labels`.
fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn erp_create(sku: &str, n: u64) -> String {
    format!(
        r#"{{"before":null,"after":{{"sku":"{sku}","name":"Widget","price":"10.00","quantity":5,"updated_at":"t{n}"}},"source":{{"connector":"postgresql","name":"erp","db":"erp","schema":"public","table":"products","ts_ms":{},"sequence":"[null,\"{}\"]"}},"op":"c","ts_ms":{}}}"#,
        1_700_000_000_000 + n,
        1_000 + n * 10,
        1_700_000_000_000 + n
    )
}

fn shop_create(sku: &str, n: u64) -> String {
    format!(
        r#"{{"before":null,"after":{{"item_sku":"{sku}","title":"Widget","price":"12.00","stock":5,"active":true,"updated_at":"s{n}"}},"source":{{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"items","ts_ms":{},"sequence":"[null,\"{}\"]"}},"op":"c","ts_ms":{}}}"#,
        1_700_000_100_000 + n,
        5_000 + n * 10,
        1_700_000_100_000 + n
    )
}

/// Known traffic through the real broker — N new products from the erp, D of them delivered
/// again (a connector restart's replay), C concurrent price writes from the shop, P records
/// no decoder can read — moves each counter by exactly its amount.
#[test]
fn known_traffic_moves_the_counters_by_exactly_its_amounts() {
    if !support::stack_available("operability") {
        return;
    }
    const N: u64 = 10;
    const D: usize = 3;
    const C: usize = 2;
    const P: usize = 2;
    let group = unique("e2e-count");
    let erp_topic = format!("{group}_erp.public.products");
    let shop_topic = format!("{group}_shop.public.items");
    support::create_topic(&erp_topic, 1).unwrap();
    support::create_topic(&shop_topic, 1).unwrap();
    let skus: Vec<String> = (0..N).map(|n| format!("{group}-{n}")).collect();
    let keys: Vec<String> = skus.iter().map(|s| format!(r#"{{"sku":"{s}"}}"#)).collect();
    let creates: Vec<String> = (0..N).map(|n| erp_create(&skus[n as usize], n)).collect();
    let mut erp: Vec<support::RawRecord<'_>> = creates
        .iter()
        .zip(&keys)
        .map(|(v, k)| (Some(k.as_bytes()), Some(v.as_bytes())))
        .collect();
    // The replay: the first D records again, same positions.
    erp.extend(erp[..D].to_vec());
    let poison = [b"not json at all".as_slice(), b"{\"op\":".as_slice()];
    erp.extend(poison.iter().map(|p| (Some(b"{}".as_slice()), Some(*p))));
    let shop_keys: Vec<String> = skus[..C]
        .iter()
        .map(|s| format!(r#"{{"item_sku":"{s}"}}"#))
        .collect();
    let shop_values: Vec<String> = (0..C as u64)
        .map(|n| shop_create(&skus[n as usize], n))
        .collect();
    let shop: Vec<support::RawRecord<'_>> = shop_keys
        .iter()
        .zip(&shop_values)
        .map(|(k, v)| (Some(k.as_bytes()), Some(v.as_bytes())))
        .collect();
    support::produce_raw(&erp_topic, &erp).unwrap();
    support::produce_raw(&shop_topic, &shop).unwrap();

    let mut options = HarmonyOptions::stack(group.clone());
    options.systems = vec![
        ("erp".into(), vec![erp_topic.clone()]),
        ("shop".into(), vec![shop_topic.clone()]),
    ];
    let targets = support::product_targets(&group, &["erp", "shop"], "");
    // Prices are settled by hand here: the concurrent writes stay pending.
    let product = Product::new()
        .field("quantity", GUARDED_SUM)
        .field("price", "strategy = \"manual\"")
        .source("erp", "products", &[])
        .source("shop", "items", &[("active", "active")]);
    options.extra_toml = format!("{}{targets}", product.toml());
    let mut harmony = Harmony::start(&options).unwrap();
    let address = harmony.http_address().unwrap();
    let scrape = || {
        http_get(&address, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let total = (N as usize + D + C) as f64;
    wait_until(
        Duration::from_secs(60),
        "every record change processed",
        || {
            let body = scrape();
            Ok(
                metric_sum(&body, "harmony_record_changes_total", &[]) >= total
                    && metric_sum(&body, "harmony_dead_letter_records_total", &[]) >= P as f64,
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", scrape(), harmony.log()));
    // Whatever else would arrive late arrives now.
    std::thread::sleep(Duration::from_secs(2));
    let body = scrape();
    let erp_c = [
        ("system", "erp"),
        ("topic", erp_topic.as_str()),
        ("op", "c"),
    ];
    expect(
        &body,
        "harmony_events_consumed_total",
        &erp_c,
        (N as usize + D) as f64,
    );
    expect(
        &body,
        "harmony_decode_failures_total",
        &[("topic", erp_topic.as_str())],
        P as f64,
    );
    expect(&body, "harmony_dead_letter_records_total", &[], P as f64);
    expect(&body, "harmony_record_changes_total", &[], total);
    expect(
        &body,
        "harmony_record_changes_total",
        &[
            ("entity", "product"),
            ("system", "erp"),
            ("outcome", "applied"),
        ],
        N as f64,
    );
    expect(
        &body,
        "harmony_duplicates_total",
        &[("system", "erp"), ("reason", "position")],
        D as f64,
    );
    expect(&body, "harmony_duplicates_total", &[], D as f64);
    expect(
        &body,
        "harmony_conflicts_total",
        &[
            ("entity", "product"),
            ("field", "price"),
            ("strategy", "manual"),
        ],
        C as f64,
    );
    expect(&body, "harmony_conflicts_total", &[], C as f64);
    expect(
        &body,
        "harmony_outputs_published_total",
        &[("topic", &format!("harmony.{group}.conflicts"))],
        C as f64,
    );
    // Every applied change published target records, each timed from its source commit.
    expect(
        &body,
        "harmony_end_to_end_latency_seconds_count",
        &[],
        (N as usize + C) as f64,
    );
    // The state gauges come from a scan each second: what they show once it has seen all.
    wait_until(Duration::from_secs(10), "the state scanned", || {
        Ok(metric_sum(&scrape(), "harmony_manual_conflicts_pending", &[]) >= C as f64)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    let body = scrape();
    expect(&body, "harmony_state_records", &[], N as f64);
    expect(
        &body,
        "harmony_manual_conflicts_pending",
        &[("entity", "product")],
        C as f64,
    );
    // No connector writes deliveries back here, so no target is ever seen applying one. The
    // shop was sent each product only the erp wrote; of the C both wrote, the manual conflict
    // held the price that arrived first, and the other system is sent it: one target out of
    // sync per record either way.
    expect(&body, "harmony_target_out_of_sync_records", &[], N as f64);
    assert!(
        metric_sum(
            &body,
            "harmony_target_out_of_sync_records",
            &[("target", "shop")]
        ) >= (N as usize - C) as f64,
        "{body}"
    );
    // Ages run from the source commits, which this traffic dates to 2023.
    let year = 365.0 * 24.0 * 3600.0;
    for (name, label) in [
        ("harmony_target_out_of_sync_age_seconds", ("target", "shop")),
        (
            "harmony_manual_conflicts_oldest_age_seconds",
            ("entity", "product"),
        ),
    ] {
        let age = body
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("{}=\"{}\"", label.0, label.1)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max);
        assert!(age > year, "{name}: {age}\n{body}");
    }
    assert!(
        metric_sum(&body, "harmony_state_bytes", &[]) > 0.0,
        "{body}"
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}

/// The Grafana dashboard: valid JSON, every panel placed and queried, every query valid PromQL
/// (`promtool check rules` on the queries as recording rules) and naming only metrics harmony
/// defines — a renamed metric cannot leave a panel silently empty.
#[test]
fn the_dashboard_queries_valid_promql_over_metrics_harmony_exports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text =
        std::fs::read_to_string(format!("{root}/deploy/grafana/harmony-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let telemetry = std::fs::read_to_string(format!("{root}/src/runtime/telemetry.rs")).unwrap();
    let defined = |name: &str| telemetry.contains(&format!("\"{name}\""));
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().unwrap() > 0,
            "{title}: not placed"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("harmony_"))
                .collect();
            assert!(
                !names.is_empty(),
                "{title}: {expr} queries no harmony metric"
            );
            for name in names {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| defined(b))
                    .unwrap_or(name);
                assert!(
                    defined(base),
                    "{title}: {name} is not a metric harmony defines"
                );
            }
            exprs.push(expr.to_owned());
        }
    }
    let Some(promtool) = promtool("dashboard") else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(unique("dashboard"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("queries.yml"), rules).unwrap();
    let (ok, output) = run(
        promtool,
        &["check", "rules", "queries.yml"],
        dir.to_str().unwrap(),
        None,
    );
    assert!(ok, "dashboard queries:\n{output}");
}
