//! cbsweep's benchmarks. Each prints its measurement beside a baseline measured in the same run
//! and the ratio between them; none asserts a time (the machines are shared and noisy).
//!
//!   cbsweep-bench train     trial-steps/s of packed training vs the study's way (benches/baseline.py)
//!   cbsweep-bench lease     coordinator leases/s and p99 latency, 64 simulated gRPC workers in another process
//!   cbsweep-bench results   Parquet rows/s vs writing the same rows as CSV
//!   cbsweep-bench memory    peak resident memory per packed trial vs the memory model's estimate
//!   cbsweep-bench all       all of the above (`make bench`)

use anyhow::Context;
use cbsweep_common::{AnalysisPlan, Arch, EpochRecord, Regime, Seed, SweepId, Task, TrainBudget, TrialSpec, model_size};
use cbsweep_worker::trainer::{Control, Trainer};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        /// Curriculum level N (fixed).
        #[arg(long, default_value_t = 10)]
        level: u32,
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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn spec(arch: Arch, seed: u64, level: u32, steps: u32) -> TrialSpec {
    let hidden = match arch {
        Arch::Cbrnn => 64,
        Arch::Rnn => model_size::matched_rnn_hidden(64, 256, 64),
    };
    TrialSpec {
        sweep: SweepId("bench".into()),
        task: Task::Dms,
        arch,
        hidden,
        granule: 256,
        purkinje: 64,
        seed: Seed(seed),
        regime: Regime::Simult,
        lr_core: 0.01,
        lr_cb: 0.01,
        lr_readout: 0.01,
        core_plasticity: 1.0,
        budget: TrainBudget {
            epochs: 1,
            steps_per_epoch: steps,
            test_batches: 1,
            batch_size: 64,
            start_level: level,
            max_level: level,
            solve_threshold: 1.0,
            momentum: 0.1,
            clip_norm: 7.5,
        },
        analysis: AnalysisPlan { every_levels: 0, ..AnalysisPlan::study() },
    }
}

