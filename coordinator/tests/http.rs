//! The HTTP side: liveness, readiness and Prometheus metrics, scraped with a plain HTTP/1.1
//! client over a TCP socket; the values match the sweep, a scrape reads no trial row, and
//! /metrics can ask for the coordinator's token while the probes never do.

use cbsweep_common::{EpochRecord, SweepId, TrialOutcome, TrialResult, TrialState};
use cbsweep_coordinator::http::MetricsAccess;
use cbsweep_coordinator::scheduler::{MetricsReport, SchedulerHandle, SchedulerOptions, StatusReport, WorkerHello};
use cbsweep_coordinator::server::Token;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, "")
}

/// A GET with extra header lines (each ending in \r\n).
fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n").unwrap();
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
    let (addr, _task) = cbsweep_coordinator::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        sched.clone(),
        ready.clone(),
        MetricsAccess::Open,
        Token("t".into()),
    )
    .await
    .unwrap();
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

fn epoch(epoch: u32) -> EpochRecord {
    EpochRecord {
        epoch,
        level: 2,
        train_loss: 0.5,
        test_accuracy: 0.5,
        solved: false,
        grad_norm: 1.0,
        core_learning: true,
        cb_learning: true,
    }
}

fn result(outcome: TrialOutcome) -> TrialResult {
    TrialResult { outcome, curve: vec![epoch(1)], wall_time_ms: 1, device: "cpu".into(), pack_size: 1, analyses: vec![] }
}

fn grid(name: &str, seeds: usize, run: &str) -> cbsweep_common::SweepSpec {
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    let text = format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[run]\n{run}",
        seeds.join(",")
    );
    cbsweep_common::parse_spec(&text, Path::new("g.toml")).unwrap()
}

/// Each sweep's trials per state, and its epochs lost.
type Counts = Vec<(SweepId, Vec<(TrialState, u32)>, u64)>;

/// Each sweep's counts, as status tallies them from every trial row.
fn tallied(status: &StatusReport) -> Counts {
    status.sweeps.iter().map(|s| (s.sweep.clone(), s.counts.clone(), s.resumes.epochs_lost)).collect()
}

