//! The crate's modules import only downward: this test reads every file of `src/`, derives
//! the module import graph from its paths (`use` trees, and `crate::`, `super::` and
//! `self::` paths anywhere in the code, unit tests included), and fails on an edge that runs
//! up or sideways between the layers below, on a cycle, on a module importing through one
//! of its parents (items are named where they are defined), and on a module no layer names.
//!
//! The layers, bottom first (a module may import from a lower layer, and within `wire` or
//! `net` from another module of the same layer, as long as no cycle forms):
//!
//! | layer    | modules                         | what it is                                  |
//! |----------|---------------------------------|---------------------------------------------|
//! | bottom   | `error`, `types`, `backoff`     | `KafkaError`; `Partition`, `Offset`, ...    |
//! | wire     | `wire::*`                       | batches in and out, codecs, partitioner     |
//! | net      | `net::*`                        | TLS, SASL, the connection to one broker     |
//! | cluster  | `cluster`                       | bootstrap, metadata, a connection per broker|
//! | settings | `settings`                      | what a consumer, producer or admin is told  |
//! | roles    | `fetch`, `group`, `producer`, `admin` | the client roles                      |
//! | facade   | `consumer`                      | the consumer the caller drives              |
//!
//! `lib.rs` sits on top (it re-exports); `src/bin/` holds programs on the public API only.
//! The check is textual (no macro expansion), which is enough for this code: paths to other
//! modules are written out, never built by macros.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first; a module belongs to the first layer with a prefix it matches.
const LAYERS: &[(&str, &[&str])] = &[
    ("bottom", &["error", "types", "backoff"]),
    ("wire", &["wire"]),
    ("net", &["net"]),
    ("cluster", &["cluster"]),
    ("settings", &["settings"]),
    ("roles", &["fetch", "group", "producer", "admin"]),
    ("facade", &["consumer"]),
];

#[test]
fn modules_import_only_downward_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::read(&src);
    let mut problems = Vec::new();

    for module in &graph.modules {
        if !module.is_empty() && layer_of(module).is_none() {
            problems.push(format!(
                "module {module} is in no layer: add it to LAYERS in tests/layers.rs"
            ));
        }
    }
    for ((from, to), sites) in &graph.edges {
        let site = &sites[0];
        if from.is_empty() {
            continue; // lib.rs: the top, re-exporting
        }
        if is_ancestor(to, from) {
            problems.push(format!(
                "{from} imports {} through its parent module {} ({site}): name it in the module that defines it",
                path_text(site),
                display(to)
            ));
            continue;
        }
        let (Some((fl, fi)), Some((tl, ti))) = (layer_of(from), layer_of(to)) else {
            continue; // reported above
        };
        let same_family = first_segment(from) == first_segment(to);
        if ti > fi || (ti == fi && !same_family) {
            problems.push(format!(
                "{from} ({fl}) imports {to} ({tl}): an upward or sideways edge ({site})"
            ));
        }
    }
    for cycle in graph.cycles() {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }

    for ((from, to), sites) in &graph.edges {
        eprintln!(
            "{} -> {}   ({} places)",
            display(from),
            display(to),
            sites.len()
        );
    }
    assert!(
        problems.is_empty(),
        "the module graph of blocking-kafka breaks its layers:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        graph.edges.len() > 20,
        "only {} edges found: is the parser still reading the files?",
        graph.edges.len()
    );
}

#[test]
fn the_checker_sees_use_trees_inline_paths_and_test_modules() {
    // The parser itself, on a made-up file: what it must find and what it must not.
    let modules: BTreeSet<String> = ["", "a", "a::b", "a::c", "d"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    let code = r#"
        //! A doc comment naming crate::d::X is not an edge.
        use super::{c::Thing, b as bee};
        use crate::d;
        use std::fmt;
        fn f() -> u32 {
            let s = "crate::d::in_a_string";
            let c = '{';
            crate::d::call::<'static>(s, c)
        }
        #[cfg(test)]
        mod tests {
            use super::*;
            use super::super::c::Other;
        }
    "#;
    let mut found = BTreeSet::new();
    for (to, _) in references("a::b", code, &modules) {
        found.insert(to);
    }
    let expected: BTreeSet<String> = ["a::c", "a::b", "d"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    assert_eq!(found, expected);
}

/// Every module and every edge between two modules, with where each edge is written.
struct Graph {
    modules: BTreeSet<String>,
    /// (from, to) -> "file: path" of each place.
    edges: BTreeMap<(String, String), Vec<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut files = Vec::new();
        collect(src, &mut files);
        let mut by_module = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(src).expect("under src");
            if rel.starts_with("bin") {
                continue; // programs of their own, on the public API
            }
            by_module.insert(module_of(rel), file);
        }
        let modules: BTreeSet<String> = by_module.keys().cloned().collect();
        let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (module, file) in &by_module {
            let code = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let rel = file.strip_prefix(src).expect("under src").display();
            for (to, path) in references(module, &code, &modules) {
                if &to != module {
                    edges
                        .entry((module.clone(), to))
                        .or_default()
                        .push(format!("src/{rel}: {path}"));
                }
            }
        }
        Graph { modules, edges }
    }

    /// Each cycle found by a depth-first search (each reported once, from its first module).
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            next.entry(from).or_default().push(to);
        }
        let mut cycles = Vec::new();
        let mut done = BTreeSet::new();
        for start in &self.modules {
            let mut stack = vec![start.as_str()];
            walk(start, &next, &mut stack, &mut done, &mut cycles);
        }
        cycles
    }
}

