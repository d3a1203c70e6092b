//! The dashboard: pages to watch sweeps from a browser, served on the coordinator's HTTP side
//! (`crate::http::serve_with` merges `router` into its routes). The overview (/: state counts,
//! progress, throughput, ETA, workers and what each trains) and one sweep (/sweeps/SWEEP: its
//! conditions, learning curves, analyses, failed trials, statistics), drawn in the browser from
//! the JSON API (/api/status, /api/sweeps/SWEEP, /api/training) and refreshed when
//! /api/events (server-sent events) says something changed. docs/dashboard.md describes it.
//!
//! The status comes from the scheduler (`Command::Status`) as `crate::status_json::StatusJson`,
//! the type `cbsweep status --json` prints; the rest from a read-only store connection
//! (`data`). Every page, JSON and event route needs the token (`auth`); /assets/* (the script,
//! the style sheet, uPlot) and the login form hold no data and are open.
//!
//! Children: `auth` (token, session cookie), `data` (the sweep page's numbers), `events` (SSE),
//! `assets` (the embedded files). This file wires them into routes and uses all four; none of
//! them uses it.

mod assets;
mod auth;
mod data;
mod events;

use crate::scheduler::SchedulerHandle;
use crate::server::Token;
use crate::status_json::StatusJson;
use auth::{Access, Verdict};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cbsweep_common::SweepId;
use std::path::PathBuf;

/// What the dashboard needs: the coordinator's token, its state folder (read-only) and
/// whether its pages are served over TLS (the session cookie is then Secure).
#[derive(Clone, Debug)]
pub struct Dashboard {
    pub token: Token,
    pub state_dir: PathBuf,
    pub tls: bool,
}

#[derive(Clone)]
struct Ctx {
    sched: SchedulerHandle,
    access: Access,
    state_dir: PathBuf,
}

/// The dashboard's routes.
pub fn router(d: Dashboard, sched: SchedulerHandle) -> Router {
    let ctx = Ctx { sched, access: Access::new(d.token, d.tls), state_dir: d.state_dir };
    Router::new()
        .route("/", get(page))
        .route("/sweeps/{sweep}", get(page))
        .route("/login", get(login_form).post(login))
        .route("/assets/{name}", get(asset))
        .route("/api/status", get(status))
        .route("/api/training", get(training))
        .route("/api/sweeps/{sweep}", get(sweep))
        .route("/api/events", get(events))
        .with_state(ctx)
}

/// Pages and data are never cached, and the pages run only the dashboard's own script.
fn guarded(status: StatusCode, content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-store"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CONTENT_SECURITY_POLICY, "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
        ],
        body,
    )
        .into_response()
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => guarded(StatusCode::OK, "application/json", text),
        Err(e) => guarded(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("cannot encode the answer: {e}\n")),
    }
}

fn unauthorized() -> Response {
    guarded(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        "the dashboard needs the coordinator's token: log in at /login, open a page with ?token=TOKEN, or send Authorization: Bearer TOKEN\n",
    )
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response()
}

/// A page: the shell when allowed; a login by URL sets the cookie and drops the token from
/// the address; anyone else is sent to the login form.
async fn page(State(ctx): State<Ctx>, uri: Uri, headers: HeaderMap) -> Response {
    match ctx.access.check(&headers, uri.query()) {
        Verdict::Allowed => guarded(StatusCode::OK, "text/html; charset=utf-8", assets::PAGE),
        Verdict::LogIn => {
            let rest = auth::without_token(uri.query().unwrap_or(""));
            let to = if rest.is_empty() { uri.path().to_string() } else { format!("{}?{rest}", uri.path()) };
            let mut r = redirect(&to);
            let (k, v) = ctx.access.set_cookie();
            r.headers_mut().insert(k, v);
            r
        }
        Verdict::Refused if uri.query().is_some_and(|q| auth::query_value(q, "token").is_some()) => redirect("/login?wrong=1"),
        Verdict::Refused => redirect("/login"),
    }
}

async fn login_form() -> Response {
    guarded(StatusCode::OK, "text/html; charset=utf-8", assets::LOGIN)
}

/// POST /login with `token=TOKEN` (the form): the cookie and the overview, or the form again.
async fn login(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let given = auth::query_value(&String::from_utf8_lossy(&body), "token").unwrap_or_default();
    if ctx.access.token_matches(given.trim()) {
        let mut r = redirect("/");
        let (k, v) = ctx.access.set_cookie();
        r.headers_mut().insert(k, v);
        r
    } else {
        redirect("/login?wrong=1")
    }
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match assets::asset(&name) {
        Some((content_type, bytes)) => {
            ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "max-age=300"), (X_CONTENT_TYPE_OPTIONS, "nosniff")], bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no dashboard file {name}\n")).into_response(),
    }
}

/// GET /api/status[?sweep=SWEEP]: what `cbsweep status --json` prints.
async fn status(State(ctx): State<Ctx>, uri: Uri, headers: HeaderMap) -> Response {
    if ctx.access.check(&headers, None) != Verdict::Allowed {
        return unauthorized();
    }
    let only = uri.query().and_then(|q| auth::query_value(q, "sweep")).filter(|s| !s.is_empty()).map(SweepId);
    match ctx.sched.status(only).await {
        Ok(report) => json(&StatusJson::from(&crate::service::status_response(report))),
        Err(crate::scheduler::SchedError::UnknownSweep(s)) => {
            guarded(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("unknown sweep {s}\n"))
        }
        Err(e) => guarded(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("{e}\n")),
    }
}

/// Runs a read of the store on a blocking thread and answers it as JSON.
async fn read<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<Option<T>, crate::store::StoreError> + Send + 'static,
    missing: String,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(Some(v))) => json(&v),
        Ok(Ok(None)) => guarded(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("{missing}\n")),
        Ok(Err(e)) => guarded(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("cannot read the state: {e}\n")),
        Err(e) => guarded(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("the read failed: {e}\n")),
    }
}

/// GET /api/sweeps/SWEEP: the sweep page's tables and curves.
async fn sweep(State(ctx): State<Ctx>, UrlPath(sweep): UrlPath<String>, headers: HeaderMap) -> Response {
    if ctx.access.check(&headers, None) != Verdict::Allowed {
        return unauthorized();
    }
    let missing = format!("unknown sweep {sweep}");
    let state = ctx.state_dir.clone();
    read(move || data::sweep_detail(&state, &SweepId(sweep)), missing).await
}

/// GET /api/training: the trials each worker holds.
async fn training(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if ctx.access.check(&headers, None) != Verdict::Allowed {
        return unauthorized();
    }
    let state = ctx.state_dir.clone();
    read(move || data::training(&state).map(Some), String::new()).await
}

/// GET /api/events[?sweep=SWEEP]: server-sent events when a sweep changes.
async fn events(State(ctx): State<Ctx>, uri: Uri, headers: HeaderMap) -> Response {
    if ctx.access.check(&headers, None) != Verdict::Allowed {
        return unauthorized();
    }
    let only = uri.query().and_then(|q| auth::query_value(q, "sweep")).filter(|s| !s.is_empty()).map(SweepId);
    let mut r = events::stream(ctx.sched.subscribe(), only).into_response();
    r.headers_mut().insert(CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    r
}
