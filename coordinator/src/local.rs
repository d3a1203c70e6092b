//! `cbsweep run`: an embedded coordinator on a loopback port, N local worker processes, progress
//! until the sweep finishes, then the Parquet export and a summary. Re-running the same command
//! (or `cbsweep resume`) continues an interrupted sweep from its state in OUT/.cbsweep.
//! While its coordinator serves, the run also serves the dashboard on a loopback port and
//! writes where to reach both, with the token, under OUT/.cbsweep (`Reach`: owner-only files in
//! an owner-only folder, removed when the run ends), so `cbsweep status --out OUT` and a
//! browser in another terminal find it.

use crate::export::export;
use crate::progress::Progress;
use crate::scheduler::{Event, SchedError, SchedulerHandle, SchedulerOptions};
use crate::server::{self, Token};
use crate::store::{Store, StoreError};
use cbsweep_common::{SpecError, SweepId, SweepSpec, TrialState};
use cbsweep_results::{ConditionTally, ResultsError, sweep_dir};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Folder under OUT that holds the embedded coordinator's state.
pub const STATE_DIR: &str = ".cbsweep";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Sched(#[from] SchedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot find the worker binary {}: build it with `cargo build --release` (or `make build`)", path.display())]
    NoWorkerBinary { path: PathBuf },
    #[error("every worker process exited before sweep {sweep} finished; their logs are in {}", logs.display())]
    WorkersExited { sweep: SweepId, logs: PathBuf },
    #[error("interrupted; {finished} of {total} trials finished. Resume with: cbsweep resume {sweep} --out {}", out.display())]
    Interrupted { sweep: SweepId, finished: u32, total: u32, out: PathBuf },
}

/// What `cbsweep run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub workers: u32,
    pub device: String,
    /// Threads per worker; 0 = the machine's cores divided among the workers.
    pub threads: u32,
    /// Extra arguments for every worker (e.g. `--trainer fake`).
    pub worker_args: Vec<String>,
    pub worker_binary: Option<PathBuf>,
    /// Where the dashboard listens (port 0: a free one; loopback unless asked otherwise).
    pub dashboard_listen: std::net::SocketAddr,
}

/// The files under OUT/.cbsweep that say where a running `cbsweep run` serves.
pub const ADDRESS_FILE: &str = "address";
pub const TOKEN_FILE: &str = "token";
pub const DASHBOARD_FILE: &str = "dashboard";

/// A running local coordinator's address, token and dashboard written under OUT/.cbsweep,
/// removed when dropped (the run ended, however).
struct Reach {
    dir: PathBuf,
}

impl Reach {
    /// Writes the three files, each 0600 from its creation, after making the folder 0700.
    fn write(dir: &Path, grpc: &str, token: &Token, dashboard: &str) -> Result<Reach, LocalError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot make {} owner-only", dir.display())))?;
        let reach = Reach { dir: dir.to_owned() };
        for (name, text) in [(TOKEN_FILE, token.0.as_str()), (ADDRESS_FILE, grpc), (DASHBOARD_FILE, dashboard)] {
            let path = dir.join(name);
            write_private(&path, &format!("{text}\n")).map_err(io(format!("cannot write {}", path.display())))?;
        }
        Ok(reach)
    }
}

impl Drop for Reach {
    fn drop(&mut self) {
        for name in [ADDRESS_FILE, DASHBOARD_FILE, TOKEN_FILE] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub sweep: SweepId,
    pub results_dir: PathBuf,
    /// One line per condition, named by the grid values that vary between conditions.
    pub conditions: Vec<ConditionTally>,
    pub total: u32,
    pub done: u32,
    pub failed: u32,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

fn worker_binary(given: Option<&Path>) -> Result<PathBuf, LocalError> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => {
            let exe = std::env::current_exe().map_err(io("cannot locate the cbsweep binary"))?;
            exe.with_file_name("cbsweep-worker")
        }
    };
    if path.is_file() { Ok(path) } else { Err(LocalError::NoWorkerBinary { path }) }
}

