//! Whatever dies, every cell of the grid reaches a recorded outcome exactly once: real
//! coordinator and worker processes on loopback, killed with SIGKILL, with the fake trainer
//! (controllable duration, an execution log to count runs).

use cbsweep_tests::{
    Proc, coordinator, counts, duckdb, executions, fake_worker, free_port, results_once, submit, text, wait_until, write_spec,
};

fn spec_text(name: &str, seeds: usize, epochs: u32, pack: u32, lease_s: u32) -> String {
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = {epochs}\n[run]\npack_size = {pack}\nlease_seconds = {lease_s}\nmax_attempts = 5\n",
        seeds.join(", ")
    )
}

#[test]
fn killed_worker_trial_runs_again_elsewhere_and_appears_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-kill-worker");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let _coord = coordinator(&state, port, token);
    let spec = write_spec(dir.path(), "kw.toml", &spec_text("kw", 2, 10, 1, 2));
    submit(port, token, &spec);
    let mut victim = fake_worker(port, token, &log, 100, &[]);
    wait_until(30, "the victim to start a trial", || !executions(&log).is_empty());
    victim.kill9();
    // what the victim was training when it died (a trial it had finished may run again only if
    // its result was still on the way; nothing is asserted about those)
    let (started, finished) = counts(&log);
    let cut_short: Vec<String> = started.keys().filter(|id| !finished.contains_key(*id)).cloned().collect();
    assert!(!cut_short.is_empty(), "the victim died training a trial: {started:?} {finished:?}");
    let mut survivor = fake_worker(port, token, &log, 100, &[]);
    assert_eq!(survivor.wait_for(120), Some(0), "the survivor drains the sweep and exits");
    results_once(&state.join("results/kw"), 8, 10);
    let (starts, dones) = counts(&log);
    assert_eq!(dones.len(), 8, "every trial finished: {dones:?}");
    for id in dones.keys().filter(|id| !finished.contains_key(*id)) {
        assert_eq!(dones[id], 1, "trial {id} finished once: {dones:?}");
    }
    for id in &cut_short {
        assert_eq!(starts[id], 2, "the killed trial {id} ran again, once: {starts:?}");
    }
}

#[test]
fn killed_coordinator_restarts_and_the_sweep_completes_without_rerunning_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-kill-coordinator");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let mut coord = coordinator(&state, port, token);
    let spec = write_spec(dir.path(), "kc.toml", &spec_text("kc", 4, 6, 2, 30));
    submit(port, token, &spec);
    let mut workers: Vec<Proc> = (0..2).map(|_| fake_worker(port, token, &log, 60, &[])).collect();
    wait_until(60, "some trials to finish", || counts(&log).1.len() >= 3);
    coord.kill9();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _coord = coordinator(&state, port, token);
    for w in &mut workers {
        assert_eq!(w.wait_for(120), Some(0), "workers reconnect, finish and exit");
    }
    results_once(&state.join("results/kc"), 16, 6);
    let (starts, dones) = counts(&log);
    assert_eq!(dones.len(), 16);
    assert!(starts.values().all(|&n| n == 1), "no trial ran twice: {starts:?}");
    assert!(dones.values().all(|&n| n == 1), "{dones:?}");
}

