//! Training a pack of trials together (docs/science.md#training and #regimes): the epoch
//! loop over one `PackEngine`, each trial's curriculum and freeze rules, what is reported after
//! every epoch, the checkpoint analyses and saved weights, the trials' checkpoints (`resume`)
//! on the sweep's cadence and at a stop, and dropping the rows of ended trials. Every per-trial quantity lives on its own row of the pack, so a trial's numbers do
//! not depend on the others it trains with. Knows no particular engine.

use super::analysis::{self, Checkpoint};
use super::engine::{PackEngine, PackState};
use super::error::{TrainError, error_chain};
use super::model::Unroll;
use super::resume;
use super::trial::{DataSplit, Mark, TrialRun, draw_rows};
use crate::trainer::{Cadence, Control, PackEvents, Saved};
use cbsweep_common::{AnalysisPlan, Curriculum, EpochRecord, TrainBudget, TrialOutcome, TrialSpec};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, TchError, Tensor};

/// A pack in training: its engine and which trial each of the engine's rows belongs to.
pub(crate) struct PackRun {
    budget: TrainBudget,
    hidden: usize,
    kind: Kind,
    device: Device,
    engine: Box<dyn PackEngine>,
    /// Row r of the engine belongs to trial `rows[r]`; rows of ended trials are dropped.
    rows: Vec<usize>,
}

/// A trial's checkpoint found in an epoch: its pack row, index in the pack, level and epoch.
#[derive(Clone, Copy, Debug)]
struct Due {
    row: usize,
    trial: usize,
    level: u32,
    epoch: u32,
}

impl PackRun {
    /// A run of `pack` (of `kind` on `device`) on `engine`, whose rows are the pack's trials.
    pub(crate) fn new(pack: &[TrialSpec], engine: Box<dyn PackEngine>, kind: Kind, device: Device) -> Result<Self, TrainError> {
        let Some(first) = pack.first() else {
            return Err(TrainError::EmptyPack);
        };
        Ok(PackRun { budget: first.budget, hidden: first.hidden as usize, kind, device, engine, rows: (0..pack.len()).collect() })
    }

