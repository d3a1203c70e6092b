//! The foundation's promises, end to end: real processes, real gRPC on loopback, real libtorch
//! training, Parquet read back by DuckDB.

use cbsweep_tests::{cbsweep, duckdb, text, write_spec};

const TINY: &str = r#"
[sweep]
name = "tiny"
[grid]
task = ["dms", "parity"]
arch = ["cbrnn", "rnn"]
seed = [0, 1]
[train]
epochs = 3
steps_per_epoch = 5
test_batches = 2
batch_size = 16
[run]
pack_size = 2
"#;

#[test]
fn real_sweep_runs_through_grpc_and_duckdb_reads_one_row_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "tiny.toml", TINY);
    let out = dir.path().join("out");
    let o = cbsweep(&["run", spec.to_str().unwrap(), "--workers", "2", "--threads", "1", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let trials = out.join("tiny/trials.parquet");
    let curves = out.join("tiny/curves.parquet");
    let rows = duckdb(&format!(
        "SELECT task, arch, seed, param_count, status, outcome, epochs_run, device, worker_id FROM '{}' ORDER BY task, arch, seed",
        trials.display()
    ));
    assert_eq!(rows.len(), 8, "one trials row per cell: {rows:?}");
    for r in &rows {
        assert_eq!(r["status"], "done", "{r}");
        assert_eq!(r["outcome"], "completed", "{r}");
        assert_eq!(r["epochs_run"], 3, "{r}");
        assert_eq!(r["device"], "cpu", "{r}");
        let expected = if r["arch"] == "cbrnn" { 41_922 } else { 41_816 };
        assert_eq!(r["param_count"], expected, "{r}");
    }
    // Which worker trains what is a race (a pack takes well under a second here, so the first
    // worker up may take them all); every trial names the worker that trained it.
    let workers = duckdb(&format!("SELECT count(DISTINCT worker_id) AS n, count(worker_id) AS named FROM '{}'", trials.display()));
    let n = workers[0]["n"].as_i64().unwrap();
    assert!((1..=2).contains(&n), "trained by the run's workers: {workers:?}");
    assert_eq!(workers[0]["named"], 8, "{workers:?}");
    let per_trial = duckdb(&format!(
        "SELECT trial_id, count(*) AS n, min(epoch) AS first, max(epoch) AS last FROM '{}' GROUP BY trial_id",
        curves.display()
    ));
    assert_eq!(per_trial.len(), 8);
    for r in &per_trial {
        assert_eq!((r["n"].as_i64(), r["first"].as_i64(), r["last"].as_i64()), (Some(3), Some(1), Some(3)), "{r}");
    }
    let losses = duckdb(&format!("SELECT min(train_loss) AS lo, max(test_accuracy) AS hi FROM '{}'", curves.display()));
    assert!(losses[0]["lo"].as_f64().unwrap() > 0.0, "real losses are positive: {losses:?}");
    assert!(losses[0]["hi"].as_f64().unwrap() <= 1.0);

    // Every table is readable by pyarrow too, with the sweep id and grid keys on every row.
    let dir_s = out.join("tiny");
    let script = r#"
import pyarrow.parquet as pq, sys, json
d = sys.argv[1]
res = {}
for t in ["trials", "curves", "levels", "analyses", "stats"]:
    tab = pq.read_table(f"{d}/{t}.parquet")
    res[t] = {"rows": tab.num_rows, "cols": tab.column_names}
print(json.dumps(res))
"#;
    let o = std::process::Command::new(cbsweep_tests::python()).args(["-c", script, dir_s.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tables: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tables["trials"]["rows"], 8);
    assert_eq!(tables["curves"]["rows"], 24);
    for t in ["trials", "curves", "levels", "analyses"] {
        let cols = tables[t]["cols"].as_array().unwrap();
        for key in ["sweep_id", "trial_id", "task", "arch", "seed", "regime", "freeze"] {
            assert!(cols.iter().any(|c| c == key), "{t} has {key}: {cols:?}");
        }
    }
    let stats = duckdb(&format!("SELECT DISTINCT kind, measure FROM '{}' ORDER BY ALL", dir_s.join("stats.parquet").display()));
    assert!(stats.iter().any(|r| r["kind"] == "comparison" && r["measure"] == "max_level"), "{stats:?}");
    let o = cbsweep(&["plot", "tiny", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir_s.join("figures/learning_curves.png").is_file());
    assert!(dir_s.join("figures/learning_curves.svg").is_file());
}

fn refused(name: &str, spec_text: &str, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), name, spec_text);
    let out = dir.path().join("out");
    let o = cbsweep(&["run", spec.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "bad input exits 2: {msg}");
    assert!(msg.contains(name), "the message names the file: {msg}");
    for e in expect {
        assert!(msg.contains(e), "the message says {e:?}: {msg}");
    }
    assert!(!out.exists(), "nothing ran and nothing was written before the refusal");
}

#[test]
fn spec_with_unknown_key_is_refused_before_anything_runs() {
    refused("typo.toml", &TINY.replace("epochs = 3", "epocs = 3"), &["unknown key `train.epocs`"]);
}

#[test]
fn spec_with_missing_field_is_refused_before_anything_runs() {
    refused("nameless.toml", &TINY.replace("name = \"tiny\"", ""), &["missing required key `sweep.name`"]);
}

#[test]
fn spec_with_negative_epochs_is_refused_before_anything_runs() {
    refused("negative.toml", &TINY.replace("epochs = 3", "epochs = -3"), &["train.epochs = -3", "positive"]);
}

#[test]
fn spec_with_unknown_task_is_refused_before_anything_runs() {
    refused("task.toml", &TINY.replace("\"parity\"", "\"parody\""), &["grid.task = \"parody\"", "dms, parity, oddball"]);
}

#[test]
fn same_trial_run_twice_gives_the_same_curve() {
    let dir = tempfile::tempdir().unwrap();
    let one = TINY
        .replace("task = [\"dms\", \"parity\"]", "task = [\"dms\"]")
        .replace("arch = [\"cbrnn\", \"rnn\"]", "arch = [\"cbrnn\"]")
        .replace("seed = [0, 1]", "seed = [7]");
    let spec = write_spec(dir.path(), "one.toml", &one);
    let mut curves = Vec::new();
    for run in ["a", "b"] {
        let out = dir.path().join(run);
        let o = cbsweep(&["run", spec.to_str().unwrap(), "--workers", "1", "--threads", "1", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        curves.push(duckdb(&format!(
            "SELECT trial_id, epoch, level, train_loss, test_accuracy, solved, grad_norm FROM '{}' ORDER BY epoch",
            out.join("tiny/curves.parquet").display()
        )));
    }
    assert_eq!(curves[0].len(), 3);
    assert_eq!(curves[0], curves[1], "same seed, same trial, same numbers");
}

#[test]
fn validate_into_a_reader_that_went_away_exits_quietly() {
    let mut child = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["validate", cbsweep_tests::root().join("sweeps/paper.toml").to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head` that has read what it wanted: the pipe's reading end is closed before the output.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}

#[test]
fn absurd_values_are_refused_before_anything_runs_naming_the_bound() {
    refused("absurd.toml", &TINY.replace("batch_size = 16", "batch_size = 1000000000"), &["train.batch_size = 1000000000", "at most 4096"]);
}
