//! Leases run on the coordinator's own monotonic clock: a step of its wall clock (here through
//! libfaketime, preloaded into the coordinator alone) neither keeps a dead worker's lease alive
//! nor expires a live worker's. Real processes with the fake trainer; without libfaketime the
//! test says why it skips (`cbsweep_tests::skipped`), and fails where every test must run (CI).

use cbsweep_tests::{
    Faketime, Proc, coordinator_command, free_port, logged_fake_worker, skipped, submit, sweep_done, wait_until, write_spec,
};
use std::path::Path;

fn spec_text(name: &str, epochs: u32) -> String {
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [0]\n[train]\nepochs = {epochs}\n\
         [run]\npack_size = 1\nlease_seconds = 3\nmax_attempts = 5\n"
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_step_of_the_coordinators_wall_clock_neither_keeps_nor_expires_a_lease() {
    let test = "a_step_of_the_coordinators_wall_clock_neither_keeps_nor_expires_a_lease";
    let dir = tempfile::tempdir().unwrap();
    let clock = match Faketime::new(dir.path()) {
        Ok(clock) => clock,
        Err(why) => return skipped(test, &why),
    };
    let (port, token) = (free_port(), "t0ken-clock");
    let (state, out, coord_log) = (dir.path().join("state"), dir.path().join("out"), dir.path().join("coordinator.log"));
    let _coord = Proc::spawn(clock.apply(&mut coordinator_command(&state, &out, port, token, "info", &coord_log)));

    // A worker takes the trial and dies; the clock goes back an hour. Its 3 s lease must still
    // expire 3 s later by the monotonic clock (by the wall clock it would take an hour and 3 s).
    submit(port, token, &write_spec(dir.path(), "back.toml", &spec_text("clockback", 2)));
    let dead_log = dir.path().join("dead.log");
    let mut dead = logged_fake_worker(port, token, 600_000, &dead_log);
    wait_until(30, "the first worker to take the trial", || read(&dead_log).contains(" training "));
    dead.kill9();
    clock.step("-1h");
    let started = std::time::Instant::now();
    let mut rescuer = logged_fake_worker(port, token, 20, &dir.path().join("rescuer.log"));
    wait_until(30, "the dead worker's lease to expire and another worker to finish the trial", || sweep_done(&out.join("clockback"), 1));
    let took = started.elapsed();
    assert_eq!(rescuer.wait_for(30), Some(0), "the second worker drains and exits");
    println!("with the wall clock an hour back, the dead worker's lease expired and its trial was done {took:?} later");

    // A live worker trains past its lease term, renewing it with each epoch's progress; the
    // clock jumps two hours ahead. Its lease must not expire under it.
    submit(port, token, &write_spec(dir.path(), "ahead.toml", &spec_text("clockahead", 8)));
    let live_log = dir.path().join("live.log");
    let mut live = logged_fake_worker(port, token, 700, &live_log);
    wait_until(30, "the live worker to take the trial", || read(&live_log).contains(" training "));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    clock.step("+2h");
    assert_eq!(live.wait_for(60), Some(0), "the live worker finishes: {}", read(&live_log));
    wait_until(30, "the export", || sweep_done(&out.join("clockahead"), 1));
    let said = read(&coord_log);
    assert_eq!(said.matches("lease expired").count(), 1, "only the dead worker's lease expired:\n{said}");
    assert!(read(&live_log).contains("result recorded"), "the live worker's result counts: {}", read(&live_log));
    let rows = cbsweep_tests::duckdb(&format!("SELECT attempts FROM '{}'", out.join("clockahead/trials.parquet").display()));
    assert_eq!(rows[0]["attempts"].as_u64(), Some(1), "trained once: {rows:?}");
}
