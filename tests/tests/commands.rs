//! What the README promises of the command line, through the real binaries: exit code 69 when no
//! coordinator answers; `retry-failed` and `cancel` (a cancelled sweep's leased trial is
//! revoked, its worker drops it and drains); the fields of `status --json` for live workers,
//! checkpoints, interruptions, throughput and ETA; a worker's second signal (hand back at once,
//! exit 130) and its deadline outside Slurm (hand back, exit 75); `--metrics-access token` and
//! `--allow-network-state`; and a finished sweep run again trains nothing. Fake-trainer workers
//! on loopback.

use cbsweep_tests::{
    Proc, bin, counts, duckdb, executions, fake_worker, free_port, http_get, skipped, submit, text, wait_until, write_spec,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A sweep of `seeds` seeds x 2 architectures on one task, `epochs` long, one trial per pack.
fn spec_text(name: &str, seeds: u32, epochs: u32, run: &str) -> String {
    let seeds = (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{seeds}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\n{run}"
    )
}

/// `cbsweep ARGS --coordinator http://127.0.0.1:PORT` with the token.
fn client(port: u16, token: &str, args: &[&str]) -> Output {
    Command::new(bin("cbsweep"))
        .args(args)
        .args(["--coordinator", &format!("http://127.0.0.1:{port}")])
        .env("CBSWEEP_TOKEN", token)
        .env("CBSWEEP_LOG", "warn")
        .output()
        .unwrap()
}

/// `cbsweep status --json` of one sweep.
fn status(port: u16, token: &str, sweep: &str) -> Value {
    let o = client(port, token, &["status", sweep, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn count(status: &Value, state: &str) -> u64 {
    let counts = status["sweeps"][0]["counts"].as_array().unwrap();
    counts.iter().find(|c| c["state"] == state).map_or(0, |c| c["count"].as_u64().unwrap())
}

/// A fake-trainer worker logging at info to `log` (besides its execution log `exec`).
fn logged_worker(port: u16, token: &str, exec: &Path, log: &Path, epoch_ms: u64, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(bin("cbsweep-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--trainer", "fake", "--exit-when-drained"])
            .args(["--fake-epoch-ms", &epoch_ms.to_string(), "--fake-execution-log", exec.to_str().unwrap()])
            .args(["--give-up-after-s", "60"])
            .args(extra)
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    )
}

fn signal(p: &Proc, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), sig).unwrap();
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn client_commands_exit_69_when_no_coordinator_answers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "s.toml", &spec_text("s", 1, 1, ""));
    let port = free_port();
    for args in [&["status"][..], &["submit", spec.to_str().unwrap()], &["cancel", "s"], &["retry-failed", "s"]] {
        let o = client(port, "t0ken", args);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&format!("cannot reach the coordinator at http://127.0.0.1:{port}")), "{args:?}: {}", text(&o));
    }
}

