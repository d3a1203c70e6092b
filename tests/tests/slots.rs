//! One worker process with several slots (`--slots`, two packs at once on one device, as on a
//! GPU a pack of small trials cannot fill): real coordinator and worker processes on loopback,
//! the fake trainer's execution log to see what ran when.

use cbsweep_tests::{coordinator, counts, executions, fake_worker, free_port, results_once, submit, wait_until, write_spec};

fn spec_text(name: &str, seeds: usize, epochs: u32, lease_s: u32) -> String {
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\nlease_seconds = {lease_s}\n",
        seeds.join(", ")
    )
}

/// The most trials the execution log shows running at once (a start counts until its trial's
/// "done" line).
fn most_at_once(log: &std::path::Path) -> usize {
    let (mut running, mut most) = (std::collections::HashSet::new(), 0);
    for (id, done) in executions(log) {
        if done {
            running.remove(&id);
        } else {
            running.insert(id);
        }
        most = most.max(running.len());
    }
    most
}

#[test]
fn a_worker_with_two_slots_trains_two_packs_at_once_and_each_cell_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-two-slots");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let _coord = coordinator(&state, port, token);
    let spec = write_spec(dir.path(), "slots.toml", &spec_text("slots", 2, 6, 30));
    submit(port, token, &spec);
    let mut worker = fake_worker(port, token, &log, 60, &["--slots", "2", "--max-pack", "1"]);
    assert_eq!(worker.wait_for(120), Some(0), "the worker drains the sweep and exits");
    results_once(&state.join("results/slots"), 8, 6);
    let (starts, dones) = counts(&log);
    assert!(starts.values().all(|&n| n == 1) && dones.len() == 8 && dones.values().all(|&n| n == 1), "{starts:?} {dones:?}");
    // pack_size 1: one slot trains one trial at a time, so two at once means both slots trained
    assert_eq!(most_at_once(&log), 2, "two slots, one trial each, at once: {:?}", executions(&log));
}

#[test]
fn a_signalled_worker_hands_back_every_slots_trial_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-slots-signal");
    let state = dir.path().join("state");
    let log = dir.path().join("exec.log");
    let _coord = coordinator(&state, port, token);
    // leases of 10 minutes: only a hand-back lets another worker have these trials in time
    let spec = write_spec(dir.path(), "slotsig.toml", &spec_text("slotsig", 2, 40, 600));
    submit(port, token, &spec);
    let mut first = fake_worker(port, token, &log, 100, &["--slots", "2", "--max-pack", "1"]);
    wait_until(60, "both slots to start a trial", || most_at_once(&log) == 2);
    let held: Vec<String> = executions(&log).into_iter().map(|(id, _)| id).collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(first.wait_for(30), Some(0), "the signalled worker hands back and exits 0");
    let mut second = fake_worker(port, token, &log, 10, &["--max-pack", "1"]);
    assert_eq!(second.wait_for(120), Some(0), "the second worker gets every trial, the handed-back ones included, and drains");
    results_once(&state.join("results/slotsig"), 8, 40);
    let (starts, dones) = counts(&log);
    assert!(dones.len() == 8 && dones.values().all(|&n| n == 1), "each trial finished once: {dones:?}");
    assert!(held.iter().all(|id| starts[id] == 2), "both handed-back trials ran again: {starts:?}");
}
