//! The layering of `docs/architecture.md`, checked against the code: every `crate::` path (and
//! the binary's `canary_lb::` paths) under `src/` must be an edge the document's `imports`
//! block allows, and the "nevers" hold (no I/O in `routing` and `model`, Redis key names only
//! in `store`, `process::exit` only in `main.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";

/// The allowed edges: module -> modules it may use.
struct Graph {
    allowed: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn parse(doc: &str) -> Graph {
        let block = doc
            .split("```imports")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("{DOC} has no ```imports block"));
        let mut allowed = BTreeMap::new();
        for (n, line) in block.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (from, to) = line
                .split_once("->")
                .unwrap_or_else(|| panic!("{DOC}, imports line {n}: `{line}` has no `->`"));
            let targets = to.split_whitespace().map(str::to_string).collect();
            assert!(
                allowed.insert(from.trim().to_string(), targets).is_none(),
                "{DOC}: module `{}` listed twice",
                from.trim()
            );
        }
        for targets in allowed.values() {
            for t in targets {
                assert!(
                    allowed.contains_key(t),
                    "{DOC}: `{t}` is used as a target but has no line of its own"
                );
            }
        }
        Graph { allowed }
    }

    /// The node a module path (`pool::health`, `config::schema`) belongs to: the longest
    /// listed prefix.
    fn node(&self, path: &[&str]) -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|p| self.allowed.contains_key(p))
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

/// `src/pool/health.rs` -> `["pool", "health"]`, `src/pool/mod.rs` -> `["pool"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Code without comments: line comments and doc comments are dropped, so prose that names a
/// module does not count as an import. (Block comments are not used in this crate.)
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let code = match line.find("//") {
                // A `//` inside a string literal (a URL) is rare in paths we scan; keep it
                // simple and cut there: a `crate::` after it in the same line is prose.
                Some(at) => &line[..at],
                None => line,
            };
            (i + 1, code.to_string())
        })
        .collect()
}

/// The first segments of every path that starts with `root::` in `code`, expanding one level
/// of `root::{a::x, b}` groups: `["a::x", "b"]` -> modules `a`, `b` (with sub-module `a::x`).
fn crate_paths(code: &str, root: &str) -> Vec<Vec<String>> {
    let needle = format!("{root}::");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().last();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let segs = path_segments(item.trim());
                if !segs.is_empty() {
                    found.push(segs);
                }
            }
        } else {
            let segs = path_segments(rest);
            if !segs.is_empty() {
                found.push(segs);
            }
        }
    }
    found
}

/// Leading `a::b::c` identifiers of `s` (lower-case ones only: modules, not types).
fn path_segments(s: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let ident = &rest[..end];
        if ident.is_empty() || !ident.starts_with(|c: char| c.is_ascii_lowercase()) {
            break;
        }
        segs.push(ident.to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    segs
}

#[test]
fn every_crate_import_is_an_edge_the_architecture_document_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join(DOC)).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let graph = Graph::parse(&doc);
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);

    let mut violations = Vec::new();
    let mut edges_seen = 0;
    for file in &files {
        let modpath = module_path(&src, file);
        if modpath == ["lib"] {
            continue;
        }
        let refs: Vec<&str> = modpath.iter().map(String::as_str).collect();
        let Some(from) = graph.node(&refs) else {
            violations.push(format!(
                "{}: module `{}` is not listed in {DOC}",
                file.display(),
                modpath.join("::")
            ));
            continue;
        };
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let root_name = if from == "main" { "canary_lb" } else { "crate" };
        for (line_no, code) in code_lines(&text) {
            for path in crate_paths(&code, root_name) {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                let Some(to) = graph.node(&refs) else {
                    violations.push(format!(
                        "{}:{line_no}: `{}` is not a module listed in {DOC}",
                        file.display(),
                        path.join("::")
                    ));
                    continue;
                };
                if to == from {
                    continue;
                }
                edges_seen += 1;
                if !graph.allowed[&from].contains(&to) {
                    violations.push(format!(
                        "{}:{line_no}: {from} -> {to} is not allowed by {DOC}",
                        file.display()
                    ));
                }
            }
        }
    }
    // The scan must see the crate's real imports, or this test proves nothing.
    assert!(edges_seen > 50, "only {edges_seen} crate imports found");
    assert!(
        violations.is_empty(),
        "imports against {DOC}:\n{}",
        violations.join("\n")
    );
}

