//! The `cbsweep` commands. Argument parsing and exit codes live in main.rs; this module does
//! the work of each command and prints for people.

use crate::local::{self, LocalError, RunOptions, RunSummary};
use crate::scheduler::{Event, SchedulerHandle, SchedulerOptions};
use crate::server::{self, Token};
use cbsweep_common::{SpecError, SweepId, load_spec};
use cbsweep_proto::client::{self, ClientError};
use cbsweep_proto::v1;
use cbsweep_results::{ResultsError, plot as figures, stats, sweep_dir};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default coordinator address for client commands.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("coordinator refused: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Sched(#[from] crate::scheduler::SchedError),
    #[error(transparent)]
    Plot(#[from] figures::PlotError),
    #[error(transparent)]
    Slurm(#[from] crate::slurm::SlurmError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no token: pass --token-file FILE or set CBSWEEP_TOKEN (the coordinator printed where it wrote its token)")]
    NoToken,
    #[error("token file {} is empty (or only whitespace): no worker or client could use this coordinator; write a token into it (e.g. `openssl rand -hex 16 > {}`), or leave out --token-file to have one made in {}", file.display(), file.display(), state.join("token").display())]
    EmptyTokenFile { file: PathBuf, state: PathBuf },
    /// --tls-cert or --tls-key cannot serve: what is wrong with which file.
    #[error("{0}")]
    Tls(String),
    #[error("no `cbsweep run` is serving {}: {} is missing (it exists while a run's coordinator is up)", out.display(), file.display())]
    NoLocalRun { out: PathBuf, file: PathBuf },
    #[error("sweep {sweep} is not in {}: run it first with `cbsweep run SPEC --out {}`", state.display(), out.display())]
    UnknownSweep { sweep: SweepId, state: PathBuf, out: PathBuf },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Writes `text` and a newline to standard output. A reader that went away (`cbsweep validate
/// SPEC | head`) is no error: the rest of the output is simply not wanted.
fn print_out(text: impl std::fmt::Display) -> Result<(), CliError> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(io("standard output")),
    }
}

/// `cbsweep validate SPEC`: load, validate, describe: one row per condition (not per seed), in
/// grid order, with the model's sizes, its parameter count, for a model whose sizes follow the
/// grid's shape by parameter matching the CB-RNN shape it is matched to, and the effective
/// learning rates of its core, readout and module.
pub fn validate(spec_path: &Path) -> Result<(), CliError> {
    let spec = load_spec(spec_path)?;
    warn_if_too_big(&spec);
    let mut conditions: Vec<(String, &cbsweep_common::TrialSpec, u32)> = Vec::new();
    let mut index = std::collections::HashMap::<String, usize>::new();
    for t in &spec.trials {
        let c = t.condition();
        match index.get(&c) {
            Some(&i) => conditions[i].2 += 1,
            None => {
                index.insert(c.clone(), conditions.len());
                conditions.push((c, t, 1));
            }
        }
    }
    print_out(format_args!(
        "{}: sweep {} is valid: {} trials in {} conditions",
        spec_path.display(),
        spec.id,
        spec.trials.len(),
        conditions.len()
    ))?;
    let short = cbsweep_common::varying_parts(conditions.iter().map(|(c, _, _)| c.as_str()));
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "condition",
        "arch",
        "hidden",
        "granule",
        "purkinje",
        "params",
        "matched to",
        "lr core",
        "lr readout",
        "lr module",
        "seeds",
    ]);
    for (c, t, n) in &conditions {
        let matched = if t.hidden == t.grid_hidden {
            "-".to_string()
        } else {
            let target = cbsweep_common::model_size::cbrnn_params(t.grid_hidden, t.granule, t.purkinje);
            format!("cbrnn {}/{}/{} ({target})", t.grid_hidden, t.granule, t.purkinje)
        };
        table.add_row([
            short(c),
            t.arch.to_string(),
            t.hidden.to_string(),
            t.granule.to_string(),
            t.purkinje.to_string(),
            t.param_count().to_string(),
            matched,
            // the effective rates: the core's scaled by its plasticity, the readout's in the
            // core's group unless the spec names it
            format!("{}", t.lr_core * t.core_plasticity),
            format!("{}", t.lr_readout),
            if t.arch.module().is_some() { format!("{}", t.lr_cb) } else { "-".into() },
            n.to_string(),
        ]);
    }
    print_out(table)
}

