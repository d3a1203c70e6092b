//! A seeded chaos test over real processes with the fake trainer: for many rounds, kill -9
//! workers and the coordinator at random moments, stop workers (they hand their leases back
//! with checkpoints), let leases expire, restart everything, fill the state's small tmpfs for
//! up to twice the lease term while a reader pins its WAL (as root), and step the coordinator's
//! wall clock by hours either way (libfaketime); where either is missing those rounds are left
//! out, saying so, which fails in CI. At the end every cell is recorded exactly once, every
//! result a coordinator acknowledged is the one in the tables, and no trial's attempt number
//! ever went down. The seed is printed; CBSWEEP_CHAOS_SEED replays a run.

use cbsweep_tests::{
    Faketime, Proc, Tmpfs, coordinator_command, free_port, logged_fake_worker, results_once, skipped, submit, sweep_done, wait_until,
    write_spec,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A small deterministic generator (splitmix64): the same seed, the same rounds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(&format!(" {key}=")).nth(1)?.split_whitespace().next()
}

/// (timestamp, trial, attempt) of every lease the workers' logs show (`training ...`), and
/// (trial, attempt) of every result a coordinator acknowledged (`result recorded ...`).
fn read_logs(logs: &[PathBuf]) -> (Vec<(String, String, u32)>, Vec<(String, u32)>) {
    let (mut leases, mut acked) = (Vec::new(), Vec::new());
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            let (Some(trial), Some(attempt)) = (field(line, "trial_id"), field(line, "attempt").and_then(|a| a.parse().ok())) else {
                continue;
            };
            if line.contains(" training ") {
                leases.push((line.split_whitespace().next().unwrap_or("").to_string(), trial.to_string(), attempt));
            } else if line.contains("result recorded") {
                acked.push((trial.to_string(), attempt));
            }
        }
    }
    leases.sort();
    (leases, acked)
}