fn files_under(rel: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(rel);
    if path.is_file() {
        return vec![path];
    }
    let mut out = Vec::new();
    rust_files(&path, &mut out);
    out
}

fn offending_lines(files: &[PathBuf], patterns: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line_no, code) in code_lines(&text) {
            for p in patterns {
                if code.contains(p) {
                    found.push(format!("{}:{line_no}: `{p}`", file.display()));
                }
            }
        }
    }
    found
}

#[test]
fn routing_and_model_do_no_io() {
    let mut files = files_under("src/routing");
    files.extend(files_under("src/model.rs"));
    files.extend(files_under("src/rollout/judge.rs"));
    files.extend(files_under("src/rollout/machine.rs"));
    files.extend(files_under("src/rollout/paired.rs"));
    files.extend(files_under("src/rollout/settings.rs"));
    files.extend(files_under("src/rollout/shadow.rs"));
    assert!(files.len() >= 4);
    let io = [
        "std::fs",
        "std::env",
        "std::net::Tcp",
        "std::net::Udp",
        "tokio::",
        "redis::",
        "std::process",
    ];
    let found = offending_lines(&files, &io);
    assert!(
        found.is_empty(),
        "I/O in a pure module:\n{}",
        found.join("\n")
    );
}

/// Lines whose string literals contain one of `fragments` (a naive split on `"`: enough for
/// the literals this crate writes).
fn literals_containing(files: &[PathBuf], fragments: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line_no, line) in text.lines().enumerate() {
            for literal in line.split('"').skip(1).step_by(2) {
                for f in fragments {
                    if literal.contains(f) {
                        found.push(format!("{}:{}: \"{literal}\"", file.display(), line_no + 1));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn redis_key_names_appear_only_in_the_store() {
    let fragments = [
        ":servers:",
        ":weights:",
        ":draining:",
        ":serving:",
        ":routing",
        ":meta",
        ":proxy:",
        ":events",
    ];
    let store = files_under("src/store");
    // The check must know what it looks for: the store itself spells these.
    assert!(
        literals_containing(&store, &fragments).len() >= fragments.len(),
        "the store no longer spells its key names the way this check expects"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut others = Vec::new();
    rust_files(&root, &mut others);
    others.retain(|f| !f.starts_with(root.join("store")));
    let found = literals_containing(&others, &fragments);
    assert!(
        found.is_empty(),
        "Redis key names outside src/store:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_main_exits_the_process() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let found = offending_lines(&files, &["process::exit"]);
    assert!(
        found.is_empty(),
        "process::exit outside main.rs:\n{}",
        found.join("\n")
    );
}

/// Issue 24: the discovery provider kind is matched in one place. What a provider is
/// (`ProviderSettings`) and what the process does around it (`Provider::role`) are decided in
/// `config/discovery.rs`, the running provider chosen in `discovery/mod.rs`; everyone else asks
/// the role. (The schema names the default, `env.rs` the provider `CANARY_LB_REDIS_URL` selects.)
#[test]
fn the_discovery_provider_kind_is_matched_in_one_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = [
        "config/discovery.rs",
        "discovery/mod.rs",
        "config/schema/discovery.rs",
        "config/env.rs",
    ];
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let kinds = [
        "Provider::Static",
        "Provider::Redis",
        "Provider::FileWatch",
        "ProviderSettings::",
    ];
    let (mine, others): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|f| allowed.iter().any(|a| f.ends_with(a)));
    assert!(
        offending_lines(&mine, &kinds).len() >= kinds.len(),
        "config/discovery.rs no longer spells the provider kinds the way this check expects"
    );
    let found = offending_lines(&others, &kinds);
    assert!(
        found.is_empty(),
        "the provider kind matched outside config/discovery.rs and discovery/mod.rs (ask \
         `Provider::role` instead):\n{}",
        found.join("\n")
    );
}

#[cfg(test)]
mod parsing {
    use super::*;

    #[test]
    fn groups_and_nested_paths_are_found() {
        let paths = crate_paths(
            "use crate::{config::schema::Routing, pool, model::PoolKind}; let x = crate::metrics::M; my_crate::no",
            "crate",
        );
        let firsts: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
        assert_eq!(
            firsts,
            ["config::schema", "pool", "model", "metrics"].map(String::from)
        );
    }
}
