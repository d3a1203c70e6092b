//! The libtorch engine: libtorch's operations and autograd over the packed tensors, and a
//! hand-written Nesterov SGD with per-trial clipping, rates and freeze masks as tensor
//! operations over the pack axis. The path for CUDA (its per-step inputs go up through pinned
//! memory, `input::to_device`; the per-trial sums stay on the device until the epoch ends).

use super::{EpochTotals, PackEngine, PackState};
use crate::error::TrainError;
use crate::input::{Batches, host_tensor, pack_batches};
use crate::model::{self, CbOutput, Dims, Module, PackedModel};
use crate::regime::Learning;
use cbsweep_common::TrainBudget;
use tch::{Device, Kind, TchError, Tensor};

/// A pack's state on its device for the libtorch engine.
pub(crate) struct LibtorchEngine {
    dims: Dims,
    budget: TrainBudget,
    kind: Kind,
    device: Device,
    model: PackedModel,
    /// Nesterov momentum buffers, one per parameter, zero until a module first learns.
    momentum: Vec<Tensor>,
    /// Learning rate per module (in `Module::ALL` order), [M] each.
    rates: Vec<Tensor>,
    /// Learn mask per module for the flags they were built from, [M] (bool) each.
    masks: Option<(Vec<Learning>, Vec<Tensor>)>,
    /// The epoch's per-row sums of loss and gradient norm, [M] each; None before its first step.
    sums: Option<[Tensor; 2]>,
}