/// Runs (or resumes) `spec` to completion with local workers.
pub async fn run(spec: SweepSpec, spec_path: &Path, opts: RunOptions) -> Result<RunSummary, LocalError> {
    let state_dir = opts.out.join(STATE_DIR);
    let sched = SchedulerHandle::start(&state_dir, SchedulerOptions { reclaim_leases_at_start: true, ..Default::default() })?;
    let mut events = sched.subscribe();
    let sweep = spec.id.clone();
    let short =
        Box::new(cbsweep_common::varying_parts(spec.trials.iter().map(|t| t.cell_key()).collect::<Vec<_>>().iter().map(String::as_str)));
    // what one worker may hold at once, for the warning on more workers than cores
    let largest_trial = spec.trials.iter().map(cbsweep_common::memory::trial_memory_bytes).max().unwrap_or(0);
    let pack_size = spec.run.pack_size;
    let submitted = sched.submit(spec, spec_path.display().to_string()).await?;
    for note in submitted.resubmission.notes(&sweep) {
        eprintln!("cbsweep: {note}");
    }
    let status = sched.status(Some(sweep.clone())).await?;
    let counts = &status.sweeps[0].counts;
    let already = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| *n).sum::<u32>();
    tracing::info!(sweep = %sweep, total = submitted.total, new = submitted.new, already, "sweep ready");

    let logs = sweep_dir(&opts.out, &sweep).join("logs");
    if already < submitted.total {
        let token = Token(format!("{:032x}", rand::random::<u128>()));
        let running = server::serve("127.0.0.1:0".parse().expect("loopback address"), sched.clone(), token.clone())
            .await
            .map_err(io("cannot listen on a loopback port"))?;
        let url = format!("http://{}", running.addr);
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dashboard = crate::dashboard::Dashboard { token: token.clone(), state_dir: state_dir.clone(), tls: false };
        let (http_addr, http_task) = crate::http::serve_with(
            opts.dashboard_listen,
            sched.clone(),
            ready,
            crate::http::MetricsAccess::Token,
            token.clone(),
            Some(dashboard),
            None,
        )
        .await
        .map_err(io(format!("cannot serve the dashboard on {}", opts.dashboard_listen)))?;
        let dashboard_url = format!("http://{http_addr}/");
        let reach = Reach::write(&state_dir, &url, &token, &dashboard_url)?;
        let bin = worker_binary(opts.worker_binary.as_deref())?;
        std::fs::create_dir_all(&logs).map_err(io(format!("cannot create {}", logs.display())))?;
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        // On a GPU the workers are slots of one process: one CUDA context and the device's
        // free memory split among them, where separate processes would each count it whole.
        let (procs, slots) = if opts.device.starts_with("cuda") { (1, opts.workers.max(1)) } else { (opts.workers.max(1), 1) };
        let threads = if opts.threads > 0 { opts.threads } else { (cores / procs).max(1) };
        // a CPU worker packs up to its threads' number of trials (the worker's --max-pack default)
        let held = largest_trial.saturating_mul(u64::from(pack_size.min(threads)));
        if let Some(warning) = more_workers_than_cores(procs, cores, held) {
            eprintln!("cbsweep: warning: {warning}");
        }
        let mut children = Vec::new();
        for i in 0..procs {
            let log_path = logs.join(format!("worker-{i}.log"));
            // Appended to: a resumed run keeps the earlier runs' lines.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io(format!("cannot open {}", log_path.display())))?;
            let err = log.try_clone().map_err(io("cannot duplicate a log handle"))?;
            let child = Command::new(&bin)
                .args(["--coordinator", &url, "--device", &opts.device, "--threads", &threads.to_string()])
                .args(["--exit-when-drained", "--exit-with-parent", "--give-up-after-s", "20"])
                // only when asked: a worker binary from before --slots (--worker-binary) still runs
                .args(if slots > 1 { vec!["--slots".to_string(), slots.to_string()] } else { vec![] })
                .arg("--checkpoint-dir")
                .arg(sweep_dir(&opts.out, &sweep).join("checkpoints"))
                .args(&opts.worker_args)
                .env("CBSWEEP_TOKEN", &token.0)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(io(format!("cannot start {}", bin.display())))?;
            children.push(child);
        }
        let who = if slots > 1 { format!("1 worker with {slots} slots") } else { format!("{procs} workers") };
        eprintln!(
            "cbsweep: sweep {sweep}: {} trials ({} new), {who} on {} with {threads} thread(s) each; coordinator {url}",
            submitted.total, submitted.new, opts.device
        );
        eprintln!(
            "cbsweep: dashboard {dashboard_url} (log in with the token in {tok}, or open {dashboard_url}?token=$(cat {tok})); `cbsweep status --out {out}` from another terminal",
            tok = state_dir.join(TOKEN_FILE).display(),
            out = opts.out.display()
        );
        let outcome = watch(
            Progress::new(sweep.clone(), u64::from(submitted.total), u64::from(already), short),
            &sweep,
            submitted.total,
            already,
            &mut events,
            &mut children,
            &logs,
        )
        .await;
        // every result is committed once the sweep has finished: export while the workers exit
        let exported = outcome.is_ok().then(|| export_in_background(&state_dir, &sweep, &opts.out));
        stop_workers(&mut children).await;
        let _ = running.shutdown.send(());
        let _ = running.task.await;
        http_task.abort();
        drop(reach);
        if let Err(e) = outcome {
            if let LocalError::Interrupted { .. } = e {
                // Persisted state already holds every finished trial; export what there is.
                let _ = export(&state_dir, &sweep, &opts.out);
            }
            return Err(e);
        }
        if let Some(exported) = exported {
            return summarize(&state_dir, &sweep, joined(exported).await?);
        }
    }
    let dir = joined(export_in_background(&state_dir, &sweep, &opts.out)).await?;
    summarize(&state_dir, &sweep, dir)
}

