//! The deployment files, checked with the tools that consume them (scripts/check-deploy):
//! the Kubernetes manifests strictly against the API's types and KEDA's CRD, their references
//! followed; docker-compose.yml against the Compose specification. And the check itself must
//! catch what it exists to catch.

use std::process::Command;
use std::sync::Mutex;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The script builds the checker into one path: one build at a time.
static CHECKER: Mutex<()> = Mutex::new(());

/// `scripts/check-deploy/run` with `args`, or `None` (skipped) without Go, unless under
/// `HARMONY_E2E=1`, where it must run.
fn check_deploy(args: &[&str]) -> Option<(bool, String)> {
    if Command::new("go").arg("version").output().is_err() {
        assert!(
            !std::env::var("HARMONY_E2E").is_ok_and(|v| v == "1"),
            "go is missing (scripts/test needs it for the manifest check)"
        );
        eprintln!("deploy checks: SKIPPED, no go");
        return None;
    }
    let _one = CHECKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(crate::support::run_tool(
        &format!("{ROOT}/scripts/check-deploy/run"),
        args,
        ROOT,
        None,
    ))
}

#[test]
fn kubernetes_manifests_and_the_compose_file_pass_their_schema_checks() {
    let Some((ok, output)) = check_deploy(&[]) else {
        return;
    };
    assert!(ok, "{output}");
    assert!(
        output.contains("ok: 6 objects and files checked"),
        "{output}"
    );
}

#[test]
fn the_check_refuses_unknown_fields_wrong_types_and_broken_references() {
    let dir = std::env::temp_dir().join(format!("harmony-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let edit = |file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/{file}")).unwrap();
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
    };
    edit(
        "statefulset.yaml",
        "              path: /health",
        "              path: /ready",
    );
    edit("service.yaml", "targetPort: metrics", "targetPort: http");
    edit(
        "scaledobject.yaml",
        "cooldownPeriod: 300",
        "cooldownPeriod: soon",
    );
    edit(
        "configmap.yaml",
        "group_id = \"harmony-inventory\"",
        "group_id = \"renamed\"",
    );
    edit(
        "poddisruptionbudget.yaml",
        "maxUnavailable: 1",
        "maxUnavailabel: 1",
    );
    let compose = dir.join("docker-compose.yml");
    std::fs::write(
        &compose,
        std::fs::read_to_string(format!("{ROOT}/docker-compose.yml"))
            .unwrap()
            .replacen("    image: prom/prometheus", "    imag: prom/prometheus", 1),
    )
    .unwrap();
    let dir_arg = dir.to_str().unwrap();
    let Some((ok, output)) = check_deploy(&[
        "-kubernetes",
        dir_arg,
        "-configmap-source",
        "harmony-config/harmony.toml=examples/inventory.toml",
    ]) else {
        return;
    };
    assert!(!ok, "{output}");
    for expected in [
        "unknown field \"maxUnavailabel\"",
        "container \"harmony\": liveness must probe /health, not /ready",
        "Service/harmony: port \"metrics\": target http is no port of StatefulSet/harmony",
        "at '/spec/cooldownPeriod': got string, want integer",
        "key \"harmony.toml\" differs from examples/inventory.toml",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let (ok, output) = check_deploy(&["-compose", compose.to_str().unwrap()]).unwrap();
    assert!(!ok, "{output}");
    assert!(output.contains("services.prometheus.imag"), "{output}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// docker-compose.yml and the native stack run the same Kafka, Debezium and schema registry.
#[test]
fn the_compose_images_match_the_native_stack_versions() {
    let compose = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    for (pom, property, image) in [
        ("kafka", "kafka.version", "apache/kafka:"),
        ("debezium", "debezium.version", "quay.io/debezium/connect:"),
        (
            "registry",
            "apicurio.version",
            "apicurio/apicurio-registry-mem:",
        ),
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/scripts/maven/{pom}/pom.xml")).unwrap();
        let open = format!("<{property}>");
        let version = text
            .split_once(&open)
            .and_then(|(_, rest)| rest.split_once('<'))
            .map(|(v, _)| v.trim())
            .unwrap_or_else(|| panic!("{pom}/pom.xml has no {property}"));
        assert!(
            compose.contains(&format!("image: {image}{version}\n")),
            "docker-compose.yml must run {image}{version}, as scripts/maven/{pom}/pom.xml"
        );
    }
}
