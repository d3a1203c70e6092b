//! The house rules a reviewer would otherwise check by eye, as functions that return what is
//! wrong (empty when all is well): every .rs file opens with a `//!` paragraph, crates depend
//! only downwards (common < proto < the rest; results beside proto; the coordinator never
//! reaches libtorch), no files of a crate import each other around a loop (`imports`), every
//! path ARCHITECTURE.md names exists, the tree is rustfmt-clean, and the science is cited from
//! docs/science.md, not from a file outside the repository.
//! tests/tests/tidy.rs runs them on the workspace and on planted violations.

mod imports;

pub use imports::{Circle, import_circles};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What each workspace crate may depend on among the workspace's crates, and the external
/// crates it must never depend on (directly; `NEVER_REACHES` checks whole dependency trees).
pub const LAYERS: &[(&str, &[&str], &[&str])] = &[
    ("cbsweep-common", &[], &["tonic", "prost", "tch", "torch-sys", "arrow-array", "arrow-schema", "parquet", "tokio", "rusqlite"]),
    ("cbsweep-proto", &["cbsweep-common"], &["tch", "torch-sys", "arrow-array", "parquet", "rusqlite"]),
    ("cbsweep-results", &["cbsweep-common"], &["tonic", "prost", "tokio", "tch", "torch-sys", "rusqlite"]),
    ("cbsweep-coordinator", &["cbsweep-common", "cbsweep-proto", "cbsweep-results"], &["tch", "torch-sys"]),
    ("cbsweep-train", &["cbsweep-common"], &["cbsweep-proto", "tonic", "tokio", "arrow-array", "parquet", "rusqlite"]),
    ("cbsweep-worker", &["cbsweep-common", "cbsweep-proto", "cbsweep-train"], &["arrow-array", "parquet", "rusqlite"]),
];

/// Crates whose normal dependency tree must not contain a package: a coordinator node needs
/// no CUDA, so nothing the coordinator links may pull libtorch in; training knows no wire
/// protocol, so nothing it links may pull in the gRPC stack.
pub const NEVER_REACHES: &[(&str, &str)] = &[
    ("cbsweep-coordinator", "torch-sys"),
    ("cbsweep-results", "torch-sys"),
    ("cbsweep-train", "tonic"),
    ("cbsweep-train", "cbsweep-proto"),
];

/// Every .rs file under `root`, skipping build output, git, virtual environments and nested
/// checkouts (folders holding their own `.git`).
pub fn rust_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                let skip = name.starts_with("target") || name.starts_with('.') || name == "node_modules" || name == "out";
                if !skip && (dir != root || !p.join(".git").exists()) {
                    walk(&p, root, out);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Files whose first line that is not blank is not a `//!` line.
pub fn missing_openings(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| format!("{}: does not open with a `//!` paragraph (what it owns, what it must not depend on)", f.display()))
        .collect()
}

/// `cargo metadata` of the workspace at `root`, as JSON.
pub fn cargo_metadata(root: &Path) -> serde_json::Value {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // One platform: the others' packages are never downloaded, and nothing is fetched.
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host_triple()])
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("rustc runs");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.strip_prefix("host: ")).unwrap_or("x86_64-unknown-linux-gnu").to_string()
}

/// Dependencies that break `LAYERS` or `NEVER_REACHES`, read from `cargo metadata`'s JSON.
pub fn layering_violations(meta: &serde_json::Value) -> Vec<String> {
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let members: BTreeSet<String> =
        meta["workspace_members"].as_array().into_iter().flatten().filter_map(|m| m.as_str().map(String::from)).collect();
    let mut wrong = Vec::new();
    let workspace_names: BTreeSet<String> = packages
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap_or("")))
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    for p in &packages {
        let Some(name) = p["name"].as_str() else { continue };
        let Some(&(_, allowed, never)) = LAYERS.iter().find(|(n, _, _)| *n == name) else { continue };
        for d in p["dependencies"].as_array().into_iter().flatten() {
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            let dep = d["name"].as_str().unwrap_or("");
            if workspace_names.contains(dep) && !allowed.contains(&dep) {
                wrong.push(format!("{name} depends on {dep}: it may depend only on {allowed:?} among the workspace's crates"));
            }
            if never.contains(&dep) {
                wrong.push(format!("{name} depends on {dep}, which it must never depend on"));
            }
        }
    }
    // Whole trees of normal and build dependencies, from the resolve graph.
    let nodes: BTreeMap<String, Vec<String>> = meta["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].as_str() != Some("dev")))
                .filter_map(|d| d["pkg"].as_str().map(String::from))
                .collect();
            (n["id"].as_str().unwrap_or("").to_string(), deps)
        })
        .collect();
    let name_of: BTreeMap<String, String> =
        packages.iter().map(|p| (p["id"].as_str().unwrap_or("").to_string(), p["name"].as_str().unwrap_or("").to_string())).collect();
    for &(krate, banned) in NEVER_REACHES {
        let Some(start) = name_of.iter().find(|(id, n)| n.as_str() == krate && members.contains(*id)).map(|(id, _)| id.clone()) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![(start, vec![krate.to_string()])];
        while let Some((id, path)) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            for dep in nodes.get(&id).into_iter().flatten() {
                let dep_name = name_of.get(dep).cloned().unwrap_or_default();
                let mut p = path.clone();
                p.push(dep_name.clone());
                if dep_name == banned {
                    wrong.push(format!("{krate} reaches {banned} through {}", p.join(" -> ")));
                }
                stack.push((dep.clone(), p));
            }
        }
    }
    wrong
}

