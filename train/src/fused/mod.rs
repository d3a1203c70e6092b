//! The CPU engine: the forward pass and a hand-written backward pass through time of one trial's
//! model (docs/science.md#models), on host memory, with its own AVX-512 kernel and `gemm`'s.
//!
//! Why it exists: on a CPU the cost of these small networks is per-operation overhead and small
//! matrix products, not arithmetic (issue 7). libtorch's autograd records ~40 operations per time
//! step and runs every weight-gradient product once per step with 64 rows. Here a time step is
//! three products forward and three backward; the input bit is a select, not a product; bias,
//! activation and leak are one pass; and the weight gradients of all T steps are three large
//! products at the end (K = T x rows, the job's rows being at most `CHUNK` = 64 sequences,
//! instead of K = rows once per step).
//!
//! Work is split into jobs of one trial, one batch and at most `CHUNK` sequences, spread over the
//! rayon pool. Job sizes depend on neither the pack nor the thread count, and the per-trial sums
//! run in job order, so a trial's numbers are the same alone or packed, on 1 thread or 16.
//!
//! Layouts follow libtorch's: a trial's parameters are one flat vector, each parameter
//! row-major in `Dims::param_specs` order; activations are [T, rows, units].
//!
//! Files: `matmul` (the float types, the packed weights and the one product), `layout` (a
//! trial's flat vector), `step` (what every time loop shares: prepared weights, jobs, scratch
//! buffers), `forward` (the time loop of the RNN and the CB-RNN), `backward` (back
//! through time; the readout's loss and gradient, which every architecture shares), `cerebellum`
//! (the cerebellar module's step forward and back and its weight gradients, for the Elman core
//! and the GRU alike), `recurrent`
//! (the recurrent-module control's time loop, forward and back), `gru` (the GRU's and the
//! CB-GRU's), `sgd` (Nesterov with clipping and freeze masks), `unroll` (the analyses' long drives
//! on the engine). It knows the model's layout (`model`) and the learning flags (`regime`), no
//! trainer.

mod backward;
mod cerebellum;
mod forward;
mod gru;
mod layout;
mod matmul;
mod recurrent;
mod sgd;
mod step;
pub(crate) mod unroll;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

use crate::model::{CbOutput, Dims};
use crate::tasks::TaskBatch;
use cbsweep_common::Arch;
use forward::readout;
use layout::Layout;
pub(crate) use matmul::Real;
use rayon::prelude::*;
use std::sync::Mutex;
use step::{Job, Prepared, Scratch, add, jobs, sized};

/// Whether the CPU engine has `arch`: every architecture today. A new one is a decision here;
/// until the engine has it, its packs train on the libtorch engine (`train::engine_from` says so
/// once per pack).
pub(crate) fn supports(arch: Arch) -> bool {
    match arch {
        Arch::Rnn | Arch::Cbrnn | Arch::Rmrnn | Arch::Cbgru | Arch::Gru => true,
    }
}

/// The time loop of `job` by its architecture's code: runs it from the job's initial states and
/// leaves the final state in `s.hs` at the returned slot; with `store`, every step's activity is
/// kept for a backward pass.
fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
    match w.dims.arch {
        Arch::Rnn | Arch::Cbrnn => forward::forward(w, job, cb, store, s),
        Arch::Rmrnn => recurrent::forward(w, job, cb, store, s),
        Arch::Cbgru | Arch::Gru => gru::forward(w, job, cb, store, s),
    }
}

/// Forward and backward of one job: the time loop, the readout's loss and gradient (shared by
/// every architecture), then back through time by the architecture's code; adds the gradient of
/// (sum of its sequences' losses) x `job.scale` to `grads` and returns that loss.
fn train_job<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) -> f64 {
    let last = forward(w, job, CbOutput::On, true, s);
    let loss = backward::readout_backward(w, job, last, s, grads);
    match w.dims.arch {
        Arch::Rnn | Arch::Cbrnn => {
            backward::backward_steps(w, job, s);
            backward::weight_grads(w, job, s, grads);
        }
        Arch::Rmrnn => {
            recurrent::backward_steps(w, job, s);
            recurrent::weight_grads(w, job, s, grads);
        }
        Arch::Cbgru | Arch::Gru => {
            gru::backward_steps(w, job, s);
            gru::weight_grads(w, job, s, grads);
        }
    }
    loss
}