/// Most memory one trial may need before `validate` and `run` warn, where /proc/meminfo does
/// not say this machine's.
const LARGE_TRIAL_BYTES: u64 = 1 << 40;

/// Warns when a trial of `spec` needs more memory (by the memory model) than this machine has:
/// no worker here could train it. Names the largest such condition and its figure.
fn warn_if_too_big(spec: &cbsweep_common::SweepSpec) {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        Some(kib * 1024)
    });
    if let Some(warning) = too_big(spec, machine) {
        eprintln!("cbsweep: warning: {warning}");
    }
}

/// `warn_if_too_big`'s message for a machine of `machine` bytes (None: unknown), if any.
fn too_big(spec: &cbsweep_common::SweepSpec, machine: Option<u64>) -> Option<String> {
    use cbsweep_common::memory::{format_bytes, trial_memory_bytes};
    let limit = machine.unwrap_or(LARGE_TRIAL_BYTES);
    let mut over: Vec<(u64, String)> = Vec::new();
    for t in &spec.trials {
        let bytes = trial_memory_bytes(t);
        if bytes > limit && !over.iter().any(|(_, c)| *c == t.condition()) {
            over.push((bytes, t.condition()));
        }
    }
    let (bytes, condition) = over.iter().max()?;
    let more = if over.len() > 1 { format!(" (and {} more conditions)", over.len() - 1) } else { String::new() };
    let than = match machine {
        Some(m) => format!("this machine's {}", format_bytes(m)),
        None => format!("{} (this machine's memory is unknown)", format_bytes(LARGE_TRIAL_BYTES)),
    };
    Some(format!(
        "one trial of condition [{condition}]{more} needs about {} by the memory model, more than {than}: no worker here can train it; lower train.batch_size, train.max_level or the model sizes",
        format_bytes(*bytes)
    ))
}

/// `cbsweep run SPEC`.
pub async fn run(spec_path: &Path, opts: RunOptions) -> Result<RunSummary, CliError> {
    let spec = load_spec(spec_path)?;
    warn_if_too_big(&spec);
    let summary = local::run(spec, spec_path, opts).await?;
    print_summary(&summary);
    Ok(summary)
}

/// `cbsweep resume SWEEP`: the stored spec, run again.
pub async fn resume(sweep: &SweepId, opts: RunOptions) -> Result<RunSummary, CliError> {
    let state = opts.out.join(local::STATE_DIR);
    let row = crate::store::Store::open_read_only(&state)
        .ok()
        .and_then(|s| s.sweep(sweep).ok().flatten())
        .ok_or_else(|| CliError::UnknownSweep { sweep: sweep.clone(), state: state.clone(), out: opts.out.clone() })?;
    let path = PathBuf::from(&row.spec_path);
    let ignored = cbsweep_common::env_overrides();
    if !ignored.is_empty() {
        eprintln!(
            "cbsweep: resume uses the spec sweep {sweep} was validated with; ignoring {} (to change the spec, edit the file and `cbsweep run` it)",
            cbsweep_common::overrides_text(&ignored)
        );
    }
    let spec = cbsweep_common::parse_resolved(&row.spec_toml, &path, cbsweep_common::parse_overrides_text(&row.overrides))?;
    let summary = local::run(spec, &path, opts).await?;
    print_summary(&summary);
    Ok(summary)
}

