//! The `cbsweep-worker` binary: its command line, the tracing subscriber, the choice of trainer
//! and device, and the exit codes. The loop itself is `client`; only this file uses anyhow.

use anyhow::Context;
use cbsweep_train::trainer::Trainer;
use cbsweep_worker::client::{self, Ended, Shutdown, WorkerConfig};
use cbsweep_worker::fake::{FakeConfig, FakeTrainer};
use clap::Parser;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cbsweep_common::{TrainerKind, exit};

/// cbsweep-worker: leases trials from a cbsweep coordinator and trains them.
#[derive(Parser)]
#[command(name = "cbsweep-worker", version, about)]
struct Args {
    /// Coordinator address.
    #[arg(long, env = "CBSWEEP_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// File holding the bearer token (default: the CBSWEEP_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Device: cpu, cuda:N, or auto (the first GPU if there is one, else the CPU).
    #[arg(long, env = "CBSWEEP_DEVICE", default_value = "auto")]
    device: String,
    /// Compute threads (0: all cores): the CPU engine's pool, or libtorch's intra-op threads with
    /// --engine libtorch or on a GPU (with the CPU engine libtorch, which then only runs the
    /// checkpoint analyses, gets one).
    #[arg(long, default_value_t = 0)]
    threads: u32,
    /// What trains on the CPU: fused (hand-written forward and backward through time, the
    /// default) or libtorch (its operations and autograd). GPUs always use libtorch.
    #[arg(long, default_value = "fused")]
    engine: cbsweep_train::Engine,
    /// Most trials trained together as one pack (the sweep's run.pack_size also caps it).
    /// Default: 64 on a GPU; on the CPU one per thread (the CPU engine spreads a pack's trials
    /// over its threads; more per pack would only make the leases coarser).
    #[arg(long)]
    max_pack: Option<u32>,
    /// Packs trained at once on this device, each leased by its own registration with the
    /// coordinator (the memory budget is split among them). On a GPU a second slot keeps the
    /// device busy while the first one's host side launches its kernels, when one pack of small
    /// trials cannot fill it; on the CPU the engine already spreads a pack over the threads,
    /// so keep 1 there.
    #[arg(long, env = "CBSWEEP_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    slots: u32,
    /// Memory a pack may take, e.g. 8GiB, 512MiB or bytes (0: no limit); the coordinator leases
    /// no more trials than fit by its memory model. Default: on the CPU half of the smaller of
    /// MemTotal and the process's cgroup memory limit (Slurm --mem, Kubernetes limits); on a GPU
    /// 90% of the device's free memory (40 GiB when the CUDA runtime cannot tell). With --slots
    /// the budget is the process's, split evenly among the slots.
    #[arg(long, env = "CBSWEEP_MEMORY_BUDGET", value_parser = cbsweep_common::memory::parse_bytes)]
    memory_budget: Option<u64>,
    /// Exit when the coordinator has no running sweep left (default: wait for more work).
    #[arg(long)]
    exit_when_drained: bool,
    /// Exit within a second when the process that started this worker goes away; used by
    /// `cbsweep run`, whose embedded coordinator dies with it (there is no one to hand leases
    /// back to: the next `run` or `resume` reclaims them), so that killing it never leaves
    /// orphan workers training.
    #[arg(long)]
    exit_with_parent: bool,
    /// When this worker's allocation ends: RFC 3339 ("2026-12-01T23:00:00Z"), unix seconds
    /// ("@1796166000") or from now ("+2h", "+90m"). Before it (less --deadline-margin-s) the
    /// worker checkpoints its trials, hands them back and exits with code 75. Default: the
    /// Slurm job's end time when run in a Slurm job with a time limit; else none.
    #[arg(long, env = "CBSWEEP_DEADLINE")]
    deadline: Option<String>,
    /// Seconds before the deadline to stop at: time for the checkpoints' upload and the
    /// hand-back before Slurm's SIGTERM and SIGKILL.
    #[arg(long, default_value_t = cbsweep_worker::allocation::DEFAULT_HAND_BACK_MARGIN.as_secs())]
    deadline_margin_s: u64,
    /// Give up when the coordinator stays unreachable this many seconds.
    #[arg(long, default_value_t = 600)]
    give_up_after_s: u64,
    /// Save checkpoint weights (safetensors) under DIR/TRIAL_ID/level-N.safetensors, for
    /// trials whose spec asks for them (analysis.save_checkpoints).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Trainer: torch (libtorch) or fake (no training; for scheduler tests).
    #[arg(long, default_value_t = cbsweep_common::TrainerKind::Torch)]
    trainer: cbsweep_common::TrainerKind,
    /// fake trainer: milliseconds per epoch.
    #[arg(long, default_value_t = 10)]
    fake_epoch_ms: u64,
    /// fake trainer: seeds whose trials fail every attempt (comma-separated).
    #[arg(long, value_delimiter = ',')]
    fake_fail_seeds: Vec<u64>,
    /// fake trainer: seeds whose trials diverge (comma-separated).
    #[arg(long, value_delimiter = ',')]
    fake_diverge_seeds: Vec<u64>,
    /// fake trainer: append each execution to this file.
    #[arg(long)]
    fake_execution_log: Option<PathBuf>,
}

