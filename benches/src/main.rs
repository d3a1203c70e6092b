//! cbsweep's benchmarks. Each prints its measurement beside a baseline measured in the same run
//! and the ratio between them; none asserts a time (the machines are shared and noisy).
//!
//!   cbsweep-bench train     trial-steps/s of packed training vs the study's way (benches/baseline.py)
//!   cbsweep-bench lease     coordinator leases/s and p99 latency, 64 simulated gRPC workers in another process
//!   cbsweep-bench checkpoint  trial checkpoints the coordinator commits, MB/s, vs fsynced files
//!   cbsweep-bench results   Parquet rows/s vs writing the same rows as CSV
//!   cbsweep-bench e2e       `cbsweep run`'s wall time vs the trainers' own time, and where the rest went
//!   cbsweep-bench memory    peak resident memory per packed trial vs the memory model's estimate
//!   cbsweep-bench all       all of the above (`make bench`)
//!
//! This file is the command line and its dispatch only. Each benchmark is a module of its own
//! (`train`, `lease`, `checkpoint`, `results`, `e2e`, `memory`) and none imports another; below them, `peak`
//! (the CPU's measured fp32 peak, for `train`) and `shared` (the trial `train` and `memory`
//! build their packs from) import nothing of this crate.

mod checkpoint;
mod e2e;
mod lease;
mod memory;
mod peak;
mod results;
mod shared;
mod train;

use checkpoint::CheckpointBench;
use clap::{Parser, Subcommand};
use lease::{LeaseBench, Load};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cbsweep-bench", about = "cbsweep benchmarks: ratios against baselines measured in the same run")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone)]
enum What {
    /// Packed training throughput against the study's one-trial-per-process Python loop.
    Train {
        /// Pack sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        packs: Vec<usize>,
        /// Curriculum levels N (fixed), each measured on its own, e.g. 10,35 (N = 35: T up to 141,
        /// where the study's long runs spend their time).
        #[arg(long, alias = "level", value_delimiter = ',', default_value = "10")]
        levels: Vec<u32>,
        /// Rounds of the baseline and every candidate, interleaved (baseline, candidates,
        /// baseline, ...): the table shows the median and the range of each ratio over them.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Device: cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Threads in the cbsweep process, for the CPU engine and libtorch alike (0: the
        /// machine's cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Trial-steps to time per measurement (at least 2 steps each).
        #[arg(long, default_value_t = 256)]
        trial_steps: usize,
        /// Engines to measure: fused (the CPU engine, the default on CPU) and libtorch.
        #[arg(long, value_delimiter = ',', default_value = "fused,libtorch")]
        engines: Vec<String>,
        /// The highest level of the estimate of the study's main comparison on this device (0:
        /// no estimate).
        #[arg(long, default_value_t = 35)]
        estimate_level: u32,
        /// Python interpreter (with torch) that runs the baseline. Default: CBSWEEP_BENCH_PYTHON,
        /// else .venv/bin/python under the current folder.
        #[arg(long)]
        python: Option<PathBuf>,
        /// The baseline script. Default: CBSWEEP_BENCH_BASELINE, else benches/baseline.py under
        /// the current folder.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Coordinator lease throughput and latency: simulated gRPC workers, in processes of their
    /// own, lease one trial and complete it, as fast as they can and then at a fixed rate.
    Lease(LeaseBench),
    /// Simulated workers of `lease` (one client process): prints what they measured as JSON.
    #[command(hide = true)]
    LeaseClients {
        url: String,
        #[arg(long, value_enum)]
        load: Load,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        per_connection: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        two_calls: bool,
    },
    /// Trial checkpoints the coordinator commits (MB/s) against the same checkpoints written
    /// as fsynced files by as many writers.
    Checkpoint(CheckpointBench),
    /// Parquet write throughput.
    Results {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// Orchestration overhead of `cbsweep run`: wall time against the trainers' own time.
    E2e {
        /// A spec to run with the real trainer (e.g. sweeps/quickstart.toml); without it, a
        /// 48-trial sweep with the fake trainer (50 ms epochs) isolates the orchestration.
        #[arg(long)]
        spec: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        workers: u32,
    },
    /// Peak resident memory per packed trial (CPU, each pack in a fresh process) against the
    /// memory model's estimate (cbsweep_common::memory).
    Memory {
        /// Engines to measure: fused (the CPU engine) and libtorch (autograd; the CUDA path).
        #[arg(long, value_delimiter = ',', default_value = "fused,libtorch")]
        engines: Vec<String>,
        /// Pack sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        packs: Vec<usize>,
        /// Curriculum level N (fixed).
        #[arg(long, default_value_t = 10)]
        level: u32,
        /// Trial-steps per pack: a pack of M trains max(2, this / M) SGD steps (more steps meet
        /// longer sequences and more allocator churn).
        #[arg(long, default_value_t = 8)]
        trial_steps: usize,
    },
    /// One pack of `memory`, in this process: prints its resident memory as JSON.
    #[command(hide = true)]
    MemoryChild { engine: String, pack: usize, level: u32, steps: u32 },
    /// One timed pack of `train` on one thread, in this process: prints trial-steps/s as JSON.
    #[command(hide = true)]
    TrainChild { arch: String, engine: String, pack: usize, level: u32, trial_steps: usize },
    /// Everything, with defaults.
    All,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // as the coordinator's: one worker thread per core (or TOKIO_WORKER_THREADS)
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let what = args.what;
    let all = matches!(what, What::All);
    if let What::Lease(o) = what {
        return rt.block_on(lease::bench_lease(o));
    }
    if let What::Checkpoint(o) = what {
        return rt.block_on(checkpoint::bench_checkpoint(o));
    }
    if let What::LeaseClients { url, load, first, workers, per_connection, rate, two_calls } = &what {
        return lease::clients_process(url, *load, *first, *workers, *per_connection, *rate, *two_calls);
    }
    if let What::TrainChild { arch, engine, pack, level, trial_steps } = &what {
        return train::train_child(arch, engine, *pack, *level, *trial_steps);
    }
    if let What::E2e { spec, workers } = &what {
        return e2e::bench_e2e(spec.as_deref(), *workers);
    }
    if let What::Results { rows } = what {
        return results::bench_results(rows);
    }
    if let What::Train { packs, levels, rounds, device, trial_steps, threads, engines, estimate_level, python, baseline } = &what {
        let files = train::Baseline::find(python.as_deref(), baseline.as_deref())?;
        let b = train::TrainBench {
            packs: packs.clone(),
            levels: levels.clone(),
            device: device.clone(),
            trial_steps: *trial_steps,
            threads: *threads,
            engines: engines.clone(),
            estimate_level: *estimate_level,
            rounds: *rounds,
        };
        return train::bench_train(&b, &files);
    }
    if let What::Memory { engines, packs, level, trial_steps } = &what {
        return memory::bench_memory(engines, packs, *level, *trial_steps);
    }
    if let What::MemoryChild { engine, pack, level, steps } = &what {
        return memory::memory_child(engine, *pack, *level, *steps);
    }
    if all {
        rt.block_on(lease::bench_lease(LeaseBench::default()))?;
        rt.block_on(checkpoint::bench_checkpoint(CheckpointBench::default()))?;
        results::bench_results(1_000_000)?;
        e2e::bench_e2e(None, 2)?;
        let files = train::Baseline::find(None, None)?;
        train::bench_train(&train::TrainBench::default(), &files)?;
        memory::bench_memory(&["fused".into(), "libtorch".into()], &[1, 8, 32], 10, 8)?;
    }
    Ok(())
}