/// Trial-steps per second of the Python baseline: `procs` processes of one thread each (one per
/// core on the CPU, one on a GPU), on `device`.
fn baseline(arch: Arch, level: u32, procs: usize, device: &str) -> anyhow::Result<f64> {
    let py = root().join(".venv/bin/python");
    let script = root().join("benches/baseline.py");
    let children: Vec<_> = (0..procs)
        .map(|i| {
            std::process::Command::new(&py)
                .arg(&script)
                .args([
                    "--arch",
                    &arch.to_string(),
                    "--level",
                    &level.to_string(),
                    "--steps",
                    "40",
                    "--seed",
                    &i.to_string(),
                    "--device",
                    device,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run {} (run `make setup`)", py.display()))
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0.0;
    for c in children {
        let out = c.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "baseline failed");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += v["steps"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(f64::INFINITY);
    }
    Ok(total)
}

/// Multiply-adds per time step and sequence of one trial's training step: the forward products
/// (core, granule, Purkinje, deep nuclei), and twice as many backward (data and weights).
fn flop_per_trial_step(t: &TrialSpec, level: u32) -> f64 {
    let (h, g, p) = (f64::from(t.hidden), f64::from(t.granule), f64::from(t.purkinje));
    let forward_macs = match t.arch {
        Arch::Cbrnn => h * h + g * (h + 1.0) + p * g + h * p,
        Arch::Rnn => h * h,
    };
    // T uniform in N+2 ..= 4N+1: mean (5N + 3) / 2
    let mean_t = (5.0 * f64::from(level) + 3.0) / 2.0;
    2.0 * 3.0 * forward_macs * f64::from(t.budget.batch_size) * mean_t
}

/// The fp32 peak of `threads` cores, measured: each thread runs independent fused multiply-adds
/// on full vector registers (AVX-512 where the CPU has it, else AVX2) for a fixed count, all
/// threads at once, so the clock is the one every core runs at under load.
fn measured_peak(threads: usize) -> (f64, &'static str) {
    let avx512 = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f");
    let iters = 20_000_000usize;
    let t0 = Instant::now();
    let flop_per_thread: f64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(move || fma_burst(iters, avx512))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>()
    });
    let rate = flop_per_thread / t0.elapsed().as_secs_f64();
    (rate, if avx512 { "AVX-512 FMA loop" } else { "AVX2 FMA loop" })
}

/// FLOP done by `iters` rounds of 12 independent vector FMAs.
#[allow(unsafe_code)]
fn fma_burst(iters: usize, avx512: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each function is only called where the CPU was found to have its features.
        let (sink, lanes) = if avx512 { (unsafe { fma_avx512(iters) }, 16.0) } else { (unsafe { fma_avx2(iters) }, 8.0) };
        std::hint::black_box(sink);
        iters as f64 * 12.0 * lanes * 2.0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (iters, avx512);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm256_cvtss_f32(r)).sum()
}

/// FLOP/s of one large float32 matrix product (1024^3) on one thread: what the kernel library
/// reaches when size is no obstacle.
fn large_gemm_rate() -> f64 {
    let n = 1024;
    let a = tch::Tensor::randn([n, n], (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::randn([n, n], (tch::Kind::Float, tch::Device::Cpu));
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let _ = a.mm(&b);
    let t0 = Instant::now();
    let reps = 4;
    for _ in 0..reps {
        let _ = a.mm(&b);
    }
    let secs = t0.elapsed().as_secs_f64();
    tch::set_num_threads(threads);
    f64::from(reps) * 2.0 * (n as f64).powi(3) / secs
}

fn bench_train(
    packs: &[usize],
    level: u32,
    device: &str,
    trial_steps: usize,
    threads: usize,
    engines: &[String],
    estimate_level: u32,
) -> anyhow::Result<()> {
    use cbsweep_worker::torch::Engine;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dev = match device {
        "cpu" => tch::Device::Cpu,
        d => {
            cbsweep_worker::torch::cuda::load().map_err(|why| anyhow::anyhow!("--device {d}: {why}"))?;
            tch::Device::Cuda(d.strip_prefix("cuda:").and_then(|n| n.parse().ok()).context("--device: cpu or cuda:N")?)
        }
    };
    let engines: Vec<Engine> = engines.iter().map(|e| e.parse().map_err(|e| anyhow::anyhow!("--engines {e}"))).collect::<Result<_, _>>()?;
    let threads = if threads == 0 { cores } else { threads };
    tch::set_num_threads(threads as i32);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let (peak, how) = measured_peak(threads);
    // the study's way on this device: one trial per process, a process per core on the CPU and
    // one on a GPU
    let base_procs = if dev == tch::Device::Cpu { cores } else { 1 };
    println!(
        "train: level N = {level}, batch 64, {cores} cores, {threads} thread(s), device {device}; baseline = benches/baseline.py, {base_procs} process(es) x 1 thread on {device}"
    );
    if dev == tch::Device::Cpu {
        let gemm = large_gemm_rate();
        println!(
            "  fp32 peak of {threads} thread(s): {:.0} GFLOP/s (measured: {how}); one large sgemm on one thread reaches {:.1} GFLOP/s",
            peak / 1e9,
            gemm / 1e9
        );
    }
    println!(
        "{:<6} {:<9} {:>5} {:>14} {:>9} {:>7} {:>12} {:>8}",
        "arch", "engine", "M", "trial-steps/s", "GFLOP/s", "peak", "baseline", "ratio"
    );
    for arch in [Arch::Cbrnn, Arch::Rnn] {
        let base = baseline(arch, level, base_procs, device)?;
        let flop = flop_per_trial_step(&spec(arch, 0, level, 1), level);
        println!(
            "{:<6} {:<9} {:>5} {:>14.1} {:>9.1} {:>6.1}% {:>12} {:>8}",
            arch.to_string(),
            "baseline",
            "1/proc",
            base,
            base * flop / 1e9,
            100.0 * base * flop / peak,
            "",
            "1.00x"
        );
        for &engine in &engines {
            let name = match engine {
                Engine::Fused if dev != tch::Device::Cpu => continue,
                Engine::Fused => "fused",
                Engine::Libtorch => "libtorch",
            };
            for &m in packs {
                let rate = time_pack(arch, engine, dev, m, level, trial_steps)?;
                let gflops = rate * flop / 1e9;
                println!(
                    "{:<6} {:<9} {:>5} {:>14.1} {:>9.1} {:>6.1}% {:>12.1} {:>7.2}x",
                    arch.to_string(),
                    name,
                    m,
                    rate,
                    gflops,
                    100.0 * gflops * 1e9 / peak,
                    base,
                    rate / base
                );
            }
            if dev == tch::Device::Cpu && threads > 1 {
                // what `cbsweep run` does on a CPU node: one single-threaded worker per core,
                // each training its own trials (packs of one), as the baseline's processes do
                let rate = per_process_rate(arch, name, threads, level, trial_steps)?;
                let gflops = rate * flop / 1e9;
                println!(
                    "{:<6} {:<9} {:>5} {:>14.1} {:>9.1} {:>6.1}% {:>12.1} {:>7.2}x",
                    arch.to_string(),
                    name,
                    "1/proc",
                    rate,
                    gflops,
                    100.0 * gflops * 1e9 / peak,
                    base,
                    rate / base
                );
            }
        }
    }
    println!(
        "  (M: trials in one pack in one process of {threads} thread(s); 1/proc: {threads} processes of one thread, one trial each, as `cbsweep run` starts them)"
    );
    println!(
        "  (a timed pack includes its test pass: one test batch per epoch of `steps` SGD steps; FLOP counts the matrix products of the SGD steps only)"
    );
    if estimate_level > 0 {
        estimate_main_comparison(dev, device, estimate_level)?;
    }
    Ok(())
}

/// Trials of each architecture in the study's main comparison: 2 tasks x 8 seeds. One pack key
/// holds them all (a pack key leaves out task and seed).
const MAIN_TRIALS_PER_ARCH: usize = 16;
/// The study's budget: epochs of `STUDY_STEPS` SGD steps, then `STUDY_TESTS` test batches.
const STUDY_EPOCHS: f64 = 1000.0;
const STUDY_STEPS: u32 = 100;
const STUDY_TESTS: u32 = 50;
/// SGD steps per timed epoch of the estimate (with half as many test batches, the study's ratio).
const ESTIMATE_STEPS: u32 = 10;

/// How long the study's main comparison (2 tasks x 2 architectures x 8 seeds, 1000 epochs)
/// takes on `dev`, from measured epochs: each architecture's 16 trials train as one pack, the
/// two packs one after the other, by the engine a worker uses there. One epoch of each pack is
/// timed at the first level (N = 2) and at `top`. An epoch's cost is close to affine in the mean
/// sequence length (on a 2-core CPU, an epoch at N = 18 took 18.5 s for the CB-RNN pack and
/// 14.5 s for the RNN's, against 19.8 s and 15.7 s on the line through N = 2 and 35), so levels
/// that climb evenly from 2 to `top` cost about the mean of the two, and every epoch at `top`
/// bounds the run from above. The checkpoint analyses are not included.
fn estimate_main_comparison(dev: tch::Device, device: &str, top: u32) -> anyhow::Result<()> {
    use cbsweep_worker::torch::Engine;
    let (engine, name) = if dev == tch::Device::Cpu { (Engine::Fused, "fused") } else { (Engine::Libtorch, "libtorch") };
    println!(
        "main comparison: 2 tasks x 2 archs x 8 seeds, {STUDY_EPOCHS} epochs of {STUDY_STEPS} SGD steps + {STUDY_TESTS} test batches; each arch's {MAIN_TRIALS_PER_ARCH} trials as one pack, the two packs in turn, {name} engine on {device}"
    );
    let (mut even, mut upper) = (0.0, 0.0);
    for arch in [Arch::Cbrnn, Arch::Rnn] {
        let first = epoch_seconds(arch, engine, dev, MAIN_TRIALS_PER_ARCH, 2)?;
        let last = epoch_seconds(arch, engine, dev, MAIN_TRIALS_PER_ARCH, top)?;
        println!("  {:<6} one epoch of the pack: {first:.3} s at N = 2, {last:.3} s at N = {top}", arch.to_string());
        even += STUDY_EPOCHS * (first + last) / 2.0;
        upper += STUDY_EPOCHS * last;
    }
    let hours = |s: f64| s / 3600.0;
    println!(
        "  estimate: {:.2} h with levels climbing evenly from N = 2 to {top}; {:.2} h with every epoch at N = {top} (upper bound); checkpoint analyses not included",
        hours(even),
        hours(upper)
    );
    Ok(())
}

/// Seconds one study epoch (`STUDY_STEPS` SGD steps, then `STUDY_TESTS` test batches) of a pack
/// of `m` trials takes at level `level`: `ESTIMATE_STEPS` steps and half as many test batches
/// timed (after a warm-up epoch of the same shape) and scaled up.
fn epoch_seconds(arch: Arch, engine: cbsweep_worker::torch::Engine, dev: tch::Device, m: usize, level: u32) -> anyhow::Result<f64> {
    let shaped = |seed: u64, steps: u32| {
        let mut t = spec(arch, seed, level, steps);
        t.budget.test_batches = (steps * STUDY_TESTS / STUDY_STEPS).max(1);
        t
    };
    let warm: Vec<TrialSpec> = (0..m as u64).map(|s| shaped(s + 10_000, 2)).collect();
    let pack: Vec<TrialSpec> = (0..m as u64).map(|s| shaped(s, ESTIMATE_STEPS)).collect();
    Ok(timed_pack(engine, dev, &warm, &pack)? * f64::from(STUDY_STEPS) / f64::from(ESTIMATE_STEPS))
}

/// Trial-steps per second of one timed pack of `m` trials (after a warm-up pack of the same
/// shape: allocator, kernels), on this process's threads.
fn time_pack(
    arch: Arch,
    engine: cbsweep_worker::torch::Engine,
    dev: tch::Device,
    m: usize,
    level: u32,
    trial_steps: usize,
) -> anyhow::Result<f64> {
    let steps = (trial_steps / m).max(2) as u32;
    let pack: Vec<TrialSpec> = (0..m as u64).map(|s| spec(arch, s, level, steps)).collect();
    let warm: Vec<TrialSpec> = pack.iter().map(|t| spec(arch, t.seed.0 + 10_000, level, 1)).collect();
    Ok((m as f64 * f64::from(steps)) / timed_pack(engine, dev, &warm, &pack)?)
}

/// Seconds `pack` takes to train on `dev`, after `warm` (allocator, kernels) on the same trainer.
fn timed_pack(engine: cbsweep_worker::torch::Engine, dev: tch::Device, warm: &[TrialSpec], pack: &[TrialSpec]) -> anyhow::Result<f64> {
    let mut trainer = cbsweep_worker::torch::TorchTrainer::new(dev).with_engine(engine);
    let _ = trainer.train_pack(warm, &mut |_: usize, _: &EpochRecord| Control::Continue);
    let t0 = Instant::now();
    let results = trainer.train_pack(pack, &mut |_: usize, _: &EpochRecord| Control::Continue);
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        results.iter().all(|r| r.result().is_some_and(|r| r.outcome.status() != "failed")),
        "training failed: {:?}",
        results[0].result().map(|r| &r.outcome)
    );
    Ok(secs)
}

/// Trial-steps per second of `procs` processes of one thread, each timing one trial at a time
/// (`train-child`), all at once: the sum of their rates.
fn per_process_rate(arch: Arch, engine: &str, procs: usize, level: u32, trial_steps: usize) -> anyhow::Result<f64> {
    let children: Vec<_> = (0..procs)
        .map(|_| {
            std::process::Command::new(std::env::current_exe()?)
                .args(["train-child", &arch.to_string(), engine, "1", &level.to_string(), &trial_steps.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0.0;
    for c in children {
        let out = c.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "a train-child process failed ({})", out.status);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += v["trial_steps_per_s"].as_f64().context("train-child printed no rate")?;
    }
    Ok(total)
}

fn train_child(arch: &str, engine: &str, m: usize, level: u32, trial_steps: usize) -> anyhow::Result<()> {
    let arch: Arch = arch.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = engine.parse().map_err(|e| anyhow::anyhow!("--engine {e}"))?;
    tch::set_num_threads(1);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    let rate = time_pack(arch, engine, tch::Device::Cpu, m, level, trial_steps)?;
    println!("{}", serde_json::json!({ "trial_steps_per_s": rate }));
    Ok(())
}

/// Options of `cbsweep-bench lease`.
#[derive(clap::Args, Clone, Debug)]
struct LeaseBench {
    /// Simulated workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Trials of each phase (saturated, paced).
    #[arg(long, default_value_t = 20_000)]
    trials: usize,
    /// Trials per second the simulated workers offer together in the paced phase (0: no paced phase).
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Simulated workers per gRPC connection (1: each its own, as real workers).
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Processes the simulated workers are spread over, each on one thread.
    #[arg(long, default_value_t = 1)]
    client_procs: usize,
    /// Run the simulated workers in the server's process instead (they then share its cores).
    #[arg(long)]
    in_process: bool,
    /// Report each result and lease the next trial in two calls, as workers did before a
    /// result could carry the next lease.
    #[arg(long)]
    two_calls: bool,
}

impl Default for LeaseBench {
    fn default() -> Self {
        LeaseBench { workers: 64, trials: 20_000, rate: 5_000.0, per_connection: 1, client_procs: 1, in_process: false, two_calls: false }
    }
}

/// What the simulated workers of one phase of `lease` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Load {
    /// `EMPTY_LEASES` leases each against an empty queue: transport, auth, one scheduler round trip.
    Empty,
    /// Lease one trial, complete it, at once again, until the coordinator is drained.
    Saturated,
    /// As saturated, but each worker at a fixed pace: together they offer `rate` trials/s.
    Paced,
}

const EMPTY_LEASES: usize = 200;
/// No phase of the lease bench runs longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// What one or more client processes of the lease bench measured (latencies in µs).
#[derive(Debug, Default)]
struct ClientReport {
    trials: usize,
    lease_us: Vec<u64>,
    complete_us: Vec<u64>,
    /// Paced: from a lease's due time to its answer, so a lease held up behind a slow one counts
    /// the wait too (no coordinated omission).
    due_us: Vec<u64>,
    /// From the first lease to the last answer (the longest of the processes).
    secs: f64,
    cpu_secs: f64,
}

impl ClientReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "trials": self.trials, "lease_us": self.lease_us, "complete_us": self.complete_us, "due_us": self.due_us, "secs": self.secs, "cpu_secs": self.cpu_secs })
    }

    fn from_json(v: &serde_json::Value) -> ClientReport {
        let list = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default();
        ClientReport {
            trials: v["trials"].as_u64().unwrap_or(0) as usize,
            lease_us: list("lease_us"),
            complete_us: list("complete_us"),
            due_us: list("due_us"),
            secs: v["secs"].as_f64().unwrap_or(0.0),
            cpu_secs: v["cpu_secs"].as_f64().unwrap_or(0.0),
        }
    }

    fn merge(&mut self, r: ClientReport) {
        self.trials += r.trials;
        self.lease_us.extend(r.lease_us);
        self.complete_us.extend(r.complete_us);
        self.due_us.extend(r.due_us);
        self.secs = self.secs.max(r.secs);
        self.cpu_secs += r.cpu_secs;
    }
}

