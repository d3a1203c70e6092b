//! The dashboard in a real browser: a coordinator with `--http-listen`, a fake-trainer worker
//! slow enough that results land while the page is open, and Debian's headless Chromium driven
//! over WebDriver (`cbsweep_tests::webdriver`). The page's numbers equal `cbsweep status --json`
//! and trials.parquet, a new result appears on the open page without a reload (server-sent
//! events), and a wrong or missing token gets no data. Screenshots are saved in the test's
//! folder and copied to target/dashboard-screenshots/. Without chromium and chromedriver
//! (`bash scripts/cluster-setup.sh` installs them as root) the browser test says so and skips.
//!
//! Also `cbsweep run`: it writes where it serves, owner-only, under OUT/.cbsweep, and `cbsweep
//! status --out OUT` and the dashboard's API reach it from another process (no browser needed).

use cbsweep_tests::webdriver::{Browser, chromium};
use cbsweep_tests::{Proc, bin, duckdb, fake_worker, free_port, http_get, root, skipped, submit, sweep_done_any, wait_until, write_spec};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const TOKEN: &str = "dashboard-test-token-5f1c";

fn spec_text(name: &str, seeds: u32, epochs: u32) -> String {
    let seeds = (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{seeds}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\nmax_attempts = 2\n"
    )
}

/// A GET with extra header lines (each ending in \r\n): the status, the headers and the body.
fn get(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    // An event stream never ends: what arrived before the timeout is enough.
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    (status, head, body)
}

