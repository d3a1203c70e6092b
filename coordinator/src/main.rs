//! The `cbsweep` binary: the command line (clap), the tracing subscriber and the exit codes.
//! Each command's work is in the library (`cli`, `local`); only this file uses anyhow.

use anyhow::Context;
use cbsweep_common::SweepId;
use cbsweep_coordinator::cli::{self, CliError, DEFAULT_COORDINATOR};
use cbsweep_coordinator::local::{LocalError, RunOptions};
use cbsweep_results::ResultsError;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cbsweep_common::exit;

/// cbsweep: hyperparameter sweeps of CB-RNN versus parameter-matched RNN experiments.
#[derive(Parser)]
#[command(name = "cbsweep", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Results and state go under this folder: OUT/SWEEP/*.parquet, OUT/.cbsweep/ (state).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Number of local worker processes (at least 1; more than the machine's cores only share
    /// them, and warn).
    #[arg(long, default_value_t = 2, value_parser = worker_count)]
    workers: u32,
    /// Device for the workers: cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Threads per worker (0: the machine's cores divided among the workers).
    #[arg(long, default_value_t = 0)]
    threads: u32,
    /// The trainer the workers use: torch (real libtorch training) or fake (scheduler tests).
    #[arg(long, default_value_t = cbsweep_common::TrainerKind::Torch)]
    trainer: cbsweep_common::TrainerKind,
    /// An extra argument for every worker, e.g. --worker-arg=--max-pack=16 (repeatable).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_arg: Vec<String>,
    /// Path of the worker binary (default: cbsweep-worker beside this binary).
    #[arg(long)]
    worker_binary: Option<PathBuf>,
    /// Where the dashboard (and token-protected /metrics) listens; port 0 picks a free one. The
    /// URL is printed and written to OUT/.cbsweep/dashboard.
    #[arg(long, default_value = "127.0.0.1:0")]
    dashboard_listen: SocketAddr,
    #[command(flatten)]
    state_fs: StateFsArgs,
}

/// Whether the command may keep its state on a network filesystem.
#[derive(clap::Args, Clone, Copy)]
struct StateFsArgs {
    /// Keep the state on a network filesystem (NFS, Lustre, GPFS, CephFS, ...) anyway, at your
    /// own risk: SQLite's write-ahead log can be corrupted there, so it is refused by default.
    #[arg(long, env = "CBSWEEP_ALLOW_NETWORK_STATE", value_parser = clap::builder::FalseyValueParser::new())]
    allow_network_state: bool,
}

