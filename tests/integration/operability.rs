//! What operators run against harmony, checked with their own tools: Prometheus' `promtool`
//! validates the alert rules (and their unit tests) and a live `/metrics` scrape of a worker on
//! the real stack, which must carry readiness and per-partition consumer lag.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ingest::PRODUCT;
use crate::support::{self, http_get, psql, unique, wait_until, Harmony, HarmonyOptions};

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

fn run(program: &str, args: &[&str], dir: &str, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
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
    options.extra_toml = format!("{PRODUCT}{targets}");
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
                && lag(&group, "erp.public.products")
                && lag(
                    &format!("{group}.resolve"),
                    &format!("harmony.{group}.changes"),
                ))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    let body = scrape();
    let (ok, output) = run(promtool, &["check", "metrics"], ".", Some(&body));
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics:\n{output}\n{body}"
    );
    assert!(harmony
        .terminate(Duration::from_secs(30))
        .unwrap()
        .success());
}