/// The same, as the scheduler keeps it for /metrics.
fn kept(metrics: &MetricsReport) -> Counts {
    metrics.sweeps.iter().map(|s| (s.sweep.clone(), s.counts.clone(), s.epochs_lost)).collect()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_reads_no_trial_row_and_counts_what_status_tallies() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SchedulerOptions { tick: Duration::from_millis(50), ..Default::default() };
    let sched = SchedulerHandle::start(dir.path(), opts.clone()).unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let (addr, server) =
        cbsweep_coordinator::http::serve("127.0.0.1:0".parse().unwrap(), sched.clone(), ready, MetricsAccess::Open, Token("t".into()))
            .await
            .unwrap();
    // The small sweep is the oldest, so it is leased first; the big one is 10,000 trials.
    sched.submit(grid("small", 3, "pack_size = 6\nmax_attempts = 1\nlease_seconds = 30\n"), "g.toml".into()).await.unwrap();
    sched.submit(grid("big", 5_000, "pack_size = 4\nmax_attempts = 3\n"), "g.toml".into()).await.unwrap();
    const TRIALS: f64 = 10_006.0;

    // Scrapes read no trial row, however many there are; a status request reads every one.
    let rows_read = |body: &str| metric(body, "cbsweep_trial_rows_read_total");
    let before = rows_read(&scrape(addr).await);
    for _ in 0..5 {
        assert_eq!(rows_read(&scrape(addr).await), before, "a scrape reads no trial row");
    }
    sched.status(None).await.unwrap();
    assert_eq!(rows_read(&scrape(addr).await), before + TRIALS, "status reads every trial row, and the counter sees it");
    let body = scrape(addr).await;
    assert_eq!(metric(&body, "cbsweep_trials{sweep=\"big\",state=\"pending\"}"), 10_000.0);
    assert_eq!(metric(&body, "cbsweep_trials{sweep=\"small\",state=\"pending\"}"), 6.0);

    // Every kind of state change: lease, completion, terminal and retried failures, progress
    // then a hand-back (its next attempt loses those epochs), lease expiry, retry-failed, cancel.
    let a = sched.register(WorkerHello { hostname: "a".into(), device: "cpu".into(), pid: 1 }).await.unwrap();
    let b = sched.register(WorkerHello { hostname: "b".into(), device: "cpu".into(), pid: 2 }).await.unwrap();
    // a leases the whole small sweep (one pack per architecture)
    let small = sched.lease(a.clone(), 6, None).await.unwrap().trials;
    assert_eq!(small.len(), 3, "one pack key: {small:?}");
    assert_eq!(sched.lease(a.clone(), 6, None).await.unwrap().trials.len(), 3);
    sched.complete(a.clone(), small[0].id.clone(), small[0].attempt, result(TrialOutcome::Completed)).await.unwrap();
    sched.complete(a.clone(), small[1].id.clone(), small[1].attempt, result(TrialOutcome::Failed("boom".into()))).await.unwrap();
    sched.progress(a.clone(), vec![(small[2].id.clone(), small[2].attempt, epoch(3))]).await.unwrap();
    assert_eq!(sched.release(a.clone(), vec![small[2].id.clone(), small[2].id.clone()]).await.unwrap(), 1);
    // the handed-back trial, the small sweep's only pending one, goes to b
    let again = sched.lease(b.clone(), 6, None).await.unwrap().trials;
    assert!(again.len() == 1 && again[0].id == small[2].id && again[0].attempt.0 == 2, "{again:?}");
    sched.complete(b.clone(), again[0].id.clone(), again[0].attempt, result(TrialOutcome::Completed)).await.unwrap();
    assert_eq!(tallied(&sched.status(None).await.unwrap()), kept(&sched.metrics().await.unwrap()));
    let big = sched.lease(b.clone(), 4, None).await.unwrap().trials;
    assert_eq!(big.len(), 4);
    sched.complete(b.clone(), big[0].id.clone(), big[0].attempt, result(TrialOutcome::Diverged)).await.unwrap();
    sched.complete(b.clone(), big[1].id.clone(), big[1].attempt, result(TrialOutcome::Failed("again".into()))).await.unwrap();
    assert_eq!(tallied(&sched.status(None).await.unwrap()), kept(&sched.metrics().await.unwrap()));
    // The small sweep's other leases are not renewed: they expire (30 s; the tick's expiry run as
    // of a minute from now, before the big sweep's 120 s leases), out of attempts.
    let expired = sched.expire_leases_within(Duration::from_secs(60)).await.unwrap();
    assert_eq!(expired, 3, "the small sweep's three unrenewed leases");
    let status = sched.status(None).await.unwrap();
    let small_status = status.sweeps.iter().find(|s| s.sweep.as_str() == "small").unwrap();
    assert!(small_status.counts.contains(&(TrialState::Done, 2)), "{small_status:?}");
    assert!(small_status.counts.contains(&(TrialState::Failed, 4)), "one failed, three expired: {small_status:?}");
    assert_eq!(small_status.resumes.epochs_lost, 3, "the handed-back trial's second attempt trains epochs 1-3 again");
    assert_eq!(tallied(&status), kept(&sched.metrics().await.unwrap()));
    assert_eq!(sched.retry_failed("small".into()).await.unwrap(), 4, "the failed trial and the three expired ones");
    assert_eq!(tallied(&sched.status(None).await.unwrap()), kept(&sched.metrics().await.unwrap()));
    // every trial of the big sweep but the diverged one (done): the pending ones, the retried
    // failure and the two leases b still holds
    assert_eq!(sched.cancel("big".into()).await.unwrap(), 9_999);
    let status = sched.status(None).await.unwrap();
    let m = sched.metrics().await.unwrap();
    assert_eq!(tallied(&status), kept(&m));
    assert_eq!(m.workers_live, status.workers.len() as u32);

    let body = scrape(addr).await;
    let leased = status.sweeps.iter().flat_map(|s| &s.counts).filter(|(s, _)| *s == TrialState::Leased).map(|(_, n)| *n).sum::<u32>();
    assert_eq!(metric(&body, "cbsweep_leases_active"), f64::from(leased));
    assert_eq!(metric(&body, "cbsweep_epochs_lost{sweep=\"small\"}"), 3.0);
    for s in &status.sweeps {
        for (state, n) in &s.counts {
            assert_eq!(metric(&body, &format!("cbsweep_trials{{sweep=\"{}\",state=\"{state}\"}}", s.sweep)), f64::from(*n));
        }
    }

    // A restarted scheduler starts its counts from the store.
    server.abort();
    let _ = server.await;
    drop(sched);
    let sched = SchedulerHandle::start(dir.path(), opts).unwrap();
    let m = sched.metrics().await.unwrap();
    assert_eq!(m.counters.trial_rows_read, TRIALS as u64, "the start counts every trial once");
    assert_eq!(tallied(&sched.status(None).await.unwrap()), kept(&m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_ask_for_the_token_while_the_probes_never_do() {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let (addr, _task) =
        cbsweep_coordinator::http::serve("127.0.0.1:0".parse().unwrap(), sched, ready, MetricsAccess::Token, Token("s3cret".into()))
            .await
            .unwrap();
    let ask = |path: &'static str, headers: &'static str| tokio::task::spawn_blocking(move || get_with(addr, path, headers));
    let (status, body) = ask("/metrics", "").await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("cbsweep_trials"), "{body}");
    assert_eq!(ask("/metrics", "Authorization: Bearer wrong\r\n").await.unwrap().0, 401);
    assert_eq!(ask("/metrics", "Authorization: Bearer s3cret-and-more\r\n").await.unwrap().0, 401);
    assert_eq!(ask("/metrics", "Authorization: s3cret\r\n").await.unwrap().0, 401, "only as a bearer token");
    let (status, body) = ask("/metrics", "Authorization: Bearer s3cret\r\n").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE cbsweep_leases_active gauge"), "{body}");
    assert_eq!(ask("/healthz", "").await.unwrap(), (200, "ok\n".to_string()));
    assert_eq!(ask("/readyz", "").await.unwrap(), (200, "ready\n".to_string()));
}

/// Half-sent requests cannot hold the HTTP side (hostile round three, item 6): past
/// `max_connections` a new connection is closed at once, each served one is closed once
/// `header_timeout` passes without a whole request head, and a fresh /healthz is answered
/// meanwhile, as soon as those slots are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_healthz_still_answers() {
    use cbsweep_coordinator::http::HttpLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 300;
    let limits = HttpLimits { max_connections: 64, header_timeout: Duration::from_secs(2) };
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let (addr, _task) = cbsweep_coordinator::http::serve_limited(
        "127.0.0.1:0".parse().unwrap(),
        sched,
        ready,
        MetricsAccess::Open,
        Token("t".into()),
        limits,
    )
    .await
    .unwrap();

    let t0 = tokio::time::Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        flood.spawn(async move {
            // half a request line, never finished; the socket stays open on this side
            let _ = s.write_all(b"GET /healthz HT").await;
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest)).await.is_ok();
            (closed.then(|| t0.elapsed()), s)
        });
    }
    // a fresh probe, tried until answered, while the flood holds its sockets open
    let probe = tokio::task::spawn_blocking(move || {
        loop {
            let answer = std::panic::catch_unwind(|| get(addr, "/healthz"));
            if let Ok(answer) = answer {
                return (answer, t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (answer, answered_after) = tokio::time::timeout(Duration::from_secs(8), probe).await.expect("/healthz answers").unwrap();
    assert_eq!(answer, (200, "ok\n".to_string()));
    assert!(answered_after < limits.header_timeout + Duration::from_secs(3), "/healthz answered after {answered_after:?}");

    let mut at_once = 0;
    let mut timed_out = Vec::new();
    let mut sockets = Vec::new();
    while let Some(r) = flood.join_next().await {
        let (closed_after, socket) = r.unwrap();
        sockets.push(socket);
        let closed_after = closed_after.expect("the server closes every half-sent request");
        if closed_after < limits.header_timeout / 2 {
            at_once += 1;
        } else {
            timed_out.push(closed_after);
        }
    }
    assert_eq!(timed_out.len(), limits.max_connections, "one served connection per slot; the others closed at once ({at_once})");
    for after in timed_out {
        assert!(after >= limits.header_timeout - Duration::from_millis(100), "closed after {after:?}, before the header timeout");
        assert!(after < limits.header_timeout + Duration::from_secs(3), "closed after {after:?}");
    }
    assert_eq!(at_once, FLOOD - limits.max_connections);
}
