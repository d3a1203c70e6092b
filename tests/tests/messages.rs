//! What the command line says when it is used wrong, through the real binaries: each message
//! names what is wrong (the field, the value, the file) and what to do. A resubmission that keeps
//! cells or changes `[run]`; an empty token file; more workers than cores, and none; a trial
//! larger than the machine; a read-only state exported and backed up; a worker or client
//! pointed at the wrong port, the wrong CA or the wrong scheme.

use cbsweep_tests::{Proc, Tmpfs, bin, free_port, skipped, submit, text, write_spec};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A sweep of `seeds` seeds x 2 architectures on one task, `epochs` long, one trial per pack.
fn spec_text(name: &str, seeds: u32, epochs: u32, run: &str) -> String {
    let seeds = (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{seeds}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\n{run}"
    )
}

/// `cbsweep ARGS` with `envs`, output captured.
fn cbsweep(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(bin("cbsweep")).args(args).envs(envs.iter().copied()).env("CBSWEEP_LOG", "warn").output().unwrap()
}

#[test]
fn a_resubmission_says_which_stored_cells_stay_and_which_run_settings_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), "t0ken-resubmit");
    let _coord = cbsweep_tests::coordinator(&dir.path().join("state"), port, token);
    let url = format!("http://127.0.0.1:{port}");
    submit(port, token, &write_spec(dir.path(), "a.toml", &spec_text("rs", 3, 1, "lease_seconds = 30\n")));
    // two seeds dropped, a longer lease
    let fewer = write_spec(dir.path(), "b.toml", &spec_text("rs", 1, 1, "lease_seconds = 600\n"));
    let o = cbsweep(&["submit", fewer.to_str().unwrap(), "--coordinator", &url], &[("CBSWEEP_TOKEN", token)]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("sweep rs: 6 trials (0 new)"), "{t}");
    assert!(t.contains("sweep rs: run.lease_seconds 30 -> 600 changed: applied"), "{t}");
    assert!(
        t.contains(
            "sweep rs: 4 cells of the stored sweep are not in this spec; they stay (cancel the sweep or use a new name to drop them)"
        ),
        "{t}"
    );
    // the same spec again: nothing to say
    let o = cbsweep(&["submit", fewer.to_str().unwrap(), "--coordinator", &url], &[("CBSWEEP_TOKEN", token)]);
    assert!(o.status.success() && !text(&o).contains("changed") && text(&o).contains("4 cells"), "{}", text(&o));
}

#[test]
fn an_empty_token_file_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, " \n\t\n").unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut coord = Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--state", state.to_str().unwrap()])
            .args(["--token-file", token.to_str().unwrap()])
            .env_remove("CBSWEEP_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    assert_eq!(coord.wait_for(20), Some(1), "the coordinator refuses to start");
    let mut err = String::new();
    std::io::Read::read_to_string(coord.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("token file {} is empty", token.display())) && err.contains("leave out --token-file"), "{err}");
    // a worker and a client with it: refused naming the file, before any call
    let url = format!("http://127.0.0.1:{port}");
    let o = Command::new(bin("cbsweep-worker"))
        .args(["--coordinator", &url, "--trainer", "fake", "--token-file", token.to_str().unwrap(), "--give-up-after-s", "1"])
        .env_remove("CBSWEEP_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains(&format!("token file {} is empty", token.display())), "{}", text(&o));
    let o = cbsweep(&["status", "--coordinator", &url, "--token-file", token.to_str().unwrap()], &[]);
    assert!(!o.status.success() && text(&o).contains(&format!("token file {} is empty", token.display())), "{}", text(&o));
}

#[test]
fn no_workers_is_refused_and_more_workers_than_cores_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "w.toml", &spec_text("w", 1, 1, ""));
    let out = dir.path().join("out");
    let run = |workers: &str| {
        cbsweep(
            &["run", spec.to_str().unwrap(), "--workers", workers, "--trainer", "fake", "--out", out.to_str().unwrap()],
            &[("CBSWEEP_TOKEN", "unused")],
        )
    };
    let o = run("0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a run needs at least one worker: use --workers 1 or more"), "{}", text(&o));
    assert!(!out.exists(), "nothing started");
    let cores = std::thread::available_parallelism().unwrap().get();
    let o = run(&(cores + 1).to_string());
    assert!(o.status.success(), "it goes on: {}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("warning: --workers {} on {cores} core(s)", cores + 1))
            && t.contains("by the memory model")
            && t.contains(&format!("--workers {cores} is usually as fast")),
        "{t}"
    );
    assert!(t.contains(&format!("{} workers", cores + 1)), "as many as asked: {t}");
}

