//! A fake trainer for scheduler and fault tests: no libtorch, controllable duration, failures
//! and divergence, and an optional log of every execution (to count re-runs). It checkpoints
//! and resumes as the real one does (its state is its level and curve), so the fault tests can
//! count the epochs an interruption costs.

use cbsweep_common::{EpochRecord, TrialOutcome, TrialResult, TrialSpec};
use cbsweep_train::codec::SavedTrial;
use cbsweep_train::trainer::{Cadence, Control, PackEvents, PackTrial, Saved, Trainer, TrialEnd};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the fake behaves; set from the worker's `--fake-*` flags.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// Sleep per epoch.
    pub epoch_ms: u64,
    /// Trials with these seeds fail every attempt.
    pub fail_seeds: Vec<u64>,
    /// Trials with these seeds diverge (NaN loss) after their first epoch.
    pub diverge_seeds: Vec<u64>,
    /// Appends "trial_id\n" when a trial starts and "trial_id done\n" when it finishes.
    pub execution_log: Option<PathBuf>,
}

pub struct FakeTrainer {
    cfg: FakeConfig,
}

impl FakeTrainer {
    pub fn new(cfg: FakeConfig) -> Self {
        FakeTrainer { cfg }
    }

    fn log(&self, line: &str) {
        if let Some(path) = &self.cfg.execution_log
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            // One write per line: O_APPEND keeps a single write whole when several workers
            // share the log; `writeln!` may split the line into several writes.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// How a fake trial ended.
#[derive(Clone, Debug)]
enum Ending {
    Outcome(TrialOutcome),
    Stopped(Option<Saved>),
}

/// A deterministic curve: level rises every second epoch, faster for the CB-RNN.
fn fake_epoch(t: &TrialSpec, epoch: u32, level: u32) -> EpochRecord {
    let solved = (epoch + t.seed.0 as u32 + u32::from(t.arch == cbsweep_common::Arch::Cbrnn)).is_multiple_of(2);
    EpochRecord {
        epoch,
        level,
        train_loss: 0.7 / f64::from(epoch),
        test_accuracy: if solved { 0.99 } else { 0.6 },
        solved,
        grad_norm: 1.0,
        core_learning: true,
        cb_learning: t.arch == cbsweep_common::Arch::Cbrnn,
    }
}

/// A fake trial's checkpoint: its level and curve, as a `SavedTrial` of kind "fake".
fn fake_checkpoint(t: &TrialSpec, level: u32, curve: &[EpochRecord]) -> Saved {
    let message = SavedTrial {
        format: 1,
        trial_id: t.id().0,
        epochs_done: curve.len() as u32,
        level,
        curve: curve.iter().map(Into::into).collect(),
        kind: "fake".into(),
        ..Default::default()
    };
    Saved { epochs_done: curve.len() as u32, bytes: message.encode_to_vec() }
}

/// The level and curve of a fake checkpoint of `t`; None for anything else.
fn read_checkpoint(t: &TrialSpec, bytes: &[u8]) -> Option<(u32, Vec<EpochRecord>)> {
    let c = SavedTrial::decode(bytes).ok().filter(|c| c.kind == "fake" && c.trial_id == t.id().0)?;
    Some((c.level, c.curve()))
}

impl Trainer for FakeTrainer {
    fn train(&mut self, pack: &[PackTrial], cadence: Cadence, events: &mut dyn PackEvents) -> Vec<TrialEnd> {
        let start = Instant::now();
        let mut curves: Vec<Vec<EpochRecord>> = vec![Vec::new(); pack.len()];
        let mut levels: Vec<u32> = pack.iter().map(|p| p.spec.budget.start_level).collect();
        for (i, p) in pack.iter().enumerate() {
            let resumed = p.resume.as_deref().and_then(|b| read_checkpoint(&p.spec, b));
            match resumed {
                Some((level, curve)) => {
                    self.log(&format!("{} resumed {}", p.spec.id().0, curve.len()));
                    (levels[i], curves[i]) = (level, curve);
                }
                None => self.log(&p.spec.id().0),
            }
        }
        let mut ending: Vec<Option<Ending>> = vec![None; pack.len()];
        let mut saved: Vec<(usize, Instant)> = curves.iter().map(|c| (c.len(), Instant::now())).collect();
        let epochs = pack.first().map(|p| p.spec.budget.epochs as usize).unwrap_or(0);
        loop {
            if events.stop_requested() {
                for (i, o) in ending.iter_mut().enumerate().filter(|(_, o)| o.is_none()) {
                    let newer = curves[i].len() > saved[i].0;
                    *o = Some(Ending::Stopped(newer.then(|| fake_checkpoint(&pack[i].spec, levels[i], &curves[i]))));
                }
                break;
            }
            if ending.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(Duration::from_millis(self.cfg.epoch_ms));
            let mut stop_all = false;
            for (i, p) in pack.iter().enumerate() {
                let t = &p.spec;
                if ending[i].is_some() {
                    continue;
                }
                if self.cfg.fail_seeds.contains(&t.seed.0) {
                    ending[i] = Some(Ending::Outcome(TrialOutcome::Failed(format!("fake failure for seed {}", t.seed))));
                    continue;
                }
                let epoch = curves[i].len() as u32 + 1;
                let rec = fake_epoch(t, epoch, levels[i]);
                if epoch > 1 && self.cfg.diverge_seeds.contains(&t.seed.0) {
                    // As the real trainer: the epoch whose loss turned NaN ends the trial and is
                    // not part of its curve (the curve up to then is kept).
                    ending[i] = Some(Ending::Outcome(TrialOutcome::Diverged));
                    continue;
                }
                if rec.solved {
                    levels[i] = (levels[i] + 1).min(t.budget.max_level);
                }
                curves[i].push(rec);
                match events.epoch(i, &rec) {
                    Control::Continue => {}
                    Control::StopTrial => {
                        ending[i] = Some(Ending::Stopped(None));
                        continue;
                    }
                    Control::StopAll => stop_all = true,
                }
                if curves[i].len() >= epochs {
                    ending[i] = Some(Ending::Outcome(TrialOutcome::Completed));
                } else if stop_all {
                    ending[i] = Some(Ending::Stopped(Some(fake_checkpoint(t, levels[i], &curves[i]))));
                } else if cadence.due((curves[i].len() - saved[i].0) as u32, saved[i].1.elapsed()) {
                    events.checkpoint(i, fake_checkpoint(t, levels[i], &curves[i]));
                    saved[i] = (curves[i].len(), Instant::now());
                }
            }
            if stop_all {
                for (i, o) in ending.iter_mut().enumerate().filter(|(_, o)| o.is_none()) {
                    *o = Some(Ending::Stopped(Some(fake_checkpoint(&pack[i].spec, levels[i], &curves[i]))));
                }
                break;
            }
        }
        let wall = start.elapsed().as_millis() as u64;
        pack.iter()
            .zip(curves)
            .zip(ending)
            .map(|((p, curve), o)| {
                let outcome = match o.unwrap_or(Ending::Outcome(TrialOutcome::Completed)) {
                    Ending::Outcome(outcome) => outcome,
                    Ending::Stopped(checkpoint) => return TrialEnd::Stopped { curve, checkpoint },
                };
                if outcome == TrialOutcome::Completed {
                    self.log(&format!("{} done", p.spec.id().0));
                }
                TrialEnd::Finished(TrialResult {
                    outcome,
                    curve,
                    wall_time_ms: wall,
                    device: "fake".into(),
                    pack_size: pack.len() as u32,
                    analyses: Vec::new(),
                })
            })
            .collect()
    }

    fn device(&self) -> String {
        "fake".into()
    }
}
