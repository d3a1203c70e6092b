//! Helpers for the end-to-end tests: the built binaries, the project's Python (with DuckDB and
//! pyarrow) and small spec files. The tests themselves are in tests/tests/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A binary of the workspace, built in the same profile as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target profile folder");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --release --workspace --bins` (make test does)", path.display());
    path
}

/// The project's virtual-environment Python (made by scripts/setup.sh).
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.is_file(), "{} is missing: run `bash scripts/setup.sh` (make test does)", p.display());
    p
}

/// Runs a DuckDB query in the project's Python and returns the rows as JSON objects.
pub fn duckdb(sql: &str) -> Vec<serde_json::Value> {
    let script = r#"
import duckdb, json, sys
cur = duckdb.sql(sys.argv[1])
cols = cur.columns
print(json.dumps([dict(zip(cols, r)) for r in cur.fetchall()], default=str))
"#;
    let out = Command::new(python()).args(["-c", script, sql]).output().expect("python runs");
    assert!(out.status.success(), "duckdb query failed: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json rows")
}

/// Writes a spec file and returns its path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write spec");
    p
}

/// `cbsweep ARGS`, with output captured.
pub fn cbsweep(args: &[&str]) -> Output {
    Command::new(bin("cbsweep")).args(args).env("CBSWEEP_LOG", "warn").output().expect("cbsweep runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
