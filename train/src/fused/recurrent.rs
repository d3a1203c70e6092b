//! The recurrent-module control on the CPU engine (docs/science.md#recurrent-module-control): the
//! leaky Elman core with a leaky recurrent network of A units in the cerebellar module's place,
//! forward and back through time in the Elman time loop's way (`forward`, `backward`). Per step
//! forward: the state's product with [W_h; W_in[:, :H]] (one product, as the CB-RNN's), the
//! module's own recurrent product a_{t-1} W_aa^T and its output a_t W_out^T; backward, the
//! three products' transposes; the weight gradients as products over T x rows at the end. With
//! the module switched off the model is the plain RNN, which `forward::forward` runs.

use super::matmul::{Mat, Real, matmul};
use super::step::{Job, NEGATIVE_SLOPE, Prepared, Scratch, add, leaky_relu, sized, two_slots};
use crate::model::{self, ALPHA, CbOutput};

/// The time loop of `job` (`forward::forward`'s contract). Keeps, with `store`, the core's input
/// to LeakyReLU in `s.a`, the module's in `s.g`, its states a_0 .. a_T in `s.states` and its
/// output in `s.c`.
#[inline(never)]
pub(super) fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
    if cb == CbOutput::Off {
        return super::forward::forward(w, job, cb, store, s);
    }
    let (h, a) = (w.dims.hidden as usize, w.dims.module_units() as usize);
    let n_rec = h + a;
    let b = job.rows;
    let t_len = job.batch.len;
    let steps = if store { t_len } else { 1 };
    let (slots, slot) = if store { (t_len + 1, 1) } else { (2, 0) };
    let hs = sized(&mut s.hs, slots * b * h);
    let states = sized(&mut s.states, slots * b * a);
    let pre_all = sized(&mut s.a, steps * b * h);
    let u_all = sized(&mut s.g, steps * b * a);
    let c_all = sized(&mut s.c, steps * b * h);
    let z = sized(&mut s.z, b * n_rec);
    job.load_initial(h, a, &mut hs[..b * h], Some(&mut states[..b * a]));
    let w_rec_t = w.w_rec_t.block(h, n_rec); // [H, H + A]
    let (w_aa_t, w_out_t) = (w.w_pc_t.mat(), w.w_dcn_t.mat()); // [A, A], [A, H]
    let b_out = w.w(model::B_OUT);
    let (keep, slope) = (T::one() - T::of(ALPHA), T::of(NEGATIVE_SLOPE));
    for t in 0..t_len {
        let (cur, next) = if store { (t, t + 1) } else { (t % 2, (t + 1) % 2) };
        let step = t * slot;
        let (h_prev, h_next) = two_slots(hs, cur, next, b * h);
        let (a_prev, a_next) = two_slots(states, cur, next, b * a);
        matmul(z, n_rec, Mat::new(h_prev, b, h), w_rec_t, false); // [B, H + A]
        // u = W_in [h; x] + b_in + b_aa + W_aa a_{t-1}; a_t = (1 - a) a_{t-1} + a LeakyReLU(u)
        let u = &mut u_all[step * b * a..(step + 1) * b * a];
        for (i, (zi, ui)) in z.chunks(n_rec).zip(u.chunks_mut(a)).enumerate() {
            let drive = &w.granule_drive[usize::from(job.bit(t, i))];
            for ((out, &rec), &d) in ui.iter_mut().zip(&zi[h..]).zip(drive) {
                *out = rec + d;
            }
        }
        matmul(u, a, Mat::new(a_prev, b, a), w_aa_t, true); // [B, A]
        for ((n, &pre), &old) in a_next.iter_mut().zip(u.iter()).zip(a_prev.iter()) {
            let act = leaky_relu(pre, slope);
            // libtorch's lerp for a weight >= 0.5: end - (end - start) (1 - weight)
            *n = act - (act - old) * keep;
        }
        // b_cb = W_out a_t + b_out
        let c = &mut c_all[step * b * h..(step + 1) * b * h];
        c.chunks_mut(h).for_each(|r| r.copy_from_slice(b_out));
        matmul(c, h, Mat::new(a_next, b, a), w_out_t, true); // [B, H]
        let pre = &mut pre_all[step * b * h..(step + 1) * b * h];
        for i in 0..b {
            let drive = &w.core_drive[usize::from(job.bit(t, i))][..h];
            let (zi, ci) = (&z[i * n_rec..i * n_rec + h], &c[i * h..(i + 1) * h]);
            let (prev, next, pi) = (&h_prev[i * h..(i + 1) * h], &mut h_next[i * h..(i + 1) * h], &mut pre[i * h..(i + 1) * h]);
            for ((p, &zv), (&d, &cv)) in pi.iter_mut().zip(zi).zip(drive.iter().zip(ci)) {
                *p = zv + d + cv;
            }
            for ((n, &p), &old) in next.iter_mut().zip(pi.iter()).zip(prev) {
                let act = leaky_relu(p, slope);
                *n = act - (act - old) * keep;
            }
        }
    }
    if store { t_len } else { t_len % 2 }
}

