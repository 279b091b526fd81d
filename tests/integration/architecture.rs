//! The shape of `src/`, checked (issue 15): which top-level modules import which (`crate::…`
//! outside test code), the cycles among them, and which modules name `rdkafka` or `tokio`.
//! Both lists are ratchets: they hold exactly what is there today, so a new cycle or a new
//! module on Kafka fails here, and so does one that went away until the list says so too.
//! The restructuring shrinks them to none and to the runtime alone. Needs no stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles among top-level modules, each as its members in name order.
const KNOWN_CYCLES: &[&[&str]] = &[
    &[
        "config",
        "engine",
        "guard",
        "internal",
        "kafka",
        "mapping",
        "resolution",
    ],
    &["resolver", "target"],
];

/// Top-level modules that name `rdkafka` or `tokio` (`main` aside).
const KNOWN_ON_RUNTIME: &[&str] = &["config", "http", "kafka", "settle", "telemetry", "worker"];

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
fn the_import_cycles_are_exactly_the_known_ones() {
    let modules = modules();
    let graph = imports(&modules);
    let found = cycles(&graph);
    let known: Vec<Vec<&str>> = KNOWN_CYCLES.iter().map(|c| c.to_vec()).collect();
    assert_eq!(
        found, known,
        "import cycles among src/'s top-level modules changed; a new one is a layering \
         mistake, a broken one goes off KNOWN_CYCLES. Imports: {graph:#?}"
    );
}

#[test]
fn only_the_known_modules_name_rdkafka_or_tokio() {
    let modules = modules();
    let on_runtime: Vec<&str> = modules
        .iter()
        .filter(|(name, text)| {
            name.as_str() != "main" && (text.contains("rdkafka") || text.contains("tokio"))
        })
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
    let acyclic: BTreeMap<&str, BTreeSet<&str>> =
        [("a", BTreeSet::from(["b"])), ("b", BTreeSet::new())]
            .into_iter()
            .collect();
    assert!(cycles(&acyclic).is_empty());
}