#[test]
fn retry_failed_requeues_the_failed_trials_and_cancel_revokes_a_leased_one() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-commands");
    let _coord = cbsweep_tests::coordinator(&dir.path().join("state"), port, token);
    let exec = dir.path().join("exec.log");

    // seed 1 fails its only attempt; retry-failed queues those two again, and only those
    submit(port, token, &write_spec(dir.path(), "rf.toml", &spec_text("rf", 2, 2, "max_attempts = 1\n")));
    let mut w = fake_worker(port, token, &exec, 5, &["--fake-fail-seeds", "1"]);
    assert_eq!(w.wait_for(60), Some(0), "the worker drains the sweep");
    let s = status(port, token, "rf");
    assert_eq!((count(&s, "done"), count(&s, "failed"), s["sweeps"][0]["state"].as_str()), (2, 2, Some("done")), "{s}");
    let o = client(port, token, &["retry-failed", "rf"]);
    assert!(o.status.success() && text(&o).contains("sweep rf: 2 trials back in the queue"), "{}", text(&o));
    assert_eq!(count(&status(port, token, "rf"), "pending"), 2);
    let mut w = fake_worker(port, token, &exec, 5, &[]);
    assert_eq!(w.wait_for(60), Some(0), "a worker drains the requeued trials");
    let s = status(port, token, "rf");
    assert_eq!((count(&s, "done"), count(&s, "failed")), (4, 0), "{s}");
    let (starts, dones) = counts(&exec);
    assert_eq!(dones.len(), 4, "{dones:?}");
    assert_eq!(starts.values().filter(|&&n| n == 2).count(), 2, "the two failed trials ran again, the others did not: {starts:?}");

    // cancel while a trial is leased: the worker's lease is revoked and it drops the trial
    let exec = dir.path().join("cancel-exec.log");
    let log = dir.path().join("cancel-worker.log");
    submit(port, token, &write_spec(dir.path(), "cx.toml", &spec_text("cx", 2, 1000, "")));
    let mut w = logged_worker(port, token, &exec, &log, 50, &[]);
    wait_until(30, "the worker to train a trial of cx", || !executions(&exec).is_empty());
    let o = client(port, token, &["cancel", "cx"]);
    assert!(o.status.success() && text(&o).contains("sweep cx: cancelled 4 unfinished trials"), "{}", text(&o));
    assert_eq!(w.wait_for(60), Some(0), "the worker drops the revoked trial and drains: {}", read(&log));
    assert!(read(&log).contains("lease revoked; result dropped"), "{}", read(&log));
    assert!(executions(&exec).iter().all(|(_, done)| !done), "no cancelled trial ran to its end: {:?}", executions(&exec));
    let s = status(port, token, "cx");
    assert_eq!((s["sweeps"][0]["state"].as_str(), count(&s, "cancelled"), count(&s, "leased")), (Some("cancelled"), 4, 0), "{s}");
}

#[test]
fn status_json_shows_workers_checkpoints_interruptions_throughput_and_eta() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-status-json");
    let state = dir.path().join("state");
    let _coord = cbsweep_tests::coordinator(&state, port, token);
    submit(port, token, &write_spec(dir.path(), "js.toml", &spec_text("js", 3, 10, "checkpoint_every = 2\n")));
    let (exec, log) = (dir.path().join("exec.log"), dir.path().join("a.log"));

    // a worker holding a trial whose checkpoint the coordinator has
    let mut a = logged_worker(port, token, &exec, &log, 300, &[]);
    let s = {
        let mut last = Value::Null;
        wait_until(60, "a running trial with a checkpoint", || {
            last = status(port, token, "js");
            last["sweeps"][0]["oldest_checkpoint_age_s"].is_number()
        });
        last
    };
    let sweep = &s["sweeps"][0];
    assert_eq!((count(&s, "leased"), sweep["running_without_checkpoint"].as_u64()), (1, Some(0)), "{s}");
    assert!(sweep["oldest_checkpoint_age_s"].as_f64().unwrap() >= 0.0, "{s}");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s}");
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    assert_eq!((workers[0]["hostname"].as_str(), workers[0]["device"].as_str()), (Some(host.trim()), Some("fake")), "{s}");
    assert_eq!(workers[0]["leased"], 1, "{s}");
    assert!(workers[0]["last_seen_ms_ago"].is_u64() && workers[0]["worker"].is_string(), "{s}");
    assert!(sweep["trials_per_minute"].is_null() && sweep["eta_seconds"].is_null(), "no pace before two trials finished: {s}");

    // pre-empted: it hands its trial back with the checkpoint, and the next worker resumes it
    signal(&a, nix::sys::signal::Signal::SIGUSR1);
    assert_eq!(a.wait_for(30), Some(0), "{}", read(&log));
    let mut b = logged_worker(port, token, &exec, &dir.path().join("b.log"), 100, &[]);
    // throughput and ETA once two trials have finished, while others are open
    let mut paced = Value::Null;
    wait_until(60, "status to give a pace", || {
        paced = status(port, token, "js");
        paced["sweeps"][0]["trials_per_minute"].is_number() || paced["sweeps"][0]["state"] == "done"
    });
    let sweep = &paced["sweeps"][0];
    assert!(sweep["trials_per_minute"].as_f64().is_some_and(|r| r > 0.0), "a pace while trials were open: {paced}");
    assert!(sweep["eta_seconds"].as_f64().is_some_and(|e| e > 0.0), "{paced}");
    assert!(count(&paced, "done") >= 2 && count(&paced, "pending") + count(&paced, "leased") >= 1, "{paced}");
    assert_eq!(b.wait_for(60), Some(0));

    // the interruption's cost, as trials.parquet has it
    let done = status(port, token, "js");
    let sweep = &done["sweeps"][0];
    assert_eq!((sweep["state"].as_str(), sweep["resumes"].as_u64()), (Some("done"), Some(1)), "{done}");
    assert!(sweep["eta_seconds"].is_null() && sweep["oldest_checkpoint_age_s"].is_null(), "nothing open: {done}");
    wait_until(30, "the export", || cbsweep_tests::sweep_done(&state.join("results/js"), 6));
    let rows = duckdb(&format!(
        "SELECT sum(resumes) AS resumes, sum(epochs_lost) AS lost FROM '{}'",
        state.join("results/js/trials.parquet").display()
    ));
    assert_eq!(rows[0]["resumes"].as_u64(), Some(1), "{rows:?}");
    assert_eq!(rows[0]["lost"].as_u64(), sweep["epochs_lost"].as_u64(), "{rows:?} {done}");
}