/// Back through time from the final state's gradient in `s.dh`: per step the gradients of the
/// core's and the module's inputs to LeakyReLU, [T, rows, H + A] in `s.dz`; the module's state
/// carries its own gradient.
#[inline(never)]
pub(super) fn backward_steps<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>) {
    let (h, a) = (w.dims.hidden as usize, w.dims.module_units() as usize);
    let n_rec = h + a;
    let b = job.rows;
    let t_len = job.batch.len;
    let dz = sized(&mut s.dz, t_len * b * n_rec);
    let d_states = sized(&mut s.d_states, 2 * b * a);
    d_states.fill(T::zero());
    let (mut da, mut da_next) = d_states.split_at_mut(b * a);
    let mut dh: &mut [T] = &mut s.dh[..b * h];
    let mut dh_next: &mut [T] = sized(&mut s.dh_next, b * h);
    let (alpha, keep, slope) = (T::of(ALPHA), T::one() - T::of(ALPHA), T::of(NEGATIVE_SLOPE));
    let w_rec = w.w_rec.block(n_rec, h); // [H + A, H]
    let (w_aa, w_out) = (w.w_pc.mat(), w.w_dcn.mat()); // W_aa [A, A], W_out [H, A]
    for t in (0..t_len).rev() {
        let (pre, u) = (&s.a[t * b * h..(t + 1) * b * h], &s.g[t * b * a..(t + 1) * b * a]);
        let dzt = &mut dz[t * b * n_rec..(t + 1) * b * n_rec];
        for ((dzi, pi), dhi) in dzt.chunks_mut(n_rec).zip(pre.chunks(h)).zip(dh.chunks(h)) {
            for ((d, &p), &x) in dzi[..h].iter_mut().zip(pi).zip(dhi) {
                let scaled = x * alpha;
                *d = if p > T::zero() { scaled } else { scaled * slope };
            }
        }
        // a_t fed this step's core through W_out
        matmul(da, a, Mat::strided(dzt, b, h, n_rec), w_out, true); // [B, A]
        for ((dzi, ui), dai) in dzt.chunks_mut(n_rec).zip(u.chunks(a)).zip(da.chunks(a)) {
            for ((d, &v), &x) in dzi[h..].iter_mut().zip(ui).zip(dai) {
                let scaled = x * alpha;
                *d = if v > T::zero() { scaled } else { scaled * slope };
            }
        }
        da_next.iter_mut().zip(da.iter()).for_each(|(n, &d)| *n = d * keep);
        matmul(da_next, a, Mat::strided(&dzt[h..], b, a, n_rec), w_aa, true); // [B, A]
        dh_next.iter_mut().zip(dh.iter()).for_each(|(n, &d)| *n = d * keep);
        matmul(dh_next, h, Mat::new(dzt, b, n_rec), w_rec, true); // [B, H]
        std::mem::swap(&mut dh, &mut dh_next);
        std::mem::swap(&mut da, &mut da_next);
    }
}

/// Every step's contribution to the weight gradients, as one product over T x rows each.
#[inline(never)]
pub(super) fn weight_grads<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) {
    let (h, a) = (w.dims.hidden as usize, w.dims.module_units() as usize);
    let n_rec = h + a;
    let b = job.rows;
    let k = job.batch.len * b;
    let layout = w.layout;
    let dz = &s.dz[..k * n_rec];
    let (d_core, d_module) = (Mat::strided(dz, k, h, n_rec), Mat::strided(&dz[h..], k, a, n_rec));
    let h_prev = Mat::new(&s.hs[..k * h], k, h);
    matmul(layout.get_mut(grads, model::W_H), h, d_core.t(), h_prev, true);
    let (mut d_wx, mut d_bias) = (vec![T::zero(); h], vec![T::zero(); h]);
    let (mut d_in_x, mut d_in_bias) = (vec![T::zero(); a], vec![T::zero(); a]);
    for t in 0..job.batch.len {
        for i in 0..b {
            let x = job.bit(t, i);
            let row = &dz[(t * b + i) * n_rec..(t * b + i + 1) * n_rec];
            add(&mut d_bias, &row[..h]);
            add(&mut d_in_bias, &row[h..]);
            if x {
                add(&mut d_wx, &row[..h]);
                add(&mut d_in_x, &row[h..]);
            }
        }
    }
    add(layout.get_mut(grads, model::W_X), &d_wx);
    add(layout.get_mut(grads, model::B_X), &d_bias);
    add(layout.get_mut(grads, model::B_H), &d_bias);
    let w_in = layout.get_mut(grads, model::W_IN);
    matmul(w_in, h + 1, d_module.t(), h_prev, true); // [A, H] of [A, H + 1]
    for j in 0..a {
        w_in[j * (h + 1) + h] += d_in_x[j];
    }
    add(layout.get_mut(grads, model::B_IN), &d_in_bias);
    add(layout.get_mut(grads, model::B_AA), &d_in_bias);
    // a_{t-1} for W_aa, a_t for W_out
    let a_prev = Mat::new(&s.states[..k * a], k, a);
    let a_next = Mat::new(&s.states[b * a..(k + b) * a], k, a);
    matmul(layout.get_mut(grads, model::W_AA), a, d_module.t(), a_prev, true); // [A, A]
    matmul(layout.get_mut(grads, model::W_OUT), a, d_core.t(), a_next, true); // [H, A]
    add(layout.get_mut(grads, model::B_OUT), &d_bias);
}
