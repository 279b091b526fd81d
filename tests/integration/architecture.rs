//! The shape of `src/`, checked (issue 15): which top-level modules import which (`crate::…`
//! outside test code and comments): no cycle among them, and `config` on nothing but the
//! vocabulary; and which modules name `rdkafka` or `tokio`, a ratchet holding exactly today's,
//! so that a new one fails here, and so does one that went away until the list says so too.
//! Needs no stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `config` may import: the vocabulary (ids, values) and the guard language it checks
/// expressions of — no stage, no Kafka.
const CONFIG_MAY_IMPORT: &[&str] = &["clock", "guard", "value"];

/// Top-level modules that name `rdkafka` or `tokio` (`main` aside).
const KNOWN_ON_RUNTIME: &[&str] = &["http", "kafka", "settle", "worker"];

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

/// The module a file belongs to at the top of the crate (`engine` for `src/engine/state.rs`),
/// and its code up to its test module, comments left out: what tests import is no part of the
/// architecture.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut text_of: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        // Comments (a doc link included) import nothing.
        let entry = text_of.entry(top).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    text_of
}

fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    modules
        .iter()
        .map(|(name, text)| {
            let used = text
                .match_indices("crate::")
                .filter_map(|(at, _)| {
                    let rest = &text[at + "crate::".len()..];
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
fn the_top_level_modules_import_one_another_without_a_cycle() {
    let modules = modules();
    let graph = imports(&modules);
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles among src/'s top-level modules: {found:?}. Imports: {graph:#?}"
    );
}

#[test]
fn config_imports_no_stage_and_no_kafka() {
    let modules = modules();
    let graph = imports(&modules);
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
    let modules = modules();
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
