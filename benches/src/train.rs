//! `cbsweep-bench train`: training throughput, in trial-steps per second (one SGD step of one
//! trial on a batch of 64), of packs of M trials trained as one computation in one process, and
//! of `cbsweep run`'s way on a CPU node (one single-threaded process per core, one trial each:
//! the 1/proc row), for the CB-RNN and its matched RNN on each engine. The baseline is the
//! study's way of training, measured in the same run on the same device: benches/baseline.py,
//! one trial per Python process of one thread (a process per core on the CPU, one on a GPU).
//! Each rate is also shown in GFLOP/s and as a share of the measured fp32 peak (`peak`). The
//! table ends with an estimate of the study's main comparison on the device, from timed epochs
//! of 16-trial packs at the lowest and the top level (no baseline: hours of work).

use crate::peak::{large_gemm_rate, measured_peak};
use crate::shared::spec;
use anyhow::Context;
use cbsweep_common::{Arch, EpochRecord, TrialSpec};
use cbsweep_worker::trainer::{Control, Trainer};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The Python baseline: an interpreter with torch and benches/baseline.py, each from its flag,
/// else its environment variable, else the checkout in the current folder; found at run time, so
/// a binary built in one place runs in another.
pub(crate) struct Baseline {
    python: PathBuf,
    script: PathBuf,
}

impl Baseline {
    pub(crate) fn find(python: Option<&Path>, script: Option<&Path>) -> anyhow::Result<Self> {
        let python =
            located(python, "--python", "CBSWEEP_BENCH_PYTHON", ".venv/bin/python", "an interpreter with torch; `make setup` makes .venv")?;
        let script = located(script, "--baseline", "CBSWEEP_BENCH_BASELINE", "benches/baseline.py", "the study's loop, in the repository")?;
        Ok(Self { python, script })
    }
}

/// `flag`'s value, else `var`'s, else `default` under the current folder; an error saying where it
/// looked when that file is missing (a bare command name in the flag or variable is left to PATH).
fn located(flag: Option<&Path>, name: &str, var: &str, default: &str, what: &str) -> anyhow::Result<PathBuf> {
    let (path, from) = match (flag, std::env::var_os(var).filter(|v| !v.is_empty())) {
        (Some(p), _) => (p.to_owned(), name.to_owned()),
        (None, Some(v)) => (PathBuf::from(v), var.to_owned()),
        (None, None) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            (cwd.join(default), format!("the default under the current folder {}", cwd.display()))
        }
    };
    let bare = path.components().count() == 1 && !path.is_absolute();
    anyhow::ensure!(
        bare || path.exists(),
        "the baseline needs {} ({what}), which is not there ({from}): pass {name} PATH or set {var}",
        path.display()
    );
    Ok(path)
}

/// Trial-steps per second of the Python baseline: `procs` processes of one thread each (one per
/// core on the CPU, one on a GPU), on `device`.
fn baseline(files: &Baseline, arch: Arch, level: u32, procs: usize, device: &str) -> anyhow::Result<f64> {
    let (py, script) = (&files.python, &files.script);
    let children: Vec<_> = (0..procs)
        .map(|i| {
            std::process::Command::new(py)
                .arg(script)
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
                .with_context(|| format!("cannot run {} (pass --python PATH or set CBSWEEP_BENCH_PYTHON)", py.display()))
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
    let a = f64::from(t.module_units().unwrap_or(0));
    let forward_macs = match t.arch {
        Arch::Cbrnn => h * h + g * (h + 1.0) + p * g + h * p,
        Arch::Rnn => h * h,
        Arch::Rmrnn => h * h + a * (h + 1.0) + a * a + h * a,
        Arch::Cbgru => 3.0 * h * h + g * (h + 1.0) + p * g + h * p,
        Arch::Gru => 3.0 * h * h,
    };
    // T uniform in N+2 ..= 4N+1: mean (5N + 3) / 2
    let mean_t = (5.0 * f64::from(level) + 3.0) / 2.0;
    2.0 * 3.0 * forward_macs * f64::from(t.budget.batch_size) * mean_t
}

pub(crate) fn bench_train(
    packs: &[usize],
    level: u32,
    device: &str,
    trial_steps: usize,
    threads: usize,
    engines: &[String],
    estimate_level: u32,
    files: &Baseline,
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
        "train: level N = {level}, batch 64, {cores} cores, {threads} thread(s), device {device}; baseline = {}, {base_procs} process(es) x 1 thread on {device}",
        files.script.display()
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
        let base = baseline(files, arch, level, base_procs, device)?;
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
        results.iter().all(|r| r.result().is_some_and(|r| !matches!(r.outcome, cbsweep_common::TrialOutcome::Failed(_)))),
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

pub(crate) fn train_child(arch: &str, engine: &str, m: usize, level: u32, trial_steps: usize) -> anyhow::Result<()> {
    let arch: Arch = arch.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = engine.parse().map_err(|e| anyhow::anyhow!("--engine {e}"))?;
    tch::set_num_threads(1);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    let rate = time_pack(arch, engine, tch::Device::Cpu, m, level, trial_steps)?;
    println!("{}", serde_json::json!({ "trial_steps_per_s": rate }));
    Ok(())
}
