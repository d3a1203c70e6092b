//! The seam between a pack's training loop (`run`) and what computes it: `PackEngine`, one
//! trait for "train every row one step, test the rows, read and write their state, drop the
//! rows of ended trials". The curriculum, regimes, analyses and reporting sit above it and know
//! no engine; `train::TorchTrainer` picks one per pack, once, from its `Engine` selector.
//!
//! Two implementations: `cpu` (the CPU engine, `fused`'s hand-written passes on host memory)
//! and `libtorch` (libtorch's operations and autograd over the packed tensors, the path for
//! CUDA). Both compute the same Nesterov SGD with per-trial clipping, rates and freeze masks.
//! A new architecture or a GPU engine is one more implementation.

pub(crate) mod cpu;
pub(crate) mod libtorch;

use super::error::TrainError;
use super::fused::unroll::unroll as cpu_unroll;
use super::input::{Batches, PackedInput};
use super::model::{CbOutput, Dims, Observe, PackedModel};
use super::regime::Learning;
use cbsweep_common::{Core, GruCell, ModuleKind, TrialSpec};
use tch::{Device, Kind, TchError, Tensor};

/// A pack's trainable state as packed tensors, [M, ...] each in `Dims::param_specs` order, on
/// the pack's device: what analyses and checkpoints read and what an engine starts from.
#[derive(Debug)]
pub(crate) struct PackState {
    pub(crate) model: PackedModel,
    /// Nesterov momentum buffers, one per parameter.
    pub(crate) momentum: Vec<Tensor>,
}

/// One epoch's per-row sums on the host, [M] each: training loss and pre-clip gradient norm
/// over its steps, and correct answers over its test batches.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EpochTotals {
    pub(crate) loss: Vec<f64>,
    pub(crate) grad_norm: Vec<f64>,
    pub(crate) correct: Vec<f64>,
}

/// What computes a pack's training. Row r of every call is the pack's r-th running trial;
/// `keep` drops the rows of the trials that ended.
pub(crate) trait PackEngine {
    /// One SGD step of every row on its own batch (`batches[r]` holds one), with the modules
    /// `flags[r]` says learn; the losses and norms add to the epoch's sums.
    fn train_step(&mut self, batches: &Batches, flags: &[Learning]) -> Result<(), TrainError>;

    /// Ends an epoch: every row's correct answers on its `tests` batches (the module's output
    /// on, under no_grad) and the epoch's sums, brought to the host in one transfer; the sums
    /// start again from zero.
    fn end_epoch(&mut self, tests: Batches) -> Result<EpochTotals, TrainError>;

    /// The weights and momentum now, as a copy.
    fn state(&self) -> Result<PackState, TchError>;

    /// Replaces the weights and momentum of every row with `state`'s (as many rows); rates and
    /// the epoch's sums stay.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the seam's write half, for a pack resumed from saved weights; only tests load a state today")
    )]
    fn set_state(&mut self, state: &PackState) -> Result<(), TchError>;

    /// Keeps only the rows at `rows` (ascending).
    fn keep(&mut self, rows: &[usize]) -> Result<(), TchError>;

    /// The time loop the analyses drive `model` (a pack of analysed rows) with; by default
    /// `fastest_unroll`.
    fn unroll(&self, model: &PackedModel, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<Tensor, TchError> {
        fastest_unroll(model, input, cb, observe)
    }
}

impl PackState {
    /// The pack's starting state: each trial's weights from its own seed, momentum zero. Refuses
    /// an empty pack and one whose trials do not share a pack key.
    pub(crate) fn initial(pack: &[TrialSpec], kind: Kind, device: Device) -> Result<Self, TrainError> {
        let Some(first) = pack.first() else {
            return Err(TrainError::EmptyPack);
        };
        let expected = first.pack_key();
        if let Some((index, t)) = pack.iter().enumerate().find(|(_, t)| t.pack_key() != expected) {
            return Err(TrainError::MixedPack { index, found: t.pack_key().0, expected: expected.0 });
        }
        if let Some(index) = pack.iter().position(|t| t.arch.core() == Core::Gru && t.gru_cell != GruCell::Lab) {
            return Err(TrainError::RetiredGruCell { index });
        }
        if let Some(index) = pack.iter().position(|t| t.arch.module() == Some(ModuleKind::Recurrent) && t.module_start.is_original()) {
            return Err(TrainError::RetiredModuleStart { index });
        }
        let model = PackedModel::new(Dims::of(first), pack, kind, device)?;
        let momentum = model.params().iter().map(|p| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        Ok(PackState { model, momentum })
    }
}

/// Each trial's learning rate per module, in `Module::ALL` order (the core's scaled by its
/// plasticity).
pub(crate) fn module_rates(pack: &[TrialSpec]) -> Vec<[f64; 3]> {
    pack.iter().map(|t| [t.lr_core * t.core_plasticity, t.lr_readout, t.lr_cb]).collect()
}

/// The CPU engine's time loop where it applies (float32 on the CPU, no padding: the timescales'
/// drives), libtorch's elsewhere. Both engines drive the analyses with it.
pub(crate) fn fastest_unroll(
    model: &PackedModel,
    input: &PackedInput,
    cb: CbOutput,
    observe: &mut Observe<'_>,
) -> Result<Tensor, TchError> {
    match cpu_unroll(model, input, cb, observe)? {
        Some(state) => Ok(state),
        None => model.unroll(input, cb, observe),
    }
}
