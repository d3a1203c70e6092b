//! Long trials survive anything: real coordinator and worker processes with the real libtorch
//! trainer on a tiny budget, interrupted again and again (kill -9 of a worker, of the
//! coordinator, of `cbsweep run`; a pre-emption warning), end with the curve, levels, analyses
//! and saved weights (every solved level's and the final ones) of an uninterrupted run on one
//! thread, bit for bit, whatever thread counts the interrupted run's workers had, and lose at
//! most the epochs since their latest checkpoint.

use cbsweep_tests::{Proc, bin, coordinator, duckdb, free_port, submit, wait_until, write_spec};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One CB-RNN cell on a tiny budget that solves levels (so analyses run and weights are saved),
/// checkpointed every `every` epochs, with short leases so a killed worker's trial comes back
/// soon.
fn spec_text(name: &str, every: u32) -> String {
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\"]\nseed = [3]\ngranule = [64]\n\
         [model]\nhidden = 32\npurkinje = 16\n\
         [train]\nepochs = 30\nsteps_per_epoch = 200\ntest_batches = 3\nbatch_size = 32\nsolve_threshold = 0.6\nmax_level = 60\n\
         [analysis]\nablation_batches = 2\ndimensionality_batches = 2\ntimescale_steps = 700\ntimescale_trials = 2\n\
         timescale_burn_in = 100\ntimescale_max_lag = 40\ntimescale_fit_lags = 10\n\
         [run]\npack_size = 1\nlease_seconds = 3\nmax_attempts = 20\ncheckpoint_every = {every}\n"
    )
}

