//! The cerebellar module on the CPU engine (docs/science.md#models), one step forward, one step
//! back and its weight gradients, for every core that carries it (the Elman core's `forward` and
//! `backward`, the GRU's `gru`). The granule layer's recurrent input is a block of columns of the
//! core's stacked product (`offset` into rows of `n_rec`); the module's output b_cb = W_dcn p + b_dcn
//! goes back to the core, which says how it enters and hands back its gradient.

use super::matmul::{Mat, Real, matmul};
use super::step::{Job, Prepared, add, add_column_sums};
use crate::model;

/// Granule and Purkinje activity and the raw output of one step, [rows, G], [rows, P], [rows, H],
/// from the stacked product `z` (rows of `n_rec`, the granule layer's columns from `offset`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_step<T: Real>(
    w: &Prepared<'_, T>,
    job: &Job<'_>,
    t: usize,
    z: &[T],
    n_rec: usize,
    offset: usize,
    granule: &mut [T],
    purkinje: &mut [T],
    output: &mut [T],
) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let b = job.rows;
    for (i, (zi, gi)) in z.chunks(n_rec).zip(granule.chunks_mut(g)).enumerate() {
        let drive = &w.granule_drive[usize::from(job.bit(t, i))];
        for ((out, &rec), &d) in gi.iter_mut().zip(&zi[offset..]).zip(drive) {
            *out = (rec + d).max(T::zero());
        }
    }
    purkinje.chunks_mut(p).for_each(|r| r.copy_from_slice(w.w(model::B_PC)));
    matmul(purkinje, p, Mat::new(granule, b, g), w.w_pc_t.mat(), true); // [B, P]
    purkinje.iter_mut().for_each(|v| *v = v.max(T::zero()));
    output.chunks_mut(h).for_each(|r| r.copy_from_slice(w.w(model::B_DCN)));
    matmul(output, h, Mat::new(purkinje, b, p), w.w_dcn_t.mat(), true); // [B, H]
}

/// The Purkinje layer's pre-activation gradient of one step into `d_purkinje` [rows, P], from the
/// gradient of the module's raw output `d_output` ([rows, H]) and the step's Purkinje activity.
pub(super) fn purkinje_step<T: Real>(w: &Prepared<'_, T>, d_output: Mat<'_, T>, purkinje: &[T], d_purkinje: &mut [T]) {
    let p = w.dims.purkinje as usize;
    matmul(d_purkinje, p, d_output, w.w_dcn.mat(), false); // [B, P]
    d_purkinje.iter_mut().zip(purkinje).for_each(|(d, &v)| *d = if v > T::zero() { *d } else { T::zero() });
}

/// The granule layer's pre-activation gradient of one step into `d_granule` (rows of `n_rec`
/// from the granule layer's first column), from the Purkinje layer's and the step's granule
/// activity.
pub(super) fn granule_step<T: Real>(w: &Prepared<'_, T>, d_purkinje: &[T], granule: &[T], d_granule: &mut [T], n_rec: usize) {
    let (g, p) = (w.dims.granule as usize, w.dims.purkinje as usize);
    let b = d_purkinje.len() / p;
    matmul(d_granule, n_rec, Mat::new(d_purkinje, b, p), w.w_pc.mat(), false); // [B, G]
    for (dgi, gi) in d_granule.chunks_mut(n_rec).zip(granule.chunks(g)) {
        for (d, &v) in dgi[..g].iter_mut().zip(gi) {
            *d = if v > T::zero() { *d } else { T::zero() };
        }
    }
}

/// The module's activity and gradients of a whole job, for `weight_grads`: K = T x rows.
pub(super) struct Stored<'a, T> {
    /// The stacked product's gradients, [K, n_rec], the granule layer's from column `offset`.
    pub(super) dz: &'a [T],
    pub(super) n_rec: usize,
    pub(super) offset: usize,
    /// The states the granule layer read, [K, H].
    pub(super) h_prev: &'a [T],
    /// Granule and Purkinje activity [K, G], [K, P], the Purkinje pre-activation's gradient [K, P].
    pub(super) granule: &'a [T],
    pub(super) purkinje: &'a [T],
    pub(super) d_purkinje: &'a [T],
    /// The raw output's gradient, rows of H with row stride `ld_output`.
    pub(super) d_output: &'a [T],
    pub(super) ld_output: usize,
}

/// Every step's contribution to the module's weight gradients, as one product over K each.
pub(super) fn weight_grads<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, m: &Stored<'_, T>, grads: &mut [T]) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let b = job.rows;
    let k = job.batch.len * b;
    let layout = w.layout;
    // the input bit's column and the bias: sums over the rows, in row order
    let (mut d_gx, mut d_bgc, mut d_bdcn) = (vec![T::zero(); g], vec![T::zero(); g], vec![T::zero(); h]);
    for t in 0..job.batch.len {
        for i in 0..b {
            let r = t * b + i;
            let row = &m.dz[r * m.n_rec + m.offset..r * m.n_rec + m.offset + g];
            add(&mut d_bgc, row);
            if job.bit(t, i) {
                add(&mut d_gx, row);
            }
            add(&mut d_bdcn, &m.d_output[r * m.ld_output..r * m.ld_output + h]);
        }
    }
    let w_gc = layout.get_mut(grads, model::W_GC);
    let d_granule = Mat::strided(&m.dz[m.offset..], k, g, m.n_rec).t();
    matmul(w_gc, h + 1, d_granule, Mat::new(&m.h_prev[..k * h], k, h), true); // [G, H] of [G, H + 1]
    for j in 0..g {
        w_gc[j * (h + 1) + h] += d_gx[j];
    }
    add(layout.get_mut(grads, model::B_GC), &d_bgc);
    let dp = &m.d_purkinje[..k * p];
    matmul(layout.get_mut(grads, model::W_PC), g, Mat::new(dp, k, p).t(), Mat::new(&m.granule[..k * g], k, g), true); // [P, G]
    add_column_sums(layout.get_mut(grads, model::B_PC), dp, p);
    let d_output = Mat::strided(m.d_output, k, h, m.ld_output).t();
    matmul(layout.get_mut(grads, model::W_DCN), p, d_output, Mat::new(&m.purkinje[..k * p], k, p), true); // [H, P]
    add(layout.get_mut(grads, model::B_DCN), &d_bdcn);
}