#[test]
fn a_workers_second_signal_hands_its_trial_back_at_once_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-second-signal");
    let _coord = cbsweep_tests::coordinator(&dir.path().join("state"), port, token);
    submit(port, token, &write_spec(dir.path(), "ss.toml", &spec_text("ss", 1, 2, "")));
    // epochs of a minute: the first signal's stop waits for the epoch; the second does not
    let (exec, log) = (dir.path().join("exec.log"), dir.path().join("worker.log"));
    let mut w = logged_worker(port, token, &exec, &log, 60_000, &[]);
    wait_until(30, "the worker to train", || !executions(&exec).is_empty());
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    wait_until(30, "the worker to take the first signal", || read(&log).contains("signal received"));
    signal(&w, nix::sys::signal::Signal::SIGINT);
    assert_eq!(w.wait_for(30), Some(130), "{}", read(&log));
    assert!(read(&log).contains("second signal") && read(&log).contains("the pack's trials go back without checkpoints"), "{}", read(&log));
    let s = status(port, token, "ss");
    assert_eq!((count(&s, "leased"), count(&s, "pending")), (0, 2), "its trial is back in the queue: {s}");
}

#[test]
fn a_worker_past_its_deadline_outside_slurm_hands_back_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-deadline");
    let _coord = cbsweep_tests::coordinator(&dir.path().join("state"), port, token);
    submit(port, token, &write_spec(dir.path(), "dl.toml", &spec_text("dl", 1, 1000, "checkpoint_every = 1\n")));
    let (exec, log) = (dir.path().join("exec.log"), dir.path().join("worker.log"));
    // no SLURM_JOB_ID: the deadline is the flag's alone
    let mut w = Proc::spawn(
        Command::new(bin("cbsweep-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--trainer", "fake", "--fake-epoch-ms", "50"])
            .args(["--fake-execution-log", exec.to_str().unwrap(), "--deadline", "+8s", "--deadline-margin-s", "5"])
            .env_remove("SLURM_JOB_ID")
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    assert_eq!(w.wait_for(60), Some(75), "{}", read(&log));
    assert!(read(&log).contains("the allocation's end is near"), "{}", read(&log));
    let s = status(port, token, "dl");
    assert_eq!((count(&s, "leased"), count(&s, "done")), (0, 0), "what it held is back in the queue: {s}");
}

#[test]
fn metrics_ask_for_the_token_when_the_coordinator_is_started_with_metrics_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http, token) = (free_port(), free_port(), "t0ken-metrics");
    let haddr = format!("127.0.0.1:{http}");
    let _coord = Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--http-listen", &haddr, "--metrics-access", "token"])
            .args(["--state", dir.path().join("state").to_str().unwrap()])
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(20, "the HTTP side", || http_get(&haddr, "/healthz").is_some());
    assert_eq!(http_get(&haddr, "/healthz").map(|r| r.0), Some(200), "the probes stay open");
    assert_eq!(http_get(&haddr, "/metrics").map(|r| r.0), Some(401), "no token, no metrics");
    let with = |auth: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&haddr).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    assert!(with("Bearer wrong").starts_with("HTTP/1.1 401"));
    let ok = with(&format!("Bearer {token}"));
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("cbsweep_leases_active"), "{ok}");
}