fn torch_device(name: &str) -> anyhow::Result<tch::Device> {
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" => match cbsweep_train::cuda::load() {
            Ok(()) => Ok(tch::Device::cuda_if_available()),
            Err(why) => {
                tracing::info!(reason = %why, "--device auto: training on the CPU");
                Ok(tch::Device::Cpu)
            }
        },
        other => {
            let n = other.strip_prefix("cuda:").or((other == "cuda").then_some("0"));
            let n: usize = n.and_then(|n| n.parse().ok()).with_context(|| format!("--device {other:?}: expected cpu, cuda:N or auto"))?;
            cbsweep_train::cuda::load().map_err(|why| anyhow::anyhow!("--device {other}: {why}"))?;
            anyhow::ensure!(tch::Cuda::is_available(), "--device {other}: no CUDA device is available to libtorch on this node");
            anyhow::ensure!(
                n < tch::Cuda::device_count() as usize,
                "--device {other}: this node has {} CUDA device(s)",
                tch::Cuda::device_count()
            );
            Ok(tch::Device::Cuda(n))
        }
    }
}

/// One trainer per slot (`--slots`), after the process-wide set-up (the libtorch check, the
/// device, the thread pools) done once.
fn trainers(args: &Args) -> anyhow::Result<Vec<Box<dyn Trainer>>> {
    let slots = 0..args.slots;
    match args.trainer {
        TrainerKind::Torch => {
            // a libtorch of another release than the build's fails every trial: refuse at start
            if let Some(why) = cbsweep_train::libtorch_version::check()? {
                tracing::warn!(reason = %why, "cannot confirm that the loaded libtorch is the release this worker was built against");
            }
            let device = torch_device(&args.device)?;
            let threads = if args.threads > 0 { args.threads as usize } else { cores() };
            cbsweep_train::start_threads(device, args.engine, threads).context("cannot start the CPU engine's threads")?;
            Ok(slots
                .map(|_| {
                    let trainer = cbsweep_train::TorchTrainer::new(device).with_engine(args.engine);
                    Box::new(trainer.with_checkpoint_dir(args.checkpoint_dir.clone())) as Box<dyn Trainer>
                })
                .collect())
        }
        TrainerKind::Fake => Ok(slots
            .map(|_| {
                Box::new(FakeTrainer::new(FakeConfig {
                    epoch_ms: args.fake_epoch_ms,
                    fail_seeds: args.fake_fail_seeds.clone(),
                    diverge_seeds: args.fake_diverge_seeds.clone(),
                    execution_log: args.fake_execution_log.clone(),
                })) as Box<dyn Trainer>
            })
            .collect()),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1)
}

/// The default budget on CUDA device `device` ("cuda:N"): 90% of the memory the device has free
/// now (other processes', and the CUDA context's, already taken off); None elsewhere, or when
/// the runtime cannot say (then `budget`'s fixed default applies).
fn gpu_budget(device: &str) -> Option<NonZeroU64> {
    let n: usize = device.strip_prefix("cuda:")?.parse().ok()?;
    let (free, total) = cbsweep_train::cuda::memory_info(n)?;
    let bytes = NonZeroU64::new(free / 10 * 9)?;
    tracing::info!(bytes = bytes.get(), free, total, device, "default memory budget: 90% of the device's free memory");
    Some(bytes)
}

/// When the worker must stop: from --deadline, else the Slurm job's end, less the margin.
fn deadline(args: &Args) -> anyhow::Result<Option<std::time::SystemTime>> {
    let end = match &args.deadline {
        Some(text) => Some(
            cbsweep_worker::allocation::parse_deadline(text, std::time::SystemTime::now())
                .map_err(|e| anyhow::anyhow!("--deadline: {e}"))?,
        ),
        None => cbsweep_worker::allocation::slurm_end_time_now(),
    };
    Ok(end.map(|end| cbsweep_worker::allocation::hand_back_at(end, Duration::from_secs(args.deadline_margin_s))))
}

