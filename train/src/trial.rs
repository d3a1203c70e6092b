//! The host-side state of one trial of a pack: its place in the curriculum (level, epochs,
//! levels solved), its random streams, its curve and analyses, and how it ended. Knows no
//! engine: rows of the pack map to trials in `run`.

use super::input::Batches;
use super::regime::{self, Learning};
use super::tasks::{self, Stream, TaskBatch};
use crate::codec::SavedTrial;
use crate::trainer::{Saved, TrialEnd};
use cbsweep_common::{AnalysisRecord, EpochRecord, TrialOutcome, TrialResult, TrialSpec};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// The host-side state of one trial: curriculum, random streams, curve and how it ended.
pub(crate) struct TrialRun<'a> {
    pub(crate) spec: &'a TrialSpec,
    started: Instant,
    /// Training time of earlier attempts (a resumed trial's checkpoint holds it).
    earlier_ms: u64,
    pub(crate) level: u32,
    pub(crate) epochs_done: u32,
    /// SGD steps this trial has done, over all its attempts.
    pub(crate) steps_done: u64,
    train_data: ChaCha8Rng,
    train_h0: ChaCha8Rng,
    test_data: ChaCha8Rng,
    test_h0: ChaCha8Rng,
    /// The recurrent module's a_0 of the training and test batches (drawn from only at the lab's
    /// start of the recurrent-module control).
    train_a0: ChaCha8Rng,
    test_a0: ChaCha8Rng,
    /// The modules that learned in the latest step.
    pub(crate) learning: Learning,
    /// Levels solved so far.
    levels_solved: u32,
    pub(crate) curve: Vec<EpochRecord>,
    /// Checkpoint analyses, in the order taken.
    pub(crate) analyses: Vec<AnalysisRecord>,
    end: Option<Ending>,
}

/// How a trial's training ended.
enum Ending {
    /// With an outcome, `wall_time_ms` after the pack started.
    Outcome { outcome: TrialOutcome, wall_time_ms: u64 },
    /// Stopped through `Control` or a stop of the pack, with the checkpoint to hand back with
    /// it (None: nothing newer than the coordinator's).
    Stopped(Option<Saved>),
}

/// Where a trial's streams and step count stood at an epoch boundary: with the pack's state at
/// that boundary, all a checkpoint needs that the trial's host state no longer shows once the
/// next epoch has begun (its curve, level and epochs change only at epoch ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Word positions of the training data, training h0, test data, test h0, training a0 and
    /// test a0 streams.
    pub(crate) words: [u128; Mark::STREAMS],
    pub(crate) steps_done: u64,
}

impl Mark {
    pub(crate) const STREAMS: usize = 6;
    /// The streams of a checkpoint written before the a0 streams: a trial that draws from them
    /// has a newer id, so such a checkpoint's trial never moved them from their start.
    pub(crate) const EARLIER_STREAMS: usize = 4;
}

/// Which of a trial's streams a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataSplit {
    Train,
    Test,
}

impl<'a> TrialRun<'a> {
    pub(crate) fn new(spec: &'a TrialSpec, started: Instant) -> Self {
        TrialRun {
            spec,
            started,
            earlier_ms: 0,
            level: spec.budget.start_level,
            epochs_done: 0,
            steps_done: 0,
            train_data: tasks::stream(spec.seed, Stream::TrainData),
            train_h0: tasks::stream(spec.seed, Stream::TrainH0),
            test_data: tasks::stream(spec.seed, Stream::TestData),
            test_h0: tasks::stream(spec.seed, Stream::TestH0),
            train_a0: tasks::stream(spec.seed, Stream::TrainA0),
            test_a0: tasks::stream(spec.seed, Stream::TestA0),
            learning: Learning { core: false, cb: false },
            levels_solved: 0,
            curve: Vec::new(),
            analyses: Vec::new(),
            end: None,
        }
    }

    /// The trial as its checkpoint `c` (read with `resume::decode`) left it: curriculum, streams,
    /// curve and analyses; its weights go into the pack's state with `resume::write_rows`.
    pub(crate) fn resumed(spec: &'a TrialSpec, started: Instant, c: &SavedTrial) -> Result<Self, String> {
        let mut t = TrialRun::new(spec, started);
        t.earlier_ms = c.wall_time_ms;
        t.level = c.level;
        t.epochs_done = c.epochs_done;
        t.steps_done = c.steps_done;
        t.levels_solved = c.levels_solved;
        let streams = [&mut t.train_data, &mut t.train_h0, &mut t.test_data, &mut t.test_h0, &mut t.train_a0, &mut t.test_a0];
        for (rng, word) in streams.into_iter().zip(c.stream_words.chunks_exact(2)) {
            rng.set_word_pos(u128::from(word[0]) | (u128::from(word[1]) << 64));
        }
        t.curve = c.curve();
        t.analyses = c.analyses();
        Ok(t)
    }

