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
use cbsweep_train::trainer::{Control, Trainer};
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

/// What `train` measures (its command line).
#[derive(Clone, Debug)]
pub(crate) struct TrainBench {
    pub(crate) packs: Vec<usize>,
    /// Curriculum levels N, each measured on its own.
    pub(crate) levels: Vec<u32>,
    pub(crate) device: String,
    /// Trial-steps per measurement.
    pub(crate) trial_steps: usize,
    /// Threads in this process (0: the machine's cores).
    pub(crate) threads: usize,
    pub(crate) engines: Vec<String>,
    /// The top level of the main comparison's estimate (0: none).
    pub(crate) estimate_level: u32,
    /// Rounds of baseline and candidates, interleaved (A B A B ...).
    pub(crate) rounds: usize,
}

impl Default for TrainBench {
    fn default() -> Self {
        Self {
            packs: vec![1, 8, 32, 128],
            levels: vec![10],
            device: "cpu".into(),
            trial_steps: 256,
            threads: 0,
            engines: vec!["fused".into(), "libtorch".into()],
            estimate_level: 35,
            rounds: 3,
        }
    }
}

/// Trial-steps per second of the Python baseline: `procs` processes of one thread each (one per
/// core on the CPU, one on a GPU), on `device`, each training one trial of `t`'s shapes.
fn baseline(files: &Baseline, t: &TrialSpec, level: u32, procs: usize, device: &str) -> anyhow::Result<f64> {
    let (py, script) = (&files.python, &files.script);
    let children: Vec<_> = (0..procs)
        .map(|i| {
            std::process::Command::new(py)
                .arg(script)
                .args(["--arch", &t.arch.to_string(), "--level", &level.to_string(), "--steps", "40", "--seed", &i.to_string()])
                .args(["--hidden", &t.hidden.to_string(), "--granule", &t.granule.to_string(), "--purkinje", &t.purkinje.to_string()])
                .args(["--device", device])
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

/// One row of the table: what is timed, and on how many cores (for its share of the peak).
#[derive(Clone, Copy)]
enum Row {
    /// The study's loop, one process of one thread per core (one on a GPU).
    Baseline,
    /// A pack of M trials in this process, on its threads.
    Pack(cbsweep_train::Engine, usize),
    /// `cbsweep run`'s way on a CPU node: one single-thread process per thread, one trial each.
    PerProcess(cbsweep_train::Engine),
}

/// The rates of one row over the rounds, and its ratios to the baseline of the same round.
struct Measured {
    row: Row,
    rates: Vec<f64>,
    ratios: Vec<f64>,
}

fn engine_name(e: cbsweep_train::Engine) -> &'static str {
    match e {
        cbsweep_train::Engine::Fused => "fused",
        cbsweep_train::Engine::Libtorch => "libtorch",
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub(crate) fn bench_train(b: &TrainBench, files: &Baseline) -> anyhow::Result<()> {
    use cbsweep_train::Engine;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let device = b.device.as_str();
    let dev = match device {
        "cpu" => tch::Device::Cpu,
        d => {
            cbsweep_train::cuda::load().map_err(|why| anyhow::anyhow!("--device {d}: {why}"))?;
            tch::Device::Cuda(d.strip_prefix("cuda:").and_then(|n| n.parse().ok()).context("--device: cpu or cuda:N")?)
        }
    };
    let engines: Vec<Engine> =
        b.engines.iter().map(|e| e.parse().map_err(|e| anyhow::anyhow!("--engines {e}"))).collect::<Result<_, _>>()?;
    let threads = if b.threads == 0 { cores } else { b.threads };
    anyhow::ensure!(b.rounds >= 1, "--rounds: at least 1");
    tch::set_num_threads(threads as i32);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    // the study's way on this device: one trial per process, a process per core on the CPU and
    // one on a GPU
    let base_procs = if dev == tch::Device::Cpu { cores } else { 1 };
    // each row's share is of the peak of the cores it ran on
    let mut peaks = std::collections::BTreeMap::new();
    for n in [threads, base_procs, 1] {
        peaks.entry(n).or_insert_with(|| measured_peak(n));
    }
    println!(
        "train: batch 64, {cores} cores, {threads} thread(s), device {device}, {} interleaved rounds; baseline = {}, {base_procs} process(es) x 1 thread on {device}",
        b.rounds,
        files.script.display()
    );
    if dev == tch::Device::Cpu {
        for (n, peak) in &peaks {
            println!("  fp32 peak of {n} core(s) at once: {:.0} GFLOP/s ({})", peak.rate / 1e9, peak.how);
        }
        println!("  one large sgemm (1024^3) on one thread reaches {:.1} GFLOP/s", large_gemm_rate() / 1e9);
    }
    let mut rows = vec![Row::Baseline];
    for &engine in &engines {
        if engine == Engine::Fused && dev != tch::Device::Cpu {
            continue;
        }
        rows.extend(b.packs.iter().map(|&m| Row::Pack(engine, m)));
        if dev == tch::Device::Cpu && threads > 1 {
            rows.push(Row::PerProcess(engine));
        }
    }
    for &level in &b.levels {
        println!("level N = {level} (T from {} to {})", level + 2, 4 * level + 1);
        println!(
            "{:<6} {:<9} {:>6} {:>14} {:>9} {:>7} {:>8} {:>15}",
            "arch", "engine", "M", "trial-steps/s", "GFLOP/s", "peak", "ratio", "ratio range"
        );
        for arch in [Arch::Cbrnn, Arch::Rnn] {
            let shape = spec(arch, 0, level, 1);
            let flop = flop_per_trial_step(&shape, level);
            let mut measured: Vec<Measured> = rows.iter().map(|&row| Measured { row, rates: vec![], ratios: vec![] }).collect();
            // rounds interleave the baseline and every candidate, so a host that drifts (other
            // work, a clock) shows as a spread of the ratio, not as a ratio
            for _ in 0..b.rounds {
                let base = baseline(files, &shape, level, base_procs, device)?;
                for m in &mut measured {
                    let rate = match m.row {
                        Row::Baseline => base,
                        Row::Pack(engine, pack) => time_pack(arch, engine, dev, pack, level, b.trial_steps)?,
                        Row::PerProcess(engine) => per_process_rate(arch, engine_name(engine), threads, level, b.trial_steps)?,
                    };
                    m.rates.push(rate);
                    m.ratios.push(rate / base);
                }
            }
            for m in &measured {
                let (name, pack, cores_used) = match m.row {
                    Row::Baseline => ("baseline", "1/proc".to_string(), base_procs),
                    Row::Pack(engine, pack) => (engine_name(engine), pack.to_string(), threads),
                    Row::PerProcess(engine) => (engine_name(engine), "1/proc".to_string(), threads),
                };
                let rate = median(&m.rates);
                let gflops = rate * flop / 1e9;
                let peak = peaks[&cores_used].rate;
                let (lo, hi) = m.ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                println!(
                    "{:<6} {:<9} {:>6} {:>14.1} {:>9.1} {:>6.1}% {:>7.2}x {:>15}",
                    arch.to_string(),
                    name,
                    pack,
                    rate,
                    gflops,
                    100.0 * gflops * 1e9 / peak,
                    median(&m.ratios),
                    format!("{lo:.2}-{hi:.2}x")
                );
            }
        }
    }
    println!(
        "  (M: trials in one pack in one process of {threads} thread(s); 1/proc: {threads} processes of one thread, one trial each, as `cbsweep run` starts them; the baseline: {base_procs} process(es) of one thread, one trial each)"
    );
    println!(
        "  (medians over {} rounds; ratio: to the baseline of the same round, with its range; peak: the share of the fp32 peak of the cores the row ran on)",
        b.rounds
    );
    println!(
        "  (a timed pack includes its test pass: one test batch per epoch of `steps` SGD steps; FLOP counts the matrix products of the SGD steps only)"
    );
    if b.estimate_level > 0 {
        estimate_main_comparison(dev, device, b.estimate_level)?;
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
    use cbsweep_train::Engine;
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
fn epoch_seconds(arch: Arch, engine: cbsweep_train::Engine, dev: tch::Device, m: usize, level: u32) -> anyhow::Result<f64> {
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
fn time_pack(arch: Arch, engine: cbsweep_train::Engine, dev: tch::Device, m: usize, level: u32, trial_steps: usize) -> anyhow::Result<f64> {
    let steps = (trial_steps / m).max(2) as u32;
    let pack: Vec<TrialSpec> = (0..m as u64).map(|s| spec(arch, s, level, steps)).collect();
    let warm: Vec<TrialSpec> = pack.iter().map(|t| spec(arch, t.seed.0 + 10_000, level, 1)).collect();
    Ok((m as f64 * f64::from(steps)) / timed_pack(engine, dev, &warm, &pack)?)
}

/// Seconds `pack` takes to train on `dev`, after `warm` (allocator, kernels) on the same trainer.
fn timed_pack(engine: cbsweep_train::Engine, dev: tch::Device, warm: &[TrialSpec], pack: &[TrialSpec]) -> anyhow::Result<f64> {
    let mut trainer = cbsweep_train::TorchTrainer::new(dev).with_engine(engine);
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
