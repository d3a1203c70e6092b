//! The coordinator's state under damage: an emptied or corrupted state file in a folder that
//! held a state is refused at start, naming the file and what to do, and a backup taken while
//! a coordinator serves the state (a worker training another sweep on it) puts every sweep
//! back: the finished one runs nothing again. Real `cbsweep` processes with the fake trainer.

use cbsweep_tests::{bin, coordinator, duckdb, executions, fake_worker, free_port, submit, text, wait_until, write_spec};
use std::process::{Command, Output};

const SPEC: &str = "[sweep]\nname = \"st\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 3\n[run]\npack_size = 1\n";

fn cbsweep(args: &[&str]) -> Output {
    Command::new(bin("cbsweep")).args(args).env("CBSWEEP_LOG", "warn").output().unwrap()
}

#[test]
fn a_damaged_state_is_refused_at_start_and_a_backup_restores_every_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "st.toml", SPEC);
    let out = dir.path().join("out");
    let (spec_s, out_s) = (spec.to_str().unwrap(), out.to_str().unwrap());
    let log = dir.path().join("exec.log");
    let log_arg = format!("--worker-arg=--fake-execution-log={}", log.display());
    let run =
        || cbsweep(&["run", spec_s, "--workers", "1", "--trainer", "fake", "--worker-arg=--fake-epoch-ms=5", &log_arg, "--out", out_s]);
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(executions(&log).iter().filter(|(_, done)| *done).count(), 4, "the run trained its 4 trials");

    // The backup, taken while a coordinator serves the state and a worker trains another sweep
    // on it (every epoch a write).
    let backup = dir.path().join("backup.sqlite");
    {
        let (port, token) = (free_port(), "t0ken-backup");
        let _coord = coordinator(&out.join(".cbsweep"), port, token);
        submit(
            port,
            token,
            &write_spec(dir.path(), "busy.toml", &SPEC.replace("\"st\"", "\"busy\"").replace("epochs = 3", "epochs = 200")),
        );
        let busy_log = dir.path().join("busy.log");
        let _worker = fake_worker(port, token, &busy_log, 20, &[]);
        wait_until(30, "the worker to train the other sweep", || !executions(&busy_log).is_empty());
        let o = cbsweep(&["backup", backup.to_str().unwrap(), "--out", out_s]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(executions(&busy_log).iter().all(|(_, done)| !done), "the backup was taken while the worker trained");
    }

    // Emptied: every sweep would be gone; refused, naming the file and the way back.
    let db = out.join(".cbsweep/cbsweep.sqlite");
    for side in ["cbsweep.sqlite-wal", "cbsweep.sqlite-shm"] {
        let _ = std::fs::remove_file(out.join(".cbsweep").join(side));
    }
    std::fs::write(&db, b"").unwrap();
    let o = run();
    assert!(!o.status.success(), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("cbsweep.sqlite is empty (0 bytes)") && msg.contains("cbsweep restore"), "{msg}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing was written over it");

    // A corrupted page (in a state just restored, so the file holds every page and no WAL
    // does): refused at start instead of failing call after call.
    let restore = || cbsweep(&["restore", backup.to_str().unwrap(), "--out", out_s]);
    let o = restore();
    assert!(o.status.success(), "{}", text(&o));
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    assert!(n > 4 * 4096, "{n}");
    for b in &mut bytes[4096..n / 2] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let o = run();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cbsweep.sqlite is damaged") || text(&o).contains("cannot be read"), "{}", text(&o));

    // Restored from the backup: the sweep is whole again, and nothing reruns; the other sweep
    // is back too.
    let o = restore();
    assert!(o.status.success(), "{}", text(&o));
    let before = executions(&log).len();
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(executions(&log).len(), before, "no trial ran again: {:?}", &executions(&log)[before..]);
    let rows =
        duckdb(&format!("SELECT count(*) FILTER (WHERE status = 'done') AS done FROM '{}'", out.join("st/trials.parquet").display()));
    assert_eq!(rows[0]["done"].as_u64(), Some(4), "{rows:?}");
    let o = cbsweep(&["export", "busy", "--out", out_s]);
    assert!(o.status.success(), "the backup holds the sweep that was running: {}", text(&o));
    let busy = duckdb(&format!("SELECT count(*) AS n FROM '{}'", out.join("busy/trials.parquet").display()));
    assert_eq!(busy[0]["n"].as_u64(), Some(4), "{busy:?}");

    // A restore is refused while a coordinator holds the folder.
    let _coord = coordinator(&out.join(".cbsweep"), free_port(), "t0ken-state");
    cbsweep_tests::wait_until(20, "the coordinator to hold the state", || {
        std::fs::read_to_string(out.join(".cbsweep/lock")).is_ok_and(|h| h.contains("coordinator"))
    });
    let o = restore();
    assert!(!o.status.success() && text(&o).contains("is in use by"), "{}", text(&o));
}