/// The results of an uninterrupted `cbsweep run` of the spec `text` (one worker).
fn reference(dir: &Path, name: &str, text: &str) -> PathBuf {
    let spec = write_spec(dir, &format!("{name}-ref.toml"), text);
    let out = dir.join("reference");
    let o = cbsweep_tests::cbsweep(&["run", spec.to_str().unwrap(), "--workers", "1", "--threads", "1", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", cbsweep_tests::text(&o));
    out.join(name)
}

/// A real (libtorch) worker on `threads` threads, logging its checkpoints to `log`.
fn worker(port: u16, token: &str, checkpoints: &Path, log: &Path, threads: u32, extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc::spawn(
        Command::new(bin("cbsweep-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--device", "cpu", "--exit-when-drained"])
            .args(["--threads", &threads.to_string()])
            .args(["--give-up-after-s", "60", "--checkpoint-dir", checkpoints.to_str().unwrap()])
            .args(extra)
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "info,cbsweep_worker::client=debug")
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// The epochs of the checkpoints a worker's log says it saved, in order, past its first `from`
/// bytes (what earlier processes wrote to the same log).
fn saved_epochs(log: &Path, from: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("checkpoint saved"))
        .filter_map(|l| l.split("epochs_done=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The epochs a worker's log says it trained (`epoch trained`, logged as each one ends), in order.
fn trained_epochs(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("epoch trained"))
        .filter_map(|l| l.split(" epoch=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until the log shows a checkpoint of at least `epochs` epochs past its first `from`
/// bytes.
fn wait_for_checkpoint(log: &Path, from: usize, epochs: u32) {
    wait_until(120, &format!("a checkpoint of {epochs} epochs in {}", log.display()), || {
        saved_epochs(log, from).last().is_some_and(|&e| e >= epochs)
    });
}

/// How long `log` is now.
fn length(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// The rows of a results table as JSON, in a fixed order.
fn rows(results: &Path, table: &str, columns: &str, order: &str) -> Vec<serde_json::Value> {
    duckdb(&format!("SELECT {columns} FROM '{}' ORDER BY {order}", results.join(table).display()))
}

/// The curve, the solved levels, the analyses and every saved weights file of `got` equal
/// `want`'s, bit for bit (the two sweeps share their name, so their trial ids agree).
fn assert_bit_identical(got: &Path, want: &Path, got_weights: &Path, want_weights: &Path) {
    let curve = "trial_id, epoch, level, train_loss, test_accuracy, solved, grad_norm, core_learning, cb_learning";
    let (a, b) = (rows(got, "curves.parquet", curve, "epoch"), rows(want, "curves.parquet", curve, "epoch"));
    assert_eq!(a.len(), 30, "every epoch of the budget: {a:?}");
    assert_eq!(a, b, "the curve");
    let (a, b) = (rows(got, "levels.parquet", "*", "trial_id, level"), rows(want, "levels.parquet", "*", "trial_id, level"));
    assert!(!b.is_empty(), "the trial solved levels");
    assert_eq!(a, b, "the solved levels");
    let analysis = "trial_id, level, epoch, population, metric, value";
    let (a, b) = (
        rows(got, "analyses.parquet", analysis, "level, population, metric"),
        rows(want, "analyses.parquet", analysis, "level, population, metric"),
    );
    assert!(!b.is_empty(), "the trial solved levels and was analysed");
    assert_eq!(a, b, "the analyses");
    let trial = rows(want, "trials.parquet", "trial_id", "trial_id")[0]["trial_id"].as_str().unwrap().to_string();
    let names: Vec<String> =
        std::fs::read_dir(want_weights.join(&trial)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"final.safetensors".to_string()) && names.len() > 1, "final and solved-level weights: {names:?}");
    for name in names {
        let (x, y) = (std::fs::read(got_weights.join(&trial).join(&name)), std::fs::read(want_weights.join(&trial).join(&name)));
        assert!(x.is_ok() && x.ok() == y.ok(), "saved weights {name}");
    }
}

/// (resumes, epochs_lost) of the one trial.
fn interruption_cost(results: &Path) -> (u64, u64) {
    let r = rows(results, "trials.parquet", "status, resumes, epochs_lost", "cell_index");
    assert_eq!(r[0]["status"], "done");
    (r[0]["resumes"].as_u64().unwrap(), r[0]["epochs_lost"].as_u64().unwrap())
}

/// Epochs at which the tests interrupt a trial: fixed by a seed, spread over its 30 epochs.
fn kill_points(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed;
    let mut points: Vec<u32> = (0..n)
        .map(|k| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // one point in each of n equal stretches of epochs 2..=26, at least 3 apart
            let stretch = 25 / n as u32;
            2 + k as u32 * stretch + (x >> 33) as u32 % (stretch - 2)
        })
        .collect();
    points.dedup();
    points
}

#[test]
fn a_trial_whose_worker_is_killed_again_and_again_ends_bit_identical_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let name = "kill-worker";
    let want = reference(dir.path(), name, &spec_text(name, 1));
    let (port, token) = (free_port(), "t0ken-resume-worker");
    let state = dir.path().join("state");
    let _coord = coordinator(&state, port, token);
    submit(port, token, &write_spec(dir.path(), "kw.toml", &spec_text(name, 1)));
    let weights = dir.path().join("weights");
    let points = kill_points(11, 3);
    for (k, &at) in points.iter().enumerate() {
        let log = dir.path().join(format!("worker-{k}.log"));
        // the reference trained on one thread; the interrupted run on two, three, one, ...
        let mut w = worker(port, token, &weights, &log, [2, 3, 1][k % 3], &[]);
        wait_for_checkpoint(&log, 0, at);
        w.kill9();
        let resumed_from = std::fs::read_to_string(&log).unwrap().lines().any(|l| l.contains("resuming from its checkpoint"));
        assert_eq!(resumed_from, k > 0, "worker {k} resumed from the last one's checkpoint: {}", std::fs::read_to_string(&log).unwrap());
    }
    let log = dir.path().join("worker-last.log");
    let mut last = worker(port, token, &weights, &log, 2, &[]);
    assert_eq!(last.wait_for(180), Some(0), "the last worker finishes the trial: {}", std::fs::read_to_string(&log).unwrap());
    let got = state.join("results").join(name);
    wait_until(20, "the export", || cbsweep_tests::sweep_done(&got, 1));
    assert_bit_identical(&got, &want, &weights, &want.join("checkpoints"));
    let (resumes, lost) = interruption_cost(&got);
    eprintln!("kill -9 of the worker at epochs {points:?}: {resumes} resumes, {lost} epochs re-trained");
    assert_eq!(resumes, points.len() as u64);
    // each kill loses what was trained since the last checkpoint: under an epoch, reported or not
    assert!(lost <= points.len() as u64, "at most one epoch per kill: {lost}");
}

#[test]
fn a_trial_whose_coordinator_or_run_is_killed_again_and_again_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let name = "kill-others";
    let text = spec_text(name, 1);
    let want = reference(dir.path(), name, &text);

    // kill -9 of the coordinator: the worker keeps training through each restart
    let (port, token) = (free_port(), "t0ken-resume-coordinator");
    let state = dir.path().join("state");
    let mut coord = coordinator(&state, port, token);
    submit(port, token, &write_spec(dir.path(), "kc.toml", &text));
    let weights = dir.path().join("weights");
    let log = dir.path().join("worker.log");
    let mut w = worker(port, token, &weights, &log, 2, &[]);
    for at in kill_points(5, 3) {
        wait_for_checkpoint(&log, 0, at);
        coord.kill9();
        std::thread::sleep(std::time::Duration::from_millis(300));
        coord = coordinator(&state, port, token);
    }
    assert_eq!(w.wait_for(180), Some(0), "the worker finishes the trial: {}", std::fs::read_to_string(&log).unwrap());
    let got = state.join("results").join(name);
    wait_until(20, "the export", || cbsweep_tests::sweep_done(&got, 1));
    assert_bit_identical(&got, &want, &weights, &want.join("checkpoints"));
    eprintln!("kill -9 of the coordinator: (resumes, epochs re-trained) = {:?}", interruption_cost(&got));

    // kill -9 of `cbsweep run`, then `cbsweep resume`: its worker dies with it each time
    let spec = write_spec(dir.path(), "kr.toml", &text);
    let out = dir.path().join("out");
    let run_log = out.join(name).join("logs").join("worker-0.log");
    let points = kill_points(7, 3);
    for (k, &at) in points.iter().enumerate() {
        let from = length(&run_log);
        let mut c = Command::new(bin("cbsweep"));
        let threads = ["2", "3", "1"][k % 3];
        match k {
            0 => c.args(["run", spec.to_str().unwrap(), "--workers", "1", "--threads", threads]),
            _ => c.args(["resume", name, "--workers", "1", "--threads", threads]),
        };
        let mut run = Proc::spawn(
            c.args(["--out", out.to_str().unwrap()])
                .env("CBSWEEP_LOG", "info,cbsweep_worker::client=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_checkpoint(&run_log, from, at);
        run.kill9();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    let o = Command::new(bin("cbsweep"))
        .args(["resume", name, "--workers", "1", "--threads", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", cbsweep_tests::text(&o));
    assert_bit_identical(&out.join(name), &want, &out.join(name).join("checkpoints"), &want.join("checkpoints"));
    let (resumes, lost) = interruption_cost(&out.join(name));
    eprintln!("kill -9 of cbsweep run at epochs {points:?}: {resumes} resumes, {lost} epochs re-trained");
    assert_eq!(resumes, points.len() as u64);
}

#[test]
fn a_preemption_warning_hands_the_trial_over_with_its_checkpoint_losing_under_checkpoint_every() {
    let dir = tempfile::tempdir().unwrap();
    let name = "warned";
    let every = 5;
    let text = spec_text(name, every);
    let want = reference(dir.path(), name, &text);
    let (port, token) = (free_port(), "t0ken-resume-usr1");
    let state = dir.path().join("state");
    let _coord = coordinator(&state, port, token);
    submit(port, token, &write_spec(dir.path(), "w.toml", &text));
    let weights = dir.path().join("weights");
    let first_log = dir.path().join("first.log");
    let mut first = worker(port, token, &weights, &first_log, 2, &[]);
    // past the checkpoint of epoch 10 by a whole epoch, before the one of 15
    wait_for_checkpoint(&first_log, 0, 10);
    wait_until(120, "the first worker to train epoch 11", || trained_epochs(&first_log).last().is_some_and(|&e| e > 10));
    let warned = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid()), nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eq!(first.wait_for(30), Some(0), "the warned worker hands back and exits");
    let handed = warned.elapsed();
    let first_text = std::fs::read_to_string(&first_log).unwrap();
    assert!(first_text.contains("handed leases back"), "{first_text}");
    let second_log = dir.path().join("second.log");
    let mut second = worker(port, token, &weights, &second_log, 1, &[]);
    assert_eq!(second.wait_for(180), Some(0));
    let second_text = std::fs::read_to_string(&second_log).unwrap();
    let from: u32 = second_text
        .lines()
        .find(|l| l.contains("resuming from its checkpoint"))
        .and_then(|l| l.split("epochs_done=").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("the second worker resumed from a checkpoint");
    let got = state.join("results").join(name);
    wait_until(20, "the export", || cbsweep_tests::sweep_done(&got, 1));
    assert_bit_identical(&got, &want, &weights, &want.join("checkpoints"));
    let (resumes, lost) = interruption_cost(&got);
    eprintln!("SIGUSR1: handed back in {handed:?}, resumed from epoch {from}, {lost} epochs re-trained");
    let trained = *trained_epochs(&first_log).last().unwrap();
    assert!(from > 10, "it handed back the state of the latest epoch boundary, not the periodic checkpoint of epoch 10: {from}");
    assert_eq!(from, trained, "the hand-back is of the last epoch the first worker trained");
    assert_eq!(resumes, 1);
    assert!(lost <= u64::from(every), "no more than checkpoint_every epochs re-trained: {lost}");
}
