//! cbsweep's benchmarks. Each prints its measurement beside a baseline measured in the same run
//! and the ratio between them; none asserts a time (the machines are shared and noisy).
//!
//!   cbsweep-bench train     trial-steps/s of packed training vs the study's way (benches/baseline.py)
//!   cbsweep-bench lease     coordinator leases/s and p99 latency with 64 simulated gRPC workers
//!   cbsweep-bench results   Parquet rows/s vs writing the same rows as CSV
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
        /// libtorch threads in the cbsweep process (0: the machine's cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Trial-steps to time per measurement (at least 2 steps each).
        #[arg(long, default_value_t = 256)]
        trial_steps: usize,
    },
    /// Coordinator lease throughput and latency.
    Lease {
        #[arg(long, default_value_t = 64)]
        workers: usize,
        #[arg(long, default_value_t = 20_000)]
        trials: usize,
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

/// Trial-steps per second of the Python baseline: one process per core, one thread each.
fn baseline(arch: Arch, level: u32, procs: usize) -> anyhow::Result<f64> {
    let py = root().join(".venv/bin/python");
    let script = root().join("benches/baseline.py");
    let children: Vec<_> = (0..procs)
        .map(|i| {
            std::process::Command::new(&py)
                .arg(&script)
                .args(["--arch", &arch.to_string(), "--level", &level.to_string(), "--steps", "40", "--seed", &i.to_string()])
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

fn bench_train(packs: &[usize], level: u32, device: &str, trial_steps: usize, threads: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dev = match device {
        "cpu" => tch::Device::Cpu,
        d => tch::Device::Cuda(d.strip_prefix("cuda:").and_then(|n| n.parse().ok()).context("--device: cpu or cuda:N")?),
    };
    let threads = if threads == 0 { cores } else { threads };
    tch::set_num_threads(threads as i32);
    println!("train: level N = {level}, batch 64, {cores} cores, {threads} libtorch thread(s), device {device}; baseline = benches/baseline.py, {cores} processes x 1 thread");
    println!("{:<6} {:>5} {:>16} {:>16} {:>8}", "arch", "M", "trial-steps/s", "baseline", "ratio");
    for arch in [Arch::Cbrnn, Arch::Rnn] {
        let base = baseline(arch, level, cores)?;
        for &m in packs {
            let steps = (trial_steps / m).max(2) as u32;
            let pack: Vec<TrialSpec> = (0..m as u64).map(|s| spec(arch, s, level, steps)).collect();
            let mut trainer = cbsweep_worker::torch::TorchTrainer::new(dev);
            // Warm-up pack of the same shape (allocator, kernels), then the timed one.
            let warm: Vec<TrialSpec> = pack.iter().map(|t| spec(arch, t.seed.0 + 10_000, level, 1)).collect();
            let _ = trainer.train_pack(&warm, &mut |_: usize, _: &EpochRecord| Control::Continue);
            let t0 = Instant::now();
            let results = trainer.train_pack(&pack, &mut |_: usize, _: &EpochRecord| Control::Continue);
            let secs = t0.elapsed().as_secs_f64();
            anyhow::ensure!(results.iter().all(|r| r.outcome.status() != "failed"), "training failed: {:?}", results[0].outcome);
            let rate = (m as f64 * f64::from(steps)) / secs;
            println!("{:<6} {:>5} {:>16.1} {:>16.1} {:>7.2}x", arch.to_string(), m, rate, base, rate / base);
        }
    }
    Ok(())
}

async fn bench_lease(workers: usize, trials: usize) -> anyhow::Result<()> {
    use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
    use cbsweep_proto::{PROTOCOL_VERSION, v1};
    let dir = tempfile::tempdir()?;
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default())?;
    let seeds = (trials / 4).max(1);
    let text = format!(
        "[sweep]\nname = \"bench\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 1\n[run]\npack_size = 1\n",
        (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(",")
    );
    let spec = cbsweep_common::parse_spec(&text, std::path::Path::new("bench.toml"))?;
    let running = cbsweep_coordinator::server::serve("127.0.0.1:0".parse()?, sched.clone(), cbsweep_coordinator::server::Token("t".into())).await?;
    let url = format!("http://{}", running.addr);

    // Each simulated worker: lease one trial, complete it, repeat; latency of every lease call.
    async fn drive(url: String, workers: usize, complete: bool) -> anyhow::Result<(usize, Vec<Duration>, Duration)> {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..workers {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = cbsweep_proto::client::worker_client(&url, "t").await?;
                let hello = v1::RegisterRequest { protocol_version: PROTOCOL_VERSION, hostname: format!("sim{i}"), device: "sim".into(), max_pack: 1, pid: i as u32 };
                let worker_id = c.register(hello).await?.into_inner().worker_id;
                let mut lat = Vec::new();
                let mut n = 0;
                loop {
                    let t0 = Instant::now();
                    let lease = c.lease(v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: 1 }).await?.into_inner();
                    lat.push(t0.elapsed());
                    if !complete && lat.len() >= 200 {
                        return anyhow::Ok((n, lat));
                    }
                    let Some(t) = lease.trials.into_iter().next() else {
                        if lease.drained || !complete {
                            return anyhow::Ok((n, lat));
                        }
                        continue;
                    };
                    n += 1;
                    let e = v1::EpochRecord { epoch: 1, level: 2, train_loss: 0.5, test_accuracy: 0.5, ..Default::default() };
                    let result = v1::TrialResult { outcome: v1::OutcomeKind::Completed as i32, curve: vec![e], device: "sim".into(), pack_size: 1, ..Default::default() };
                    c.complete(v1::CompleteRequest { worker_id: worker_id.clone(), trial_id: t.trial_id, attempt: t.attempt, result: Some(result) }).await?;
                }
            }));
        }
        let (mut n, mut lat) = (0, Vec::new());
        for t in tasks {
            let (k, l) = t.await??;
            n += k;
            lat.extend(l);
        }
        Ok((n, lat, start.elapsed()))
    }
    fn p99(l: &mut [Duration]) -> f64 {
        l.sort();
        l.get(l.len() * 99 / 100).map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN)
    }
    // Baseline: lease calls against an empty queue (transport, auth, one scheduler round trip).
    let (_, mut base_lat, base_time) = drive(url.clone(), workers, false).await?;
    let base_rate = base_lat.len() as f64 / base_time.as_secs_f64();
    sched.submit(spec, "bench.toml".into()).await?;
    let (n, mut lat, time) = drive(url, workers, true).await?;
    anyhow::ensure!(n == seeds * 4, "{n} trials completed, expected {}", seeds * 4);
    let rate = n as f64 / time.as_secs_f64();
    println!("lease: {workers} simulated workers over gRPC on loopback, {n} trials (lease + complete each)");
    println!("  trials leased and completed: {rate:>9.0} /s   p99 lease latency {:.2} ms", p99(&mut lat));
    println!("  baseline (empty-queue lease): {base_rate:>8.0} /s   p99 {:.2} ms", p99(&mut base_lat));
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
            let e = EpochRecord { epoch: i as u32 + 1, level: 2 + (i % 30) as u32, train_loss: 0.5, test_accuracy: 0.9, solved: i % 7 == 0, grad_norm: 1.5, core_learning: true, cb_learning: true };
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
            writeln!(w, "bench,{id},dms,cbrnn,64,256,64,0,simult,never,,1,0.01,0.01,{},{},{},{},{},{},{},{}", e.epoch, e.level, e.train_loss, e.test_accuracy, e.solved, e.grad_norm, e.core_learning, e.cb_learning)?;
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
    let t0 = Instant::now();
    let o = cmd.output()?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(o.status.success(), "cbsweep run failed: {}", String::from_utf8_lossy(&o.stderr));
    let state = out.join(cbsweep_coordinator::local::STATE_DIR);
    let rows = cbsweep_coordinator::store::Store::open_read_only(&state)?.trials(&sweep)?;
    // A pack reports its own wall time on each of its trials: count each pack once.
    let mut packs = std::collections::BTreeSet::new();
    let mut busy_ms = 0u64;
    for r in &rows {
        let key = (r.worker.clone(), r.completed_ms, r.wall_time_ms);
        if packs.insert(key) {
            busy_ms += r.wall_time_ms.unwrap_or(0);
        }
    }
    let ideal = busy_ms as f64 / 1000.0 / f64::from(workers);
    println!("e2e: {} trials of sweep {sweep} ({} trainer), {workers} workers", rows.len(), if fake { "fake, 50 ms epochs" } else { "torch" });
    println!("  wall {wall:.2} s   trainers' own time / workers (the baseline) {ideal:.2} s   ratio {:.3}x", wall / ideal);
    println!("  orchestration overhead {:.1}% of the wall time", 100.0 * (wall - ideal) / wall);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let what = args.what;
    let all = matches!(what, What::All);
    if let What::Lease { workers, trials } = what {
        return rt.block_on(bench_lease(workers, trials));
    }
    if let What::E2e { spec, workers } = &what {
        return bench_e2e(spec.as_deref(), *workers);
    }
    if let What::Results { rows } = what {
        return bench_results(rows);
    }
    if let What::Train { packs, level, device, trial_steps, threads } = &what {
        return bench_train(packs, *level, device, *trial_steps, *threads);
    }
    if all {
        rt.block_on(bench_lease(64, 20_000))?;
        bench_results(1_000_000)?;
        bench_e2e(None, 2)?;
        bench_train(&[1, 8, 32, 128], 10, "cpu", 256, 0)?;
    }
    Ok(())
}