pub fn print_summary(s: &RunSummary) {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(["condition", "n", "done", "failed", "max level (mean ± sd)", "wall s/trial"]);
    for c in &s.conditions {
        table.add_row([
            c.condition.clone(),
            c.total.to_string(),
            c.done.to_string(),
            c.failed.to_string(),
            format!("{:.2} ± {:.2}", c.mean_max_level, c.sd_max_level),
            format!("{:.1}", c.mean_wall_s),
        ]);
    }
    println!("{table}");
    println!("sweep {}: {} trials, {} done, {} failed", s.sweep, s.total, s.done, s.failed);
    println!("results: {}/{{trials,curves,levels,analyses,stats}}.parquet", s.results_dir.display());
    println!("query:   duckdb -c \"SELECT arch, task, avg(max_level) FROM '{}/trials.parquet' GROUP BY ALL\"", s.results_dir.display());
}

/// `cbsweep export SWEEP`: rewrite the Parquet tables from the stored state.
pub fn export(state: &Path, sweep: &SweepId, out: &Path) -> Result<PathBuf, CliError> {
    Ok(crate::export::export(state, sweep, out)?)
}

/// `cbsweep stats SWEEP`: the statistics table, printed and written as stats.parquet.
pub fn stats(state: &Path, sweep: &SweepId, out: &Path) -> Result<PathBuf, CliError> {
    let store = crate::store::Store::open_read_only(state)?;
    let rows = store.trials(sweep)?;
    if rows.is_empty() {
        return Err(CliError::UnknownSweep { sweep: sweep.clone(), state: state.to_owned(), out: out.to_owned() });
    }
    let plan = cbsweep_results::ResultsSource::sweep(&store, sweep)?.map(|m| m.stats).unwrap_or_default();
    let stat_rows = stats::compute(&rows, &store.curves(sweep)?, &plan);
    print!("{}", stats::print(&stat_rows));
    let path = sweep_dir(out, sweep).join(stats::FILE);
    stats::write(&path, &stat_rows)?;
    println!("wrote {}", path.display());
    Ok(path)
}

/// `cbsweep plot SWEEP`: the study's figures as PNG and SVG in OUT/SWEEP/figures/.
pub fn plot(state: &Path, sweep: &SweepId, out: &Path) -> Result<Vec<PathBuf>, CliError> {
    let store = crate::store::Store::open_read_only(state)?;
    let rows = store.trials(sweep)?;
    if rows.is_empty() {
        return Err(CliError::UnknownSweep { sweep: sweep.clone(), state: state.to_owned(), out: out.to_owned() });
    }
    let dir = sweep_dir(out, sweep).join("figures");
    let files = figures::plot(&rows, &store.curves(sweep)?, &store.analyses(sweep)?, &dir)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(files)
}

/// The token a coordinator serves with: the file, the environment, or a new one written to
/// STATE/token (mode 0600) for workers and clients to read.
fn coordinator_token(token_file: Option<&Path>, state: &Path) -> Result<Token, CliError> {
    if let Some(f) = token_file {
        warn_if_loose(f);
        // a coordinator started with no token could be used by nobody
        if std::fs::read_to_string(f).is_ok_and(|t| t.trim().is_empty()) {
            return Err(CliError::EmptyTokenFile { file: f.to_owned(), state: state.to_owned() });
        }
    }
    if let Some(t) = client::read_token(token_file).map_err(io("token"))? {
        return Ok(Token(t));
    }
    let path = state.join("token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        warn_if_loose(&path);
        eprintln!("cbsweep coordinator: using the token in {}", path.display());
        return Ok(Token(t.trim().to_string()));
    }
    std::fs::create_dir_all(state).map_err(io(format!("cannot create {}", state.display())))?;
    let t = format!("{:032x}", rand::random::<u128>());
    local::write_private(&path, &t).map_err(io(format!("cannot write {}", path.display())))?;
    eprintln!("cbsweep coordinator: wrote a new token to {} (give it to workers with --token-file)", path.display());
    Ok(Token(t))
}

