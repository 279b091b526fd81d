//! The shape of `src/`, checked (issue 15, ARCHITECTURE.md): one folder per layer — `model`
//! (the vocabulary), `config`, `ingest` (stage 1), `resolve` (stage 2), `runtime` (Kafka and
//! tokio). Imports (`crate::…` outside test code and comments) form no cycle among the layers
//! nor among the modules of one layer; `config` imports only the vocabulary; and only the
//! runtime names `rdkafka` or `tokio`. Needs no stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders under `src/`: each a layer, checked for cycles among its own modules too.
const LAYERS: &[&str] = &["config", "ingest", "model", "resolve", "runtime"];

/// What `config` may import: the vocabulary (ids, values) — no stage, no Kafka.
const CONFIG_MAY_IMPORT: &[&str] = &["model"];

/// Top-level modules that name `rdkafka` or `tokio` (`main` aside).
const KNOWN_ON_RUNTIME: &[&str] = &["runtime"];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The modules directly under `src/<folder>` (`src/` itself for `""`), each with the code of
/// its files up to their test modules, comments left out: what tests import is no part of the
/// architecture. A folder's `mod.rs` only declares its modules.
fn modules(folder: &str) -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = src.join(folder);
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut text_of: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        let name = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let test_code = relative
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs");
        if test_code || name == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        // Comments (a doc link included) import nothing.
        let entry = text_of.entry(name).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    text_of
}

/// Which of `modules` (under `src/<folder>`) each imports, by `crate::<folder>::<module>`.
fn imports<'m>(
    folder: &str,
    modules: &'m BTreeMap<String, String>,
) -> BTreeMap<&'m str, BTreeSet<&'m str>> {
    let prefix = if folder.is_empty() {
        "crate::".to_owned()
    } else {
        format!("crate::{folder}::")
    };
    modules
        .iter()
        .map(|(name, text)| {
            let used = text
                .match_indices(&prefix)
                .filter_map(|(at, _)| {
                    let rest = &text[at + prefix.len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let target = &rest[..end];
                    modules
                        .get_key_value(target)
                        .map(|(k, _)| k.as_str())
                        .filter(|k| k != name)
                })
                .collect();
            (name.as_str(), used)
        })
        .collect()
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles<'m>(graph: &BTreeMap<&'m str, BTreeSet<&'m str>>) -> Vec<Vec<&'m str>> {
    struct Walk<'g, 'm> {
        graph: &'g BTreeMap<&'m str, BTreeSet<&'m str>>,
        index: BTreeMap<&'m str, usize>,
        low: BTreeMap<&'m str, usize>,
        stack: Vec<&'m str>,
        found: Vec<Vec<&'m str>>,
    }
    impl<'m> Walk<'_, 'm> {
        fn visit(&mut self, node: &'m str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for &next in self.graph.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

#[test]
fn modules_import_one_another_without_a_cycle() {
    for folder in std::iter::once("").chain(LAYERS.iter().copied()) {
        let modules = modules(folder);
        let graph = imports(folder, &modules);
        let found = cycles(&graph);
        assert!(
            found.is_empty(),
            "import cycles among the modules of src/{folder}: {found:?}. Imports: {graph:#?}"
        );
    }
}

#[test]
fn the_layers_are_the_folders_and_config_imports_only_the_vocabulary() {
    let modules = modules("");
    let mut top: Vec<&str> = modules.keys().map(String::as_str).collect();
    top.retain(|m| *m != "lib" && *m != "main");
    assert_eq!(
        top, LAYERS,
        "src/ holds the layers' folders, lib.rs and main.rs"
    );
    let graph = imports("", &modules);
    let beyond: Vec<&str> = graph["config"]
        .iter()
        .copied()
        .filter(|m| !CONFIG_MAY_IMPORT.contains(m))
        .collect();
    assert!(beyond.is_empty(), "config imports {beyond:?}");
}

/// Whether code names the `rdkafka` or `tokio` crate (not a word like `librdkafka`).
fn names_runtime(code: &str) -> bool {
    ["rdkafka", "tokio"].iter().any(|krate| {
        code.match_indices(krate).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = &code[at + krate.len()..];
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && (after.starts_with("::") || after.starts_with(';'))
        })
    })
}

#[test]
fn only_the_known_modules_name_rdkafka_or_tokio() {
    let modules = modules("");
    let on_runtime: Vec<&str> = modules
        .iter()
        .filter(|(name, text)| name.as_str() != "main" && names_runtime(text))
        .map(|(name, _)| name.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        on_runtime, KNOWN_ON_RUNTIME,
        "modules naming rdkafka or tokio changed; a new one pulls the runtime into pure code, \
         one that no longer does goes off KNOWN_ON_RUNTIME"
    );
}

/// The checker finds a cycle where there is one, and none where there is none.
#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<&str, BTreeSet<&str>> = [
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c"])),
        ("c", BTreeSet::from(["a"])),
        ("d", BTreeSet::from(["a"])),
        ("e", BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    assert!(names_runtime("use rdkafka::ClientConfig;"));
    assert!(names_runtime("    tokio::spawn(work);"));
    assert!(!names_runtime("librdkafka properties are strings"));
    let acyclic: BTreeMap<&str, BTreeSet<&str>> =
        [("a", BTreeSet::from(["b"])), ("b", BTreeSet::new())]
            .into_iter()
            .collect();
    assert!(cycles(&acyclic).is_empty());
}