/// `cbsweep status ARGS --json`, parsed.
fn status_json(args: &[&str]) -> Value {
    let out = Command::new(bin("cbsweep"))
        .arg("status")
        .args(args)
        .arg("--json")
        .env("CBSWEEP_LOG", "warn")
        .env("CBSWEEP_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "status --json failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn count(sweep: &Value, state: &str) -> u64 {
    sweep["counts"].as_array().unwrap().iter().find(|c| c["state"] == state).map_or(0, |c| c["count"].as_u64().unwrap())
}

/// What the sweep page shows: its state counts and conditions table, read from the DOM.
const READ_SWEEP_PAGE: &str = r#"
const t = (e, f) => e.querySelector(`[data-field="${f}"]`)?.textContent;
const summary = document.querySelector('.summary');
if (!summary || !document.querySelector('#conditions')) return null;
return {
  state: t(summary, 'state'),
  finished: Number(t(summary, 'finished')),
  counts: Object.fromEntries(['pending', 'leased', 'done', 'failed', 'cancelled'].map(s => [s, Number(t(summary, s))])),
  conditions: [...document.querySelectorAll('#conditions tr[data-condition]')].map(tr => ({
    condition: tr.dataset.condition, total: Number(t(tr, 'total')), done: Number(t(tr, 'done')),
    failed: Number(t(tr, 'failed')), mean: t(tr, 'mean_max_level'), sem: t(tr, 'sem_max_level') })),
  failed: [...document.querySelectorAll('#failed tr[data-trial]')].map(tr => ({
    seed: Number(t(tr, 'seed')), attempt: Number(t(tr, 'attempt')), error: tr.querySelector('td.error').textContent })),
  curves: document.querySelectorAll('#curves .chart canvas').length,
  stats: document.querySelectorAll('#stats tbody tr').length,
  updates: Number(document.body.dataset.updates || 0),
  same: window.__samePage === 42,
};
"#;

fn wait_for_page(b: &Browser, secs: u64, what: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        last = b.eval(READ_SWEEP_PAGE);
        if !last.is_null() && ok(&last) {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for {what}; the page showed {last}");
}

/// The page's mean as `status` prints it (two decimals), from status --json's number.
fn two_decimals(v: &Value) -> String {
    v.as_f64().map_or("–".to_string(), |m| format!("{m:.2}"))
}

fn save(b: &Browser, dir: &Path, name: &str) {
    let path = dir.join(name);
    b.screenshot(&path);
    let keep = root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::copy(&path, keep.join(name)).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is no real screenshot ({} bytes)", path.display(), png.len());
}

#[test]
fn dashboard_shows_the_status_numbers_and_new_results_without_a_reload() {
    let Some((chrome, driver)) = chromium() else {
        skipped("dashboard_shows_the_status_numbers_and_new_results_without_a_reload", "chromium or chromedriver is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let haddr = format!("127.0.0.1:{http}");
    let results = dir.path().join("results");
    let _coord = Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--http-listen", &haddr])
            .args(["--state", dir.path().join("state").to_str().unwrap(), "--out", results.to_str().unwrap()])
            .env("CBSWEEP_TOKEN", TOKEN)
            .env("CBSWEEP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // 2 conditions x 4 seeds; seed 3 fails both attempts; one trial at a time, once a worker
    // starts: only when the page watches, so that results land on the open page
    let spec = write_spec(dir.path(), "dash.toml", &spec_text("livecurves", 4, 6));
    submit(port, TOKEN, &spec);
    let sweep = "livecurves";
    let log = dir.path().join("exec.log");
    let grpc = format!("http://127.0.0.1:{port}");
    let status_args = ["--coordinator", grpc.as_str()];

    // No data without the token, on every data route; health and metrics stay where they were.
    for path in ["/api/status", &format!("/api/sweeps/{sweep}"), "/api/training", "/api/events"] {
        for auth in ["", "Authorization: Bearer wrong-token\r\n", "Cookie: cbsweep_session=dashboard-test-token-5f1c\r\n"] {
            let (code, _, body) = get(&haddr, path, auth);
            assert_eq!(code, 401, "{path} with {auth:?}: {body}");
            assert!(!body.contains(sweep), "{path} leaked data: {body}");
        }
    }
    let (code, head, _) = get(&haddr, "/", "");
    assert!(code == 303 && head.contains("location: /login"), "{code} {head}");
    let (code, head, _) = get(&haddr, "/?token=wrong", "");
    assert!(code == 303 && head.contains("location: /login?wrong=1") && !head.contains("set-cookie"), "{code} {head}");
    assert_eq!(http_get(&haddr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(&haddr, "/metrics").map(|r| r.0), Some(200));
    let (code, _, body) = get(&haddr, "/api/status", &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["sweeps"][0]["sweep"], sweep);

    let profile = dir.path().join("chromium-profile");
    let b = Browser::start(&chrome, &driver, &profile, 1366, 768);
    let base = format!("http://{haddr}");
    // Without the token the browser gets the login form and none of the sweep.
    b.goto(&format!("{base}/sweeps/{sweep}"));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    let login = b.eval("return {form: !!document.querySelector('form.login'), text: document.body.innerText}");
    assert_eq!(login["form"], true);
    assert!(!login["text"].as_str().unwrap().contains(sweep), "{login}");
    b.goto(&format!("{base}/?token=not-the-token"));
    assert!(b.url().ends_with("/login?wrong=1"), "{}", b.url());
    assert_eq!(b.eval("return !document.querySelector('#wrong').hidden"), true);

    // The token once in the URL: a cookie, and the address without it.
    b.goto(&format!("{base}/?token={TOKEN}"));
    assert_eq!(b.url(), format!("{base}/"));
    wait_until(20, "the overview to list the sweep", || b.eval("return !!document.querySelector('#sweeps tr[data-sweep]')") == true);
    save(&b, dir.path(), "overview.png");

    // The sweep page while it runs; a result arrives and is shown without a reload.
    b.goto(&format!("{base}/sweeps/{sweep}"));
    let first = wait_for_page(&b, 20, "the sweep page", |p| !p["conditions"].as_array().unwrap().is_empty());
    b.eval("window.__samePage = 42; return null");
    let total = status_json(&status_args)["sweeps"][0]["total"].as_u64().unwrap();
    assert_eq!(first["finished"].as_u64(), Some(0), "no worker yet: {first}");
    let _worker = fake_worker(port, TOKEN, &log, 100, &["--fake-fail-seeds", "3"]);
    let later = wait_for_page(&b, 60, "a new result on the open page", |p| p["finished"].as_u64() > first["finished"].as_u64());
    assert_eq!(later["same"], true, "the page was reloaded: {later}");
    assert!(later["updates"].as_u64() > first["updates"].as_u64(), "{later}");
    save(&b, dir.path(), "sweep-running.png");

    // Once it is done: the page's numbers are status --json's and trials.parquet's.
    wait_until(90, "the sweep to finish", || status_json(&status_args)["sweeps"][0]["state"] == "done");
    let status = status_json(&status_args);
    let s = &status["sweeps"][0];
    let page = wait_for_page(&b, 20, "the page to show the finished sweep", |p| p["state"] == "done");
    assert_eq!(page["same"], true, "the page was reloaded: {page}");
    for st in ["pending", "leased", "done", "failed", "cancelled"] {
        assert_eq!(page["counts"][st].as_u64(), Some(count(s, st)), "{st}: page {page} status {s}");
    }
    let conditions = s["conditions"].as_array().unwrap();
    assert_eq!(page["conditions"].as_array().unwrap().len(), conditions.len(), "{page}");
    for c in conditions {
        let shown = page["conditions"].as_array().unwrap().iter().find(|p| p["condition"] == c["condition"]).expect("condition shown");
        for f in ["total", "done", "failed"] {
            assert_eq!(shown[f], c[f], "{f} of {}: page {shown} status {c}", c["condition"]);
        }
        assert_eq!(shown["mean"].as_str().unwrap(), two_decimals(&c["mean_max_level"]), "{shown} {c}");
    }
    assert_eq!(count(s, "failed"), 2, "seed 3 fails in both conditions: {s}");
    let failed = page["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{page}");
    assert!(
        failed.iter().all(|f| f["seed"] == 3 && f["attempt"] == 2 && f["error"].as_str().unwrap().contains("fake failure for seed 3")),
        "{page}"
    );
    assert_eq!(page["curves"].as_u64(), Some(2), "a learning-curve chart per condition: {page}");
    assert!(page["stats"].as_u64().unwrap() > 0, "3 seeds per arch give the cbrnn_vs_rnn tests: {page}");

    wait_until(30, "the final export", || sweep_done_any(&results.join(sweep), total as usize));
    let parquet = duckdb(&format!(
        "SELECT arch, count(*) AS n, count(*) FILTER (WHERE status = 'done') AS done, count(*) FILTER (WHERE status = 'failed') AS failed, \
         avg(max_level) FILTER (WHERE status = 'done') AS mean FROM '{}' GROUP BY arch",
        results.join(sweep).join("trials.parquet").display()
    ));
    assert_eq!(parquet.len(), 2, "{parquet:?}");
    for row in &parquet {
        let arch = row["arch"].as_str().unwrap();
        let shown = page["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["condition"].as_str().unwrap().split(' ').any(|kv| kv == format!("arch={arch}")))
            .expect("a condition per arch");
        assert_eq!(
            (shown["total"].as_u64(), shown["done"].as_u64(), shown["failed"].as_u64()),
            (row["n"].as_u64(), row["done"].as_u64(), row["failed"].as_u64()),
            "{row}"
        );
        let mean: f64 = row["mean"].as_f64().or_else(|| row["mean"].as_str().and_then(|m| m.parse().ok())).unwrap();
        assert_eq!(shown["mean"].as_str().unwrap(), format!("{mean:.2}"), "{row} {shown}");
    }
    b.resize(1366, 2600);
    std::thread::sleep(std::time::Duration::from_millis(500));
    save(&b, dir.path(), "sweep-done.png");
}

#[test]
fn a_local_run_is_reachable_by_status_and_the_dashboard_from_another_process() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // trials of 100 s: the run is still there for every check below, which ends it with Ctrl-C
    let spec = write_spec(dir.path(), "local.toml", &spec_text("local", 2, 1000));
    let mut run = Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["run", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "1", "--trainer", "fake"])
            .arg("--worker-arg=--fake-epoch-ms=100")
            .env("CBSWEEP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let reach = out.join(".cbsweep");
    wait_until(30, "the run to write its address", || reach.join("dashboard").is_file());
    assert_eq!(std::fs::metadata(&reach).unwrap().permissions().mode() & 0o777, 0o700);
    for f in ["address", "token", "dashboard"] {
        assert_eq!(std::fs::metadata(reach.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    let status = status_json(&["--out", out.to_str().unwrap()]);
    assert_eq!(status["sweeps"][0]["sweep"], "local");
    assert_eq!(status["sweeps"][0]["total"], 4);
    let token = std::fs::read_to_string(reach.join("token")).unwrap().trim().to_string();
    let url = std::fs::read_to_string(reach.join("dashboard")).unwrap().trim().to_string();
    let haddr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    assert!(haddr.starts_with("127.0.0.1:"), "the dashboard is on loopback by default: {url}");
    assert_eq!(get(&haddr, "/api/status", "").0, 401);
    let (code, _, body) = get(&haddr, "/api/status?sweep=local", &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["sweeps"][0]["sweep"], "local");
    assert_eq!(api["sweeps"][0]["total"], 4);
    // Ctrl-C: the workers hand their trials back, and the run ends as interrupted (130)
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.pid()), nix::sys::signal::Signal::SIGINT).unwrap();
    let code = run.wait_for(60);
    let mut err = String::new();
    run.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(code, Some(130), "an interrupted run exits 130: {err}");
    assert!(err.contains(&format!("dashboard {url}")), "run prints the dashboard's URL: {err}");
    assert!(!reach.join("address").exists() && !reach.join("token").exists(), "a run that ended leaves no address behind");
    let gone = Command::new(bin("cbsweep")).args(["status", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains(&reach.join("address").display().to_string()), "{gone:?}");
}