/// Reads `--tls-cert` and `--tls-key` and checks that they make a TLS identity, naming the file
/// at fault: a coordinator serving a bad one would start, and fail every client's handshake.
fn tls_files(cert: &Path, key: &Path) -> Result<server::TlsFiles, CliError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |why: String| CliError::Tls(why);
    let files = server::TlsFiles {
        cert: std::fs::read(cert).map_err(io(format!("cannot read --tls-cert {}", cert.display())))?,
        key: std::fs::read(key).map_err(io(format!("cannot read --tls-key {}", key.display())))?,
    };
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("cannot read the certificate in --tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "no certificate in --tls-cert {} (expected PEM, -----BEGIN CERTIFICATE-----): give the server's certificate chain",
            cert.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        bad(format!(
            "cannot read the key in --tls-key {}: {e} (expected a PEM private key, -----BEGIN PRIVATE KEY----- or its RSA or EC form)",
            key.display()
        ))
    })?;
    files.rustls_config().map_err(|e| {
        bad(format!(
            "--tls-cert {} and --tls-key {} do not make a TLS identity: {e} (is the key that of the certificate?)",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(files)
}

/// Says so when a token file can be read by others than its owner.
fn warn_if_loose(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path).map(|m| m.permissions().mode())
        && m & 0o077 != 0
    {
        eprintln!(
            "cbsweep: warning: token file {} is readable by others (mode {:o}): anyone who reads it can submit and cancel sweeps; run `chmod 600 {}`",
            path.display(),
            m & 0o777,
            path.display()
        );
    }
}

/// `cbsweep coordinator`: serve until Ctrl-C or SIGTERM; export each sweep when it finishes.
/// `metrics`: who may read /metrics on `http_listen`.
pub async fn coordinator(
    listen: SocketAddr,
    http_listen: Option<SocketAddr>,
    metrics: crate::http::MetricsAccess,
    state: &Path,
    out: &Path,
    token_file: Option<&Path>,
    tls: Option<(&Path, &Path)>,
) -> Result<(), CliError> {
    let token = coordinator_token(token_file, state)?;
    let tls = tls.map(|(cert, key)| tls_files(cert, key)).transpose()?;
    if let Some(limit) = server::raise_open_file_limit() {
        tracing::info!(open_files = limit, "open-file limit");
    }
    let sched = SchedulerHandle::start(state, SchedulerOptions::default())?;
    let mut events = sched.subscribe();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = http_listen {
        let dashboard = crate::dashboard::Dashboard { token: token.clone(), state_dir: state.to_owned(), tls: tls.is_some() };
        let (local, _) = crate::http::serve_with(addr, sched.clone(), ready.clone(), metrics, token.clone(), Some(dashboard), tls.as_ref())
            .await
            .map_err(io(format!("cannot serve HTTP on {addr}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let access = match metrics {
            crate::http::MetricsAccess::Open => "open to anyone who reaches it: keep this address internal",
            crate::http::MetricsAccess::Token => "the coordinator's bearer token required",
        };
        eprintln!("cbsweep coordinator: health and metrics on {scheme}://{local}/metrics ({access})");
        eprintln!("cbsweep coordinator: dashboard on {scheme}://{local}/ (log in with the coordinator's token)");
    }
    let running = server::serve_with(listen, sched.clone(), token, tls).await.map_err(io(format!("cannot serve on {listen}")))?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("cbsweep coordinator: listening on {} (state {}, results {})", running.addr, state.display(), out.display());
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io("cannot install a SIGTERM handler"))?;
    // Tables are rewritten whole (and atomically) when a sweep finishes, and at most every
    // EXPORT_EVERY while it runs, so users can look at partial results.
    const EXPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
    // A failed export (a full or read-only results disk) is shown by status and tried again
    // this often until it succeeds.
    const EXPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
    let mut last_export: std::collections::HashMap<SweepId, std::time::Instant> = Default::default();
    let mut retry = tokio::time::interval(EXPORT_RETRY);
    loop {
        tokio::select! {
            _ = retry.tick() => {
                for sweep in crate::export::failed_sweeps() {
                    let (s, o) = (state.to_owned(), out.to_owned());
                    tokio::task::spawn_blocking(move || match crate::export::export(&s, &sweep, &o) {
                        Ok(dir) => eprintln!("cbsweep coordinator: export of sweep {sweep} succeeded on retry; results in {}", dir.display()),
                        Err(e) => tracing::warn!(sweep = %sweep, error = %e, "export failed again; retrying"),
                    });
                }
            }
            e = events.recv() => {
                let (sweep, finished) = match e {
                    Ok(Event::SweepFinished { sweep }) => (sweep, true),
                    Ok(Event::TrialFinished { sweep, .. }) => (sweep, false),
                    _ => continue,
                };
                let due = last_export.get(&sweep).is_none_or(|t| t.elapsed() >= EXPORT_EVERY);
                if !(finished || due) {
                    continue;
                }
                last_export.insert(sweep.clone(), std::time::Instant::now());
                let (s, o) = (state.to_owned(), out.to_owned());
                tokio::task::spawn_blocking(move || match crate::export::export(&s, &sweep, &o) {
                    Ok(dir) if finished => eprintln!("cbsweep coordinator: sweep {sweep} finished; results in {}", dir.display()),
                    Ok(_) => {}
                    Err(e) => tracing::error!(sweep = %sweep, error = %e, "export failed; status shows it, and it is tried again every 5 s"),
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("cbsweep coordinator: shutting down; state is saved in {}", state.display());
    let _ = running.shutdown.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), running.task).await;
    Ok(())
}

async fn sweep_client(url: &str, token_file: Option<&Path>) -> Result<client::SweepClient, CliError> {
    if let Some(f) = token_file {
        warn_if_loose(f);
    }
    let token = client::read_token(token_file).map_err(io("token"))?.ok_or(CliError::NoToken)?;
    Ok(client::sweep_client(url, &token).await?)
}

/// A call's answer; its failure as the coordinator's refusal, or as what it says of a wrong
/// port, scheme or CA (`client::misdirected`).
async fn answer<T>(url: &str, result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CliError> {
    match result {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => Err(match client::misdirected(url, &status).await {
            Some(why) => CliError::Client(ClientError::Misdirected { url: client::coordinator_url(url), why }),
            None => CliError::Rpc(status),
        }),
    }
}

/// `cbsweep submit SPEC`: validate here, then hand to a running coordinator.
pub async fn submit(url: &str, token_file: Option<&Path>, spec_path: &Path) -> Result<(), CliError> {
    let spec = load_spec(spec_path)?;
    let mut c = sweep_client(url, token_file).await?;
    let r = c
        .submit_sweep(v1::SubmitSweepRequest {
            spec_toml: spec.resolved.clone(),
            spec_path: spec_path.display().to_string(),
            overrides: spec.overrides.iter().map(Into::into).collect(),
        })
        .await;
    let r = answer(url, r).await?;
    println!("sweep {}: {} trials ({} new)", r.sweep_id, r.total_trials, r.new_trials);
    let resubmission =
        cbsweep_common::Resubmission { kept: r.kept_trials, run_changes: r.run_changes.into_iter().map(Into::into).collect() };
    for note in resubmission.notes(&SweepId(r.sweep_id)) {
        println!("{note}");
    }
    Ok(())
}

/// Where a running `cbsweep run --out OUT` serves, from OUT/.cbsweep: its coordinator's URL and
/// the token file to use (`token_file` when given).
pub fn local_run(out: &Path, token_file: Option<&Path>) -> Result<(String, PathBuf), CliError> {
    let dir = out.join(local::STATE_DIR);
    let file = dir.join(local::ADDRESS_FILE);
    let url = match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => return Err(CliError::NoLocalRun { out: out.to_owned(), file }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CliError::NoLocalRun { out: out.to_owned(), file }),
        Err(e) => return Err(CliError::Io { what: format!("cannot read {}", file.display()), source: e }),
    };
    Ok((url, token_file.map_or_else(|| dir.join(local::TOKEN_FILE), Path::to_owned)))
}

/// `cbsweep status`: tables for people, or with `json` the `status_json::StatusJson` that the
/// dashboard's /api/status also answers.
pub async fn status(url: &str, token_file: Option<&Path>, sweep: Option<&str>, json: bool) -> Result<v1::SweepStatusResponse, CliError> {
    let mut c = sweep_client(url, token_file).await?;
    let r = answer(url, c.sweep_status(v1::SweepStatusRequest { sweep_id: sweep.unwrap_or("").to_string() }).await).await?;
    if json {
        let text = serde_json::to_string_pretty(&crate::status_json::StatusJson::from(&r))
            .map_err(|e| CliError::Io { what: "cannot encode the status as JSON".into(), source: std::io::Error::other(e) })?;
        print_out(text)?;
        return Ok(r);
    }
    for s in &r.sweeps {
        let counts = s.counts.iter().filter(|c| c.count > 0).map(|c| format!("{} {}", c.count, c.state)).collect::<Vec<_>>().join(", ");
        let rate = if s.trials_per_minute.is_finite() { format!("{:.1} trials/min", s.trials_per_minute) } else { "rate n/a".into() };
        let eta = if s.eta_seconds.is_finite() { format!("eta {}", human_secs(s.eta_seconds)) } else { String::new() };
        println!("sweep {} [{}]: {} trials: {counts}  {rate} {eta}", s.sweep_id, s.state, s.total);
        println!("  {}", resume_line(s));
        if !s.export_error.is_empty() {
            println!("  export FAILED (tried again every few seconds): {}", s.export_error);
        }
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header(["condition", "done/total", "failed", "mean max level"]);
        for c in &s.conditions {
            let lvl = if c.mean_max_level.is_finite() { format!("{:.2}", c.mean_max_level) } else { "-".into() };
            table.add_row([c.condition.clone(), format!("{}/{}", c.done, c.total), c.failed.to_string(), lvl]);
        }
        println!("{table}");
    }
    if r.workers.is_empty() {
        println!("no live workers");
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header(["worker", "device", "leased", "last seen"]);
        for w in &r.workers {
            table.add_row([
                w.worker_id.clone(),
                w.device.clone(),
                w.leased.to_string(),
                format!("{:.1}s ago", w.last_seen_ms_ago as f64 / 1000.0),
            ]);
        }
        println!("{table}");
    }
    Ok(r)
}

/// `cbsweep cancel SWEEP`.
pub async fn cancel(url: &str, token_file: Option<&Path>, sweep: &str) -> Result<(), CliError> {
    let mut c = sweep_client(url, token_file).await?;
    let r = answer(url, c.cancel_sweep(v1::CancelSweepRequest { sweep_id: sweep.into() }).await).await?;
    println!("sweep {sweep}: cancelled {} unfinished trials", r.cancelled_trials);
    Ok(())
}

/// `cbsweep retry-failed SWEEP`.
pub async fn retry_failed(url: &str, token_file: Option<&Path>, sweep: &str) -> Result<(), CliError> {
    let mut c = sweep_client(url, token_file).await?;
    let r = answer(url, c.retry_failed(v1::RetryFailedRequest { sweep_id: sweep.into() }).await).await?;
    println!("sweep {sweep}: {} trials back in the queue", r.requeued_trials);
    Ok(())
}

/// What interruptions have cost a sweep, and how fresh its running trials' checkpoints are.
fn resume_line(s: &v1::SweepSummary) -> String {
    let running = s.counts.iter().find(|c| c.state == cbsweep_common::TrialState::Leased.as_str()).map_or(0, |c| c.count);
    let ages = if running == 0 {
        String::new()
    } else if s.oldest_checkpoint_age_s.is_finite() {
        let with = running.saturating_sub(s.running_without_checkpoint);
        format!("; running: oldest checkpoint {} old ({with} of {running} have one)", human_secs(s.oldest_checkpoint_age_s))
    } else {
        format!("; running: no checkpoint yet ({running})")
    };
    format!("work lost to interruptions: {} epochs re-trained, {} resumes from checkpoints{ages}", s.epochs_lost, s.resumes)
}

fn human_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