    /// Trains to the end of the budget (or until every trial has ended), reporting each epoch
    /// of each trial through `events`, handing over checkpoints on `cadence`, and saving
    /// checkpoint weights under `checkpoint_dir`. Each trial counts its own epochs: a resumed
    /// trial goes on from its checkpoint's, beside trials that start at epoch 1. A stop that
    /// `events` asks for before a step ends every running trial with its checkpoint of the
    /// latest epoch boundary.
    pub(crate) fn run(
        mut self,
        trials: &mut [TrialRun],
        events: &mut dyn PackEvents,
        cadence: Cadence,
        checkpoint_dir: Option<&Path>,
    ) -> Result<(), TrainError> {
        let budget = self.budget;
        let steps = budget.steps_per_epoch.max(1);
        let tested = f64::from(budget.test_batches.max(1)) * f64::from(budget.batch_size.max(1));
        // per trial: the epochs of the latest checkpoint its caller holds, and when it came
        let mut saved: Vec<(u32, Instant)> = trials.iter().map(|t| (t.epochs_done, Instant::now())).collect();
        // The pack's state and the trials' marks at the latest epoch boundary, kept when a stop
        // may come (None before the first: each trial's state then is one its caller has).
        let mut boundary: Option<(PackState, Vec<Mark>)> = None;
        while !self.rows.is_empty() {
            for _ in 0..budget.steps_per_epoch {
                if events.stop_requested() {
                    return self.stop_all(trials, boundary.as_ref(), &saved);
                }
                self.train_step(trials)?;
            }
            let tests = draw_rows(trials, &self.rows, DataSplit::Test, budget.test_batches as usize, self.hidden);
            let totals = self.engine.end_epoch(tests)?;

            let mut stop_all = false;
            let mut due = Vec::new();
            for (row, &i) in self.rows.iter().enumerate() {
                let t = &mut trials[i];
                let epoch = t.epochs_done + 1;
                let train_loss = totals.loss[row] / f64::from(steps);
                let grad_norm = totals.grad_norm[row] / f64::from(steps);
                if !train_loss.is_finite() || !grad_norm.is_finite() {
                    t.finish(TrialOutcome::Diverged);
                    continue;
                }
                let test_accuracy = totals.correct[row] / tested;
                let solved = test_accuracy >= budget.solve_threshold;
                let record = EpochRecord {
                    epoch,
                    level: t.level,
                    train_loss,
                    test_accuracy,
                    solved,
                    grad_norm,
                    core_learning: t.learning.core,
                    cb_learning: t.learning.cb,
                };
                t.curve.push(record);
                t.epochs_done = epoch;
                match events.epoch(i, &record) {
                    Control::Continue => {}
                    Control::StopTrial => {
                        t.stop(None);
                        continue;
                    }
                    // this epoch ends for every trial as usual; the pack stops at its end
                    Control::StopAll => stop_all = true,
                }
                // a level counts as solved (and is analysed) at its first solved epoch only: a
                // curriculum whose level a solve does not move records the later ones as epochs
                if solved && !t.solved_here_before() && t.solve_level() {
                    due.push(Due { row, trial: i, level: t.level, epoch });
                }
                let advance = match budget.curriculum {
                    Curriculum::Climb | Curriculum::FixedUntilSolved => solved,
                    Curriculum::Fixed => false,
                    Curriculum::Schedule { every } => epoch.is_multiple_of(every),
                };
                if advance {
                    if t.level >= budget.max_level {
                        t.finish(TrialOutcome::Completed);
                        continue;
                    }
                    t.level += 1;
                }
                if epoch >= budget.epochs {
                    t.finish(TrialOutcome::Completed);
                }
            }
            // trials that ended with an outcome this epoch and keep their weights
            let finals: Vec<usize> = match checkpoint_dir {
                Some(_) => (0..self.rows.len())
                    .filter(|&r| trials[self.rows[r]].has_outcome() && trials[self.rows[r]].spec.analysis.save_checkpoints)
                    .collect(),
                None => Vec::new(),
            };
            if !due.is_empty() || !finals.is_empty() {
                let state = self.engine.state()?;
                if !due.is_empty() {
                    self.checkpoints(&state, trials, &due, checkpoint_dir)?;
                    due.iter().for_each(|d| trials[d.trial].restamp_end());
                }
                if let Some(dir) = checkpoint_dir {
                    save_finals(&state, trials, &self.rows, &finals, dir);
                }
            }
            self.drop_ended(trials)?;
            if self.rows.is_empty() {
                break;
            }
            let keep = stop_all || events.stops();
            let checkpoint: Vec<usize> = (0..self.rows.len())
                .filter(|&r| {
                    let (at, when) = saved[self.rows[r]];
                    cadence.due(trials[self.rows[r]].epochs_done - at, when.elapsed())
                })
                .collect();
            if !keep && checkpoint.is_empty() {
                continue;
            }
            let state = self.engine.state()?;
            let marks: Vec<Mark> = self.rows.iter().map(|&i| trials[i].mark()).collect();
            for r in checkpoint {
                let i = self.rows[r];
                let bytes = resume::encode(&trials[i], &marks[r], &state, r, self.kind)?;
                let epochs_done = trials[i].epochs_done;
                tracing::debug!(trial_id = %trials[i].spec.id(), epochs_done, bytes = bytes.len(), "checkpoint");
                events.checkpoint(i, Saved { epochs_done, bytes });
                saved[i] = (epochs_done, Instant::now());
            }
            if keep {
                boundary = Some((state, marks));
            }
            if stop_all {
                return self.stop_all(trials, boundary.as_ref(), &saved);
            }
        }
        Ok(())
    }

    /// Stops every running trial, each with its checkpoint of `boundary` (the latest epoch
    /// boundary) where that is newer than the one its caller holds (`saved`).
    fn stop_all(
        &self,
        trials: &mut [TrialRun],
        boundary: Option<&(PackState, Vec<Mark>)>,
        saved: &[(u32, Instant)],
    ) -> Result<(), TrainError> {
        for (r, &i) in self.rows.iter().enumerate() {
            let checkpoint = match boundary {
                Some((state, marks)) if trials[i].epochs_done > saved[i].0 => {
                    let bytes = resume::encode(&trials[i], &marks[r], state, r, self.kind)?;
                    Some(Saved { epochs_done: trials[i].epochs_done, bytes })
                }
                _ => None,
            };
            trials[i].stop(checkpoint);
        }
        Ok(())
    }