type ExportTask = tokio::task::JoinHandle<Result<PathBuf, ResultsError>>;

/// Writes the sweep's Parquet tables on a blocking thread.
fn export_in_background(state_dir: &Path, sweep: &SweepId, out: &Path) -> ExportTask {
    let (s, out, sw) = (state_dir.to_owned(), out.to_owned(), sweep.clone());
    tokio::task::spawn_blocking(move || export(&s, &sw, &out))
}

async fn joined(task: ExportTask) -> Result<PathBuf, LocalError> {
    Ok(task.await.map_err(|e| LocalError::Io { what: "export task".into(), source: std::io::Error::other(e) })??)
}

async fn watch(
    mut progress: Progress,
    sweep: &SweepId,
    total: u32,
    already: u32,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    children: &mut [Child],
    logs: &Path,
) -> Result<(), LocalError> {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut interrupts = 0;
    let mut finished = already;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    progress.on_event(&e);
                    match &e {
                        Event::TrialFinished { sweep: s, .. } if s == sweep => finished += 1,
                        Event::SweepFinished { sweep: s } if s == sweep => {
                            progress.finish();
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(SchedError::Stopped.into()),
            },
            _ = check.tick() => {
                let alive = children.iter_mut().map(|c| matches!(c.try_wait(), Ok(None))).filter(|a| *a).count();
                if alive == 0 {
                    progress.finish();
                    if interrupts > 0 {
                        return Err(LocalError::Interrupted { sweep: sweep.clone(), finished, total, out: logs.parent().and_then(Path::parent).unwrap_or(Path::new(".")).to_owned() });
                    }
                    return Err(LocalError::WorkersExited { sweep: sweep.clone(), logs: logs.to_owned() });
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts == 1 {
                    progress.line("interrupt: workers hand their trials back and stop (Ctrl-C again to kill them now)");
                    signal_all(children, nix::sys::signal::Signal::SIGTERM);
                } else {
                    signal_all(children, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

fn signal_all(children: &[Child], sig: nix::sys::signal::Signal) {
    for c in children {
        if let Some(pid) = c.id() {
            // Each worker leads its own process group: signal the group.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }
}

/// What to say when `procs` worker processes would share `cores` cores (None when they fit):
/// each process holds its own runtime and up to `held` bytes of trials (the memory model's).
fn more_workers_than_cores(procs: u32, cores: u32, held: u64) -> Option<String> {
    (procs > cores).then(|| {
        format!(
            "--workers {procs} on {cores} core(s): the {procs} processes share the cores, each with its own runtime (a few hundred MiB for libtorch) and up to {} of trials by the memory model; --workers {cores} is usually as fast with less memory",
            cbsweep_common::memory::format_bytes(held)
        )
    })
}

/// SIGTERM (a worker hands back what it holds and exits), a grace period, then SIGKILL for any
/// worker still running.
async fn stop_workers(children: &mut [Child]) {
    let grace = Duration::from_secs(10);
    // A worker exits on its own once the coordinator says the work is drained, but one waiting
    // to ask again would keep the sweep's end waiting: it holds no trial, so SIGTERM ends it now.
    signal_all(children, nix::sys::signal::Signal::SIGTERM);
    for c in children.iter_mut() {
        if tokio::time::timeout(grace, c.wait()).await.is_err() {
            // the whole group, as a second Ctrl-C does: anything the worker started goes too
            signal_all(std::slice::from_ref(c), nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait().await;
        }
    }
}

/// Per-condition summary of a sweep, from the store.
pub fn summarize(state_dir: &Path, sweep: &SweepId, results_dir: PathBuf) -> Result<RunSummary, LocalError> {
    let store = Store::open_read_only(state_dir)?;
    let rows = store.trials(sweep)?;
    let mut conditions = cbsweep_results::tally(&rows);
    let short = cbsweep_common::varying_parts(conditions.iter().map(|c| c.condition.as_str()));
    for c in &mut conditions {
        c.condition = short(&c.condition);
    }
    Ok(RunSummary {
        sweep: sweep.clone(),
        results_dir,
        conditions,
        total: rows.len() as u32,
        done: rows.iter().filter(|r| r.state == TrialState::Done).count() as u32,
        failed: rows.iter().filter(|r| r.state == TrialState::Failed).count() as u32,
    })
}

/// Writes a secret to a new file that only its owner can read from the moment it exists
/// (created with mode 0600, not chmod'ed afterwards); an old file of that name is replaced.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