/// The `q` quantile of latencies in µs, in ms.
fn quantile_ms(l: &mut [u64], q: f64) -> f64 {
    l.sort_unstable();
    l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).map(|&us| us as f64 / 1e3).unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) of this process, or of its live threads whose name passes `keep`.
fn cpu_secs(threads: Option<&dyn Fn(&str) -> bool>) -> anyhow::Result<f64> {
    // utime and stime are the 14th and 15th fields of a stat line, in USER_HZ (100) ticks; the
    // name (2nd) is in parentheses and may hold spaces
    fn ticks(stat: &str) -> u64 {
        let f: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum()
    }
    let Some(keep) = threads else { return Ok(ticks(&std::fs::read_to_string("/proc/self/stat")?) as f64 / 100.0) };
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task")? {
        let dir = t?.path();
        let (Ok(name), Ok(stat)) = (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat"))) else { continue };
        if keep(name.trim()) {
            total += ticks(&stat);
        }
    }
    Ok(total as f64 / 100.0)
}

/// The simulated workers `first..first + workers` (`lease-clients`): register, then lease one
/// trial and complete it until the phase ends; `per_connection` workers share a gRPC connection.
async fn lease_clients(
    url: &str,
    first: usize,
    workers: usize,
    per_connection: usize,
    load: Load,
    rate: f64,
    two_calls: bool,
) -> anyhow::Result<ClientReport> {
    use cbsweep_proto::{PROTOCOL_VERSION, v1};
    use tokio::time::Instant;
    let cpu0 = cpu_secs(None)?;
    let mut clients = Vec::new();
    for _ in 0..workers.div_ceil(per_connection.max(1)) {
        clients.push(cbsweep_proto::client::worker_client(url, "t").await?);
    }
    let mut registered = Vec::new();
    for i in 0..workers {
        let mut c = clients[i / per_connection.max(1)].clone();
        let hello = v1::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            hostname: format!("sim{}", first + i),
            device: "sim".into(),
            max_pack: 1,
            pid: (first + i) as u32,
        };
        let id = c.register(hello).await?.into_inner().worker_id;
        registered.push((c, id));
    }
    // each worker's pace in the paced phase, their starts spread over one period
    let period = if load == Load::Paced { Duration::from_secs_f64(workers as f64 / rate) } else { Duration::ZERO };
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut c, worker_id)) in registered.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut r = ClientReport::default();
            let us = |d: Duration| d.as_micros() as u64;
            let mut due = start + period.mul_f64(i as f64 / workers as f64);
            let request = v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: 1, memory_budget_bytes: 0 };
            let e = v1::EpochRecord { epoch: 1, level: 2, train_loss: 0.5, test_accuracy: 0.5, ..Default::default() };
            let result = v1::TrialResult {
                outcome: v1::OutcomeKind::Completed as i32,
                curve: vec![e],
                device: "sim".into(),
                pack_size: 1,
                ..Default::default()
            };
            // the trial in hand: reported at the next due time, which (one call) leases the next
            let mut held: Option<v1::LeasedTrial> = None;
            loop {
                // (a timer that is already due still waits for the timer's next 1 ms tick)
                if load == Load::Paced && due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let t0 = Instant::now();
                let (lease, lease_us) = match held.take() {
                    None => (c.lease(request.clone()).await?.into_inner(), us(t0.elapsed())),
                    Some(t) => {
                        let next = (!two_calls).then(|| request.clone());
                        let done = v1::CompleteRequest {
                            worker_id: worker_id.clone(),
                            trial_id: t.trial_id,
                            attempt: t.attempt,
                            result: Some(result.clone()),
                            next,
                        };
                        let answer = c.complete(done).await?.into_inner();
                        let done_us = us(t0.elapsed());
                        r.complete_us.push(done_us);
                        r.trials += 1;
                        match answer.next {
                            // the lease came with the result
                            Some(lease) => (lease, done_us),
                            // two calls: the lease is a call of its own
                            None => {
                                let t1 = Instant::now();
                                (c.lease(request.clone()).await?.into_inner(), us(t1.elapsed()))
                            }
                        }
                    }
                };
                r.lease_us.push(lease_us);
                if load == Load::Paced {
                    r.due_us.push(us(due.elapsed()));
                    due += period;
                }
                match lease.trials.into_iter().next() {
                    Some(t) => held = Some(t),
                    None => match load {
                        Load::Empty if r.lease_us.len() >= EMPTY_LEASES => break,
                        Load::Empty => {}
                        _ if lease.drained => break,
                        // nothing pending until the last leases come back
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    },
                }
            }
            anyhow::Ok(r)
        });
    }
    let mut all = ClientReport::default();
    while let Some(r) = tasks.join_next().await {
        all.merge(r??);
    }
    all.secs = start.elapsed().as_secs_f64();
    all.cpu_secs = cpu_secs(None)? - cpu0;
    Ok(all)
}