    /// One SGD step of every trial in the pack, each on a fresh batch at its own level.
    pub(crate) fn train_step(&mut self, trials: &mut [TrialRun]) -> Result<(), TrainError> {
        let flags: Vec<_> = self.rows.iter().map(|&i| trials[i].learning_next()).collect();
        for (&i, &f) in self.rows.iter().zip(&flags) {
            trials[i].learning = f;
        }
        let batches = draw_rows(trials, &self.rows, DataSplit::Train, 1, self.hidden);
        self.engine.train_step(&batches, &flags)?;
        for &i in &self.rows {
            trials[i].steps_done += 1;
        }
        Ok(())
    }

    /// The engine's state now (weights and momentum of the running trials' rows).
    #[cfg(test)]
    pub(crate) fn state(&self) -> Result<PackState, TchError> {
        self.engine.state()
    }

    /// Runs the analyses of the checkpoints `due` on `state`'s weights, batched over the trials
    /// that share an analysis plan, and saves their weights where asked. A save that fails is a
    /// warning.
    fn checkpoints(&self, state: &PackState, trials: &mut [TrialRun], due: &[Due], dir: Option<&Path>) -> Result<(), TchError> {
        let _no_grad = tch::no_grad_guard();
        let mut groups: Vec<(AnalysisPlan, Vec<Due>)> = Vec::new();
        for d in due {
            let plan = trials[d.trial].spec.analysis;
            match groups.iter_mut().find(|(p, _)| *p == plan) {
                Some((_, group)) => group.push(*d),
                None => groups.push((plan, vec![*d])),
            }
        }
        let unroll: &Unroll<'_> = &|model, input, cb, observe| self.engine.unroll(model, input, cb, observe);
        for (plan, group) in groups {
            let started = Instant::now();
            let rows: Vec<i64> = group.iter().map(|d| d.row as i64).collect();
            let model = state.model.select(&Tensor::f_from_slice(&rows)?.f_to_device(self.device)?)?;
            let points: Vec<Checkpoint> =
                group.iter().map(|d| Checkpoint { spec: trials[d.trial].spec, level: d.level, epoch: d.epoch }).collect();
            let records = analysis::analyse(&model, &points, self.kind, self.device, unroll)?;
            let wall_time_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            for (r, (point, records)) in points.iter().zip(records).enumerate() {
                let trial_id = point.spec.id();
                let (level, epoch) = (point.level, point.epoch);
                tracing::debug!(%trial_id, level, epoch, wall_time_ms, "checkpoint analysed");
                if let (true, Some(dir)) = (plan.save_checkpoints, dir) {
                    let path = analysis::weights_path(dir, point.spec, point.level);
                    if let Err(e) = analysis::save_weights(&model, r as i64, &path) {
                        let reason = error_chain(&e);
                        tracing::warn!(%trial_id, level, reason = %reason, "checkpoint not saved");
                    }
                }
                trials[group[r].trial].analyses.extend(records);
            }
        }
        Ok(())
    }

    /// Drops the rows of trials that have ended from the engine.
    fn drop_ended(&mut self, trials: &[TrialRun]) -> Result<(), TchError> {
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&r| trials[self.rows[r]].running()).collect();
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        self.rows = keep.iter().map(|&r| self.rows[r]).collect();
        self.engine.keep(&keep)
    }
}

/// Saves the final weights of the trials at pack rows `finals` (`rows[r]` is row r's trial) as
/// DIR/<trial id>/final.safetensors. A save that fails is a warning.
fn save_finals(state: &PackState, trials: &[TrialRun], rows: &[usize], finals: &[usize], dir: &Path) {
    for &r in finals {
        let spec = trials[rows[r]].spec;
        let path = dir.join(spec.id().as_str()).join("final.safetensors");
        if let Err(e) = analysis::save_weights(&state.model, r as i64, &path) {
            tracing::warn!(trial_id = %spec.id(), reason = %error_chain(&e), "final weights not saved");
        }
    }
}