/// One trial's host state: parameters, Nesterov buffers and per-module rates.
#[derive(Clone, Debug)]
struct Row<T> {
    params: Vec<T>,
    momentum: Vec<T>,
    /// Learning rate per module, in `Module::ALL` order.
    rates: [T; 3],
}

/// A pack's state on the host for the CPU engine; row r is trial r of the pack (rows of ended
/// trials are dropped with `keep`).
pub(crate) struct FusedPack<T> {
    dims: Dims,
    layout: Layout,
    rows: Vec<Row<T>>,
    scratch: Mutex<Vec<Scratch<T>>>,
    /// One gradient vector per job of the latest call, reused.
    job_grads: Vec<Vec<T>>,
}

impl<T: Real> FusedPack<T> {
    /// The host copy of `params` (packed tensors [M, ...] in `param_specs` order) and `momentum`,
    /// with per-trial rates (`Module::ALL` order).
    pub(crate) fn from_tensors(
        dims: Dims,
        params: &[tch::Tensor],
        momentum: &[tch::Tensor],
        rates: &[[f64; 3]],
    ) -> Result<Self, tch::TchError>
    where
        T: tch::kind::Element,
    {
        let layout = Layout::of(&dims);
        let m = rates.len();
        let host = |ts: &[tch::Tensor]| -> Result<Vec<Vec<T>>, tch::TchError> {
            let flat: Vec<Vec<T>> = ts.iter().map(|t| Vec::<T>::try_from(&t.f_detach()?.f_flatten(0, -1)?)).collect::<Result<_, _>>()?;
            Ok((0..m)
                .map(|r| {
                    let mut row = Vec::with_capacity(layout.total);
                    for (i, f) in flat.iter().enumerate() {
                        let n = layout.spans[i].1;
                        row.extend_from_slice(&f[r * n..(r + 1) * n]);
                    }
                    row
                })
                .collect())
        };
        let (params, momentum) = (host(params)?, host(momentum)?);
        let rows = params
            .into_iter()
            .zip(momentum)
            .zip(rates)
            .map(|((params, momentum), r)| Row { params, momentum, rates: r.map(T::of) })
            .collect();
        Ok(FusedPack { dims, layout, rows, scratch: Mutex::new(Vec::new()), job_grads: Vec::new() })
    }

