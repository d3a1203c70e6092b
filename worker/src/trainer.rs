//! The seam between the worker's gRPC loop and whatever trains trials. The real trainer is
//! `torch::TorchTrainer` (libtorch through tch); `fake::FakeTrainer` has controllable duration
//! and failures for scheduler tests. Nothing outside `torch` knows about tch.

use cbsweep_common::{EpochRecord, TrialResult, TrialSpec};

/// What the caller wants after an epoch has been reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop this trial now (its lease was revoked or the worker is shutting down); the trainer
    /// returns it as `TrialEnd::Stopped` and carries on with the rest of the pack.
    StopTrial,
    /// Stop the whole pack now: every trial still training ends `TrialEnd::Stopped`.
    StopAll,
}

/// How one trial of a pack left the trainer.
#[derive(Clone, Debug, PartialEq)]
pub enum TrialEnd {
    /// It ran to an outcome (completed, diverged or failed): a result to report.
    Finished(TrialResult),
    /// `Control` stopped it first: no result. The worker hands its lease back, or drops it
    /// when the lease was revoked; `curve` holds the epochs it trained.
    Stopped { curve: Vec<EpochRecord> },
}

impl TrialEnd {
    /// The result to report; None for a stopped trial.
    pub fn result(&self) -> Option<&TrialResult> {
        match self {
            TrialEnd::Finished(result) => Some(result),
            TrialEnd::Stopped { .. } => None,
        }
    }

    /// The epochs it trained, stopped or not.
    pub fn curve(&self) -> &[EpochRecord] {
        match self {
            TrialEnd::Finished(result) => &result.curve,
            TrialEnd::Stopped { curve } => curve,
        }
    }
}

/// Trains a pack of trials (same `PackKey`: shapes and budget) together.
pub trait Trainer: Send {
    /// Trains `pack` to the end of its budget. After each epoch of each trial it calls
    /// `on_epoch(index_in_pack, &record)`. Returns how each trial ended, in pack order. A trial
    /// whose loss turns NaN ends `Diverged`; a libtorch error ends every unfinished trial of the
    /// pack as `Failed(reason)`; neither may panic or abort the process.
    fn train_pack(&mut self, pack: &[TrialSpec], on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control) -> Vec<TrialEnd>;

    /// The device name reported with results ("cpu", "cuda:0").
    fn device(&self) -> String;
}