/// One phase of the lease bench: the simulated workers in `client_procs` processes of this
/// binary (`lease-clients`), or in this process; with the server's CPU time over the phase.
async fn lease_phase(url: &str, o: &LeaseBench, load: Load, rate: f64) -> anyhow::Result<(ClientReport, f64, f64)> {
    let is_scheduler = |name: &str| name.starts_with("cbsweep-sched");
    let (cpu0, sched0) = (cpu_secs(None)?, cpu_secs(Some(&is_scheduler))?);
    let mut report = ClientReport::default();
    if o.in_process {
        report = tokio::time::timeout(PHASE_LIMIT, lease_clients(url, 0, o.workers, o.per_connection, load, rate, o.two_calls)).await??;
    } else {
        let procs = o.client_procs.clamp(1, o.workers);
        let mut children = Vec::new();
        for p in 0..procs {
            let (first, end) = (o.workers * p / procs, o.workers * (p + 1) / procs);
            let share = rate * (end - first) as f64 / o.workers as f64;
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .args(["lease-clients", url, "--load"])
                .arg(format!("{load:?}").to_lowercase())
                .args(["--first", &first.to_string(), "--workers", &(end - first).to_string()])
                .args(["--per-connection", &o.per_connection.to_string(), "--rate", &share.to_string()])
                .args(o.two_calls.then_some("--two-calls"))
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            children.push(child);
        }
        for child in children {
            let out =
                tokio::time::timeout(PHASE_LIMIT, child.wait_with_output()).await.context("a lease-clients process ran too long")??;
            anyhow::ensure!(out.status.success(), "a lease-clients process failed ({})", out.status);
            report.merge(ClientReport::from_json(&serde_json::from_slice(&out.stdout)?));
        }
    }
    Ok((report, cpu_secs(None)? - cpu0, cpu_secs(Some(&is_scheduler))? - sched0))
}

