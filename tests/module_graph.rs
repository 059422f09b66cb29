//! The library's files and folders import each other without circles: reading `src/` from the
//! bottom up (see docs/architecture.md, "Floors") never needs a later part.
//!
//! An import names an item by one of its public paths, which is often a folder's façade
//! (`crate::moe::ExpertBackend`, re-exported by `moe/mod.rs`). The check follows such names to the
//! file that defines the item (`moe/kernel.rs`), so a circle between two files of one folder cannot
//! hide behind their folder's re-exports. Re-exports (`pub use`) are declarations, not imports;
//! paths written inline in code (`crate::runtime::is_deterministic()`) are imports too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`moe::parallel::tape`) of every file under `src`, with its code: unit tests and
/// comments removed.
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
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: Vec<&str> = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
        out.insert(parts.join("::"), code.join("\n"));
    }
    out
}

/// The `use` statements of `code` (multi-line ones joined), each with whether it is a
/// re-export (`pub use`, `pub(crate) use`): `("crate::moe::{A, b::C}", false)`.
fn use_statements(code: &str) -> Vec<(String, bool)> {
    use_spans(code).into_iter().map(|(range, reexport)| (normalize(&code[range]), reexport)).collect()
}

/// Byte ranges of the paths of `code`'s `use` statements, with whether each is a re-export.
fn use_spans(code: &str) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("use ").map(|i| at + i) {
        let before = &code[..i];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        let prefix = before[line_start..].trim();
        let word_start = before.chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let end = code[i..].find(';').map_or(code.len(), |e| i + e);
        if word_start && (prefix.is_empty() || prefix.starts_with("pub")) {
            out.push((i + 4..end, prefix.starts_with("pub")));
            at = end;
        } else {
            at = i + 4;
        }
    }
    out
}

/// A use path with single spaces only where words meet (`a::{B, C as D}` → `a::{B,C as D}`).
fn normalize(path: &str) -> String {
    let words: Vec<&str> = path.split_whitespace().collect();
    let mut out = String::new();
    for w in words {
        let joins = out.ends_with(|c: char| c.is_alphanumeric() || c == '_')
            && w.starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if joins {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// Expands the braces of a use path: `a::{B, c::{D, E}}` → `a::B`, `a::c::D`, `a::c::E`
/// (`x as y` keeps `x`; `self` names the module before it).
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        let path = path.split(" as ").next().unwrap_or(path);
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let (head, body) = (&path[..open], &path[open + 1..path.rfind('}').unwrap_or(path.len())]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| expand(&format!("{head}{p}"))).collect()
}

/// Where a path points: the module it names, and the item named inside it (if any).
type Target = (String, Option<String>);

struct Graph<'a> {
    modules: &'a BTreeMap<String, String>,
}

impl Graph<'_> {
    /// The absolute segments of `path` as written in `module` (`crate::`, `super::`, `self::` or
    /// a child module); `None` for paths into other crates.
    fn absolute(&self, module: &str, path: &str) -> Option<Vec<String>> {
        let mut segments: Vec<String> = path.split("::").map(str::to_string).collect();
        let mut base: Vec<String> =
            if module.is_empty() { Vec::new() } else { module.split("::").map(str::to_string).collect() };
        match segments.first().map(String::as_str) {
            Some("crate") => return Some(segments.split_off(1)),
            Some("self") => {
                segments.remove(0);
            }
            Some("super") => {
                while segments.first().is_some_and(|s| s == "super") {
                    segments.remove(0);
                    base.pop();
                }
            }
            Some(first) => {
                let child = if module.is_empty() { first.to_string() } else { format!("{module}::{first}") };
                if !self.modules.contains_key(&child) {
                    return None; // another crate (std, tch, serde, ...)
                }
            }
            None => return None,
        }
        base.extend(segments);
        Some(base)
    }

    /// The module a path names (its longest module prefix) and the item after it.
    fn split(&self, segments: &[String]) -> Option<Target> {
        (0..=segments.len()).rev().find_map(|n| {
            let module = segments[..n].join("::");
            self.modules.contains_key(&module).then(|| (module, segments.get(n).cloned()))
        })
    }

    /// The file that defines what `target` names: an item re-exported by a façade is followed to
    /// where it comes from (through any number of façades).
    fn resolve(&self, target: Target, seen: &mut BTreeSet<Target>) -> String {
        let (module, item) = target.clone();
        let Some(item) = item else { return module };
        if !seen.insert(target) {
            return module;
        }
        let code = &self.modules[&module];
        for (path, reexport) in use_statements(code) {
            if !reexport {
                continue;
            }
            for full in expand(&path) {
                let name = full.rsplit("::").next().unwrap_or("");
                let alias = path_alias(&path, name);
                if alias != item {
                    continue;
                }
                if let Some(next) = self.absolute(&module, &full).and_then(|s| self.split(&s)) {
                    return self.resolve(next, seen);
                }
            }
        }
        module
    }

    /// `from → to` edges between files: every plain `use` and every inline `crate::` path,
    /// resolved to the defining file.
    fn file_edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, code) in self.modules {
            let mut paths: Vec<String> = use_statements(code)
                .into_iter()
                .filter(|(_, reexport)| !reexport)
                .flat_map(|(path, _)| expand(&path))
                .collect();
            paths.extend(inline_paths(code));
            for path in paths {
                let Some(target) = self.absolute(module, &path).and_then(|s| self.split(&s)) else { continue };
                let to = self.resolve(target, &mut BTreeSet::new());
                if to != *module && !to.is_empty() {
                    graph.entry(module.clone()).or_default().insert(to);
                }
            }
        }
        graph
    }
}

