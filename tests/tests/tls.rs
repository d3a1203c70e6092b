//! gRPC over TLS (rustls): a coordinator serving a certificate signed by a test CA, a worker and
//! the CLI connecting over https:// with that CA; a client without it is refused. And the
//! bearer token's file: written owner-only, a loose one warned about. And the HTTP side (the
//! dashboard, health, metrics) over TLS with the same certificate, its session cookie Secure.

use cbsweep_tests::{Proc, bin, certificates, duckdb, free_port, skipped, text, wait_until, write_spec};
use std::path::Path;
use std::process::Command;

/// A coordinator on loopback `port` serving TLS with the test certificate in `dir`, with `args`.
fn tls_coordinator(dir: &std::path::Path, port: u16, token: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .env("CBSWEEP_TOKEN", token)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

#[test]
fn a_sweep_runs_over_tls_and_a_client_without_the_ca_is_refused() {
    if Command::new("openssl").arg("version").output().is_err() {
        return skipped("a_sweep_runs_over_tls_and_a_client_without_the_ca_is_refused", "no openssl binary to make test certificates");
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (port, token) = (free_port(), "tls-token");
    let state = dir.path().join("state");
    let _coord = tls_coordinator(dir.path(), port, token, &["--state", state.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");
    let spec = write_spec(
        dir.path(),
        "tls.toml",
        "[sweep]\nname = \"tls\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 3\n",
    );
    let cli = |args: &[&str], with_ca: bool| {
        let mut c = Command::new(bin("cbsweep"));
        c.args(args).args(["--coordinator", &url]).env("CBSWEEP_TOKEN", token);
        if with_ca {
            c.env("CBSWEEP_TLS_CA", &ca);
        } else {
            c.env_remove("CBSWEEP_TLS_CA");
        }
        c.output().unwrap()
    };
    wait_until(20, "the TLS coordinator to accept the sweep", || cli(&["submit", spec.to_str().unwrap()], true).status.success());
    let no_ca = cli(&["status"], false);
    assert_eq!(no_ca.status.code(), Some(69), "{}", text(&no_ca));
    assert!(text(&no_ca).contains("CBSWEEP_TLS_CA"), "{}", text(&no_ca));
    let plain = Command::new(bin("cbsweep"))
        .args(["status", "--coordinator", &format!("http://127.0.0.1:{port}")])
        .env("CBSWEEP_TOKEN", token)
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain text to a TLS port is refused: {}", text(&plain));

    let mut worker = {
        Proc::spawn(
            Command::new(bin("cbsweep-worker"))
                .args(["--coordinator", &url, "--trainer", "fake", "--exit-when-drained", "--fake-epoch-ms", "20"])
                .env("CBSWEEP_TOKEN", token)
                .env("CBSWEEP_TLS_CA", &ca)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
    };
    assert_eq!(worker.wait_for(60), Some(0), "the worker drains the sweep over TLS");
    // the final export (a partial one is written after the first trial)
    wait_until(30, "the results", || cbsweep_tests::sweep_done(&state.join("results/tls"), 4));
    let trials = state.join("results/tls/trials.parquet");
    let rows = duckdb(&format!("SELECT count(*) AS n FROM '{}' WHERE status = 'done'", trials.display()));
    assert_eq!(rows[0]["n"], 4);
    let ok = cli(&["status", "tls"], true);
    assert!(ok.status.success() && text(&ok).contains("4 done"), "{}", text(&ok));
}

#[test]
fn a_new_token_file_is_owner_only_and_a_loose_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = cbsweep_tests::free_port();
    let mut coord = cbsweep_tests::Proc::spawn(
        std::process::Command::new(cbsweep_tests::bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--state", state.to_str().unwrap()])
            .env_remove("CBSWEEP_TOKEN")
            .env("CBSWEEP_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let token = state.join("token");
    cbsweep_tests::wait_until(20, "the coordinator to write its token", || token.is_file() && std::fs::metadata(&token).unwrap().len() > 0);
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600, "the token is its owner's alone");
    coord.kill9();

    let loose = dir.path().join("loose-token");
    std::fs::write(&loose, "t0ken").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = std::process::Command::new(cbsweep_tests::bin("cbsweep"))
        .args(["status", "--coordinator", &format!("http://127.0.0.1:{port}"), "--token-file", loose.to_str().unwrap()])
        .output()
        .unwrap();
    let msg = cbsweep_tests::text(&o);
    assert!(msg.contains("readable by others (mode 644)") && msg.contains("chmod 600"), "{msg}");
}

/// `curl ARGS` against the test CA: its output, or None when the request failed.
fn curl(dir: &Path, args: &[&str]) -> Option<String> {
    let o = Command::new("curl").args(["-sS", "--max-time", "10", "--cacert"]).arg(dir.join("ca.pem")).args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn the_dashboard_is_served_over_tls_when_the_coordinator_has_it() {
    if Command::new("openssl").arg("version").output().is_err() || Command::new("curl").arg("--version").output().is_err() {
        return skipped("the_dashboard_is_served_over_tls_when_the_coordinator_has_it", "no openssl or curl binary");
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (port, http, token) = (free_port(), free_port(), "tls-dash-token");
    let state = dir.path().join("state");
    let _coord =
        tls_coordinator(dir.path(), port, token, &["--http-listen", &format!("127.0.0.1:{http}"), "--state", state.to_str().unwrap()]);
    let base = format!("https://127.0.0.1:{http}");
    wait_until(20, "the HTTP side to answer over TLS", || curl(dir.path(), &[&format!("{base}/healthz")]).as_deref() == Some("ok\n"));
    let code = |args: &[&str]| curl(dir.path(), &[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat()).unwrap();
    assert_eq!(code(&[&format!("{base}/api/status")]), "401");
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(code(&["-H", &bearer, &format!("{base}/api/status")]), "200");
    let json = curl(dir.path(), &["-H", &bearer, &format!("{base}/api/status")]).unwrap();
    assert!(json.starts_with("{\"sweeps\":["), "{json}");
    let head = curl(dir.path(), &["-i", &format!("{base}/?token={token}")]).unwrap();
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.trim_end().ends_with("; Secure"), "{cookie}");
    // plain HTTP on the TLS port gets nothing
    assert_ne!(cbsweep_tests::http_get(&format!("127.0.0.1:{http}"), "/healthz").map(|r| r.0), Some(200));
}
