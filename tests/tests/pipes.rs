//! A reader that goes away (`cbsweep status | head -1`, `stats | true`, `export | true`) ends the
//! command quietly, as it ends `cat`: no panic, no message, on every one-shot command (issue 27,
//! item 11). Real processes; the fake trainer for the sweep they read.

use cbsweep_tests::{bin, cbsweep, coordinator, free_port, text, write_spec};
use std::process::{Command, Stdio};

const SPEC: &str = "[sweep]\nname = \"pipe\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 3\n[run]\npack_size = 1\n";

/// Runs `cbsweep args` with its standard output a pipe whose reading end is closed before it
/// writes, and returns what it said on standard error and how it ended.
fn into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> (String, std::process::ExitStatus) {
    let mut child = Command::new(bin("cbsweep"))
        .args(args)
        .envs(env.iter().copied())
        .env("CBSWEEP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&o.stderr).into_owned(), o.status)
}

#[test]
fn one_shot_commands_end_quietly_when_their_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "pipe.toml", SPEC);
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let o =
        cbsweep(&["run", spec.to_str().unwrap(), "--workers", "1", "--trainer", "fake", "--worker-arg=--fake-epoch-ms=5", "--out", out_s]);
    assert!(o.status.success(), "{}", text(&o));
    let backup = dir.path().join("b.sqlite");
    let state = out.join(".cbsweep");
    let mut commands: Vec<Vec<String>> = [
        vec!["stats", "pipe", "--out", out_s],
        vec!["export", "pipe", "--out", out_s],
        vec!["plot", "pipe", "--out", out_s],
        vec!["validate", spec.to_str().unwrap()],
        vec!["backup", backup.to_str().unwrap(), "--out", out_s],
    ]
    .iter()
    .map(|c| c.iter().map(|s| s.to_string()).collect())
    .collect();
    // status asks a coordinator serving the state
    let port = free_port();
    let _coord = coordinator(&state, port, "t0ken-pipe");
    cbsweep_tests::wait_until(20, "the coordinator to serve", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let url = format!("http://127.0.0.1:{port}");
    commands.push(vec!["status".into(), "--coordinator".into(), url.clone()]);
    commands.push(vec!["status".into(), "--json".into(), "--coordinator".into(), url]);
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (stderr, status) = into_closed_pipe(&args, &[("CBSWEEP_TOKEN", "t0ken-pipe")]);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        // ended by the closed pipe (SIGPIPE), or done before it wrote anything that reached it
        let quiet = status.signal() == Some(libc_sigpipe()) || status.success();
        assert!(quiet, "{args:?}: {status:?} {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: a panic's exit code");
    }
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}