#[test]
fn validate_warns_of_a_trial_larger_than_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "[sweep]\nname = \"huge\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\"]\nseed = [0]\nhidden = [4096]\ngranule = [65536]\npurkinje = [4096]\n[train]\nepochs = 1000\nbatch_size = 4096\nmax_level = 1000\n";
    let o = cbsweep(&["validate", write_spec(dir.path(), "huge.toml", huge).to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(o.status.success(), "a warning, not a refusal: {t}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("warning: one trial of condition [task=dms arch=cbrnn hidden=4096 granule=65536 purkinje=4096"), "{stderr}");
    assert!(stderr.contains("needs about 39.") && stderr.contains(" TiB by the memory model, more than this machine's"), "{stderr}");
    // the study's sizes: nothing to warn of
    let o = cbsweep(&["validate", write_spec(dir.path(), "small.toml", &spec_text("small", 1, 1, "")).to_str().unwrap()], &[]);
    assert!(o.status.success() && !text(&o).contains("warning"), "{}", text(&o));
}

#[test]
fn a_read_only_state_is_exported_and_backed_up_and_one_that_cannot_be_read_is_named() {
    let test = "a_read_only_state_is_exported_and_backed_up_and_one_that_cannot_be_read_is_named";
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "ro.toml", &spec_text("ro", 1, 1, ""));
    let out = dir.path().join("out");
    let o = cbsweep(&["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let made = out.join(".cbsweep/cbsweep.sqlite");
    let side = |db: &Path, s: &str| PathBuf::from(format!("{}{s}", db.display()));
    // the state's Python: `live` commits a change and exits without merging its log (as a killed
    // coordinator leaves it: the write-ahead log and its shared memory beside the state);
    // otherwise it opens and closes the state (the log merged and gone, as after a clean stop)
    let sqlite = |db: &Path, live: bool| {
        let script = "import os, sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('PRAGMA wal_autocheckpoint = 0')\nc.execute(\"UPDATE sweeps SET description = description || '.'\")\nc.commit()\nif sys.argv[2] == 'live': os._exit(0)\nc.close()";
        let o =
            Command::new(cbsweep_tests::python()).args(["-c", script]).arg(db).arg(if live { "live" } else { "merged" }).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let log = std::fs::metadata(side(db, "-wal")).map(|m| m.len()).unwrap_or(0);
        assert_eq!((log > 0, side(db, "-shm").exists()), (live, live), "the log as asked");
    };

    // a read-only disk as root (a tmpfs remounted ro), a folder without write permission otherwise
    let ro = dir.path().join("ro");
    let mount = if cbsweep_tests::is_root() {
        match Tmpfs::mount(&ro, "16m") {
            Ok(m) => Some(m),
            Err(why) => return skipped(test, &why),
        }
    } else {
        None
    };
    let state = ro.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let db = state.join("cbsweep.sqlite");
    let read_only = |on: bool| match &mount {
        Some(m) => m.remount(on),
        None => std::fs::set_permissions(&state, std::fs::Permissions::from_mode(if on { 0o555 } else { 0o755 })).unwrap(),
    };
    let export_and_back_up = |case: &str| {
        let results = dir.path().join(format!("results-{case}"));
        let o = cbsweep(&["export", "ro", "--state", state.to_str().unwrap(), "--out", results.to_str().unwrap()], &[]);
        assert!(o.status.success() && results.join("ro/trials.parquet").is_file(), "{case}: {}", text(&o));
        let backup = dir.path().join(format!("{case}.sqlite"));
        let o = cbsweep(&["backup", backup.to_str().unwrap(), "--state", state.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{case}: {}", text(&o));
        // one file: no temporary file, log or shared memory beside it
        let beside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&format!("{case}.sqlite")))
            .collect();
        assert_eq!(beside, [format!("{case}.sqlite")], "{case}");
    };

    // with a live log
    for s in ["", "-wal", "-shm"] {
        if side(&made, s).exists() {
            std::fs::copy(side(&made, s), side(&db, s)).unwrap();
        }
    }
    sqlite(&db, true);
    read_only(true);
    export_and_back_up("live-log");

    // the log merged and gone, as after a clean stop: SQLite cannot make the shared memory there
    read_only(false);
    sqlite(&db, false);
    read_only(true);
    export_and_back_up("merged");

    // a log with commits but no shared memory: it cannot be read there; the message says what to do
    read_only(false);
    sqlite(&db, true);
    std::fs::remove_file(side(&db, "-shm")).unwrap();
    read_only(true);
    let o = cbsweep(&["export", "ro", "--state", state.to_str().unwrap(), "--out", dir.path().join("x").to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("cannot read coordinator state {}", db.display())) && t.contains("copy the folder somewhere writable"),
        "{t}"
    );
    read_only(false);

    // no state there at all
    let none = dir.path().join("none");
    let o = cbsweep(&["export", "ro", "--state", none.to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(t.contains(&format!("cannot read coordinator state {}: no such file", none.join("cbsweep.sqlite").display())), "{t}");
    assert!(t.contains("--state DIR"), "{t}");
}

/// `cbsweep status` against `url` with `ca` as CBSWEEP_TLS_CA (None: unset).
fn status_at(url: &str, ca: Option<&Path>, token: &str) -> String {
    let mut c = Command::new(bin("cbsweep"));
    c.args(["status", "--coordinator", url]).env("CBSWEEP_TOKEN", token).env_remove("CBSWEEP_TLS_CA");
    if let Some(ca) = ca {
        c.env("CBSWEEP_TLS_CA", ca);
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(69), "{url}: {:?} {}", o.status, text(&o));
    text(&o)
}

/// A fake worker against `url` with `ca`: what it says as it exits (at once, not after retries).
fn worker_at(url: &str, ca: &Path, token: &str) -> String {
    let started = std::time::Instant::now();
    let o = Command::new(bin("cbsweep-worker"))
        .args(["--coordinator", url, "--trainer", "fake", "--give-up-after-s", "30"])
        .env("CBSWEEP_TOKEN", token)
        .env("CBSWEEP_TLS_CA", ca)
        .env("CBSWEEP_LOG", "off")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "no retries for a wrong address: {}", text(&o));
    text(&o)
}

#[test]
fn a_wrong_port_scheme_or_ca_is_named_with_what_to_do() {
    let test = "a_wrong_port_scheme_or_ca_is_named_with_what_to_do";
    if Command::new("openssl").arg("version").output().is_err() {
        return skipped(test, "no openssl binary to make test certificates");
    }
    let dir = tempfile::tempdir().unwrap();
    cbsweep_tests::certificates(dir.path());
    let other = dir.path().join("other.pem");
    cbsweep_tests::self_signed(dir.path(), "other", "other");
    let (ca, token) = (dir.path().join("ca.pem"), "t0ken-misdirected");
    let [tls, tls_http, plain, plain_http] = [free_port(), free_port(), free_port(), free_port()];
    let coordinator = |grpc: u16, http: u16, tls_files: &[&str]| {
        Proc::spawn(
            Command::new(bin("cbsweep"))
                .args(["coordinator", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
                .arg("--state")
                .arg(dir.path().join(format!("state-{grpc}")))
                .args(tls_files)
                .current_dir(dir.path())
                .env("CBSWEEP_TOKEN", token)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let _tls = coordinator(tls, tls_http, &["--tls-cert", "server.pem", "--tls-key", "server.key"]);
    let _plain = coordinator(plain, plain_http, &[]);
    let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}");
    cbsweep_tests::wait_until(20, "both coordinators", || {
        let up = |u: String, ca: Option<&Path>| {
            let mut c = Command::new(bin("cbsweep"));
            c.args(["status", "--coordinator", &u]).env("CBSWEEP_TOKEN", token);
            ca.map(|ca| c.env("CBSWEEP_TLS_CA", ca));
            c.output().unwrap().status.success()
        };
        up(url("https", tls), Some(&ca)) && up(url("http", plain), None)
    });

    let http_port = "is this the coordinator's HTTP port (--http-listen) rather than its gRPC port (--listen)?";
    let speaks_tls = format!("the coordinator speaks TLS: use https://127.0.0.1:{tls} and set CBSWEEP_TLS_CA");
    for (url, given, says) in [
        (url("http", plain_http), None::<&Path>, http_port.to_string()),
        (url("https", tls_http), Some(ca.as_path()), http_port.to_string()),
        (url("http", tls), None, speaks_tls.clone()),
        (
            url("https", tls),
            Some(other.as_path()),
            format!("TLS handshake failed: the server's certificate is not signed by the CA in CBSWEEP_TLS_CA ({})", other.display()),
        ),
        (url("https", plain), Some(ca.as_path()), format!("the server does not speak TLS: use http://127.0.0.1:{plain}")),
    ] {
        let t = status_at(&url, given, token);
        assert!(t.contains(&format!("cannot talk to the coordinator at {url}: ")) && t.contains(&says), "status at {url}: {t}");
        let t = worker_at(&url, given.unwrap_or(&ca), token);
        assert!(t.contains(&format!("cannot talk to the coordinator at {url}: ")) && t.contains(&says), "worker at {url}: {t}");
    }
    // a CA file that holds no certificate, a key file that holds no key
    let junk = write_spec(dir.path(), "junk.pem", "not a certificate\n");
    let t = status_at(&url("https", tls), Some(&junk), token);
    assert!(t.contains(&format!("cannot read the CA certificate {}: no PEM certificate in it", junk.display())), "{t}");
    let o = Command::new(bin("cbsweep"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{}", free_port()), "--tls-cert", "server.pem", "--tls-key", "junk.pem"])
        .arg("--state")
        .arg(dir.path().join("state-junk"))
        .current_dir(dir.path())
        .env("CBSWEEP_TOKEN", token)
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("cannot read the key in --tls-key junk.pem"), "{}", text(&o));
    let o = Command::new(bin("cbsweep"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{}", free_port()), "--tls-cert", "server.pem", "--tls-key", "other.key"])
        .arg("--state")
        .arg(dir.path().join("state-other"))
        .current_dir(dir.path())
        .env("CBSWEEP_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("--tls-cert server.pem and --tls-key other.key do not make a TLS identity"),
        "{}",
        text(&o)
    );
}
