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
    /// returns a `Failed("stopped")` result for it and carries on with the rest of the pack.
    StopTrial,
    /// Stop the whole pack now.
    StopAll,
}

/// Trains a pack of trials (same `PackKey`: shapes and budget) together.
pub trait Trainer: Send {
    /// Trains `pack` to the end of its budget. After each epoch of each trial it calls
    /// `on_epoch(index_in_pack, &record)`. Returns one result per trial, in pack order. A trial
    /// whose loss turns NaN ends `Diverged`; a libtorch error ends every trial of the pack as
    /// `Failed(reason)`; neither may panic or abort the process.
    fn train_pack(&mut self, pack: &[TrialSpec], on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control) -> Vec<TrialResult>;

    /// The device name reported with results ("cpu", "cuda:0").
    fn device(&self) -> String;
}