#[test]
fn killed_run_resumes_without_rerunning_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "kr.toml", &spec_text("kr", 3, 8, 1, 5));
    let out = dir.path().join("out");
    let log = dir.path().join("exec.log");
    let args = |extra: &[&str]| {
        let mut c = std::process::Command::new(cbsweep_tests::bin("cbsweep"));
        c.args(["run", spec.to_str().unwrap(), "--workers", "2", "--trainer", "fake", "--out", out.to_str().unwrap()])
            .args(["--worker-arg=--fake-epoch-ms=80", &format!("--worker-arg=--fake-execution-log={}", log.display())])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = Proc::spawn(&mut args(&[]));
    wait_until(60, "some trials to finish", || counts(&log).1.len() >= 4);
    first.kill9();
    // The orphaned workers notice their parent is gone and stop.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // "Finished" means recorded by the coordinator: a trial whose training ended in the worker
    // while its completion was still in flight when the run was killed rightly runs again.
    let o = cbsweep_tests::cbsweep(&["export", "kr", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let recorded = duckdb(&format!("SELECT trial_id FROM '{}' WHERE status = 'done'", out.join("kr/trials.parquet").display()));
    let finished_before: Vec<String> = recorded.iter().map(|r| r["trial_id"].as_str().unwrap().to_string()).collect();
    assert!(!finished_before.is_empty(), "some trials were recorded before the kill");
    let o = args(&[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    results_once(&out.join("kr"), 12, 8);
    let (_, dones) = counts(&log);
    for id in &finished_before {
        assert_eq!(dones[id], 1, "trial {id} finished before the kill and never ran again");
    }
    assert_eq!(dones.len(), 12);
}

#[test]
fn a_diverged_trial_is_recorded_as_a_result_with_its_curve_up_to_then() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "dv.toml", &spec_text("dv", 2, 4, 1, 5));
    let out = dir.path().join("out");
    let o = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()])
        .args(["--worker-arg=--fake-epoch-ms=10", "--worker-arg=--fake-diverge-seeds=1"])
        .env("CBSWEEP_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let rows = duckdb(&format!(
        "SELECT seed, status, outcome, epochs_run FROM '{}' ORDER BY seed, task, arch",
        out.join("dv/trials.parquet").display()
    ));
    assert_eq!(rows.len(), 8, "{rows:?}");
    for r in &rows {
        assert_eq!(r["status"], "done", "{r}");
        let (outcome, epochs) = if r["seed"] == 1 { ("diverged", 1) } else { ("completed", 4) };
        assert_eq!((r["outcome"].as_str(), r["epochs_run"].as_u64()), (Some(outcome), Some(epochs)), "{r}");
    }
}

#[test]
fn a_run_whose_trials_failed_exits_with_its_own_code_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "fl.toml", &spec_text("fl", 2, 2, 1, 5).replace("max_attempts = 5", "max_attempts = 2"));
    let out = dir.path().join("out");
    let run = |fail: &str| {
        std::process::Command::new(cbsweep_tests::bin("cbsweep"))
            .args(["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()])
            .args(["--worker-arg=--fake-epoch-ms=5", fail])
            .env("CBSWEEP_LOG", "warn")
            .output()
            .unwrap()
    };
    let o = run("--worker-arg=--fake-fail-seeds=1");
    assert_eq!(o.status.code(), Some(3), "failed trials give exit code 3: {}", text(&o));
    assert!(text(&o).contains("4 of 8 trials of sweep fl failed") && text(&o).contains("trials.parquet"), "{}", text(&o));
    let failed = duckdb(&format!("SELECT count(*) AS n FROM '{}' WHERE status = 'failed'", out.join("fl/trials.parquet").display()));
    assert_eq!(failed[0]["n"].as_u64(), Some(4), "{failed:?}");
}

#[test]
fn export_of_a_sweep_the_state_does_not_hold_or_of_a_path_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "ex.toml", &spec_text("ex", 1, 1, 1, 5));
    let out = dir.path().join("out");
    let o = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()])
        .args(["--worker-arg=--fake-epoch-ms=5"])
        .env("CBSWEEP_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let good = std::fs::read(out.join("ex/trials.parquet")).unwrap();
    for (sweep, says) in [("nosuch", "sweep nosuch is not in the coordinator's state"), ("../../x", "is not a sweep name")] {
        let o = cbsweep_tests::cbsweep(&["export", sweep, "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{sweep}: {}", text(&o));
        assert!(text(&o).contains(says), "{sweep}: {}", text(&o));
    }
    assert!(!out.join("nosuch").exists() && !dir.path().parent().unwrap().join("x").exists(), "nothing was written");
    assert_eq!(std::fs::read(out.join("ex/trials.parquet")).unwrap(), good, "the good tables are untouched");
}

#[test]
fn a_second_coordinator_or_run_on_the_same_state_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let state = out.join(".cbsweep");
    let (port, token) = (free_port(), "t0ken-lock");
    let mut first = coordinator(&state, port, token);
    wait_until(20, "the first coordinator to take the state", || state.join("lock").is_file());
    let o = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{}", free_port()), "--state", state.to_str().unwrap()])
        .env("CBSWEEP_TOKEN", token)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("is in use by") && msg.contains(&format!("pid {}", first.pid())), "names the holder: {msg}");
    // `cbsweep run` on that OUT is refused the same way, before any worker starts.
    let spec = write_spec(dir.path(), "lk.toml", &spec_text("lk", 1, 1, 1, 5));
    let o = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["run", spec.to_str().unwrap(), "--trainer", "fake", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("is in use by"), "{}", text(&o));
    assert!(!out.join("lk/logs").exists(), "no worker started");
    // Once the first is gone (even by SIGKILL) the state is free.
    first.kill9();
    let _second = coordinator(&state, port, token);
    submit(port, token, &spec);
}

