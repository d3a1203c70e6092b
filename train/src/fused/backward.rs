//! The CPU engine's backward pass through time, written by hand: the cross-entropy's gradient
//! at the readout, per step back through time only the state's gradient (three products), and
//! the weight gradients of all steps as three large products at the end (K = T x rows).

use super::cerebellum;
use super::forward::readout;
use super::matmul::{Mat, Real, matmul};
use super::step::{Job, NEGATIVE_SLOPE, Prepared, Scratch, add, add_column_sums, sized};
use crate::model::{self, ALPHA, CbOutput};

/// The readout of the final states in slot `last` of `s.hs` and the cross-entropy: adds the
/// readout's gradients (of the summed loss x `job.scale`) to `grads`, leaves the final state's
/// gradient in `s.dh` and returns the summed loss x `job.scale`. Every architecture's step
/// shares it.
pub(super) fn readout_backward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, last: usize, s: &mut Scratch<T>, grads: &mut [T]) -> f64 {
    let h = w.dims.hidden as usize;
    let b = job.rows;
    readout(w, b, last, s);
    let layout = w.layout;

    // cross-entropy of the final logits, and its gradient
    let scale = T::of(job.scale);
    let mut loss = 0.0;
    let dlogits: Vec<T> = {
        let mut d = vec![T::zero(); b * 2];
        for i in 0..b {
            let l = &s.logits[i * 2..i * 2 + 2];
            let top = l[0].max(l[1]);
            let sum = (l[0] - top).exp() + (l[1] - top).exp();
            let label = job.label(i);
            loss += (sum.ln() + top - l[label]).to_f64().unwrap_or(f64::NAN);
            for k in 0..2 {
                let softmax = (l[k] - top).exp() / sum;
                let target = if k == label { T::one() } else { T::zero() };
                d[i * 2 + k] = (softmax - target) * scale;
            }
        }
        d
    };
    let h_last = &s.hs[last * b * h..(last + 1) * b * h];
    matmul(layout.get_mut(grads, model::W_O), h, Mat::new(&dlogits, b, 2).t(), Mat::new(h_last, b, h), true);
    add_column_sums(layout.get_mut(grads, model::B_O), &dlogits, 2);
    matmul(sized(&mut s.dh, b * h), h, Mat::new(&dlogits, b, 2), Mat::new(w.w(model::W_O), 2, h), false);
    loss * job.scale
}

/// Back through time from the state's gradient in `s.dh`: per step the gradients of the core's
/// and granule layer's pre-activations (`s.dz`) and of the Purkinje layer's (`s.dp`).
#[inline(never)]
pub(super) fn backward_steps<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let b = job.rows;
    let t_len = job.batch.len;
    let module = w.module_on(CbOutput::On);
    let n_rec = w.n_rec(CbOutput::On);
    // back through time: per step, the state's gradient only; weight gradients come after
    let dz = sized(&mut s.dz, t_len * b * n_rec);
    let dp_all = sized(&mut s.dp, if module { t_len * b * p } else { 0 });
    let dh = &mut s.dh[..b * h];
    let dh_next = sized(&mut s.dh_next, b * h);
    let (alpha, keep, slope) = (T::of(ALPHA), T::one() - T::of(ALPHA), T::of(NEGATIVE_SLOPE));
    let w_rec = w.w_rec.block(n_rec, h);
    let mut dh: &mut [T] = dh;
    let mut dh_next: &mut [T] = dh_next;
    for t in (0..t_len).rev() {
        let at = &s.a[t * b * h..(t + 1) * b * h];
        let dzt = &mut dz[t * b * n_rec..(t + 1) * b * n_rec];
        for ((dzi, ai), dhi) in dzt.chunks_mut(n_rec).zip(at.chunks(h)).zip(dh.chunks(h)) {
            for ((d, &a), &x) in dzi[..h].iter_mut().zip(ai).zip(dhi) {
                let scaled = x * alpha;
                *d = if a > T::zero() { scaled } else { scaled * slope };
            }
        }
        if module {
            // the module's output enters the core's pre-activation as it is: its gradient is dz's
            let (gt, pt) = (&s.g[t * b * g..(t + 1) * b * g], &s.p[t * b * p..(t + 1) * b * p]);
            let dpt = &mut dp_all[t * b * p..(t + 1) * b * p];
            cerebellum::purkinje_step(w, Mat::strided(dzt, b, h, n_rec), pt, dpt);
            cerebellum::granule_step(w, dpt, gt, &mut dzt[h..], n_rec);
        }
        dh_next.iter_mut().zip(dh.iter()).for_each(|(n, &d)| *n = d * keep);
        matmul(dh_next, h, Mat::new(dzt, b, n_rec), w_rec, true);
        std::mem::swap(&mut dh, &mut dh_next);
    }
}

/// Every step's contribution to the weight gradients, as one product over T x rows each.
#[inline(never)]
pub(super) fn weight_grads<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) {
    let h = w.dims.hidden as usize;
    let b = job.rows;
    let t_len = job.batch.len;
    let module = w.module_on(CbOutput::On);
    let n_rec = w.n_rec(CbOutput::On);
    let layout = w.layout;
    // weight gradients: every step's contribution in one product over T x rows
    let k = t_len * b;
    let dz = &s.dz[..k * n_rec];
    let h_prev = &s.hs[..k * h];
    matmul(layout.get_mut(grads, model::W_H), h, Mat::strided(dz, k, h, n_rec).t(), Mat::new(h_prev, k, h), true);
    let mut d_wx = vec![T::zero(); h];
    let mut d_bias = vec![T::zero(); h];
    for t in 0..t_len {
        for i in 0..b {
            let x = job.bit(t, i);
            let row = &dz[(t * b + i) * n_rec..(t * b + i) * n_rec + h];
            for j in 0..h {
                d_bias[j] += row[j];
                if x {
                    d_wx[j] += row[j];
                }
            }
        }
    }
    add(layout.get_mut(grads, model::W_X), &d_wx);
    add(layout.get_mut(grads, model::B_X), &d_bias);
    add(layout.get_mut(grads, model::B_H), &d_bias);
    if module {
        // the module's output entered the core's pre-activation as it is: its gradient is dz's
        let stored = cerebellum::Stored {
            dz,
            n_rec,
            offset: h,
            h_prev,
            granule: &s.g,
            purkinje: &s.p,
            d_purkinje: &s.dp,
            d_output: dz,
            ld_output: n_rec,
        };
        cerebellum::weight_grads(w, job, &stored, grads);
    }
}