async fn run(args: Args, trainers: Vec<Box<dyn Trainer>>, deadline: Option<std::time::SystemTime>) -> anyhow::Result<Ended> {
    let device = trainers.first().map(|t| t.device()).unwrap_or_default();
    let on_cpu = device == "cpu";
    let threads = if args.threads > 0 { args.threads } else { cores() as u32 };
    let token = cbsweep_proto::client::read_token(args.token_file.as_deref())?
        .context("no token: pass --token-file FILE or set CBSWEEP_TOKEN (a coordinator writes its token to STATE/token)")?;
    let cfg = WorkerConfig {
        coordinator: args.coordinator.clone(),
        token,
        max_pack: args.max_pack.unwrap_or(if on_cpu { threads } else { 64 }).max(1),
        memory_budget: match args.memory_budget {
            Some(bytes) => NonZeroU64::new(bytes),
            None => match gpu_budget(&device) {
                Some(bytes) => Some(bytes),
                None => cbsweep_worker::budget::default_budget_explained(&device).map(|b| {
                    tracing::info!(bytes = b.bytes.get(), source = %b.source, "default memory budget");
                    b.bytes
                }),
            },
        }
        .map(|total| split_budget(total, args.slots)),
        exit_when_drained: args.exit_when_drained,
        give_up_after: Duration::from_secs(args.give_up_after_s),
        hostname: hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into()),
        deadline,
    };
    if let Some(d) = deadline {
        let in_s = d.duration_since(std::time::SystemTime::now()).map_or(0, |left| left.as_secs());
        tracing::info!(hand_back_in_s = in_s, "deadline: the trials go back with their checkpoints before the allocation ends");
    }
    tracing::info!(
        max_pack = cfg.max_pack,
        memory_budget_bytes = cfg.memory_budget.map_or(0, NonZeroU64::get),
        slots = args.slots,
        "pack limits (each slot's)"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Shutdown::No);
    if args.exit_with_parent {
        let parent = nix::unistd::getppid();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if nix::unistd::getppid() != parent {
                    tracing::warn!("the parent process is gone, and its coordinator with it; exiting");
                    leave(exit::PARENT_GONE);
                }
            }
        });
    }
    // SIGTERM, SIGINT and SIGUSR1 (Slurm's pre-emption warning) all mean: stop at the current
    // step, hand the leases back with their checkpoints, exit. A second one: hand back now.
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::user_defined1()))
        else {
            return;
        };
        for level in [Shutdown::Checkpoint, Shutdown::Now] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = usr1.recv() => {}
            }
            match level {
                Shutdown::Checkpoint => {
                    tracing::info!("signal received: checkpointing and handing the trials back (a second signal: at once)")
                }
                _ => tracing::warn!("second signal: handing the trials back now"),
            }
            let _ = stop_tx.send(level);
        }
    });
    Ok(client::run_slots(trainers.into_iter().map(|t| (cfg.clone(), t)).collect(), stop_rx).await?)
}

/// Each slot's share of the worker's memory budget (at least one byte).
fn split_budget(total: NonZeroU64, slots: u32) -> NonZeroU64 {
    NonZeroU64::new(total.get() / u64::from(slots.max(1))).unwrap_or(NonZeroU64::MIN)
}

fn main() -> ExitCode {
    leave(worker())
}

/// Ends the process at once with `code`. At the end of `worker()` every result is with the
/// coordinator and every file this process wrote is closed, and when the parent is gone there
/// is nobody left to report to: skip libtorch's static destructors, which take about 0.2 s at
/// exit (and must not run under a training thread), and leave.
fn leave(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once and runs nothing, so no destructor can race a
    // thread that is still computing; the kernel closes the files and frees the memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(i32::from(code))
    }
}

/// The worker's life: its exit code.
fn worker() -> u8 {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CBSWEEP_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let trainers = match trainers(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cbsweep-worker: {e:#}");
            return exit::BAD_INPUT;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cbsweep-worker: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let deadline = match deadline(&args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cbsweep-worker: {e:#}");
            return exit::BAD_INPUT;
        }
    };
    // the runtime is dropped before the return: its tasks and threads end first
    match runtime.block_on(run(args, trainers, deadline)) {
        Ok(Ended::Done) => exit::SUCCESS,
        Ok(Ended::Deadline) => exit::DEADLINE,
        Err(e) if matches!(e.downcast_ref(), Some(client::WorkerError::Interrupted)) => {
            eprintln!("cbsweep-worker: {e:#}");
            // now, not after the runtime's drop, which would wait for the training thread
            leave(exit::INTERRUPTED)
        }
        Err(e) => {
            eprintln!("cbsweep-worker: {e:#}");
            exit::FAILURE
        }
    }
}
