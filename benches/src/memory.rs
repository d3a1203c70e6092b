//! `cbsweep-bench memory`: peak resident memory per packed trial on the CPU, for each engine and
//! pack size, each pack trained in a fresh child process (`memory-child`): (peak RSS - RSS
//! before the pack) / M. The baseline is the memory model's estimate of one trial's peak
//! (`cbsweep_common::memory::trial_memory_bytes`, which sizes the packs a worker leases); the
//! table says whether it covers every measured peak.

use crate::shared::spec;
use anyhow::Context;
use cbsweep_common::{Arch, EpochRecord, TrialSpec};
use cbsweep_train::trainer::{Control, Trainer};

/// A field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: its peak).
fn proc_status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    cbsweep_worker::budget::kib_field_bytes(&status, field).with_context(|| format!("no {field} in /proc/self/status"))
}

/// The child of `bench_memory`: a warm-up pack of one (libtorch's kernels and thread pools are
/// loaded before the baseline is read), the peak reset to the resident set, then the pack.
pub(crate) fn memory_child(engine: &str, m: usize, level: u32, steps: u32) -> anyhow::Result<()> {
    let engine: cbsweep_train::Engine = engine.parse().map_err(|e| anyhow::anyhow!("--engines {e}"))?;
    let mut trainer = cbsweep_train::TorchTrainer::new(tch::Device::Cpu).with_engine(engine);
    let _ = trainer.train_pack(&[spec(Arch::Cbrnn, 10_000, 2, 1)], &mut |_: usize, _: &EpochRecord| Control::Continue);
    // "5" resets VmHWM to the current resident set (Linux 4.0+); the peak is read either way
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = proc_status_bytes("VmRSS")?;
    let pack: Vec<TrialSpec> = (0..m as u64).map(|s| spec(Arch::Cbrnn, s, level, steps)).collect();
    let results = trainer.train_pack(&pack, &mut |_: usize, _: &EpochRecord| Control::Continue);
    anyhow::ensure!(
        results.iter().all(|r| r.result().is_some_and(|r| !matches!(r.outcome, cbsweep_common::TrialOutcome::Failed(_)))),
        "training failed: {:?}",
        results[0].result().map(|r| &r.outcome)
    );
    let peak = proc_status_bytes("VmHWM")?;
    println!("{}", serde_json::json!({ "before": before, "peak": peak, "peak_reset": reset }));
    Ok(())
}

pub(crate) fn bench_memory(engines: &[String], packs: &[usize], level: u32, trial_steps: usize) -> anyhow::Result<()> {
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
