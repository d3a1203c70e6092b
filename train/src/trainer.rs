//! The seam between the worker's lease loop and whatever trains trials. The real trainer is
//! `TorchTrainer` (this crate: the CPU engine and libtorch); the worker's `fake::FakeTrainer`
//! has controllable duration and failures for scheduler tests.
//!
//! A trial may come with a checkpoint to resume from, and the trainer hands checkpoints back:
//! on the sweep's cadence (`Cadence`) while it trains, and with each trial a stop left
//! unfinished. A checkpoint is opaque bytes here; only the trainer that wrote it reads it.

use cbsweep_common::{EpochRecord, TrialResult, TrialSpec};
use std::time::Duration;

/// What the caller wants after an epoch has been reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop this trial now (its lease was revoked); the trainer returns it as
    /// `TrialEnd::Stopped` and carries on with the rest of the pack.
    StopTrial,
    /// Stop the whole pack at the end of this epoch: every trial still training ends
    /// `TrialEnd::Stopped`, with a checkpoint of this epoch's end.
    StopAll,
}

/// A trial's checkpoint: its whole training state after `epochs_done` epochs.
#[derive(Clone, PartialEq, Eq)]
pub struct Saved {
    pub epochs_done: u32,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Saved {{ epochs_done: {}, {} bytes }}", self.epochs_done, self.bytes.len())
    }
}

/// How one trial of a pack left the trainer.
#[derive(Clone, Debug, PartialEq)]
pub enum TrialEnd {
    /// It ran to an outcome (completed, diverged or failed): a result to report.
    Finished(TrialResult),
    /// A stop came first: no result. The worker hands its lease back with `checkpoint` (the
    /// state at the latest epoch boundary; None when the coordinator has that one already), or
    /// drops it when the lease was revoked; `curve` holds the epochs it trained.
    Stopped { curve: Vec<EpochRecord>, checkpoint: Option<Saved> },
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
            TrialEnd::Stopped { curve, .. } => curve,
        }
    }
}

/// One trial of a pack: its spec and the checkpoint it resumes from, if any.
#[derive(Clone, Debug)]
pub struct PackTrial {
    pub spec: TrialSpec,
    pub resume: Option<Vec<u8>>,
}

/// When a trainer hands a running trial's checkpoint over: every `epochs` epochs, or at the
/// first epoch end `time` after its last one, whichever comes first (None and 0: never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cadence {
    pub epochs: u32,
    pub time: Option<Duration>,
}

impl Cadence {
    /// Whether a trial `epochs` epochs and `elapsed` past its last checkpoint is due one.
    pub fn due(&self, epochs: u32, elapsed: Duration) -> bool {
        epochs > 0 && ((self.epochs > 0 && epochs >= self.epochs) || self.time.is_some_and(|t| elapsed >= t))
    }
}

/// What a trainer tells its caller while it trains, and asks of it.
pub trait PackEvents {
    /// After each epoch of trial `index` of the pack.
    fn epoch(&mut self, index: usize, record: &EpochRecord) -> Control;
    /// A checkpoint of trial `index`, due by the cadence.
    fn checkpoint(&mut self, _index: usize, _saved: Saved) {}
    /// Asked before every SGD step: true stops the whole pack at once, every running trial
    /// ending `Stopped` with its checkpoint of the latest epoch boundary.
    fn stop_requested(&self) -> bool {
        false
    }
    /// Whether `stop_requested` may ever say true: the trainer then keeps the state of each
    /// epoch boundary (a copy of the pack's weights) to hand back at a stop.
    fn stops(&self) -> bool {
        false
    }
}

/// `PackEvents` that only report epochs to a closure.
struct Epochs<'a>(&'a mut dyn FnMut(usize, &EpochRecord) -> Control);

impl PackEvents for Epochs<'_> {
    fn epoch(&mut self, index: usize, record: &EpochRecord) -> Control {
        (self.0)(index, record)
    }
}

/// Trains a pack of trials (same `PackKey`: shapes and budget) together.
pub trait Trainer: Send {
    /// Trains `pack` to the end of its budget, each trial from its checkpoint where it has one.
    /// Reports through `events` (after each epoch of each trial; checkpoints on `cadence`).
    /// Returns how each trial ended, in pack order. A trial whose loss turns NaN ends
    /// `Diverged`; a libtorch error ends every unfinished trial of the pack as
    /// `Failed(reason)`; neither may panic or abort the process. A checkpoint it cannot use
    /// (another trial's, another shape) is ignored with a warning: the trial starts afresh.
    fn train(&mut self, pack: &[PackTrial], cadence: Cadence, events: &mut dyn PackEvents) -> Vec<TrialEnd>;

    /// `train` of fresh trials, reporting epochs to `on_epoch`, with no checkpoints.
    fn train_pack(&mut self, pack: &[TrialSpec], on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control) -> Vec<TrialEnd> {
        let pack: Vec<PackTrial> = pack.iter().map(|spec| PackTrial { spec: spec.clone(), resume: None }).collect();
        self.train(&pack, Cadence::default(), &mut Epochs(on_epoch))
    }

    /// The device name reported with results ("cpu", "cuda:0").
    fn device(&self) -> String;
}