/// Paths in backquotes in `markdown` (ARCHITECTURE.md) that exist nowhere they could mean. A
/// path is resolved against the root; under a `### crate` heading also against that crate's
/// folder, its src/ and its tests/; and against the folders named earlier in the same top-level
/// bullet or paragraph (`src/store/` then `mod.rs`). Placeholders (a segment in capitals, as in
/// OUT/SWEEP/logs), commands (a space), URL paths (a leading slash) and Rust paths (`::`) are
/// not paths.
pub fn missing_paths(root: &Path, markdown: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut section: Vec<PathBuf> = Vec::new();
    let mut context: Vec<PathBuf> = Vec::new();
    for (n, line) in markdown.lines().enumerate() {
        if line.starts_with('#') {
            section.clear();
            context.clear();
            if let Some(h) = line.strip_prefix("### ") {
                let first = h.split([' ', ',']).next().unwrap_or("");
                let dir = root.join(first);
                if !first.is_empty() && dir.is_dir() {
                    section = vec![dir.clone(), dir.join("src"), dir.join("tests")];
                }
            }
            continue;
        }
        if line.trim().is_empty() || line.starts_with("- ") {
            context.clear();
        }
        for (i, token) in line.split('`').enumerate() {
            if i % 2 == 0 || !looks_like_path(token) {
                continue;
            }
            let found = std::iter::once(root.to_path_buf())
                .chain(section.iter().cloned())
                .chain(context.iter().cloned())
                .map(|b| b.join(token))
                .find(|p| p.exists());
            match found {
                Some(p) if p.is_dir() => context.push(p),
                Some(_) => {}
                None => wrong.push(format!("ARCHITECTURE.md:{}: `{token}` does not exist", n + 1)),
            }
        }
    }
    wrong
}

fn looks_like_path(token: &str) -> bool {
    const EXTENSIONS: &[&str] = &[".rs", ".toml", ".md", ".py", ".sh", ".proto", ".yaml", ".yml", ".json"];
    let charset = token.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    let placeholder = token.split('/').any(|s| s.len() > 1 && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    charset
        && !token.is_empty()
        && !token.starts_with('/')
        && !placeholder
        && (token.contains('/') || EXTENSIONS.iter().any(|e| token.ends_with(e)))
}

/// Files rustfmt would change, with the configuration at `config` (the root's rustfmt.toml).
pub fn unformatted(files: &[PathBuf], config: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    for chunk in files.chunks(64) {
        let out = Command::new("rustfmt")
            .args(["--check", "--edition", "2024", "--config-path"])
            .arg(config)
            .args(chunk)
            .output()
            .expect("rustfmt runs (rustup component add rustfmt)");
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let files: BTreeSet<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("Diff in "))
                .map(|l| l.trim_end_matches(':').rsplit_once(':').map_or(l, |(f, _)| f))
                .collect();
            let what = if files.is_empty() { String::from_utf8_lossy(&out.stderr).into_owned() } else { format!("{files:?}") };
            wrong.push(format!("not rustfmt-formatted (run `cargo fmt --all`): {what}"));
        }
    }
    wrong
}

/// The out-of-repository source the science was first written from: code and docs cite
/// docs/science.md instead, so the repository stands alone.
pub const OUTSIDE_SPEC: &str = concat!("cb-rnn-", "spec.md");

/// Text files (code, specs, docs, scripts) under `root` that cite `OUTSIDE_SPEC`.
pub fn outside_citations(root: &Path) -> Vec<String> {
    const TEXT: &[&str] = &[".rs", ".toml", ".md", ".py", ".sh", ".proto", ".yaml", ".yml", ".sbatch"];
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for p in entries.flatten().map(|e| e.path()) {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !(name.starts_with("target") || name.starts_with('.') && name != ".ci" || name == "node_modules" || name == "out") {
                    walk(&p, out);
                }
            } else if TEXT.iter().any(|e| name.ends_with(e)) || name == "run" {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| std::fs::read_to_string(f).unwrap_or_default().contains(OUTSIDE_SPEC))
        .map(|f| format!("{}: cites {OUTSIDE_SPEC}, which is not in the repository: cite docs/science.md", f.display()))
        .collect()
}