impl LibtorchEngine {
    /// An engine starting from `state` (on `device`, of `kind`), with each row's module rates
    /// (`Module::ALL` order).
    pub(crate) fn new(state: PackState, rates: &[[f64; 3]], budget: TrainBudget, kind: Kind, device: Device) -> Result<Self, TchError> {
        let rates = Module::ALL
            .iter()
            .map(|&module| {
                let values: Vec<f64> = rates.iter().map(|r| r[module.index()]).collect();
                host_tensor(&values, &[values.len() as i64], kind, device)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dims = *state.model.dims();
        Ok(LibtorchEngine { dims, budget, kind, device, model: state.model, momentum: state.momentum, rates, masks: None, sums: None })
    }

    /// Rows in the pack now.
    fn rows(&self) -> i64 {
        self.rates.first().map_or(0, |r| r.size().first().copied().unwrap_or(0))
    }

    /// Zero sums of loss and gradient norm, [M] each.
    fn zero_sums(&self) -> Result<[Tensor; 2], TchError> {
        let zeros = || Tensor::f_zeros([self.rows()], (self.kind, self.device));
        Ok([zeros()?, zeros()?])
    }

    /// Backward from the per-trial losses [M] and one Nesterov SGD step with per-trial
    /// clipping over each trial's trainable parameters; returns the pre-clip norms [M].
    fn sgd_step(&mut self, losses: &Tensor, flags: &[Learning]) -> Result<Tensor, TrainError> {
        let masks = self.masks(flags)?;
        let specs = self.dims.param_specs();
        // parameters of modules no trial trains need no gradient
        let trained: Vec<usize> = (0..specs.len()).filter(|&i| flags.iter().any(|f| f.module(specs[i].module))).collect();
        let inputs: Vec<&Tensor> = trained.iter().map(|&i| &self.model.params()[i]).collect();
        let grads = Tensor::f_run_backward(&[losses.f_sum(None::<Kind>)?], &inputs, false, false)?;

        let _no_grad = tch::no_grad_guard();
        let m = flags.len() as i64;
        // squared norm per trial over its trainable parameters only
        let mut squared = Tensor::f_zeros([m], (self.kind, self.device))?; // [M]
        for (g, &i) in grads.iter().zip(&trained) {
            let dims: Vec<i64> = (1..g.dim() as i64).collect();
            let s = g.f_square()?.f_sum_dim_intlist(Some(dims.as_slice()), false, None::<Kind>)?; // [M]
            squared = squared.f_add(&s.f_where_scalarother(&masks[specs[i].module.index()], 0.0)?)?;
        }
        let norm = squared.f_sqrt()?; // [M]
        // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1
        let coef = norm.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(self.budget.clip_norm)?.f_clamp_max(1.0)?;

        let mu = self.budget.momentum;
        for (g, &i) in grads.iter().zip(&trained) {
            let module = specs[i].module.index();
            let shape: Vec<i64> = std::iter::once(m).chain(std::iter::repeat_n(1, g.dim() - 1)).collect();
            let coef = coef.f_view(shape.as_slice())?; // [M, 1, ...]
            let mask = masks[module].f_view(shape.as_slice())?; // [M, 1, ...]
            let rate = self.rates[module].f_view(shape.as_slice())?; // [M, 1, ...]
            let g = g.f_mul(&coef)?;
            // torch.optim.SGD, dampening 0, Nesterov: buf = mu buf + g; p -= lr (g + mu buf)
            let buf = self.momentum[i].f_mul_scalar(mu)?.f_add(&g)?;
            let update = g.f_add(&buf.f_mul_scalar(mu)?)?;
            let param = &self.model.params()[i];
            let stepped = param.f_sub(&update.f_mul(&rate)?)?;
            // frozen rows keep their exact weights and buffers
            let kept = stepped.f_where_self(&mask, param)?;
            param.shallow_clone().f_copy_(&kept)?;
            self.momentum[i] = buf.f_where_self(&mask, &self.momentum[i])?;
        }
        Ok(norm)
    }

    /// The per-module learn masks for `flags`, rebuilt only when the flags change.
    fn masks(&mut self, flags: &[Learning]) -> Result<Vec<Tensor>, TchError> {
        if let Some((cached, masks)) = &self.masks
            && cached.as_slice() == flags
        {
            return masks.iter().map(|t| Ok(t.shallow_clone())).collect();
        }
        let masks = Module::ALL
            .iter()
            .map(|&module| {
                let values: Vec<bool> = flags.iter().map(|f| f.module(module)).collect();
                Tensor::f_from_slice(&values)?.f_to_device(self.device)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = masks.iter().map(|t| t.shallow_clone()).collect();
        self.masks = Some((flags.to_vec(), masks));
        Ok(out)
    }
}

impl PackEngine for LibtorchEngine {
    fn train_step(&mut self, batches: &Batches, flags: &[Learning]) -> Result<(), TrainError> {
        let (input, labels) = pack_batches(batches, self.dims.state_units(), self.kind, self.device)?;
        let logits = self.model.forward(&input, CbOutput::On)?; // [M, B, 2]
        let losses = model::cross_entropy(&logits, &labels)?; // [M]
        let norms = self.sgd_step(&losses, flags)?; // [M]
        let [loss, grad_norm] = match self.sums.take() {
            Some(sums) => sums,
            None => self.zero_sums()?,
        };
        self.sums = Some([loss.f_add(&losses.f_detach()?)?, grad_norm.f_add(&norms)?]);
        Ok(())
    }

    fn end_epoch(&mut self, tests: Batches) -> Result<EpochTotals, TrainError> {
        let correct = model::count_correct(&self.model, tests, CbOutput::On, self.kind, self.device)?;
        let [loss, grad_norm] = match self.sums.take() {
            Some(sums) => sums,
            None => self.zero_sums()?,
        };
        // one transfer per epoch: [3, M] -> host
        let per_trial = [&loss, &grad_norm, &correct].map(|t| t.f_to_kind(Kind::Double));
        let per_trial = per_trial.into_iter().collect::<Result<Vec<_>, _>>()?;
        let stats = Tensor::f_stack(&per_trial, 0)?.f_to_device(Device::Cpu)?.f_flatten(0, -1)?; // [3 * M]
        let stats = Vec::<f64>::try_from(&stats)?;
        let m = stats.len() / 3;
        Ok(EpochTotals { loss: stats[..m].to_vec(), grad_norm: stats[m..2 * m].to_vec(), correct: stats[2 * m..].to_vec() })
    }

    fn state(&self) -> Result<PackState, TchError> {
        let params = self.model.params().iter().map(Tensor::f_detach_copy).collect::<Result<Vec<_>, _>>()?;
        let momentum = self.momentum.iter().map(Tensor::f_detach_copy).collect::<Result<Vec<_>, _>>()?;
        Ok(PackState { model: PackedModel::from_tensors(self.dims, params)?, momentum })
    }

    fn set_state(&mut self, state: &PackState) -> Result<(), TchError> {
        let rows = state.model.params().first().map(|p| p.size()[0]);
        if rows != Some(self.rows()) {
            return Err(TchError::Shape(format!("a state of {rows:?} rows for a pack of {}", self.rows())));
        }
        let copy = |t: &Tensor| t.f_to_device(self.device)?.f_to_kind(self.kind)?.f_detach_copy();
        let params = state.model.params().iter().map(copy).collect::<Result<Vec<_>, _>>()?;
        self.model = PackedModel::from_tensors(self.dims, params)?;
        self.momentum = state.momentum.iter().map(copy).collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }

    fn keep(&mut self, rows: &[usize]) -> Result<(), TchError> {
        if rows.is_empty() {
            return Ok(());
        }
        let keep: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::f_from_slice(&keep)?.f_to_device(self.device)?;
        self.model = self.model.select(&index)?;
        self.momentum = self.momentum.iter().map(|b| b.f_index_select(0, &index)).collect::<Result<_, _>>()?;
        self.rates = self.rates.iter().map(|r| r.f_index_select(0, &index)).collect::<Result<_, _>>()?;
        self.masks = None;
        if let Some([loss, grad_norm]) = self.sums.take() {
            self.sums = Some([loss.f_index_select(0, &index)?, grad_norm.f_index_select(0, &index)?]);
        }
        Ok(())
    }
}
