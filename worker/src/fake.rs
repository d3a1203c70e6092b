//! A fake trainer for scheduler and fault tests: no libtorch, controllable duration, failures
//! and divergence, and an optional log of every execution (to count re-runs).

use crate::trainer::{Control, Trainer, TrialEnd};
use cbsweep_common::{EpochRecord, TrialOutcome, TrialResult, TrialSpec};
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
    Stopped,
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

impl Trainer for FakeTrainer {
    fn train_pack(&mut self, pack: &[TrialSpec], on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control) -> Vec<TrialEnd> {
        let start = Instant::now();
        for t in pack {
            self.log(&t.id().0);
        }
        let mut curves: Vec<Vec<EpochRecord>> = vec![Vec::new(); pack.len()];
        let mut ending: Vec<Option<Ending>> = vec![None; pack.len()];
        let mut levels: Vec<u32> = pack.iter().map(|t| t.budget.start_level).collect();
        let epochs = pack.first().map(|t| t.budget.epochs).unwrap_or(0);
        'epochs: for epoch in 1..=epochs {
            std::thread::sleep(Duration::from_millis(self.cfg.epoch_ms));
            for (i, t) in pack.iter().enumerate() {
                if ending[i].is_some() {
                    continue;
                }
                if self.cfg.fail_seeds.contains(&t.seed.0) {
                    ending[i] = Some(Ending::Outcome(TrialOutcome::Failed(format!("fake failure for seed {}", t.seed))));
                    continue;
                }
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
                match on_epoch(i, &rec) {
                    Control::Continue => {}
                    Control::StopTrial => ending[i] = Some(Ending::Stopped),
                    Control::StopAll => {
                        for o in ending.iter_mut().filter(|o| o.is_none()) {
                            *o = Some(Ending::Stopped);
                        }
                        break 'epochs;
                    }
                }
            }
        }
        let wall = start.elapsed().as_millis() as u64;
        pack.iter()
            .zip(curves)
            .zip(ending)
            .map(|((t, curve), o)| {
                let outcome = match o.unwrap_or(Ending::Outcome(TrialOutcome::Completed)) {
                    Ending::Outcome(outcome) => outcome,
                    Ending::Stopped => return TrialEnd::Stopped { curve },
                };
                if outcome == TrialOutcome::Completed {
                    self.log(&format!("{} done", t.id().0));
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