/// The name a re-export gives `name` (`pub use x::A as B` gives `B`).
fn path_alias(statement: &str, name: &str) -> String {
    let pattern = format!("{name} as ");
    match statement.find(&pattern) {
        Some(i) => statement[i + pattern.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect(),
        None => name.to_string(),
    }
}

/// `crate::a::b::Item` paths written in code outside `use` statements.
fn inline_paths(code: &str) -> Vec<String> {
    let mut code = code.to_string();
    for (range, _) in use_spans(&code).into_iter().rev() {
        code.replace_range(range, "");
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let path: String = rest[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(path.trim_end_matches(':').to_string());
        rest = &rest[i + 7..];
    }
    out
}

/// Folder-level edges: `moe::parallel::tape` belongs to `moe`; files at the top (`error`, `host`)
/// are their own node.
fn folder_edges(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in files {
        for to in tos {
            if top(from) != top(to) {
                graph.entry(top(from)).or_default().insert(top(to));
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

fn graphs(src: &Path) -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, BTreeSet<String>>) {
    let modules = modules(src);
    let files = Graph { modules: &modules }.file_edges();
    let folders = folder_edges(&files);
    (files, folders)
}

#[test]
fn files_and_folders_import_each_other_without_circles() {
    let (files, folders) = graphs(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert_eq!(cycle(&files), None, "files import each other in a circle");
    assert_eq!(cycle(&folders), None, "folders import each other in a circle");
    // The check sees real edges: a few the crate is known to have.
    for (from, to) in [("moe::experts", "moe::kernel"), ("model::block", "moe::layer")] {
        assert!(files.get(from).is_some_and(|t| t.contains(to)), "missing edge {from} → {to}");
    }
}

/// A crate whose two files import each other's items only through their folder's façade
/// (`use crate::shapes::Circle`): the check must see the circle behind it.
#[test]
fn a_circle_through_a_facade_is_found() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/facade_circle/src");
    let (files, folders) = graphs(&fixture);
    let found = cycle(&files).expect("the circle between shapes::circle and shapes::square");
    assert!(
        found.contains(&"shapes::circle".to_string()) && found.contains(&"shapes::square".to_string()),
        "{found:?}"
    );
    assert_eq!(cycle(&folders), None, "one folder: no circle between folders");
    // Façade names resolve to the defining file, nested braces and `super::` included.
    let modules = modules(&fixture);
    let graph = Graph { modules: &modules };
    let target = graph.split(&graph.absolute("render", "crate::shapes::Square").unwrap()).unwrap();
    assert_eq!(graph.resolve(target, &mut BTreeSet::new()), "shapes::square");
    assert!(files["render"].contains("shapes::circle") && files["render"].contains("util"), "{:?}", files["render"]);
    assert!(files["shapes::square"].contains("util"), "inline crate:: paths count: {:?}", files["shapes::square"]);
}

#[test]
fn use_statements_expand_into_paths() {
    let code = "use crate::a::{B, c::{D, E as F}};\npub use x::Y;\nlet reuse = 1;\nuse std::fmt;";
    let uses = use_statements(code);
    assert_eq!(
        uses,
        vec![("crate::a::{B,c::{D,E as F}}".to_string(), false), ("x::Y".into(), true), ("std::fmt".into(), false)]
    );
    assert_eq!(expand(&uses[0].0), vec!["crate::a::B", "crate::a::c::D", "crate::a::c::E"]);
    assert_eq!(path_alias(&uses[0].0, "E"), "F");
}