async fn bench_lease(o: LeaseBench) -> anyhow::Result<()> {
    use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
    let dir = tempfile::tempdir()?;
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default())?;
    let running =
        cbsweep_coordinator::server::serve("127.0.0.1:0".parse()?, sched.clone(), cbsweep_coordinator::server::Token("t".into())).await?;
    let url = format!("http://{}", running.addr);
    let seeds = (o.trials / 4).max(1);
    let sweep = |name: &str| {
        let text = format!(
            "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 1\n[run]\npack_size = 1\n",
            (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        );
        cbsweep_common::parse_spec(&text, std::path::Path::new("bench.toml"))
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let clients = if o.in_process {
        "in the server's process".to_string()
    } else {
        format!("in {} client process(es)", o.client_procs.clamp(1, o.workers))
    };
    println!(
        "lease: {} simulated workers ({} per gRPC connection) {clients}, loopback, {} trials per phase, {cores} cores",
        o.workers,
        o.per_connection,
        seeds * 4
    );
    let cpu_line = |r: &ClientReport, server: f64, scheduler: f64, n: usize| {
        let per = |s: f64| s * 1e6 / n.max(1) as f64;
        let share = if o.in_process {
            "; clients and server share the process".to_string()
        } else {
            format!(", clients {:.0} µs", per(r.cpu_secs))
        };
        format!("CPU per trial: server {:.0} µs (scheduler thread {:.0} µs){share}", per(server), per(scheduler))
    };

    // Baseline: lease calls against an empty queue.
    let (mut base, _, _) = lease_phase(&url, &o, Load::Empty, 0.0).await?;
    let base_rate = base.lease_us.len() as f64 / base.secs;

    sched.submit(sweep("bench-saturated")?, "bench.toml".into()).await?;
    let (mut sat, server, scheduler) = lease_phase(&url, &o, Load::Saturated, 0.0).await?;
    anyhow::ensure!(sat.trials == seeds * 4, "{} trials completed, expected {}", sat.trials, seeds * 4);
    let rate = sat.trials as f64 / sat.secs;
    println!(
        "  saturated: {rate:>7.0} trials/s leased and completed   lease p50 {:.2} ms p99 {:.2} ms   complete p99 {:.2} ms",
        quantile_ms(&mut sat.lease_us, 0.5),
        quantile_ms(&mut sat.lease_us, 0.99),
        quantile_ms(&mut sat.complete_us, 0.99)
    );
    println!("             {}", cpu_line(&sat, server, scheduler, sat.trials));
    println!(
        "             ({} calls always in flight: mean latency = {} / call rate, so p99 is measured paced, below)",
        o.workers, o.workers
    );

    if o.rate > 0.0 {
        sched.submit(sweep("bench-paced")?, "bench.toml".into()).await?;
        let (mut paced, server, scheduler) = lease_phase(&url, &o, Load::Paced, o.rate).await?;
        anyhow::ensure!(paced.trials == seeds * 4, "{} trials completed, expected {}", paced.trials, seeds * 4);
        let l = &mut paced.lease_us;
        println!(
            "  paced at {:.0} trials/s: {:>7.0} trials/s   lease p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms   complete p99 {:.2} ms",
            o.rate,
            paced.trials as f64 / paced.secs,
            quantile_ms(l, 0.5),
            quantile_ms(l, 0.9),
            quantile_ms(l, 0.99),
            quantile_ms(l, 1.0),
            quantile_ms(&mut paced.complete_us, 0.99)
        );
        // from due time: a lease sent late because the one before it was slow counts its wait
        // too (and up to 1 ms of the client's timer)
        println!(
            "             lease p99 from due time {:.2} ms; {}",
            quantile_ms(&mut paced.due_us, 0.99),
            cpu_line(&paced, server, scheduler, paced.trials)
        );
    }
    println!("  baseline (empty-queue lease, saturated): {base_rate:>7.0} leases/s   p99 {:.2} ms", quantile_ms(&mut base.lease_us, 0.99));
    println!("  ratio: {:.2}x of the bare lease round trip", rate / base_rate);
    Ok(())
}

fn bench_results(rows: usize) -> anyhow::Result<()> {
    use cbsweep_common::TrialId;
    let dir = tempfile::tempdir()?;
    let text = "[sweep]\nname = \"bench\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\"]\nseed = [0]\n";
    let spec = cbsweep_common::parse_spec(text, std::path::Path::new("bench.toml"))?.trials.remove(0);
    let row = cbsweep_coordinator::store::TrialRow {
        id: spec.id(),
        sweep: spec.sweep.clone(),
        cell_index: 0,
        condition: spec.condition(),
        spec: spec.clone(),
        state: cbsweep_common::TrialState::Done,
        attempt: 1,
        worker: None,
        last_error: None,
        outcome: None,
        max_level: None,
        final_level: None,
        epochs_run: None,
        wall_time_ms: None,
        device: None,
        pack_size: None,
        completed_ms: None,
    };
    let curves: Vec<(TrialId, EpochRecord)> = (0..rows)
        .map(|i| {
            let e = EpochRecord {
                epoch: i as u32 + 1,
                level: 2 + (i % 30) as u32,
                train_loss: 0.5,
                test_accuracy: 0.9,
                solved: i % 7 == 0,
                grad_norm: 1.5,
                core_learning: true,
                cb_learning: true,
            };
            (spec.id(), e)
        })
        .collect();
    let t0 = Instant::now();
    cbsweep_coordinator::results::curves::write(&dir.path().join("c.parquet"), std::slice::from_ref(&row), &curves)?;
    let pq = rows as f64 / t0.elapsed().as_secs_f64();
    // Baseline: the same rows as CSV text through a buffered writer.
    let t0 = Instant::now();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(dir.path().join("c.csv"))?);
        for (id, e) in &curves {
            writeln!(
                w,
                "bench,{id},dms,cbrnn,64,256,64,0,simult,never,,1,0.01,0.01,{},{},{},{},{},{},{},{}",
                e.epoch, e.level, e.train_loss, e.test_accuracy, e.solved, e.grad_norm, e.core_learning, e.cb_learning
            )?;
        }
        w.flush()?;
    }
    let csv = rows as f64 / t0.elapsed().as_secs_f64();
    println!("results: {rows} curve rows (22 columns)");
    println!("  parquet: {pq:>12.0} rows/s   baseline csv: {csv:>12.0} rows/s   ratio {:.2}x", pq / csv);
    Ok(())
}

