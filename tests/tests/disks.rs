//! Full disks: a coordinator whose state disk fills answers with a retryable status and keeps
//! serving, its workers keep their results and retry, and nothing is lost once there is room;
//! a results disk that fills makes the export fail visibly (status says why), leaves no partial
//! file, and the export is tried again until it lands. Real processes with the fake trainer on
//! small tmpfs mounts, so as root only: elsewhere they say why they skip (`cbsweep_tests::skipped`),
//! and fail where every test must run (CI).

use cbsweep_tests::{
    Tmpfs, bin, coordinator_logged, free_port, logged_fake_worker, results_once, skipped, submit, sweep_done, wait_until, write_spec,
};
use std::path::{Path, PathBuf};
use std::process::Command;

fn spec_text(name: &str, seeds: usize, epochs: u32) -> String {
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\nlease_seconds = 30\nmax_attempts = 3\n",
        seeds.join(", ")
    )
}

/// `cbsweep status`'s output.
fn status(port: u16, token: &str) -> String {
    let o = Command::new(bin("cbsweep"))
        .args(["status", "--coordinator", &format!("http://127.0.0.1:{port}")])
        .env("CBSWEEP_TOKEN", token)
        .output()
        .unwrap();
    cbsweep_tests::text(&o)
}

/// Files under `dir` whose name ends in .tmp.
fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(tmp_files(&p));
        } else if p.extension().is_some_and(|x| x == "tmp") {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_full_state_disk_is_a_retryable_status_and_no_result_is_lost() {
    let test = "a_full_state_disk_is_a_retryable_status_and_no_result_is_lost";
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("state"), "4m") {
        Ok(disk) => disk,
        Err(why) => return skipped(test, &why),
    };
    let (port, token) = (free_port(), "t0ken-full-state");
    let (out, coord_log, worker_log) = (dir.path().join("out"), dir.path().join("coordinator.log"), dir.path().join("worker.log"));
    let _coord = coordinator_logged(&disk.0, &out, port, token, "info", &coord_log);
    submit(port, token, &write_spec(dir.path(), "full.toml", &spec_text("fullstate", 30, 4)));
    let mut w = logged_fake_worker(port, token, 20, &worker_log);
    // the worker's own word that results are in (status's table always says "done")
    wait_until(60, "a few trials recorded", || {
        std::fs::read_to_string(&worker_log).unwrap_or_default().matches("result recorded").count() >= 3
    });
    let filler = disk.fill();
    let told = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(&worker_log).unwrap_or_default().contains("coordinator unavailable; retrying")
    });
    assert!(
        told,
        "the worker was told to retry:\n{}\n{}",
        std::fs::read_to_string(&worker_log).unwrap_or_default(),
        std::fs::read_to_string(&coord_log).unwrap_or_default()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(w.0.try_wait().unwrap(), None, "the worker keeps its result and waits for the coordinator");
    let coordinator_said = std::fs::read_to_string(&coord_log).unwrap();
    assert!(coordinator_said.contains("disk full"), "the coordinator says what is wrong:\n{coordinator_said}");
    std::fs::remove_file(filler).unwrap();
    assert_eq!(w.wait_for(120), Some(0), "the worker finishes once there is room: {}", std::fs::read_to_string(&worker_log).unwrap());
    wait_until(30, "the export", || sweep_done(&out.join("fullstate"), 120));
    results_once(&out.join("fullstate"), 120, 4);
}

#[test]
fn a_state_disk_outage_longer_than_the_lease_costs_no_lease_and_no_result() {
    let test = "a_state_disk_outage_longer_than_the_lease_costs_no_lease_and_no_result";
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("state"), "4m") {
        Ok(disk) => disk,
        Err(why) => return skipped(test, &why),
    };
    let (port, token) = (free_port(), "t0ken-outage");
    let (out, coord_log, worker_log) = (dir.path().join("out"), dir.path().join("coordinator.log"), dir.path().join("worker.log"));
    let _coord = coordinator_logged(&disk.0, &out, port, token, "info", &coord_log);
    // 4 trials in one pack, 60 epochs of 250 ms, leases of 2 s kept by each epoch's progress
    let text = "[sweep]\nname = \"outage\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 60\n\
                [run]\npack_size = 4\nlease_seconds = 2\nmax_attempts = 3\n";
    submit(port, token, &write_spec(dir.path(), "outage.toml", text));
    let mut w = logged_fake_worker(port, token, 250, &worker_log);
    wait_until(30, "the pack to train", || std::fs::read_to_string(&worker_log).unwrap_or_default().contains(" training "));
    // The state's disk is full for three lease terms, and a reader (an export, a backup) pins
    // the WAL meanwhile, so every write needs new room: no renewal can be saved.
    let mut reader = cbsweep_tests::pin_wal(&disk.0.join("cbsweep.sqlite"));
    let filler = disk.fill();
    wait_until(20, "a refused write", || {
        std::fs::read_to_string(&worker_log).unwrap_or_default().contains("coordinator unavailable; retrying")
    });
    std::thread::sleep(std::time::Duration::from_secs(6));
    reader.kill9();
    std::fs::remove_file(filler).unwrap();
    assert_eq!(w.wait_for(120), Some(0), "the worker finishes once there is room: {}", std::fs::read_to_string(&worker_log).unwrap());
    wait_until(30, "the export", || sweep_done(&out.join("outage"), 4));
    results_once(&out.join("outage"), 4, 60);
    let said = std::fs::read_to_string(&coord_log).unwrap();
    assert!(said.contains("leases stand still"), "the coordinator says why leases wait:\n{said}");
    assert!(!said.contains("lease expired"), "the coordinator's own outage cost no lease:\n{said}");
    let rows = cbsweep_tests::duckdb(&format!("SELECT max(attempts) AS most FROM '{}'", out.join("outage/trials.parquet").display()));
    assert_eq!(rows[0]["most"].as_u64(), Some(1), "every trial trained once: {rows:?}");
}

#[test]
fn a_failed_export_shows_in_status_leaves_no_partial_file_and_lands_once_there_is_room() {
    let test = "a_failed_export_shows_in_status_leaves_no_partial_file_and_lands_once_there_is_room";
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("out"), "1m") {
        Ok(disk) => disk,
        Err(why) => return skipped(test, &why),
    };
    let filler = disk.fill();
    let (port, token) = (free_port(), "t0ken-full-out");
    let state = dir.path().join("state");
    let _coord = coordinator_logged(&state, &disk.0, port, token, "info", &dir.path().join("coordinator.log"));
    submit(port, token, &write_spec(dir.path(), "export.toml", &spec_text("fullout", 2, 3)));
    let mut w = logged_fake_worker(port, token, 20, &dir.path().join("worker.log"));
    assert_eq!(w.wait_for(120), Some(0));
    wait_until(30, "status to show the failed export", || status(port, token).contains("export FAILED"));
    let said = status(port, token);
    assert!(
        said.contains("[done]") && said.to_lowercase().contains("no space"),
        "status names the sweep done and why its export failed:\n{said}"
    );
    assert_eq!(tmp_files(&disk.0), Vec::<PathBuf>::new(), "no partial table is left behind");
    std::fs::remove_file(filler).unwrap();
    wait_until(30, "the export to land on retry", || sweep_done(&disk.0.join("fullout"), 8));
    results_once(&disk.0.join("fullout"), 8, 3);
    wait_until(10, "status to clear the failure", || !status(port, token).contains("export FAILED"));
}
