//! The dashboard's HTTP side without a browser: no data without the token (a login by URL sets
//! the session cookie, which then opens the data), /api/status is the status's JSON form, the
//! sweep page's numbers are the results crate's (conditions, learning curves, analyses,
//! comparisons) for hand-built curves, and the event stream says when a result lands, at most
//! once per throttle window however busy the sweep is.

use cbsweep_common::{AnalysisRecord, EpochRecord, TrialOutcome, TrialResult};
use cbsweep_coordinator::dashboard::Dashboard;
use cbsweep_coordinator::http::MetricsAccess;
use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions, WorkerHello};
use cbsweep_coordinator::server::Token;
use cbsweep_coordinator::status_json::StatusJson;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken";

/// A GET with extra header lines: the status, the head and the body (what arrived within
/// `wait` for a stream that does not end).
fn get(addr: std::net::SocketAddr, path: &str, headers: &str, wait: Duration) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let (mut raw, mut buf, end) = (Vec::new(), [0u8; 4096], Instant::now() + wait);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap();
    (status, head, body)
}

/// An open /api/events stream read on a thread of its own: its head once it arrived (the
/// server subscribed before sending it), then its `data:` lines as they come.
struct EventStream {
    head: String,
    messages: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl EventStream {
    fn open(addr: std::net::SocketAddr, path: &'static str) -> EventStream {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{}Connection: close\r\n\r\n", bearer()).unwrap();
        let mut reader = std::io::BufReader::new(s);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            let before = head.len();
            std::io::BufRead::read_line(&mut reader, &mut head).unwrap();
            assert!(head.len() > before, "the stream closed in its head: {head}");
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(reader) {
                let Ok(line) = line else { break };
                if let Some(data) = line.strip_prefix("data: ")
                    && tx.send(data.to_string()).is_err()
                {
                    break;
                }
            }
        });
        EventStream { head, messages }
    }

    /// The next message (a generous limit: it is the event that is waited for).
    async fn next(&mut self, what: &str) -> String {
        match tokio::time::timeout(Duration::from_secs(30), self.messages.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("the event stream closed before {what}"),
            Err(_) => panic!("no {what} on the event stream within 30 s"),
        }
    }
}

async fn fetch(addr: std::net::SocketAddr, path: &'static str, headers: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || get(addr, path, &headers, Duration::from_secs(2))).await.unwrap()
}