/// Runs a sweep through `cbsweep run` (coordinator, gRPC, worker processes, SQLite, Parquet)
/// and compares its wall time with the ideal: the trainers' own wall time spread over the
/// workers (each pack's time counted once).
fn bench_e2e(spec: Option<&std::path::Path>, workers: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (spec_path, fake) = match spec {
        Some(p) => (p.to_owned(), false),
        None => {
            let seeds: Vec<String> = (0..12).map(|s| s.to_string()).collect();
            let text = format!(
                "[sweep]\nname = \"e2e\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 10\n[run]\npack_size = 1\n",
                seeds.join(",")
            );
            let p = dir.path().join("e2e.toml");
            std::fs::write(&p, text)?;
            (p, true)
        }
    };
    let sweep = cbsweep_common::load_spec(&spec_path)?.id;
    let bin = std::env::current_exe()?.with_file_name("cbsweep");
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("run").arg(&spec_path).args(["--workers", &workers.to_string(), "--out"]).arg(&out);
    if fake {
        cmd.args(["--trainer", "fake", "--worker-arg=--fake-epoch-ms=50"]);
    }
    let launched_ms = cbsweep_coordinator::store::now_ms();
    let t0 = Instant::now();
    let o = cmd.output()?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(o.status.success(), "cbsweep run failed: {}", String::from_utf8_lossy(&o.stderr));
    let state = out.join(cbsweep_coordinator::local::STATE_DIR);
    let rows = cbsweep_coordinator::store::Store::open_read_only(&state)?.trials(&sweep)?;
    // A trial's training ran within [completed - wall time, completed] on its worker (its pack
    // started then; the result is sent when the whole pack ends): a worker's trainer time is
    // the union of those intervals, so the trials of one pack count once.
    let mut spans: std::collections::BTreeMap<String, Vec<(i64, i64)>> = std::collections::BTreeMap::new();
    for r in &rows {
        if let (Some(worker), Some(done), Some(wall)) = (&r.worker, r.completed_ms, r.wall_time_ms) {
            spans.entry(worker.clone()).or_default().push((done - wall as i64, done));
        }
    }
    let mut busy_ms = 0i64;
    // where the rest of the wall time went, in ms summed over the workers
    let last_end = spans.values().flat_map(|l| l.iter().map(|s| s.1)).max().unwrap_or(launched_ms);
    let (mut startup, mut tails) = (0i64, 0i64);
    for list in spans.values_mut() {
        list.sort_unstable();
        startup += list.first().map_or(0, |s| s.0 - launched_ms);
        tails += last_end - list.iter().map(|s| s.1).max().unwrap_or(last_end);
        let mut current: Option<(i64, i64)> = None;
        for &(start, end) in list.iter() {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    busy_ms += e - s;
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        busy_ms += current.map_or(0, |(s, e)| e - s);
    }
    let ideal = busy_ms as f64 / 1000.0 / f64::from(workers);
    println!(
        "e2e: {} trials of sweep {sweep} ({} trainer), {workers} workers",
        rows.len(),
        if fake { "fake, 50 ms epochs" } else { "torch" }
    );
    println!("  wall {wall:.2} s   trainers' own time / workers (the baseline) {ideal:.2} s   ratio {:.3}x", wall / ideal);
    let per_worker = |ms: i64| ms as f64 / 1000.0 / f64::from(workers);
    let finish = wall - (last_end - launched_ms) as f64 / 1000.0;
    let (start, tail) = (per_worker(startup), per_worker(tails));
    let between = (wall - ideal) - start - tail - finish;
    let pct = |s: f64| 100.0 * s / wall;
    println!("  workers idle {:.1}% of the wall time (each figure below a mean over the workers):", pct(wall - ideal));
    println!(
        "    orchestration {:.1}%: start (launch to a worker's first trial) {start:.2} s, between trials {between:.2} s, finish (last result to exit) {finish:.2} s",
        pct(start + between + finish)
    );
    println!(
        "    load imbalance {:.1}%: tail (a worker with nothing left while another still trains) {tail:.2} s; it depends on how the trials' lengths fall, not on the machinery",
        pct(tail)
    );
    Ok(())
}

/// A field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: its peak).
fn proc_status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    cbsweep_worker::budget::kib_field_bytes(&status, field).with_context(|| format!("no {field} in /proc/self/status"))
}