fn walk<'a>(
    at: &'a str,
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    cycles: &mut Vec<Vec<String>>,
) {
    if done.contains(at) {
        return;
    }
    for &to in next.get(at).map(Vec::as_slice).unwrap_or_default() {
        if let Some(i) = stack.iter().position(|m| *m == to) {
            let mut cycle: Vec<String> = stack[i..].iter().map(|m| display(m)).collect();
            cycle.push(display(to));
            cycles.push(cycle);
        } else {
            stack.push(to);
            walk(to, next, stack, done, cycles);
            stack.pop();
        }
    }
    done.insert(at);
}

/// The modules `code` (the file of `module`) refers to, each with the path as written.
fn references(module: &str, code: &str, modules: &BTreeSet<String>) -> Vec<(String, String)> {
    let tokens = tokens(&strip(code));
    let mut out = Vec::new();
    // Inline modules (`mod tests { ... }`): their names and the brace depth they close at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let scope = scope_of(module, &inline);
        match tokens[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            "use" => {
                let end = tokens[i..]
                    .iter()
                    .position(|t| t == ";")
                    .map_or(tokens.len(), |p| i + p);
                let mut paths = Vec::new();
                expand(&tokens[i + 1..end], Vec::new(), &mut paths);
                for path in paths {
                    if let Some(to) = resolve(&scope, &path, modules) {
                        out.push((to, path.join("::")));
                    }
                }
                i = end;
                continue;
            }
            "crate" | "super" | "self" if tokens.get(i + 1).is_some_and(|t| t == "::") => {
                let mut path = vec![tokens[i].clone()];
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|t| t == "::")
                    && tokens.get(j + 1).is_some_and(|t| is_ident(t))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                if let Some(to) = resolve(&scope, &path, modules) {
                    out.push((to, path.join("::")));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The module path a position in the file of `module` is in, inline modules included.
fn scope_of(module: &str, inline: &[(String, usize)]) -> Vec<String> {
    let mut scope: Vec<String> = segments(module);
    scope.extend(inline.iter().map(|(name, _)| name.clone()));
    scope
}

/// The file module a path from `scope` lands in: the longest module prefix of the
/// absolute path, or `None` for other crates (and `std`).
fn resolve(scope: &[String], path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut absolute: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") | Some("super") => {
            absolute = scope.to_vec();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        absolute.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        // A path starting with a child module of this one (uniform paths), else a crate.
        Some(first) => {
            let mut child = scope.to_vec();
            child.push(first.to_owned());
            if !modules.contains(&child.join("::")) {
                return None;
            }
            absolute = scope.to_vec();
        }
        None => return None,
    }
    absolute.extend(rest.iter().cloned());
    // The longest prefix that is a file module; inline modules belong to their file.
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Expands a use tree (the tokens between `use` and `;`) into its paths; `*` and `self`
/// name the module they follow.
fn expand(tree: &[String], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut i = 0;
    while i < tree.len() {
        match tree[i].as_str() {
            "::" => {}
            "{" => {
                // Split the group at top-level commas.
                let mut depth = 0;
                let mut start = i + 1;
                for j in i + 1..tree.len() {
                    match tree[j].as_str() {
                        "{" => depth += 1,
                        "}" if depth == 0 => {
                            expand(&tree[start..j], path.clone(), out);
                            return;
                        }
                        "}" => depth -= 1,
                        "," if depth == 0 => {
                            expand(&tree[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            "as" => break,
            "*" => break,
            "self" if !path.is_empty() => break,
            t if is_ident(t) => path.push(t.to_owned()),
            _ => {}
        }
        i += 1;
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The code with comments, string literals and char literals blanked out (lifetimes kept).
fn strip(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && is_raw_string(&chars, i) {
            // r"..." or r#"..."#: ends at the quote followed by as many hashes.
            let mut hashes = 0;
            i += 1;
            while chars.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let close = if next == Some('\\') {
                (i + 2..chars.len()).find(|&k| chars[k] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    out.push_str("' '");
                    i = k + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_raw_string(chars: &[char], i: usize) -> bool {
    let before_ok = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    let mut k = i + 1;
    while chars.get(k) == Some(&'#') {
        k += 1;
    }
    before_ok && chars.get(k) == Some(&'"')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `lib.rs` -> "", `a.rs` and `a/mod.rs` -> "a", `a/b.rs` -> "a::b".
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts.join("::")
}

fn layer_of(module: &str) -> Option<(&'static str, usize)> {
    let first = first_segment(module);
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, prefixes))| prefixes.contains(&first))
        .map(|(i, (name, _))| (*name, i))
}

fn first_segment(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

fn segments(module: &str) -> Vec<String> {
    if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    }
}

/// Whether `a` is a proper ancestor of `b` ("" is everyone's).
fn is_ancestor(a: &str, b: &str) -> bool {
    a != b && (a.is_empty() || b.starts_with(&format!("{a}::")))
}

fn path_text(site: &str) -> &str {
    site.rsplit(": ").next().unwrap_or(site)
}

fn display(module: &str) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.to_owned()
    }
}
