//! The library's files and folders import each other without circles: reading `src/` from the
//! bottom up (nn, then moe and altup, then model, then train) never needs a later part.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`moe::parallel::tape`) of every file under `src/`, with its code (unit tests
/// excluded).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
            parts.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        out.insert(parts.join("::"), text.split("#[cfg(test)]").next().unwrap_or("").to_string());
    }
    out
}

/// `from → to` edges of `use crate::…` lines, at the level `key` maps module paths to.
fn edges(modules: &BTreeMap<String, String>, key: impl Fn(&str) -> String) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in modules {
        let from = key(module);
        let uses = code
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("use crate::") || l.starts_with("pub use crate::"));
        for line in uses {
            let path = line.split("crate::").nth(1).unwrap_or("");
            let segments: Vec<&str> =
                path.split("::").take_while(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_')).collect();
            // The longest prefix that names a module.
            let target = (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains_key(m));
            if let Some(target) = target {
                let to = key(&target);
                if to != from && !to.is_empty() {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, if any.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn files_and_folders_import_each_other_without_circles() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let files = edges(&modules, |m| m.to_string());
    assert_eq!(cycle(&files), None, "files import each other in a circle");
    // Folders: `moe::parallel::tape` belongs to `moe`; files at the top (`error`, `host`) are
    // their own node.
    let folders = edges(&modules, |m| m.split("::").next().unwrap_or("").to_string());
    assert_eq!(cycle(&folders), None, "folders import each other in a circle");
    // The check sees circles where there are some.
    let mut broken = files.clone();
    broken.entry("nn::norm".into()).or_default().insert("model::stack".into());
    broken.entry("model::stack".into()).or_default().insert("nn::norm".into());
    assert!(cycle(&broken).is_some());
}