/// The child of `bench_memory`: a warm-up pack of one (libtorch's kernels and thread pools are
/// loaded before the baseline is read), the peak reset to the resident set, then the pack.
fn memory_child(engine: &str, m: usize, level: u32, steps: u32) -> anyhow::Result<()> {
    let engine: cbsweep_worker::torch::Engine = engine.parse().map_err(|e| anyhow::anyhow!("--engines {e}"))?;
    let mut trainer = cbsweep_worker::torch::TorchTrainer::new(tch::Device::Cpu).with_engine(engine);
    let _ = trainer.train_pack(&[spec(Arch::Cbrnn, 10_000, 2, 1)], &mut |_: usize, _: &EpochRecord| Control::Continue);
    // "5" resets VmHWM to the current resident set (Linux 4.0+); the peak is read either way
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = proc_status_bytes("VmRSS")?;
    let pack: Vec<TrialSpec> = (0..m as u64).map(|s| spec(Arch::Cbrnn, s, level, steps)).collect();
    let results = trainer.train_pack(&pack, &mut |_: usize, _: &EpochRecord| Control::Continue);
    anyhow::ensure!(
        results.iter().all(|r| r.result().is_some_and(|r| r.outcome.status() != "failed")),
        "training failed: {:?}",
        results[0].result().map(|r| &r.outcome)
    );
    let peak = proc_status_bytes("VmHWM")?;
    println!("{}", serde_json::json!({ "before": before, "peak": peak, "peak_reset": reset }));
    Ok(())
}

