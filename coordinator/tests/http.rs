//! The HTTP side: liveness, readiness and Prometheus metrics, scraped with a plain HTTP/1.1
//! client over a TCP socket; the values match the sweep.

use cbsweep_common::{EpochRecord, TrialOutcome, TrialResult};
use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions, WorkerHello};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_the_sweep_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, _task) = cbsweep_coordinator::http::serve("127.0.0.1:0".parse().unwrap(), sched.clone(), ready.clone()).await.unwrap();
    let spec = cbsweep_common::parse_spec(
        "[sweep]\nname = \"m\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1, 2]\n[run]\npack_size = 2\n",
        Path::new("m.toml"),
    )
    .unwrap();
    sched.submit(spec, "m.toml".into()).await.unwrap();
    let w = sched.register(WorkerHello { hostname: "h".into(), device: "cpu".into(), pid: 1 }).await.unwrap();
    let leased = sched.lease(w.clone(), 2, None).await.unwrap().trials;
    assert_eq!(leased.len(), 2);
    let e = EpochRecord {
        epoch: 1,
        level: 2,
        train_loss: 0.5,
        test_accuracy: 0.5,
        solved: false,
        grad_norm: 1.0,
        core_learning: true,
        cb_learning: true,
    };
    let result = TrialResult {
        outcome: TrialOutcome::Completed,
        curve: vec![e],
        wall_time_ms: 1,
        device: "cpu".into(),
        pack_size: 2,
        analyses: vec![],
    };
    sched.complete(w.clone(), leased[0].id.clone(), leased[0].attempt, result).await.unwrap();

    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/readyz")).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "starting\n"));
    ready.store(true, Ordering::Relaxed);
    let (status, _) = tokio::task::spawn_blocking(move || get(addr, "/readyz")).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/healthz")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "cbsweep_trials{sweep=\"m\",state=\"done\"}"), 1.0);
    assert_eq!(metric(&body, "cbsweep_trials{sweep=\"m\",state=\"leased\"}"), 1.0);
    assert_eq!(metric(&body, "cbsweep_trials{sweep=\"m\",state=\"pending\"}"), 4.0);
    assert_eq!(metric(&body, "cbsweep_leases_active"), 1.0);
    assert_eq!(metric(&body, "cbsweep_workers_live"), 1.0);
    assert_eq!(metric(&body, "cbsweep_lease_requests_total"), 1.0);
    assert_eq!(metric(&body, "cbsweep_trials_finished_total"), 1.0);
}