    /// Where its streams and steps stand now (take it at an epoch boundary).
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            words: [&self.train_data, &self.train_h0, &self.test_data, &self.test_h0, &self.train_a0, &self.test_a0]
                .map(ChaCha8Rng::get_word_pos),
            steps_done: self.steps_done,
        }
    }

    pub(crate) fn levels_solved(&self) -> u32 {
        self.levels_solved
    }

    /// Whether an epoch before the latest (the one just recorded) passed its test at the
    /// current level: at a fixed level, or on a fixed schedule, a level can be passed again.
    pub(crate) fn solved_here_before(&self) -> bool {
        let earlier = &self.curve[..self.curve.len().saturating_sub(1)];
        earlier.iter().rev().take_while(|r| r.level == self.level).any(|r| r.solved)
    }

    /// Whether it has ended with an outcome (not stopped).
    pub(crate) fn has_outcome(&self) -> bool {
        matches!(self.end, Some(Ending::Outcome { .. }))
    }

    pub(crate) fn running(&self) -> bool {
        self.end.is_none()
    }

    /// Ends the trial with `outcome`, unless it has ended already.
    pub(crate) fn finish(&mut self, outcome: TrialOutcome) {
        if self.end.is_none() {
            let wall_time_ms = self.elapsed_ms();
            tracing::debug!(seed = self.spec.seed.0, outcome = outcome.status(), level = self.level, "trial ended");
            self.end = Some(Ending::Outcome { outcome, wall_time_ms });
        }
    }

    /// Ends the trial as stopped, handing back `checkpoint` with it, unless it has ended already.
    pub(crate) fn stop(&mut self, checkpoint: Option<Saved>) {
        if self.end.is_none() {
            tracing::debug!(seed = self.spec.seed.0, level = self.level, "trial stopped");
            self.end = Some(Ending::Stopped(checkpoint));
        }
    }

    /// Counts the analyses of a trial's last epoch, which run after it ended, in its wall time.
    pub(crate) fn restamp_end(&mut self) {
        let now = self.elapsed_ms();
        if let Some(Ending::Outcome { wall_time_ms, .. }) = &mut self.end {
            *wall_time_ms = now;
        }
    }

    /// Milliseconds of training: since the pack started, and in earlier attempts.
    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(self.earlier_ms)
    }

    /// Counts a solved level; true when it is one to analyse: the 1st, (1 + k)th, (1 + 2k)th
    /// ... solved level for `every_levels` = k > 0.
    pub(crate) fn solve_level(&mut self) -> bool {
        let every = self.spec.analysis.every_levels;
        let due = every > 0 && self.levels_solved.is_multiple_of(every);
        self.levels_solved += 1;
        due
    }

    /// The modules that learn in the trial's next SGD step (the plain RNN has no module).
    pub(crate) fn learning_next(&self) -> Learning {
        let l = regime::learning(self.spec.regime, self.spec.budget.start_level, self.level, self.epochs_done, self.steps_done);
        Learning { core: l.core, cb: l.cb && self.spec.arch.module().is_some() }
    }

    /// The next batch of `data` at the trial's level, with its initial states (`draw_states`).
    pub(crate) fn draw(&mut self, data: DataSplit, hidden: usize) -> (TaskBatch, Vec<f64>) {
        let batch = self.spec.budget.batch_size as usize;
        let (data_rng, h0_rng, a0_rng) = match data {
            DataSplit::Train => (&mut self.train_data, &mut self.train_h0, &mut self.train_a0),
            DataSplit::Test => (&mut self.test_data, &mut self.test_h0, &mut self.test_a0),
        };
        let b = tasks::draw_batch(data_rng, self.spec.task, self.level, batch);
        let module = self.spec.module_units().unwrap_or(0) as usize;
        let states = tasks::draw_states(h0_rng, a0_rng, self.spec.module_start, batch, hidden, module);
        (b, states)
    }

    /// The next `n` batches of `data` (as one row of a pack's `Batches`).
    pub(crate) fn draw_n(&mut self, data: DataSplit, n: usize, hidden: usize) -> Vec<(TaskBatch, Vec<f64>)> {
        (0..n).map(|_| self.draw(data, hidden)).collect()
    }

    /// How the trial ended: a trial still running when the pack stopped completed, or failed
    /// with the pack's `failure`.
    pub(crate) fn into_end(self, failure: Option<&str>, device: &str, pack_size: usize) -> TrialEnd {
        let now = self.elapsed_ms();
        let (outcome, wall_time_ms) = match (self.end, failure) {
            (Some(Ending::Stopped(checkpoint)), _) => return TrialEnd::Stopped { curve: self.curve, checkpoint },
            (Some(Ending::Outcome { outcome, wall_time_ms }), _) => (outcome, wall_time_ms),
            (None, Some(reason)) => (TrialOutcome::Failed(reason.to_string()), now),
            (None, None) => (TrialOutcome::Completed, now),
        };
        TrialEnd::Finished(TrialResult {
            outcome,
            curve: self.curve,
            wall_time_ms,
            device: device.to_string(),
            pack_size: u32::try_from(pack_size).unwrap_or(u32::MAX),
            analyses: self.analyses,
        })
    }
}

/// One row per trial: `n` batches each from `data`.
pub(crate) fn draw_rows(trials: &mut [TrialRun], rows: &[usize], data: DataSplit, n: usize, hidden: usize) -> Batches {
    rows.iter().map(|&i| trials[i].draw_n(data, n, hidden)).collect()
}