fn bench_memory(engines: &[String], packs: &[usize], level: u32, trial_steps: usize) -> anyhow::Result<()> {
    use cbsweep_common::memory::{format_bytes, trial_memory_bytes};
    let estimate = trial_memory_bytes(&spec(Arch::Cbrnn, 0, level, 1));
    println!(
        "memory: CB-RNN H=64 G=256 P=64, level N = {level}, batch 64, max(2, {trial_steps} / M) SGD steps, CPU, each pack in a fresh process"
    );
    println!("  per trial = (peak RSS - RSS before training) / M; estimate = cbsweep_common::memory::trial_memory_bytes");
    println!("{:<9} {:>5} {:>12} {:>12} {:>14} {:>12} {:>8}", "engine", "M", "before", "peak", "per trial", "estimate", "covered");
    let mut all_covered = true;
    for (engine, &m) in engines.iter().flat_map(|e| packs.iter().map(move |m| (e, m))) {
        let steps = (trial_steps / m.max(1)).max(2);
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["memory-child", engine, &m.to_string(), &level.to_string(), &steps.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(out.status.success(), "the {engine} pack of {m} failed ({})", out.status);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let (before, peak) = (v["before"].as_u64().unwrap_or(0), v["peak"].as_u64().unwrap_or(0));
        let per_trial = peak.saturating_sub(before) / m.max(1) as u64;
        let covered = estimate >= per_trial;
        all_covered &= covered;
        println!(
            "{engine:<9} {m:>5} {:>12} {:>12} {:>14} {:>12} {:>8}{}",
            format_bytes(before),
            format_bytes(peak),
            format_bytes(per_trial),
            format_bytes(estimate),
            if covered { "yes" } else { "NO" },
            if v["peak_reset"].as_bool() == Some(false) { "  (peak not reset: includes the warm-up)" } else { "" }
        );
    }
    let verdict = if all_covered {
        "covers the measured peak per packed trial at every M"
    } else {
        "does NOT cover every measured peak per packed trial"
    };
    println!("  the estimate {verdict}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // as the coordinator's: one worker thread per core (or TOKIO_WORKER_THREADS)
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let what = args.what;
    let all = matches!(what, What::All);
    if let What::Lease(o) = what {
        return rt.block_on(bench_lease(o));
    }
    if let What::LeaseClients { url, load, first, workers, per_connection, rate, two_calls } = &what {
        // one thread: the clients take one core, the server the others
        let clients = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let report = clients.block_on(lease_clients(url, *first, *workers, *per_connection, *load, *rate, *two_calls))?;
        println!("{}", report.to_json());
        return Ok(());
    }
    if let What::TrainChild { arch, engine, pack, level, trial_steps } = &what {
        return train_child(arch, engine, *pack, *level, *trial_steps);
    }
    if let What::E2e { spec, workers } = &what {
        return bench_e2e(spec.as_deref(), *workers);
    }
    if let What::Results { rows } = what {
        return bench_results(rows);
    }
    if let What::Train { packs, level, device, trial_steps, threads, engines, estimate_level } = &what {
        return bench_train(packs, *level, device, *trial_steps, *threads, engines, *estimate_level);
    }
    if let What::Memory { engines, packs, level, trial_steps } = &what {
        return bench_memory(engines, packs, *level, *trial_steps);
    }
    if let What::MemoryChild { engine, pack, level, steps } = &what {
        return memory_child(engine, *pack, *level, *steps);
    }
    if all {
        rt.block_on(bench_lease(LeaseBench::default()))?;
        bench_results(1_000_000)?;
        bench_e2e(None, 2)?;
        bench_train(&[1, 8, 32, 128], 10, "cpu", 256, 0, &["fused".into(), "libtorch".into()], 35)?;
        bench_memory(&["fused".into(), "libtorch".into()], &[1, 8, 32], 10, 8)?;
    }
    Ok(())
}