#[test]
fn chaos_every_cell_once_every_acknowledged_result_kept_attempts_only_grow() {
    let seed: u64 = std::env::var("CBSWEEP_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_201);
    println!("chaos seed {seed} (CBSWEEP_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // the state lives on a small tmpfs that rounds fill; without one those rounds are left out,
    // which only a run outside CI may do (`skipped`)
    let disk = Tmpfs::mount(&state, "8m")
        .map_err(|why| skipped("chaos_every_cell_once_every_acknowledged_result_kept_attempts_only_grow (its disk-filling rounds)", &why))
        .ok();
    let mounted = disk.is_some();
    // the coordinator's wall clock, stepped by rounds; without libfaketime those are left out
    let clock = Faketime::new(dir.path())
        .map_err(|why| skipped("chaos_every_cell_once_every_acknowledged_result_kept_attempts_only_grow (its clock-step rounds)", &why))
        .ok();
    let out = dir.path().join("out");
    let (port, token) = (free_port(), "t0ken-chaos");
    let coord_log = dir.path().join("coordinator.log");
    let start_coordinator = || {
        let mut cmd = coordinator_command(&state, &out, port, token, "warn", &coord_log);
        Proc::spawn(match &clock {
            Some(clock) => clock.apply(&mut cmd),
            None => &mut cmd,
        })
    };
    let mut coord = start_coordinator();
    let text = "[sweep]\nname = \"chaos\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1, 2, 3, 4, 5]\n\
                [train]\nepochs = 30\n[run]\npack_size = 2\nlease_seconds = 2\nmax_attempts = 100\ncheckpoint_every = 2\n";
    submit(port, token, &write_spec(dir.path(), "chaos.toml", text));
    let mut logs: Vec<PathBuf> = Vec::new();
    let new_worker = |logs: &mut Vec<PathBuf>| {
        let log = dir.path().join(format!("worker-{}.log", logs.len()));
        logs.push(log.clone());
        logged_fake_worker(port, token, 100, &log)
    };
    let mut workers: Vec<Proc> = (0..3).map(|_| new_worker(&mut logs)).collect();
    let mut actions = Vec::new();
    // the kinds of round this host can play: 0-3 always, 4 with a tmpfs, 5 with libfaketime
    let kinds: Vec<u64> = (0..6).filter(|k| *k < 4 || (*k == 4 && mounted) || (*k == 5 && clock.is_some())).collect();
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(200 + rng.below(600)));
        let k = rng.below(workers.len() as u64) as usize;
        match kinds[rng.below(kinds.len() as u64) as usize] {
            0 => {
                actions.push("kill -9 a worker");
                workers[k].kill9();
                workers[k] = new_worker(&mut logs);
            }
            1 => {
                actions.push("SIGTERM a worker (hand back with checkpoints)");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(workers[k].pid()), nix::sys::signal::Signal::SIGTERM);
                let _ = workers[k].wait_for(10);
                workers[k] = new_worker(&mut logs);
            }
            2 => {
                actions.push("kill -9 the coordinator");
                coord.kill9();
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                coord = start_coordinator();
            }
            3 => {
                actions.push("kill -9 a worker, its leases left to expire");
                workers[k].kill9();
                std::thread::sleep(Duration::from_millis(2500));
                workers[k] = new_worker(&mut logs);
            }
            4 => {
                // a reader pins the WAL, so that every write needs room: none can be saved
                // until the disk has room again, for up to twice the lease term
                actions.push("fill the state's disk for up to two lease terms");
                let mut reader = cbsweep_tests::pin_wal(&state.join("cbsweep.sqlite"));
                let filler = disk.as_ref().map(Tmpfs::fill).expect("a tmpfs to fill");
                std::thread::sleep(Duration::from_millis(500 + rng.below(3500)));
                reader.kill9();
                std::fs::remove_file(&filler).unwrap();
            }
            _ => {
                actions.push("step the coordinator's wall clock");
                let offsets = ["-1h", "+1h", "-10m", "+3h", "+0"];
                clock.as_ref().expect("libfaketime").step(offsets[rng.below(offsets.len() as u64) as usize]);
            }
        }
    }
    println!("rounds: {actions:?}");
    // let it finish: fresh workers if the old ones gave up
    wait_until(180, "the sweep to finish", || {
        for w in &mut workers {
            if w.0.try_wait().ok().flatten().is_some_and(|st| !st.success()) {
                *w = new_worker(&mut logs);
            }
        }
        sweep_done(&out.join("chaos"), 24)
    });
    for w in &mut workers {
        assert_eq!(w.wait_for(60), Some(0), "workers drain and exit");
    }
    results_once(&out.join("chaos"), 24, 30);

    let (leases, acked) = read_logs(&logs);
    // the logs were read at all: every cell was leased at least once
    let leased: std::collections::HashSet<&str> = leases.iter().map(|(_, trial, _)| trial.as_str()).collect();
    assert_eq!(leased.len(), 24, "a lease line for every cell in the workers' logs ({} lines)", leases.len());
    let mut last: HashMap<&str, u32> = HashMap::new();
    for (at, trial, attempt) in &leases {
        if let Some(&before) = last.get(trial.as_str()) {
            assert!(*attempt > before, "trial {trial}'s attempt went from {before} to {attempt} (at {at})");
        }
        last.insert(trial, *attempt);
    }
    let rows = cbsweep_tests::duckdb(&format!("SELECT trial_id, attempts FROM '{}'", out.join("chaos/trials.parquet").display()));
    let final_attempt: HashMap<String, u64> =
        rows.iter().map(|r| (r["trial_id"].as_str().unwrap().to_string(), r["attempts"].as_u64().unwrap())).collect();
    assert!(!acked.is_empty());
    for (trial, attempt) in &acked {
        assert_eq!(
            final_attempt.get(trial),
            Some(&u64::from(*attempt)),
            "the acknowledged result of {trial} (attempt {attempt}) is the recorded one"
        );
    }
    println!("{} leases, {} acknowledged results, state on tmpfs: {mounted}", leases.len(), acked.len());
}