/// `--workers N`: a positive count.
fn worker_count(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("a run needs at least one worker: use --workers 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a number of worker processes, e.g. --workers 2)")),
    }
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            out: self.out.clone(),
            workers: self.workers,
            device: self.device.clone(),
            threads: self.threads,
            worker_args: ["--trainer".to_string(), self.trainer.to_string()].into_iter().chain(self.worker_arg.iter().cloned()).collect(),
            worker_binary: self.worker_binary.clone(),
            dashboard_listen: self.dashboard_listen,
        }
    }
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// Coordinator address.
    #[arg(long, env = "CBSWEEP_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
    /// File holding the bearer token (default: the CBSWEEP_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep here: an embedded coordinator and local worker processes, to completion.
    /// Running it again resumes an interrupted sweep; finished trials never run again.
    Run {
        /// The sweep spec (TOML), for example sweeps/quickstart.toml.
        spec: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Resume an interrupted `run` by sweep name, from the spec stored in OUT/.cbsweep.
    Resume {
        sweep: String,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Check a spec and list its conditions without running anything.
    Validate { spec: PathBuf },
    /// Serve a coordinator for remote workers.
    Coordinator {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:50051")]
        listen: SocketAddr,
        /// Also serve /healthz, /readyz, /metrics (Prometheus) and the dashboard (its pages need
        /// the token) over HTTP on this address: an internal one (pod or cluster network, or
        /// loopback and an SSH tunnel), as /metrics is open there by default.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Who may read /metrics on --http-listen: open (anyone who reaches that address; keep
        /// it internal) or token (only with the coordinator's token as `Authorization: Bearer
        /// TOKEN`, e.g. Prometheus' `authorization.credentials_file`). /healthz and /readyz stay
        /// open for probes.
        #[arg(long, value_enum, default_value_t = cbsweep_coordinator::http::MetricsAccess::Open)]
        metrics_access: cbsweep_coordinator::http::MetricsAccess,
        /// Folder for the durable state (SQLite database, token), on a local disk: one on a
        /// network filesystem is refused (see --allow-network-state).
        #[arg(long, default_value = "cbsweep-state")]
        state: PathBuf,
        /// Folder for results (default: STATE/results).
        #[arg(long)]
        out: Option<PathBuf>,
        /// File holding the bearer token (default: CBSWEEP_TOKEN, else STATE/token, created if absent).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Serve gRPC over TLS with this PEM certificate chain (with --tls-key). Clients then use
        /// an https:// URL and CBSWEEP_TLS_CA.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        state_fs: StateFsArgs,
    },
    /// Submit a spec to a running coordinator (adds only cells it does not have yet).
    Submit {
        spec: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Counts per state, per-condition progress, throughput, ETA and live workers.
    Status {
        /// Only this sweep.
        sweep: Option<String>,
        /// Print JSON for scripts (the fields are in docs/dashboard.md).
        #[arg(long)]
        json: bool,
        /// Ask the `cbsweep run --out OUT` running here (its address and token are in
        /// OUT/.cbsweep) instead of --coordinator.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a sweep's unfinished trials.
    Cancel {
        sweep: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put a sweep's failed trials back in the queue.
    RetryFailed {
        sweep: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy a coordinator's state to FILE, consistently, while it runs (SQLite's online backup);
    /// refuses FILE when it is one of the state's own files, or exists (unless --overwrite).
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists (a periodic backup to the same file).
        #[arg(long)]
        overwrite: bool,
        /// The coordinator's state folder (for `run`: OUT/.cbsweep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Put a backup made by `cbsweep backup` in place as a state folder's state (refused while
    /// a coordinator or `run` holds the folder).
    Restore {
        file: PathBuf,
        /// The coordinator's state folder (for `run`: OUT/.cbsweep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[command(flatten)]
        state_fs: StateFsArgs,
    },
    /// Write a sweep's Parquet tables from a coordinator's state.
    Export {
        sweep: String,
        /// The coordinator's state folder (for `run`: OUT/.cbsweep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Cross-condition statistics (Welch's t, Mann-Whitney U, Holm, effect sizes): printed and
    /// written to OUT/SWEEP/stats.parquet.
    Stats {
        sweep: String,
        /// The coordinator's state folder (for `run`: OUT/.cbsweep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// The study's figures (PNG and SVG) in OUT/SWEEP/figures/.
    Plot {
        sweep: String,
        /// The coordinator's state folder (for `run`: OUT/.cbsweep).
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Slurm: render and submit the coordinator job and the worker job array (deploy/slurm).
    #[command(subcommand)]
    Slurm(SlurmCommand),
    /// Run a worker (the cbsweep-worker binary beside this one); arguments pass through.
    #[command(disable_help_flag = true)]
    Worker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SlurmCommand {
    /// Submit a sweep's workers as a job array, and the coordinator as a job unless
    /// --coordinator names one that is already serving.
    Submit {
        spec: PathBuf,
        /// Folder on the shared filesystem for the token, URL files, results and the
        /// coordinator's backup; the coordinator job keeps its database on its node's local disk
        /// (CBSWEEP_LOCAL_STATE, default TMPDIR/cbsweep-coordinator-JOBID).
        #[arg(long)]
        state: PathBuf,
        /// A coordinator already serving (URL); the spec is submitted to it first.
        #[arg(long)]
        coordinator: Option<String>,
        /// Its token file (default: STATE/token).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Array tasks, one worker each.
        #[arg(long, default_value_t = 4)]
        workers: u32,
        #[arg(long)]
        partition: Option<String>,
        /// Generic resources per worker ("none" on CPU-only nodes).
        #[arg(long, default_value = "gpu:1")]
        gres: String,
        #[arg(long, default_value_t = 8)]
        cpus_per_task: u32,
        #[arg(long, default_value = "32G")]
        mem: String,
        #[arg(long, default_value = "24:00:00")]
        time: String,
        /// An extra sbatch option for every job, e.g. --sbatch-arg=--account=lab (repeatable).
        #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
        sbatch_arg: Vec<String>,
        /// Worker device: auto, cpu or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// An extra worker argument (repeatable).
        #[arg(long = "worker-arg", allow_hyphen_values = true)]
        worker_arg: Vec<String>,
        /// The coordinator job's gRPC address.
        #[arg(long, default_value = "0.0.0.0:50051")]
        listen: SocketAddr,
        /// The coordinator job's health and metrics address.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Where the scripts and job logs go (default: STATE/slurm).
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Print the scripts instead of submitting them.
        #[arg(long)]
        dry_run: bool,
    },
}

async fn slurm(cmd: SlurmCommand) -> Result<(), CliError> {
    use cbsweep_coordinator::slurm::{self, Coordinator, CoordinatorAddr, CoordinatorJob, Plan, Resources, Sbatch, Workers};
    let SlurmCommand::Submit {
        spec,
        state,
        coordinator,
        token_file,
        workers,
        partition,
        gres,
        cpus_per_task,
        mem,
        time,
        sbatch_arg,
        device,
        worker_arg,
        listen,
        http_listen,
        log_dir,
        dry_run,
    } = cmd;
    let sweep = cbsweep_common::load_spec(&spec)?.id;
    let exe = std::env::current_exe().map_err(|source| CliError::Io { what: "cannot locate the cbsweep binary".into(), source })?;
    let spec = std::path::absolute(&spec).unwrap_or(spec);
    let state = std::path::absolute(&state).unwrap_or(state);
    let resources = Resources {
        partition: partition.clone(),
        gres: (gres != "none").then_some(gres),
        cpus_per_task,
        mem,
        time,
        extra: sbatch_arg.clone(),
    };
    let token = token_file.unwrap_or_else(|| state.join("token"));
    let coord = match &coordinator {
        Some(url) => Coordinator::Running { addr: CoordinatorAddr::Url(url.clone()), token_file: token.clone() },
        None => Coordinator::Job(Box::new(CoordinatorJob {
            state: state.clone(),
            local_state: None,
            cbsweep_binary: exe.clone(),
            listen,
            http_listen,
            advertise_host: None,
            resources: Resources { partition, extra: sbatch_arg, ..Resources::coordinator() },
        })),
    };
    let plan = Plan {
        sweep,
        spec: spec.clone(),
        coordinator: coord,
        workers: Workers {
            count: workers.max(1),
            resources,
            device,
            worker_binary: exe.with_file_name("cbsweep-worker"),
            worker_args: worker_arg,
            warning_s: 120,
        },
        log_dir: log_dir.unwrap_or_else(|| state.join("slurm")),
    };
    if dry_run {
        let r = slurm::render(&plan)?;
        if let Some(c) = r.coordinator {
            println!("# coordinator job\n{c}");
        }
        println!("# worker array\n{}", r.workers);
        return Ok(());
    }
    if let Some(url) = &coordinator {
        cli::submit(url, Some(&token), &spec).await?;
    }
    let s = slurm::submit(&plan, &Sbatch::default())?;
    if let Some(c) = s.coordinator {
        println!("coordinator job {}", c.0);
    }
    println!("worker array {} ({} tasks); scripts in {}", s.workers.0, plan.workers.count, plan.log_dir.display());
    Ok(())
}

fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Spec(_) | CliError::Local(LocalError::Spec(_)) | CliError::UnknownSweep { .. } | CliError::Slurm(_) => exit::BAD_INPUT,
        CliError::Results(ResultsError::UnknownSweep(_) | ResultsError::BadSweepName(..)) => exit::BAD_INPUT,
        CliError::Local(LocalError::Sched(cbsweep_coordinator::scheduler::SchedError::Conflict { .. })) => exit::BAD_INPUT,
        CliError::Rpc(s) if s.code() == tonic::Code::InvalidArgument || s.code() == tonic::Code::AlreadyExists => exit::BAD_INPUT,
        CliError::Client(_) => exit::UNAVAILABLE,
        CliError::Rpc(s) if s.code() == tonic::Code::Unavailable => exit::UNAVAILABLE,
        CliError::Local(LocalError::Interrupted { .. }) => exit::INTERRUPTED,
        _ => exit::FAILURE,
    }
}

/// The exit code of a sweep that ran to its end: non-zero when a trial ended failed, so Slurm
/// and scripts see it.
fn finished(summary: &cbsweep_coordinator::local::RunSummary) -> u8 {
    if summary.failed == 0 {
        return 0;
    }
    eprintln!(
        "cbsweep: {} of {} trials of sweep {} failed (their errors: the `error` column of {}/trials.parquet); exit code {}",
        summary.failed,
        summary.total,
        summary.sweep,
        summary.results_dir.display(),
        exit::TRIALS_FAILED
    );
    exit::TRIALS_FAILED
}

/// A command whose reader went away (`cbsweep status | head -1`, `stats | true`) ends there,
/// quietly, as `cat` or `ls` do: by SIGPIPE, for the one-shot commands. (Rust ignores it, so a
/// closed pipe became a panic in `print!`.) A SIGPIPE from a socket (a vectored write to a peer
/// that closed, as a TLS port does to a plain-text client) is not the reader's: the handler lets
/// that write fail with EPIPE, so the client can say what went wrong. The long-running commands
/// keep it ignored.
#[allow(unsafe_code, reason = "signal(2) is unsafe in nix; the handler calls only poll(2), signal(2) and raise(3)")]
fn quiet_on_broken_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    /// Ends the process by SIGPIPE when standard output or error is a pipe nobody reads.
    extern "C" fn on_sigpipe(_: libc::c_int) {
        let mut fds = [1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
        // SAFETY: poll(2), signal(2) and raise(3) are async-signal-safe; `fds` lives on this stack
        unsafe {
            if libc::poll(fds.as_mut_ptr(), 2, 0) > 0 && fds.iter().any(|f| f.revents & libc::POLLERR != 0) {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
    }
    // SAFETY: the handler is async-signal-safe (above); installed before any thread of ours
    // writes to standard output.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::Handler(on_sigpipe)) };
}

/// Runs a command; Ok carries the exit code of a command that ran to its end.
async fn dispatch(cmd: Command) -> Result<u8, CliError> {
    // The commands that take a state folder for writing reach the store through the scheduler
    // or the restore: the user's override is set for the process before either opens it.
    let state_fs = match &cmd {
        Command::Run { args, .. } | Command::Resume { args, .. } => Some(args.state_fs),
        Command::Coordinator { state_fs, .. } | Command::Restore { state_fs, .. } => Some(*state_fs),
        _ => None,
    };
    if state_fs.is_some_and(|a| a.allow_network_state) {
        cbsweep_coordinator::store::fs::allow_network_state();
    }
    // (validate writes through `cli::print_out`, which ends with exit 0 on a closed pipe)
    if !matches!(cmd, Command::Run { .. } | Command::Resume { .. } | Command::Coordinator { .. } | Command::Validate { .. }) {
        quiet_on_broken_pipe();
    }
    match cmd {
        Command::Run { spec, args } => cli::run(&spec, args.options()).await.map(|s| finished(&s)),
        Command::Resume { sweep, args } => cli::resume(&SweepId(sweep), args.options()).await.map(|s| finished(&s)),
        other => dispatch_other(other).await.map(|()| 0),
    }
}

async fn dispatch_other(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Run { .. } | Command::Resume { .. } => unreachable!("handled by dispatch"),
        Command::Validate { spec } => cli::validate(&spec),
        Command::Coordinator { listen, http_listen, metrics_access, state, out, token_file, tls_cert, tls_key, state_fs: _ } => {
            let out = out.unwrap_or_else(|| state.join("results"));
            let tls = tls_cert.as_deref().zip(tls_key.as_deref());
            cli::coordinator(listen, http_listen, metrics_access, &state, &out, token_file.as_deref(), tls).await
        }
        Command::Submit { spec, client } => cli::submit(&client.coordinator, client.token_file.as_deref(), &spec).await,
        Command::Status { sweep, json, out, client } => {
            let (url, token_file) = match &out {
                Some(out) => {
                    let (url, token) = cli::local_run(out, client.token_file.as_deref())?;
                    (url, Some(token))
                }
                None => (client.coordinator.clone(), client.token_file.clone()),
            };
            cli::status(&url, token_file.as_deref(), sweep.as_deref(), json).await.map(|_| ())
        }
        Command::Cancel { sweep, client } => cli::cancel(&client.coordinator, client.token_file.as_deref(), &sweep).await,
        Command::RetryFailed { sweep, client } => cli::retry_failed(&client.coordinator, client.token_file.as_deref(), &sweep).await,
        Command::Backup { file, overwrite, state, out } => {
            let state = state.unwrap_or_else(|| out.join(cbsweep_coordinator::local::STATE_DIR));
            cbsweep_coordinator::store::Store::open_read_only(&state)?.backup_to(&file, overwrite)?;
            println!("backed up {} to {}", state.display(), file.display());
            Ok(())
        }
        Command::Restore { file, state, out, state_fs: _ } => {
            let state = state.unwrap_or_else(|| out.join(cbsweep_coordinator::local::STATE_DIR));
            let kept = cbsweep_coordinator::store::Store::restore_from(&state, &file)?;
            println!("restored {} into {}", file.display(), state.display());
            if let Some(kept) = kept {
                println!("the state it replaced is kept in {}", kept.display());
            }
            Ok(())
        }
        Command::Export { sweep, state, out } => {
            let state = state.unwrap_or_else(|| out.join(cbsweep_coordinator::local::STATE_DIR));
            let dir = cli::export(&state, &SweepId(sweep), &out)?;
            println!("wrote {}/{{trials,curves,levels,analyses,stats}}.parquet", dir.display());
            Ok(())
        }
        Command::Stats { sweep, state, out } => {
            let state = state.unwrap_or_else(|| out.join(cbsweep_coordinator::local::STATE_DIR));
            cli::stats(&state, &SweepId(sweep), &out).map(|_| ())
        }
        Command::Plot { sweep, state, out } => {
            let state = state.unwrap_or_else(|| out.join(cbsweep_coordinator::local::STATE_DIR));
            cli::plot(&state, &SweepId(sweep), &out).map(|_| ())
        }
        Command::Slurm(cmd) => slurm(cmd).await,
        Command::Worker { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn exec_worker(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot locate the cbsweep binary")?;
    let worker = exe.with_file_name("cbsweep-worker");
    let status = std::process::Command::new(&worker).args(args).status().with_context(|| format!("cannot start {}", worker.display()))?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CBSWEEP_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Command::Worker { args } = cli.command {
        return exec_worker(args).unwrap_or_else(|e| {
            eprintln!("cbsweep: {e:#}");
            ExitCode::from(exit::FAILURE)
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cbsweep: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cbsweep: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