/// A library that makes statfs(2) say NFS for every path under $CBSWEEP_TEST_NFS_UNDER (loaded
/// with LD_PRELOAD): a network filesystem where none can be mounted.
const NFS_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
static int under(const char *path) {
    const char *nfs = getenv("CBSWEEP_TEST_NFS_UNDER");
    return nfs && path && strncmp(path, nfs, strlen(nfs)) == 0;
}
int statfs(const char *path, struct statfs *buf) {
    int (*real)(const char *, struct statfs *) = dlsym(RTLD_NEXT, "statfs");
    int r = real(path, buf);
    if (r == 0 && under(path)) buf->f_type = 0x6969;
    return r;
}
int statfs64(const char *path, struct statfs64 *buf) {
    int (*real)(const char *, struct statfs64 *) = dlsym(RTLD_NEXT, "statfs64");
    int r = real(path, buf);
    if (r == 0 && under(path)) buf->f_type = 0x6969;
    return r;
}
"#;

#[test]
fn a_state_on_a_network_filesystem_is_refused_unless_allowed_from_the_command_line() {
    let test = "a_state_on_a_network_filesystem_is_refused_unless_allowed_from_the_command_line";
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("nfs-shim.so");
    std::fs::write(dir.path().join("nfs-shim.c"), NFS_SHIM).unwrap();
    let cc = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&shim).arg(dir.path().join("nfs-shim.c")).arg("-ldl").output();
    match cc {
        Ok(o) if o.status.success() => {}
        Ok(o) => return skipped(test, &format!("cannot build the statfs shim: {}", text(&o))),
        Err(e) => return skipped(test, &format!("no C compiler (cc) to build the statfs shim: {e}")),
    }
    let nfs = dir.path().join("nfs");
    let on_nfs = |args: &[&str], env: Option<(&str, &str)>| {
        let mut c = Command::new(bin("cbsweep"));
        c.args(args)
            .env("LD_PRELOAD", &shim)
            .env("CBSWEEP_TEST_NFS_UNDER", &nfs)
            .env("CBSWEEP_TOKEN", "t0ken-nfs")
            .env("CBSWEEP_LOG", "warn")
            .env_remove("CBSWEEP_ALLOW_NETWORK_STATE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c
    };
    let spec = write_spec(dir.path(), "nfs.toml", &spec_text("nfs", 1, 1, ""));
    let out = nfs.join("out");
    let run = |extra: &[&str], env| {
        let mut args = vec!["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()];
        args.extend(extra);
        on_nfs(&args, env).output().unwrap()
    };
    let o = run(&[], None);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is on a network filesystem (NFS)") && text(&o).contains("--allow-network-state"), "{}", text(&o));
    let o = run(&["--allow-network-state"], None);
    assert!(o.status.success(), "allowed by the flag: {}", text(&o));
    assert!(text(&o).contains("state on a network filesystem, as allowed"), "and warned about: {}", text(&o));

    // the coordinator: refused, and allowed by the environment
    let state = nfs.join("state");
    let state_s = state.to_str().unwrap();
    let mut refused =
        Proc::spawn(&mut on_nfs(&["coordinator", "--listen", &format!("127.0.0.1:{}", free_port()), "--state", state_s], None));
    assert_eq!(refused.wait_for(30), Some(1), "the coordinator refuses the state");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _allowed =
        Proc::spawn(&mut on_nfs(&["coordinator", "--listen", &listen, "--state", state_s], Some(("CBSWEEP_ALLOW_NETWORK_STATE", "1"))));
    submit(port, "t0ken-nfs", &spec);
}

#[test]
fn a_finished_sweep_run_again_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "again.toml", &spec_text("again", 2, 3, ""));
    let (out, exec) = (dir.path().join("out"), dir.path().join("exec.log"));
    let run = || {
        Command::new(bin("cbsweep"))
            .args(["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()])
            .args(["--worker-arg=--fake-epoch-ms=5", &format!("--worker-arg=--fake-execution-log={}", exec.display())])
            .env("CBSWEEP_LOG", "warn")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    let first = executions(&exec);
    assert_eq!(first.iter().filter(|(_, done)| *done).count(), 4, "{first:?}");
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(executions(&exec), first, "the second run trained nothing");
    assert!(text(&o).contains("sweep again: 4 trials, 4 done, 0 failed"), "{}", text(&o));
}
