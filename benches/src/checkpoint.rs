//! `cbsweep-bench checkpoint`: how many MB/s of trial checkpoints the coordinator commits.
//! Simulated workers (each on a gRPC connection of its own) lease packs from a real coordinator
//! (scheduler thread, SQLite store, server on loopback) and save a checkpoint of `--bytes`
//! random bytes for every trial of their pack, `--rounds` times, as fast as they can: each save
//! is the real chunked `SaveCheckpoint` stream, checked (size, SHA-256, the lease's owner) and
//! committed before it is answered. The baseline, measured in the same run on the same disk, is
//! what a worker writing the same checkpoints to files itself would cost: each file written,
//! fsynced and renamed into place, by as many concurrent writers.

use anyhow::Context;
use cbsweep_proto::chunks;
use cbsweep_proto::{PROTOCOL_VERSION, v1};
use std::time::{Duration, Instant};

/// Options of `cbsweep-bench checkpoint`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct CheckpointBench {
    /// Simulated workers, each with a pack of its own.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Trials in each worker's pack.
    #[arg(long, default_value_t = 16)]
    pack: usize,
    /// Bytes of each checkpoint (a study-sized trial's is ~0.5 MB).
    #[arg(long, default_value_t = 500_000)]
    bytes: usize,
    /// Checkpoints of every trial.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
}

impl Default for CheckpointBench {
    fn default() -> Self {
        CheckpointBench { workers: 16, pack: 16, bytes: 500_000, rounds: 4 }
    }
}

/// The `q` quantile of `ms`.
fn quantile(ms: &mut [f64], q: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
}

/// Random-looking bytes (incompressible, as weights are), different per `seed`.
fn payload(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One simulated worker: registers, leases its pack, saves every trial's checkpoint `rounds`
/// times; the latency of each save in ms.
async fn saver(url: String, index: usize, o: CheckpointBench) -> anyhow::Result<Vec<f64>> {
    let mut c = cbsweep_proto::client::worker_client(&url, "t").await?;
    let hello = v1::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        hostname: format!("sim{index}"),
        device: "sim".into(),
        max_pack: 64,
        pid: 1,
    };
    let worker_id = c.register(hello).await?.into_inner().worker_id;
    let lease =
        c.lease(v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: o.pack as u32, memory_budget_bytes: 0 }).await?.into_inner();
    anyhow::ensure!(lease.trials.len() == o.pack, "worker {index} leased {} trials, expected {}", lease.trials.len(), o.pack);
    let data = payload(o.bytes, index as u64);
    let sha256 = chunks::sha256_hex(&data);
    let mut ms = Vec::new();
    for round in 0..o.rounds {
        for t in &lease.trials {
            let header = v1::CheckpointHeader {
                worker_id: worker_id.clone(),
                trial_id: t.trial_id.clone(),
                attempt: t.attempt,
                epochs_done: (round as u32 + 1) * 10,
                size_bytes: data.len() as u64,
                sha256: sha256.clone(),
            };
            let parts = chunks::chunks(header, &data);
            let t0 = Instant::now();
            c.save_checkpoint(tokio_stream::iter(parts)).await.context("SaveCheckpoint")?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms)
}

/// The baseline writer `index`: the same checkpoints as files under `dir`, each written,
/// fsynced and renamed into place; the latency of each in ms.
fn file_writer(dir: &std::path::Path, index: usize, o: &CheckpointBench) -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    let data = payload(o.bytes, index as u64);
    let mut ms = Vec::new();
    for _ in 0..o.rounds {
        for t in 0..o.pack {
            let t0 = Instant::now();
            let path = dir.join(format!("w{index}-t{t}.ckpt"));
            let partial = path.with_extension("partial");
            let mut f = std::fs::File::create(&partial)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&partial, &path)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms)
}

pub(crate) async fn bench_checkpoint(o: CheckpointBench) -> anyhow::Result<()> {
    use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
    let dir = tempfile::tempdir()?;
    let sched = SchedulerHandle::start(&dir.path().join("state"), SchedulerOptions::default())?;
    let running =
        cbsweep_coordinator::server::serve("127.0.0.1:0".parse()?, sched.clone(), cbsweep_coordinator::server::Token("t".into())).await?;
    let url = format!("http://{}", running.addr);
    let trials = o.workers * o.pack;
    let seeds = trials.div_ceil(4);
    let text = format!(
        "[sweep]\nname = \"bench-checkpoint\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 100\n[run]\npack_size = {}\nlease_seconds = 600\n",
        (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        o.pack
    );
    sched.submit(cbsweep_common::parse_spec(&text, std::path::Path::new("bench.toml"))?, "bench.toml".into()).await?;
    let total = (o.workers * o.pack * o.rounds) as f64;
    let mb = total * o.bytes as f64 / 1e6;
    println!(
        "checkpoint: {} simulated workers x packs of {} x {} rounds = {total:.0} checkpoints of {} bytes ({mb:.0} MB), loopback",
        o.workers, o.pack, o.rounds, o.bytes
    );

    // Baseline: the same checkpoints as fsynced files on the same disk, as many writers at once.
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files)?;
    let t0 = Instant::now();
    let mut base_ms: Vec<f64> = std::thread::scope(|s| -> anyhow::Result<Vec<f64>> {
        let handles: Vec<_> = (0..o.workers)
            .map(|i| {
                s.spawn({
                    let (files, o) = (&files, &o);
                    move || file_writer(files, i, o)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("a file writer panicked"))??);
        }
        Ok(all)
    })?;
    let base_rate = mb / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.workers {
        tasks.spawn(saver(url.clone(), i, o.clone()));
    }
    let mut ms = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ms.extend(r??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = mb / secs;
    let db = std::fs::metadata(dir.path().join("state").join("cbsweep.sqlite")).map_or(0, |m| m.len());
    println!(
        "  coordinator: {rate:>7.1} MB/s ({:.0} checkpoints/s)   save p50 {:.1} ms p99 {:.1} ms   state file {:.0} MB for {trials} trials",
        total / secs,
        quantile(&mut ms, 0.5),
        quantile(&mut ms, 0.99),
        db as f64 / 1e6
    );
    println!(
        "  baseline, fsynced files: {base_rate:>7.1} MB/s   write p50 {:.1} ms p99 {:.1} ms",
        quantile(&mut base_ms, 0.5),
        quantile(&mut base_ms, 0.99)
    );
    // The sizing: 100 GPU workers, packs of 64, a 0.5 MB checkpoint every 10 epochs.
    println!("  ratio coordinator / files: {:.2}", rate / base_rate);
    let _ = running.shutdown.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
