//! The CPU engine behind the seam (`--engine fused`, the default on the CPU, float32): the
//! pack's state lives in `fused::FusedPack`'s host vectors, and libtorch tensors are built from
//! it only when its state is read (the checkpoints' analyses and saved weights).

use super::{EpochTotals, PackEngine, PackState};
use crate::error::TrainError;
use crate::fused::FusedPack;
use crate::input::Batches;
use crate::model::{CbOutput, Dims, PackedModel};
use crate::regime::Learning;
use cbsweep_common::TrainBudget;
use tch::{Kind, TchError};

/// A float32 pack on the CPU engine.
pub(crate) struct CpuEngine {
    dims: Dims,
    budget: TrainBudget,
    pack: FusedPack<f32>,
    /// The epoch's per-row sums of loss and gradient norm, in float32 as the libtorch engine's
    /// sums on a float32 pack; None before its first step.
    sums: Option<[Vec<f32>; 2]>,
}

impl CpuEngine {
    /// An engine starting from `state` (float32 on the CPU), with each row's module rates
    /// (`Module::ALL` order).
    pub(crate) fn new(state: &PackState, rates: &[[f64; 3]], budget: TrainBudget) -> Result<Self, TchError> {
        let dims = *state.model.dims();
        let pack = FusedPack::from_tensors(dims, state.model.params(), &state.momentum, rates)?;
        Ok(CpuEngine { dims, budget, pack, sums: None })
    }
}

impl PackEngine for CpuEngine {
    fn train_step(&mut self, batches: &Batches, flags: &[Learning]) -> Result<(), TrainError> {
        let (losses, grads) = self.pack.loss_and_grads(batches);
        let norms = self.pack.sgd(&grads, flags, &self.budget);
        let [loss, grad_norm] = self.sums.get_or_insert_with(|| [vec![0.0; losses.len()], vec![0.0; losses.len()]]);
        // each step's values rounded to float32, then summed in float32
        for (sum, v) in loss.iter_mut().zip(&losses).chain(grad_norm.iter_mut().zip(&norms)) {
            *sum += *v as f32;
        }
        Ok(())
    }

    fn end_epoch(&mut self, tests: Batches) -> Result<EpochTotals, TrainError> {
        let correct = self.pack.count_correct(&tests, CbOutput::On);
        let [loss, grad_norm] = self.sums.take().unwrap_or_else(|| [vec![0.0; correct.len()], vec![0.0; correct.len()]]);
        let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
        Ok(EpochTotals { loss: wide(loss), grad_norm: wide(grad_norm), correct: correct.into_iter().map(|c| c as f64).collect() })
    }

    fn state(&self) -> Result<PackState, TchError> {
        let (params, momentum) = self.pack.to_tensors(Kind::Float)?;
        Ok(PackState { model: PackedModel::from_tensors(self.dims, params)?, momentum })
    }

    fn set_state(&mut self, state: &PackState) -> Result<(), TchError> {
        let to_host = |t: &tch::Tensor| t.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float);
        let params = state.model.params().iter().map(to_host).collect::<Result<Vec<_>, _>>()?;
        let momentum = state.momentum.iter().map(to_host).collect::<Result<Vec<_>, _>>()?;
        self.pack.set_tensors(&params, &momentum)
    }

    fn keep(&mut self, rows: &[usize]) -> Result<(), TchError> {
        self.pack.keep(rows);
        if let Some(sums) = &mut self.sums {
            for sum in sums {
                *sum = rows.iter().map(|&r| sum[r]).collect();
            }
        }
        Ok(())
    }
}
