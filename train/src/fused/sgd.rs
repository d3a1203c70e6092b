//! The CPU engine's optimiser step: Nesterov SGD per row with per-trial clipping over the
//! trainable parameters, per-module rates and freeze masks, the same arithmetic as the libtorch
//! engine's (`engine::libtorch`).

use super::{FusedPack, Real};
use crate::regime::Learning;
use cbsweep_common::TrainBudget;
use rayon::prelude::*;

impl<T: Real> FusedPack<T> {
    /// One Nesterov SGD step per row with the row's `flags`, from `grads` (as `loss_and_grads`
    /// returns them), with per-trial clipping over the trainable parameters; returns each row's
    /// pre-clip gradient norm. The same arithmetic as the libtorch engine's step: frozen modules
    /// keep their exact weights and buffers.
    pub(crate) fn sgd(&mut self, grads: &[Vec<T>], flags: &[Learning], budget: &TrainBudget) -> Vec<f64> {
        let (mu, clip) = (T::of(budget.momentum), T::of(budget.clip_norm));
        let layout = &self.layout;
        self.rows
            .par_iter_mut()
            .zip(grads.par_iter().zip(flags.par_iter()))
            .map(|(row, (grad, flag))| {
                let learns = |i: usize| flag.module(layout.modules[i]);
                let params = 0..layout.spans.len();
                let squared: f64 = params
                    .clone()
                    .filter(|&i| learns(i))
                    .flat_map(|i| layout.get(grad, i).iter())
                    .map(|v| v.to_f64().unwrap_or(f64::NAN).powi(2))
                    .sum();
                let norm = T::of(squared.sqrt());
                // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1
                let coef = (T::one() / (norm + T::of(1e-6)) * clip).min(T::one());
                for i in params.filter(|&i| learns(i)) {
                    let rate = row.rates[layout.modules[i].index()];
                    let (at, n) = layout.spans[i];
                    let (p, buf, g) = (&mut row.params[at..at + n], &mut row.momentum[at..at + n], &grad[at..at + n]);
                    for ((p, b), &g) in p.iter_mut().zip(buf.iter_mut()).zip(g) {
                        // torch.optim.SGD, dampening 0, Nesterov: buf = mu buf + g; p -= lr (g + mu buf)
                        let g = g * coef;
                        *b = *b * mu + g;
                        *p = *p - (g + *b * mu) * rate;
                    }
                }
                norm.to_f64().unwrap_or(f64::NAN)
            })
            .collect()
    }
}
