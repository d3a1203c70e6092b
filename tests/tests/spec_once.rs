//! A spec is validated once, where the user hands it in: its `CBSWEEP_SPEC__*` overrides are
//! applied there and recorded, the coordinator's own environment never applies, and `resume`
//! runs the stored, validated spec whatever the shell it runs in holds. Real `cbsweep` and
//! fake-trainer worker processes on loopback; results read back with DuckDB.

use cbsweep_tests::{Proc, counts, duckdb, fake_worker, free_port, results_once, text, wait_until, write_spec};
use std::process::{Command, Stdio};

const SPEC: &str = "[sweep]\nname = \"ov\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1, 2]\n[train]\nepochs = 30\n[run]\npack_size = 1\nlease_seconds = 5\nmax_attempts = 5\n";

/// (trial_id, epochs budget recorded, spec_overrides, spec_hash) of every row of trials.parquet.
fn trial_rows(trials: &std::path::Path) -> Vec<(String, u64, String, String)> {
    duckdb(&format!("SELECT trial_id, epochs_budget AS epochs, spec_overrides, spec_hash FROM '{}' ORDER BY trial_id", trials.display()))
        .iter()
        .map(|r| {
            (
                r["trial_id"].as_str().unwrap().to_string(),
                r["epochs"].as_u64().unwrap(),
                r["spec_overrides"].as_str().unwrap().to_string(),
                r["spec_hash"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_run_with_an_override_resumes_without_it_and_no_cell_changes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "ov.toml", SPEC);
    let out = dir.path().join("out");
    let log = dir.path().join("exec.log");
    let command = |verb: &[&str]| {
        let mut c = Command::new(cbsweep_tests::bin("cbsweep"));
        c.args(verb)
            .args(["--workers", "2", "--trainer", "fake", "--out", out.to_str().unwrap()])
            .args(["--worker-arg=--fake-epoch-ms=40", &format!("--worker-arg=--fake-execution-log={}", log.display())])
            .env("CBSWEEP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // 6 epochs instead of the file's 30: the override must hold for every trial, run or resumed.
    let mut first = Proc::spawn(command(&["run", spec.to_str().unwrap()]).env("CBSWEEP_SPEC__TRAIN__EPOCHS", "6"));
    wait_until(60, "some trials to finish", || counts(&log).1.len() >= 3);
    first.kill9();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let o = cbsweep_tests::cbsweep(&["export", "ov", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let before = trial_rows(&out.join("ov/trials.parquet"));
    assert_eq!(before.len(), 12, "every cell has a row, finished or not: {before:?}");
    let recorded = duckdb(&format!("SELECT trial_id FROM '{}' WHERE status = 'done'", out.join("ov/trials.parquet").display()));
    let finished_before: Vec<String> = recorded.iter().map(|r| r["trial_id"].as_str().unwrap().to_string()).collect();
    assert!(!finished_before.is_empty(), "some trials were recorded before the kill");

    // The shell that resumes has no override (and a different one would be ignored, loudly).
    let o = command(&["resume", "ov"]).env("CBSWEEP_SPEC__TRAIN__EPOCHS", "25").output().unwrap();
    assert!(o.status.success(), "resume runs the stored spec: {}", text(&o));
    assert!(text(&o).contains("ignoring train.epochs=25"), "resume says it ignores the shell's override: {}", text(&o));
    results_once(&out.join("ov"), 12, 6);
    let after = trial_rows(&out.join("ov/trials.parquet"));
    let ids = |rows: &[(String, u64, String, String)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "no cell changed identity");
    for (id, epochs, overrides, hash) in &after {
        assert_eq!(*epochs, 6, "trial {id} trained with the override");
        assert_eq!(overrides, "train.epochs=6", "trial {id} records the override");
        assert_eq!(hash, &before[0].3, "one validated spec, one hash");
    }
    // A trial whose completion was in flight at the kill rightly runs again; a recorded one never.
    let (_, dones) = counts(&log);
    for id in &finished_before {
        assert_eq!(dones[id], 1, "trial {id} was recorded before the kill and never ran again");
    }

    // Running the file again without the override is a different spec: refused, naming the change.
    let o = command(&["run", spec.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a resubmission that changes existing cells is bad input: {}", text(&o));
    assert!(text(&o).contains("budget.epochs: 6 -> 30"), "the refusal names what changed, from what to what: {}", text(&o));
}

#[test]
fn a_submitted_override_applies_and_the_coordinators_own_environment_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-spec-once");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let _coord = Proc::spawn(
        Command::new(cbsweep_tests::bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--state", state.to_str().unwrap()])
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "warn")
            .env("CBSWEEP_SPEC__TRAIN__EPOCHS", "9")
            .env("CBSWEEP_SPEC__RUN__PACK_SIZE", "7")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let spec = write_spec(dir.path(), "ov.toml", &SPEC.replace("seed = [0, 1, 2]", "seed = [0]"));
    wait_until(20, "the coordinator to accept the sweep", || {
        Command::new(cbsweep_tests::bin("cbsweep"))
            .args(["submit", spec.to_str().unwrap(), "--coordinator", &format!("http://127.0.0.1:{port}")])
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_SPEC__TRAIN__EPOCHS", "4")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    let mut w = fake_worker(port, token, &log, 20, &[]);
    assert_eq!(w.wait_for(120), Some(0), "the worker drains the sweep");
    results_once(&state.join("results/ov"), 4, 4);
    for (id, epochs, overrides, _) in trial_rows(&state.join("results/ov/trials.parquet")) {
        assert_eq!((epochs, overrides.as_str()), (4, "train.epochs=4"), "trial {id}: the submitter's override, not the coordinator's");
    }
}
