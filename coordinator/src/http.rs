//! The coordinator's plain-HTTP side: liveness (/healthz), readiness (/readyz) and Prometheus
//! metrics (/metrics), for Kubernetes probes and scrapers. The probes answer anyone; /metrics
//! answers anyone who reaches the address (`MetricsAccess::Open`, for an address only the
//! cluster's network reaches) or only callers with the coordinator's bearer token
//! (`MetricsAccess::Token`, compared in constant time as the gRPC side does). A scrape is
//! answered from the counts the scheduler keeps in memory and reads no trial row, so scrapers
//! cannot slow the scheduler down however many trials there are. The dashboard's pages, when
//! served (`serve_with`), are `crate::dashboard`'s routes merged into this router; with the
//! coordinator's TLS files everything here is served over TLS (rustls, HTTP/1.1). A client gets
//! `HttpLimits`: a bounded number of connections, and a deadline for each request's head, so
//! half-sent requests cannot pile up and take the process's file descriptors.

use crate::scheduler::{MetricsReport, SchedulerHandle};
use crate::server::Token;
use axum::Router;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Who may read /metrics (the probes answer everyone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAccess {
    /// Anyone who reaches the HTTP address: keep that address internal (a pod or cluster network,
    /// not the internet).
    #[default]
    Open,
    /// Only requests with the coordinator's token (`Authorization: Bearer TOKEN`); others get 401.
    Token,
}

/// /metrics' access with the token it checks.
#[derive(Clone)]
enum Gate {
    Open,
    Token(Token),
}

#[derive(Clone)]
struct Ctx {
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
    gate: Gate,
}

/// Most HTTP connections served at once (probes, scrapes, dashboard pages and their event
/// streams); one over it is closed as soon as it is accepted. Far below the process's open-file
/// limit, so a flood of connections here leaves descriptors for the gRPC side and the state.
pub const HTTP_MAX_CONNECTIONS: usize = 256;

/// How long a client has to finish its TLS handshake, and then each request's head (request
/// line and headers), before its connection is closed; an idle kept-alive connection is closed
/// after as long.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP side allows a client: a half-sent request or an idle connection is closed after
/// `header_timeout`, and at most `max_connections` are served at once.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_connections: HTTP_MAX_CONNECTIONS, header_timeout: HTTP_HEADER_TIMEOUT }
    }
}

/// Serves the HTTP endpoints on `addr`; `ready` turns true once gRPC serves. `token` is the
/// coordinator's, checked on /metrics when `metrics` is `MetricsAccess::Token`.
pub async fn serve(
    addr: SocketAddr,
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
    metrics: MetricsAccess,
    token: Token,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_limited(addr, sched, ready, metrics, token, HttpLimits::default()).await
}

/// Like `serve`, within `limits` instead of the default ones.
pub async fn serve_limited(
    addr: SocketAddr,
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
    metrics: MetricsAccess,
    token: Token,
    limits: HttpLimits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listen(addr, router(sched, ready, metrics, token, None), None, limits).await
}

/// Like `serve`, with the dashboard's pages and data when `dashboard` is given, over TLS when
/// `tls` is.
pub async fn serve_with(
    addr: SocketAddr,
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
    metrics: MetricsAccess,
    token: Token,
    dashboard: Option<crate::dashboard::Dashboard>,
    tls: Option<&crate::server::TlsFiles>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tls = tls.map(crate::server::TlsFiles::rustls_config).transpose()?;
    listen(addr, router(sched, ready, metrics, token, dashboard), tls, HttpLimits::default()).await
}

/// The probes, /metrics and, when given, the dashboard's routes.
fn router(
    sched: SchedulerHandle,
    ready: Arc<AtomicBool>,
    metrics: MetricsAccess,
    token: Token,
    dashboard: Option<crate::dashboard::Dashboard>,
) -> Router {
    let gate = match metrics {
        MetricsAccess::Open => Gate::Open,
        MetricsAccess::Token => Gate::Token(token),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(Ctx { sched: sched.clone(), ready, gate });
    match dashboard {
        Some(d) => app.merge(crate::dashboard::router(d, sched)),
        None => app,
    }
}

/// Binds `addr` and serves `app` there (over TLS with `tls`) within `limits`.
async fn listen(
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: HttpLimits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tracing::info!(addr = %local, tls = tls.is_some(), max_connections = limits.max_connections, "http endpoint listening");
    Ok((local, tokio::spawn(accept_loop(listener, app, tls, limits))))
}

/// Accepts connections and serves HTTP/1.1 on each, one task per connection, after its TLS
/// handshake when `tls` is given. A connection over `limits.max_connections` is closed at once
/// (queued, it would hold a descriptor all the same); a handshake or a request head not done
/// within `limits.header_timeout` ends its connection. A failed handshake ends only its own
/// connection.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // out of descriptors (EMFILE) or a connection reset before it was accepted
                tracing::warn!(error = %e, "http endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "http endpoint: too many connections; closed a new one");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => serve_connection(tcp, app, limits).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, app, limits).await,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "http endpoint: TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "http endpoint: TLS handshake timed out"),
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http endpoint: connection ended");
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until the client or the server closes it.
async fn serve_connection<IO>(io: IO, app: Router, limits: HttpLimits) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, &'static str) {
    if ctx.ready.load(Ordering::Relaxed) { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "starting\n") }
}

async fn scrape(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Gate::Token(token) = &ctx.gate
        && !bearer_matches(&headers, token)
    {
        let refusal = "/metrics needs the coordinator's token: Authorization: Bearer TOKEN\n";
        return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, "Bearer")], refusal).into_response();
    }
    match ctx.sched.metrics().await {
        Ok(report) => render(&report).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// Whether the request carries `Authorization: Bearer <token>` (constant-time comparison).
fn bearer_matches(headers: &HeaderMap, token: &Token) -> bool {
    token.matches(headers.get(AUTHORIZATION).map(|v| crate::server::bearer_token(v.as_bytes())).unwrap_or(b""))
}

/// Prometheus text exposition of the scheduler's metrics report.
pub fn render(report: &MetricsReport) -> String {
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
        report.workers_live
    );
    let c = &report.counters;
    for (name, help, v) in [
        ("cbsweep_lease_requests_total", "Lease calls answered.", c.lease_requests),
        ("cbsweep_trials_leased_total", "Trials handed out (attempts started).", c.trials_leased),
        ("cbsweep_trials_finished_total", "Trials that reached a final state.", c.trials_finished),
        ("cbsweep_attempts_failed_total", "Attempts that reported a failure.", c.attempts_failed),
        ("cbsweep_checkpoints_saved_total", "Trial checkpoints stored.", c.checkpoints_saved),
        ("cbsweep_checkpoint_bytes_saved_total", "Bytes of trial checkpoints stored.", c.checkpoint_bytes_saved),
        ("cbsweep_trial_rows_read_total", "Trial rows the scheduler read to tally whole sweeps (status requests).", c.trial_rows_read),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(out, "# HELP cbsweep_epochs_lost Epochs trained again after interruptions.\n# TYPE cbsweep_epochs_lost gauge");
    for s in &report.sweeps {
        let _ = writeln!(out, "cbsweep_epochs_lost{{sweep=\"{}\"}} {}", s.sweep, s.epochs_lost);
    }
    for s in &report.sweeps {
        if s.trials_per_minute.is_finite() {
            let _ = writeln!(out, "cbsweep_trials_per_minute{{sweep=\"{}\"}} {:.3}", s.sweep, s.trials_per_minute);
        }
    }
    out
}
