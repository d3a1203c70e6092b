//! A real network partition: the coordinator and two workers on three hosts of their own
//! (network namespaces joined by veth pairs, addresses from 10.213.0.0/16 that exist only inside
//! them), one worker's link cut while it trains. Its lease expires, the trial runs on the other
//! worker, the healed worker's late result is refused, and the results hold every cell once.
//! Needs root and iproute2; otherwise the test says why it skips. Nothing is sent outside the
//! namespaces this test makes, and they are deleted when it ends, failed or not.

use cbsweep_tests::{Proc, bin, counts, executions, find_program, is_root, results_once, skipped, wait_until, write_spec};
use std::path::Path;
use std::process::{Command, Stdio};

const TEST: &str = "cut_link_expires_the_lease_and_the_trial_runs_once_elsewhere";
const PORT: u16 = 50051;
const TOKEN: &str = "t0ken-netns";

/// Network namespaces made by this test; deleted on drop (after the processes in them, which
/// are declared later and so dropped first).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: String) -> Result<(), String> {
        ip(&["netns", "add", &name])?;
        self.names.push(name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new(find_program("ip").ok_or("no ip command")?).args(args).output().map_err(|e| e.to_string())?;
    if o.status.success() { Ok(()) } else { Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim())) }
}

/// `PROGRAM ARGS` run inside namespace `ns`, its output appended to `log`.
fn in_ns(ns: &str, program: &Path, args: &[&str], log: &Path) -> Proc {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc::spawn(
        Command::new(find_program("ip").unwrap())
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("CBSWEEP_TOKEN", TOKEN)
            .env("CBSWEEP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
}

/// Trials a worker started and has not finished, from its fake trainer's execution log.
fn unfinished(log: &Path) -> Vec<String> {
    let (starts, dones) = counts(log);
    starts.into_keys().filter(|id| !dones.contains_key(id)).collect()
}

#[test]
fn cut_link_expires_the_lease_and_the_trial_runs_once_elsewhere() {
    if !is_root() {
        return skipped(TEST, "not root (network namespaces need root)");
    }
    if find_program("ip").is_none() {
        return skipped(TEST, "no `ip` command (install iproute2)");
    }
    let tag = std::process::id();
    let (c, w1, w2) = (format!("cbsw{tag}c"), format!("cbsw{tag}w1"), format!("cbsw{tag}w2"));
    let mut ns = Namespaces { names: Vec::new() };
    if let Err(e) = ns.add(c.clone()) {
        return skipped(TEST, &format!("cannot make a network namespace here: {e}"));
    }
    // coordinator host: 10.213.1.1 towards worker 1, 10.213.2.1 towards worker 2
    for (i, w) in [(1, &w1), (2, &w2)] {
        ns.add(w.clone()).unwrap();
        ip(&["-n", &c, "link", "add", &format!("to-w{i}"), "type", "veth", "peer", "name", "uplink", "netns", w]).unwrap();
        ip(&["-n", &c, "addr", "add", &format!("10.213.{i}.1/24"), "dev", &format!("to-w{i}")]).unwrap();
        ip(&["-n", w, "addr", "add", &format!("10.213.{i}.2/24"), "dev", "uplink"]).unwrap();
        ip(&["-n", &c, "link", "set", &format!("to-w{i}"), "up"]).unwrap();
        ip(&["-n", w, "link", "set", "uplink", "up"]).unwrap();
        ip(&["-n", w, "link", "set", "lo", "up"]).unwrap();
    }
    ip(&["-n", &c, "link", "set", "lo", "up"]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let spec = write_spec(
        d,
        "netns.toml",
        "[sweep]\nname = \"netns\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 20\n[run]\npack_size = 1\nlease_seconds = 3\nmax_attempts = 5\n",
    );
    let listen = format!("0.0.0.0:{PORT}");
    let _coordinator =
        in_ns(&c, &bin("cbsweep"), &["coordinator", "--listen", &listen, "--state", state.to_str().unwrap()], &d.join("coordinator.log"));
    let local = format!("http://127.0.0.1:{PORT}");
    wait_until(20, "the coordinator to accept the sweep", || {
        Command::new(find_program("ip").unwrap())
            .args(["netns", "exec", &c])
            .arg(bin("cbsweep"))
            .args(["submit", spec.to_str().unwrap(), "--coordinator", &local])
            .env("CBSWEEP_TOKEN", TOKEN)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let worker = |name: &str, i: u32| {
        let url = format!("http://10.213.{i}.1:{PORT}");
        let exec = d.join(format!("exec-{i}.log"));
        let args = [
            "--coordinator",
            &url,
            "--trainer",
            "fake",
            "--exit-when-drained",
            "--fake-epoch-ms",
            "100",
            "--give-up-after-s",
            "60",
            "--fake-execution-log",
            exec.to_str().unwrap(),
        ];
        (in_ns(name, &bin("cbsweep-worker"), &args, &d.join(format!("worker-{i}.log"))), exec, d.join(format!("worker-{i}.log")))
    };
    let (mut cut_worker, cut_exec, cut_log) = worker(&w1, 1);
    let (mut other_worker, other_exec, _) = worker(&w2, 2);

    // Each trial trains for 2 s; cut worker 1's link while it holds one.
    wait_until(30, "worker 1 to start a trial", || !unfinished(&cut_exec).is_empty());
    ip(&["-n", &w1, "link", "set", "uplink", "down"]).unwrap();
    let held = unfinished(&cut_exec);
    assert_eq!(held.len(), 1, "pack_size 1: one trial in hand: {held:?}");
    let held = held[0].clone();
    wait_until(30, "the cut worker's trial to be leased again, to worker 2", || executions(&other_exec).iter().any(|(id, _)| *id == held));
    ip(&["-n", &w1, "link", "set", "uplink", "up"]).unwrap();

    assert_eq!(other_worker.wait_for(120), Some(0), "worker 2 drains the sweep and exits");
    assert_eq!(cut_worker.wait_for(60), Some(0), "the healed worker finds the sweep drained and exits");
    results_once(&state.join("results/netns"), 8, 20);
    let row = cbsweep_tests::duckdb(&format!(
        "SELECT worker_id, attempts FROM '{}' WHERE trial_id = '{held}'",
        state.join("results/netns/trials.parquet").display()
    ));
    let other_pid = other_worker.pid();
    assert!(
        row[0]["worker_id"].as_str().is_some_and(|w| w.contains(&format!("-{other_pid}-"))),
        "worker 2 (pid {other_pid}) recorded the trial: {row:?}"
    );
    assert!(row[0]["attempts"].as_u64() >= Some(2), "the expired lease counted as an attempt: {row:?}");
    let log = std::fs::read_to_string(&cut_log).unwrap();
    assert!(log.contains("result refused"), "the healed worker's late result was refused, not recorded twice:\n{log}");
    let (_, dones) = counts(&other_exec);
    assert_eq!(dones.get(&held), Some(&1), "worker 2 trained the trial once");
}