/// POST /login with a form body: the status and the head.
fn post_login(addr: std::net::SocketAddr, form: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    (raw.split(' ').nth(1).unwrap().parse().unwrap(), raw.split_once("\r\n\r\n").unwrap().0.to_string())
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

/// A curve of 4 epochs that solves levels 1..=`solves` one per epoch, then stays on the next.
fn curve(solves: u32) -> Vec<EpochRecord> {
    let mut level = 1;
    (1..=4)
        .map(|epoch| {
            let solved = level <= solves;
            let e = EpochRecord {
                epoch,
                level,
                train_loss: 0.5,
                test_accuracy: if solved { 0.99 } else { 0.5 },
                solved,
                grad_norm: 1.0,
                core_learning: true,
                cb_learning: true,
            };
            if solved {
                level += 1;
            }
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_the_results_crates_numbers_to_token_holders_only() {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let dashboard = Dashboard { token: Token(TOKEN.into()), state_dir: dir.path().to_owned(), tls: false };
    let (addr, _task) = cbsweep_coordinator::http::serve_with(
        "127.0.0.1:0".parse().unwrap(),
        sched.clone(),
        Arc::new(AtomicBool::new(true)),
        MetricsAccess::Open,
        Token(TOKEN.into()),
        Some(dashboard),
        None,
    )
    .await
    .unwrap();
    let spec = cbsweep_common::parse_spec(
        "[sweep]\nname = \"g\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1, 2]\n[train]\nepochs = 4\n[run]\npack_size = 6\n",
        Path::new("g.toml"),
    )
    .unwrap();
    sched.submit(spec, "g.toml".into()).await.unwrap();

    // No data without the token.
    for path in ["/api/status", "/api/sweeps/g", "/api/training", "/api/events"] {
        for auth in [String::new(), "Authorization: Bearer t0ke\r\n".into(), format!("Cookie: cbsweep_session={TOKEN}\r\n")] {
            let (code, _, body) = fetch(addr, path, auth.clone()).await;
            assert_eq!(code, 401, "{path} {auth:?}");
            assert!(!body.contains("arch="), "{body}");
        }
    }
    let (code, head, _) = fetch(addr, "/sweeps/g", String::new()).await;
    assert!(code == 303 && head.contains("location: /login\r"), "{head}");
    // The token once in the URL: a session cookie, and the page's address without the token.
    let (code, head, _) = fetch(addr, "/sweeps/g?token=t0ken", String::new()).await;
    assert!(code == 303 && head.contains("location: /sweeps/g\r"), "{head}");
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).expect("a cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(TOKEN), "{cookie}");
    let session = format!("Cookie: {}\r\n", cookie.split(';').next().unwrap());
    // The login form: the right token gets the same cookie and the overview, a wrong one the
    // form again and no cookie.
    let (code, head) = tokio::task::spawn_blocking(move || post_login(addr, "token=t0ken")).await.unwrap();
    assert!(code == 303 && head.contains("location: /\r") && head.contains(&cookie), "{head}");
    let (code, head) = tokio::task::spawn_blocking(move || post_login(addr, "token=t0ke")).await.unwrap();
    assert!(code == 303 && head.contains("location: /login?wrong=1") && !head.contains("set-cookie"), "{head}");
    let (code, _, page) = fetch(addr, "/sweeps/g", session.clone()).await;
    assert!(code == 200 && page.contains("/assets/uPlot.iife.min.js"), "{page}");
    let (code, head, js) = fetch(addr, "/assets/uPlot.iife.min.js", String::new()).await;
    assert!(code == 200 && head.contains("text/javascript") && js.contains("uPlot"), "{head}");

    let w = sched.register(WorkerHello { hostname: "h".into(), device: "cpu".into(), pid: 1 }).await.unwrap();
    // one pack per architecture (their shapes differ)
    let mut leased = sched.lease(w.clone(), 6, None).await.unwrap().trials;
    leased.extend(sched.lease(w.clone(), 6, None).await.unwrap().trials);
    assert_eq!(leased.len(), 6);
    let (code, _, training) = fetch(addr, "/api/training", bearer()).await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&training).unwrap().as_array().unwrap().len(), 6, "{training}");
    // cbrnn seed s solves s + 1 levels, rnn seed s solves s; the cbrnn trials report an ablation
    // drop of 0.1 (s + 1) at level 1. The last rnn trial is completed below, while a page listens.
    let mut last = None;
    for t in &leased {
        let cbrnn = t.spec.arch == cbsweep_common::Arch::Cbrnn;
        let s = t.spec.seed.0 as u32;
        let analyses = if cbrnn {
            vec![AnalysisRecord {
                level: 1,
                epoch: 1,
                population: "network".into(),
                metric: "ablation_drop".into(),
                value: 0.1 * f64::from(s + 1),
            }]
        } else {
            vec![]
        };
        let result = TrialResult {
            outcome: TrialOutcome::Completed,
            curve: curve(s + u32::from(cbrnn)),
            wall_time_ms: 1,
            device: "cpu".into(),
            pack_size: 6,
            analyses,
        };
        if !cbrnn && s == 2 {
            last = Some((t.clone(), result));
            continue;
        }
        sched.complete(w.clone(), t.id.clone(), t.attempt, result).await.unwrap();
    }
    let (last, last_result) = last.unwrap();

    // A busy sweep: a hundred progress reports within one window come out as one or two messages,
    // and the result that follows as a message saying results changed. Each step waits for the
    // stream's own word: its head (the page is subscribed), then its messages.
    // The scheduler sends a batch's events after its replies: one more command answered, and the
    // completions' events are out before the page subscribes.
    sched.metrics().await.unwrap();
    let mut stream = tokio::task::spawn_blocking(move || EventStream::open(addr, "/api/events?sweep=g")).await.unwrap();
    let busy = Instant::now();
    for e in 0..100 {
        let mut r = last_result.curve[0];
        r.epoch = 1 + e % 4;
        sched.progress(w.clone(), vec![(last.id.clone(), last.attempt, r)]).await.unwrap();
    }
    let mut messages = vec![stream.next("a message for the progress").await];
    assert!(messages[0].contains("\"results\":false"), "progress alone says results:false: {messages:?}");
    sched.complete(w.clone(), last.id.clone(), last.attempt, last_result).await.unwrap();
    while !messages.last().unwrap().contains("\"results\":true") {
        messages.push(stream.next("a message for the result").await);
    }
    let windows = busy.elapsed().as_millis() as usize / 500 + 2;
    assert!(messages.len() >= 2 && messages.len() <= windows + 1, "throttled per sweep ({windows} windows): {messages:?}");
    assert!(messages.last().unwrap().contains("\"sweep\":\"g\""), "{messages:?}");
    assert!(stream.head.contains("text/event-stream"), "{}", stream.head);

    // /api/status is the status's JSON form.
    let (code, _, body) = fetch(addr, "/api/status", session.clone()).await;
    assert_eq!(code, 200, "{body}");
    let api: StatusJson = serde_json::from_str(&body).unwrap();
    let expect = StatusJson::from(&cbsweep_coordinator::service::status_response(sched.status(None).await.unwrap()));
    assert_eq!(api.sweeps, expect.sweeps);
    let s = &api.sweeps[0];
    assert_eq!((s.sweep.as_str(), s.state.as_str(), s.total), ("g", "done", 6));
    let by_arch = |arch: &str| s.conditions.iter().find(|c| c.condition.contains(&format!("arch={arch}"))).unwrap().clone();
    assert_eq!((by_arch("cbrnn").done, by_arch("cbrnn").mean_max_level), (3, Some(2.0)));
    assert_eq!((by_arch("rnn").done, by_arch("rnn").mean_max_level), (3, Some(1.0)));

    // The sweep page's numbers.
    let (code, _, body) = fetch(addr, "/api/sweeps/g", session.clone()).await;
    assert_eq!(code, 200, "{body}");
    let d: Value = serde_json::from_str(&body).unwrap();
    let pick = |list: &str, arch: &str| {
        d[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["condition"].as_str().unwrap().split(' ').any(|kv| kv == format!("arch={arch}")))
            .unwrap()
            .clone()
    };
    let close = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-12;
    // max_level: cbrnn 1, 2, 3 (sd 1); rnn 0, 1, 2
    let c = pick("conditions", "cbrnn");
    assert!(close(&c["mean_max_level"], 2.0) && close(&c["sem_max_level"], 1.0 / 3f64.sqrt()), "{c}");
    assert_eq!(c["short"], "arch=cbrnn");
    // levels reached per epoch: cbrnn [1,1,1,1], [1,2,2,2], [1,2,3,3]
    let k = pick("curves", "cbrnn");
    assert_eq!(k["epochs"], serde_json::json!([1, 2, 3, 4]));
    for (v, x) in k["mean"].as_array().unwrap().iter().zip([1.0, 5.0 / 3.0, 2.0, 2.0]) {
        assert!(close(v, x), "{k}");
    }
    assert!(close(&k["sem"][0], 0.0) && close(&k["sem"][2], 1.0 / 3f64.sqrt()), "{k}");
    assert_eq!(k["seeds"].as_array().unwrap().len(), 3);
    assert_eq!(pick("curves", "rnn")["seeds"][0]["levels"], serde_json::json!([0, 0, 0, 0]));
    let a = d["analyses"].as_array().unwrap();
    assert_eq!(a.len(), 1, "{d}");
    assert_eq!(
        (a[0]["figure"].as_str(), a[0]["metric"].as_str(), a[0]["levels"][0].as_u64(), a[0]["n"][0].as_u64()),
        (Some("ablation"), Some("ablation_drop"), Some(1), Some(3))
    );
    assert!(close(&a[0]["mean"][0], 0.2), "{a:?}");
    let cmp = d["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["comparison"] == "cbrnn_vs_rnn" && r["measure"] == "max_level")
        .unwrap()
        .clone();
    assert_eq!((cmp["n_a"].as_u64(), cmp["n_b"].as_u64()), (Some(3), Some(3)));
    assert!(close(&cmp["mean_a"], 2.0) && close(&cmp["mean_b"], 1.0) && close(&cmp["cohens_d"], 1.0), "{cmp}");
    assert!(cmp["welch_p_holm"].as_f64().is_some_and(|p| p > 0.0 && p <= 1.0), "{cmp}");
    assert!(d["failed"].as_array().unwrap().is_empty() && d["running"].as_array().unwrap().is_empty(), "{d}");
    let (code, _, _) = fetch(addr, "/api/sweeps/nope", bearer()).await;
    assert_eq!(code, 404);
}