/// Whether process `pid` is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn the_workers_of_a_killed_run_stop_as_soon_as_they_see_their_parent_gone() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "orphan.toml", &spec_text("orphan", 4, 50, 1, 30));
    let out = dir.path().join("out");
    let log = dir.path().join("exec.log");
    let mut run = Proc::spawn(
        std::process::Command::new(cbsweep_tests::bin("cbsweep"))
            .args(["run", spec.to_str().unwrap(), "--workers", "2", "--trainer", "fake", "--out", out.to_str().unwrap()])
            .args(["--worker-arg=--fake-epoch-ms=100", &format!("--worker-arg=--fake-execution-log={}", log.display())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_until(60, "both workers to train", || executions(&log).len() >= 2);
    let children: Vec<i32> = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.pid()))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 2, "two worker processes: {children:?}");
    run.kill9();
    let gone = std::time::Instant::now();
    // They used to linger ~20 s retrying a coordinator that died with their parent; now they
    // see their parent gone (checked every 200 ms) and stop, each saying so in its log.
    wait_until(60, "the orphaned workers to exit", || !children.iter().any(|&p| alive(p)));
    eprintln!("the orphaned workers stopped {:?} after the run", gone.elapsed());
    for k in 0..2 {
        let said = std::fs::read_to_string(out.join(format!("orphan/logs/worker-{k}.log"))).unwrap();
        assert!(said.contains("the parent process is gone"), "worker {k} stopped because its parent died, not by giving up:\n{said}");
    }
}

#[test]
fn a_trial_larger_than_every_workers_memory_budget_fails_as_data_naming_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-too-big");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let _coord = coordinator(&state, port, token);
    let text = spec_text("toobig", 1, 2, 1, 30).replace("max_attempts = 5", "max_attempts = 2");
    submit(port, token, &write_spec(dir.path(), "big.toml", &text));
    // a budget no trial of the grid fits in
    let mut w = fake_worker(port, token, &log, 10, &["--memory-budget", "64KiB"]);
    assert_eq!(w.wait_for(60), Some(0), "the worker refuses the trials as data and drains the sweep");
    assert!(executions(&log).is_empty(), "no trial was trained: {:?}", executions(&log));
    cbsweep_tests::wait_until(20, "the export", || cbsweep_tests::sweep_done_any(&state.join("results/toobig"), 4));
    let rows = duckdb(&format!("SELECT status, attempts, error FROM '{}'", state.join("results/toobig/trials.parquet").display()));
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!((r["status"].as_str(), r["attempts"].as_u64()), (Some("failed"), Some(2)), "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("memory model") && e.contains("64.0 KiB") && e.contains("--memory-budget"), "{e}");
    }
}