    /// The packed tensors of the parameters and momentum buffers ([M, ...] each, in
    /// `param_specs` order).
    pub(crate) fn to_tensors(&self, kind: tch::Kind) -> Result<(Vec<tch::Tensor>, Vec<tch::Tensor>), tch::TchError>
    where
        T: tch::kind::Element,
    {
        let m = self.rows.len() as i64;
        let specs = self.dims.param_specs();
        let pack = |get: &dyn Fn(&Row<T>) -> &[T]| -> Result<Vec<tch::Tensor>, tch::TchError> {
            specs
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let values: Vec<T> = self.rows.iter().flat_map(|r| self.layout.get(get(r), i).iter().copied()).collect();
                    let shape: Vec<i64> = std::iter::once(m).chain(spec.shape.iter().copied()).collect();
                    tch::Tensor::f_from_slice(&values)?.f_reshape(shape.as_slice())?.f_to_kind(kind)
                })
                .collect()
        };
        Ok((pack(&|r| &r.params)?, pack(&|r| &r.momentum)?))
    }

    /// Replaces every row's parameters and momentum buffers with those of `params` and
    /// `momentum` (packed tensors [M, ...] in `param_specs` order, M the pack's rows); the rates
    /// stay.
    #[cfg_attr(not(test), allow(dead_code, reason = "the CPU engine's `PackEngine::set_state`, which only tests call today"))]
    pub(crate) fn set_tensors(&mut self, params: &[tch::Tensor], momentum: &[tch::Tensor]) -> Result<(), tch::TchError>
    where
        T: tch::kind::Element,
    {
        let m = params.first().map(|p| p.size().first().copied().unwrap_or(0)).unwrap_or(0);
        if m != self.rows.len() as i64 {
            return Err(tch::TchError::Shape(format!("a state of {m} rows for a pack of {}", self.rows.len())));
        }
        let rates: Vec<[f64; 3]> = self.rows.iter().map(|r| r.rates.map(|v| v.to_f64().unwrap_or(f64::NAN))).collect();
        let state = FusedPack::<T>::from_tensors(self.dims, params, momentum, &rates)?;
        for (row, new) in self.rows.iter_mut().zip(state.rows) {
            (row.params, row.momentum) = (new.params, new.momentum);
        }
        Ok(())
    }

    /// Keeps only the rows at `keep` (in order).
    pub(crate) fn keep(&mut self, keep: &[usize]) {
        let mut old: Vec<Option<Row<T>>> = std::mem::take(&mut self.rows).into_iter().map(Some).collect();
        self.rows = keep.iter().filter_map(|&r| old.get_mut(r).and_then(Option::take)).collect();
    }

    /// Runs `f` on every job with a scratch buffer and that job's gradient vector, over the
    /// rayon pool; results in job order.
    fn run_jobs<R: Send>(
        &mut self,
        jobs: &[Job<'_>],
        with_grads: bool,
        f: impl Fn(&Prepared<'_, T>, &Job<'_>, &mut Scratch<T>, &mut [T]) -> R + Sync,
    ) -> Vec<R> {
        let total = if with_grads { self.layout.total } else { 0 };
        if self.job_grads.len() < jobs.len() {
            self.job_grads.resize_with(jobs.len(), Vec::new);
        }
        let FusedPack { dims, layout, rows, scratch, job_grads } = self;
        let layout = &*layout;
        let prepared: Vec<Prepared<'_, T>> = rows.iter().map(|r| Prepared::new(*dims, layout, &r.params)).collect();
        let scratch = &*scratch;
        jobs.par_iter()
            .zip(job_grads[..jobs.len()].par_iter_mut())
            .map(|(job, grads)| {
                let mut s = scratch.lock().map(|mut pool| pool.pop()).ok().flatten().unwrap_or_default();
                let grads = sized(grads, total);
                grads.fill(T::zero());
                let out = f(&prepared[job.row], job, &mut s, grads);
                if let Ok(mut pool) = scratch.lock() {
                    pool.push(s);
                }
                out
            })
            .collect()
    }

    /// Each row's mean loss over its sequences in `per_row` and its gradient (flat layout).
    pub(crate) fn loss_and_grads(&mut self, per_row: &[Vec<(TaskBatch, Vec<f64>)>]) -> (Vec<f64>, Vec<Vec<T>>) {
        assert_eq!(per_row.len(), self.rows.len(), "one list of batches per trial of the pack");
        let jobs = jobs(per_row);
        let losses = self.run_jobs(&jobs, true, |w, job, s, grads| train_job(w, job, s, grads));
        let mut row_loss = vec![0.0; self.rows.len()];
        let mut row_grads = vec![vec![T::zero(); self.layout.total]; self.rows.len()];
        for (j, job) in jobs.iter().enumerate() {
            row_loss[job.row] += losses[j];
            add(&mut row_grads[job.row], &self.job_grads[j]);
        }
        (row_loss, row_grads)
    }

    /// Logits of every sequence, per row in the order of its batches, [n, 2] flat.
    pub(crate) fn logits(&mut self, per_row: &[Vec<(TaskBatch, Vec<f64>)>], cb: CbOutput) -> Vec<Vec<T>> {
        let jobs = jobs(per_row);
        let per_job = self.run_jobs(&jobs, false, |w, job, s, _| {
            let last = forward(w, job, cb, false, s);
            readout(w, job.rows, last, s);
            s.logits[..job.rows * 2].to_vec()
        });
        let mut out = vec![Vec::new(); self.rows.len()];
        for (job, logits) in jobs.iter().zip(per_job) {
            out[job.row].extend(logits);
        }
        out
    }

    /// Correct answers per row on its batches (argmax of the logits, ties to class 0 as
    /// libtorch's argmax).
    pub(crate) fn count_correct(&mut self, per_row: &[Vec<(TaskBatch, Vec<f64>)>], cb: CbOutput) -> Vec<i64> {
        let logits = self.logits(per_row, cb);
        per_row
            .iter()
            .zip(logits)
            .map(|(batches, l)| {
                let labels = batches.iter().flat_map(|(b, _)| b.labels.iter());
                labels.zip(l.chunks(2)).filter(|(y, l)| i64::from(l[1] > l[0]) == **y).count() as i64
            })
            .collect()
    }

    #[cfg(test)]
    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }
}
