//! The coordinator's plain-HTTP side: liveness (/healthz), readiness (/readyz) and Prometheus
//! metrics (/metrics), for Kubernetes probes and scrapers.

use crate::scheduler::SchedulerHandle;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
struct Ctx {
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
}

/// Serves the HTTP endpoints on `addr`; `ready` turns true once gRPC serves.
pub async fn serve(
    addr: SocketAddr,
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ctx { sched, ready });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "http endpoint listening");
    Ok((local, task))
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, &'static str) {
    if ctx.ready.load(Ordering::Relaxed) { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "starting\n") }
}

async fn metrics(State(ctx): State<Ctx>) -> Result<String, (StatusCode, String)> {
    let unavailable = |e: crate::scheduler::SchedError| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    let report = ctx.sched.status(None).await.map_err(unavailable)?;
    let counters = ctx.sched.counters().await.map_err(unavailable)?;
    Ok(render(&report, &counters))
}

/// Prometheus text exposition of a status report and the scheduler's counters.
pub fn render(report: &crate::scheduler::StatusReport, c: &crate::scheduler::Counters) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP cbsweep_trials Trials per sweep and state.\n# TYPE cbsweep_trials gauge");
    let mut leased = 0;
    for s in &report.sweeps {
        for (state, n) in &s.counts {
            let _ = writeln!(out, "cbsweep_trials{{sweep=\"{}\",state=\"{}\"}} {n}", s.sweep, state);
            if *state == cbsweep_common::TrialState::Leased {
                leased += n;
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP cbsweep_leases_active Trials currently leased to workers.\n# TYPE cbsweep_leases_active gauge\ncbsweep_leases_active {leased}"
    );
    let _ = writeln!(
        out,
        "# HELP cbsweep_workers_live Workers seen in the last minute.\n# TYPE cbsweep_workers_live gauge\ncbsweep_workers_live {}",
        report.workers.len()
    );
    for (name, help, v) in [
        ("cbsweep_lease_requests_total", "Lease calls answered.", c.lease_requests),
        ("cbsweep_trials_leased_total", "Trials handed out (attempts started).", c.trials_leased),
        ("cbsweep_trials_finished_total", "Trials that reached a final state.", c.trials_finished),
        ("cbsweep_attempts_failed_total", "Attempts that reported a failure.", c.attempts_failed),
        ("cbsweep_checkpoints_saved_total", "Trial checkpoints stored.", c.checkpoints_saved),
        ("cbsweep_checkpoint_bytes_saved_total", "Bytes of trial checkpoints stored.", c.checkpoint_bytes_saved),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(out, "# HELP cbsweep_epochs_lost Epochs trained again after interruptions.\n# TYPE cbsweep_epochs_lost gauge");
    for s in &report.sweeps {
        let _ = writeln!(out, "cbsweep_epochs_lost{{sweep=\"{}\"}} {}", s.sweep, s.resumes.epochs_lost);
    }
    for s in &report.sweeps {
        if s.trials_per_minute.is_finite() {
            let _ = writeln!(out, "cbsweep_trials_per_minute{{sweep=\"{}\"}} {:.3}", s.sweep, s.trials_per_minute);
        }
    }
    out
}
