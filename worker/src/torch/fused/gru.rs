//! The GRU core on the CPU engine (docs/science.md#gru-variant), with the cerebellar module
//! (the CB-GRU) or without (the GRU), forward and back through time in the Elman time loop's
//! way (`forward`, `backward`): `model::unroll_gru`'s arithmetic. Per step forward: the state's
//! product with the stacked [W_hh; W_gc[:, :H]] (gates r, z, n, then the granule layer), the
//! Purkinje and deep-nuclei products, then the gates, the module's output rescaled per sequence
//! to at most `GRU_CB_NORM_RATIO` times the norm of the rest of the candidate's pre-activation,
//! and the update; backward, those products' transposes; the weight gradients as products over
//! T x rows at the end.

use super::cerebellum;
use super::matmul::{Mat, Real, matmul};
use super::step::{Job, NEGATIVE_SLOPE, Prepared, Scratch, add, leaky_relu, sized, two_slots};
use crate::torch::model::{self, CbOutput, GRU_CB_NORM_RATIO, MIN_SQUARED_NORM};

/// The rescaling of one sequence's module output at one step, from the squared norms of the
/// rest of the candidate's pre-activation and of the raw output: the norms (clamped from below
/// as `model`'s), their ratio x `GRU_CB_NORM_RATIO` and the scale (that ratio, at most 1). NaN
/// stays NaN, as libtorch's clamps keep it.
#[derive(Clone, Copy)]
struct Rescale<T> {
    rest: T,
    raw: T,
    ratio: T,
    scale: T,
}

impl<T: Real> Rescale<T> {
    fn of(rest_squared: T, raw_squared: T) -> Self {
        let floor = T::of(MIN_SQUARED_NORM);
        let norm = |v: T| if v < floor { floor } else { v }.sqrt();
        let (rest, raw) = (norm(rest_squared), norm(raw_squared));
        let ratio = rest * T::of(GRU_CB_NORM_RATIO) / raw;
        Rescale { rest, raw, ratio, scale: if ratio > T::one() { T::one() } else { ratio } }
    }
}

/// Sigmoid as 1 / (1 + e^-x).
#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// libtorch's lerp(start, end, weight): start + weight (end - start) below a weight of 0.5, else
/// end - (end - start) (1 - weight).
#[inline(always)]
fn lerp<T: Real>(start: T, end: T, weight: T) -> T {
    if weight.abs() < T::of(0.5) { start + weight * (end - start) } else { end - (end - start) * (T::one() - weight) }
}

/// Whether the module's output enters this run's candidate.
fn module_on<T: Real>(w: &Prepared<'_, T>, cb: CbOutput) -> bool {
    w.dims.arch.module().is_some() && cb == CbOutput::On
}

/// The time loop of `job` (`forward::forward`'s contract). Keeps, with `store`, the gates and the
/// candidate's pre-activation without the module in `s.gates`, and with the module its layers'
/// activity in `s.g`, `s.p`, its raw output in `s.c` and the squared norms in `s.norms`.
#[inline(never)]
pub(super) fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let module = module_on(w, cb);
    let n_rec = if module { 3 * h + g } else { 3 * h };
    let b = job.rows;
    let t_len = job.batch.len;
    let steps = if store { t_len } else { 1 };
    let (slots, slot) = if store { (t_len + 1, 1) } else { (2, 0) };
    let hs = sized(&mut s.hs, slots * b * h);
    let gates_all = sized(&mut s.gates, steps * b * 4 * h);
    let g_all = sized(&mut s.g, if module { steps * b * g } else { 0 });
    let p_all = sized(&mut s.p, if module { steps * b * p } else { 0 });
    let c_all = sized(&mut s.c, if module { steps * b * h } else { 0 });
    let norms_all = sized(&mut s.norms, if module { steps * b * 2 } else { 0 });
    let z = sized(&mut s.z, b * n_rec);
    for (dst, src) in hs[..b * h].iter_mut().zip(job.h0) {
        *dst = T::of(*src);
    }
    // the stacked product's columns: all of [3H + G] with the module, the gates' 3H without it
    let w_rec_t = w.w_rec_t.block(h, n_rec);
    let b_hh = w.w(model::B_H);
    let slope = T::of(NEGATIVE_SLOPE);
    for t in 0..t_len {
        let (cur, next) = if store { (t, t + 1) } else { (t % 2, (t + 1) % 2) };
        let step = t * slot;
        let (h_prev, h_next) = two_slots(hs, cur, next, b * h);
        matmul(z, n_rec, Mat::new(h_prev, b, h), w_rec_t, false); // [B, 3H (+ G)]
        if module {
            let (gt, pt) = (&mut g_all[step * b * g..(step + 1) * b * g], &mut p_all[step * b * p..(step + 1) * b * p]);
            let c = &mut c_all[step * b * h..(step + 1) * b * h];
            cerebellum::forward_step(w, job, t, z, n_rec, 3 * h, gt, pt, c);
        }
        let gates = &mut gates_all[step * b * 4 * h..(step + 1) * b * 4 * h];
        for i in 0..b {
            let drive = &w.core_drive[usize::from(job.bit(t, i))];
            let zi = &z[i * n_rec..i * n_rec + 3 * h];
            let gi = &mut gates[i * 4 * h..(i + 1) * 4 * h];
            let (r, tail) = gi.split_at_mut(h);
            let (zg, tail) = tail.split_at_mut(h);
            let (hn, rest) = tail.split_at_mut(h);
            for j in 0..h {
                r[j] = sigmoid(drive[j] + (zi[j] + b_hh[j]));
                zg[j] = sigmoid(drive[h + j] + (zi[h + j] + b_hh[h + j]));
                hn[j] = zi[2 * h + j] + b_hh[2 * h + j];
                rest[j] = drive[2 * h + j] + r[j] * hn[j];
            }
            let (prev, next) = (&h_prev[i * h..(i + 1) * h], &mut h_next[i * h..(i + 1) * h]);
            if module {
                let raw = &c_all[(step * b + i) * h..(step * b + i + 1) * h];
                let squared = |v: &[T]| v.iter().map(|&x| x * x).sum::<T>();
                let (rest_squared, raw_squared) = (squared(rest), squared(raw));
                norms_all[(step * b + i) * 2..(step * b + i) * 2 + 2].copy_from_slice(&[rest_squared, raw_squared]);
                let scale = Rescale::of(rest_squared, raw_squared).scale;
                for j in 0..h {
                    let n = leaky_relu(rest[j] + raw[j] * scale, slope);
                    next[j] = lerp(n, prev[j], zg[j]);
                }
            } else {
                for j in 0..h {
                    next[j] = lerp(leaky_relu(rest[j], slope), prev[j], zg[j]);
                }
            }
        }
    }
    if store { t_len } else { t_len % 2 }
}

/// Turns the raw module outputs of a stored run of `rows` sequences over `steps` steps in `s.c`
/// into the outputs as they entered the candidate (rescaled), for the analyses' drives.
pub(super) fn rescale_outputs<T: Real>(s: &mut Scratch<T>, h: usize, rows: usize, steps: usize) {
    let c = &mut s.c[..steps * rows * h];
    for (out, norms) in c.chunks_mut(h).zip(s.norms.chunks(2)) {
        let scale = Rescale::of(norms[0], norms[1]).scale;
        out.iter_mut().for_each(|v| *v = *v * scale);
    }
}

/// Back through time from the final state's gradient in `s.dh`: per step the gradients of the
/// recurrent product's outputs ([r, z, n] pre-activations on the state's side and the granule
/// layer's, [T, rows, 3H (+ G)] in `s.dz`), of the candidate's input side (`s.d_candidate`), of
/// the module's raw output (`s.d_output`) and of the Purkinje layer's pre-activation (`s.dp`).
#[inline(never)]
pub(super) fn backward_steps<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let module = module_on(w, CbOutput::On);
    let n_rec = if module { 3 * h + g } else { 3 * h };
    let b = job.rows;
    let t_len = job.batch.len;
    let dz = sized(&mut s.dz, t_len * b * n_rec);
    let d_candidate = sized(&mut s.d_candidate, t_len * b * h);
    let d_output = sized(&mut s.d_output, if module { t_len * b * h } else { 0 });
    let dp_all = sized(&mut s.dp, if module { t_len * b * p } else { 0 });
    let mut dh: &mut [T] = &mut s.dh[..b * h];
    let mut dh_next: &mut [T] = sized(&mut s.dh_next, b * h);
    let slope = T::of(NEGATIVE_SLOPE);
    let (floor, bound) = (T::of(MIN_SQUARED_NORM), T::of(GRU_CB_NORM_RATIO));
    let w_rec = w.w_rec.block(n_rec, h); // [3H (+ G), H]
    for t in (0..t_len).rev() {
        let dzt = &mut dz[t * b * n_rec..(t + 1) * b * n_rec];
        for i in 0..b {
            let gi = &s.gates[(t * b + i) * 4 * h..(t * b + i + 1) * 4 * h];
            let (r, zg, hn, rest) = (&gi[..h], &gi[h..2 * h], &gi[2 * h..3 * h], &gi[3 * h..]);
            let prev = &s.hs[(t * b + i) * h..(t * b + i + 1) * h];
            let dhi = &dh[i * h..(i + 1) * h];
            let dzi = &mut dzt[i * n_rec..i * n_rec + 3 * h];
            let dci = &mut d_candidate[(t * b + i) * h..(t * b + i + 1) * h];
            // h_t = (1 - z) n + z h_{t-1}; the candidate's pre-activation's gradient into `dci`
            let raw = if module { &s.c[(t * b + i) * h..(t * b + i + 1) * h] } else { &[][..] };
            let rescale = module.then(|| Rescale::of(s.norms[(t * b + i) * 2], s.norms[(t * b + i) * 2 + 1]));
            let scale = rescale.map_or(T::zero(), |r| r.scale);
            for j in 0..h {
                let pre = if module { rest[j] + raw[j] * scale } else { rest[j] };
                let n = leaky_relu(pre, slope);
                let dn = dhi[j] * (T::one() - zg[j]);
                dzi[h + j] = dhi[j] * (prev[j] - n) * (zg[j] * (T::one() - zg[j]));
                dci[j] = if pre > T::zero() { dn } else { dn * slope };
            }
            if let Some(rs) = rescale {
                // pre = rest + raw x scale, scale = min(bound |rest| / |raw|, 1)
                let doi = &mut d_output[(t * b + i) * h..(t * b + i + 1) * h];
                let d_scale: T = dci.iter().zip(raw).map(|(&d, &v)| d * v).sum();
                doi.iter_mut().zip(dci.iter()).for_each(|(o, &d)| *o = d * rs.scale);
                // libtorch's clamp_max passes the gradient where its input is at most the bound
                if rs.ratio <= T::one() {
                    let d_rest_norm = d_scale * bound / rs.raw;
                    let d_raw_norm = -(d_scale * rs.ratio / rs.raw);
                    // and clamp_min where its input is at least the floor
                    if s.norms[(t * b + i) * 2] >= floor {
                        let f = d_rest_norm / rs.rest;
                        dci.iter_mut().zip(rest).for_each(|(d, &v)| *d += f * v);
                    }
                    if s.norms[(t * b + i) * 2 + 1] >= floor {
                        let f = d_raw_norm / rs.raw;
                        doi.iter_mut().zip(raw).for_each(|(d, &v)| *d += f * v);
                    }
                }
            }
            // rest = n_in + r (W_hn h + b_hn)
            for j in 0..h {
                dzi[j] = dci[j] * hn[j] * (r[j] * (T::one() - r[j]));
                dzi[2 * h + j] = dci[j] * r[j];
            }
            dh_next[i * h..(i + 1) * h].iter_mut().zip(dhi.iter().zip(zg)).for_each(|(n, (&d, &zv))| *n = d * zv);
        }
        if module {
            let (gt, pt) = (&s.g[t * b * g..(t + 1) * b * g], &s.p[t * b * p..(t + 1) * b * p]);
            let dpt = &mut dp_all[t * b * p..(t + 1) * b * p];
            cerebellum::purkinje_step(w, Mat::new(&d_output[t * b * h..(t + 1) * b * h], b, h), pt, dpt);
            cerebellum::granule_step(w, dpt, gt, &mut dzt[3 * h..], n_rec);
        }
        matmul(dh_next, h, Mat::new(dzt, b, n_rec), w_rec, true); // [B, H]
        std::mem::swap(&mut dh, &mut dh_next);
    }
}

/// Every step's contribution to the weight gradients, as one product over T x rows each.
#[inline(never)]
pub(super) fn weight_grads<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) {
    let (h, g) = (w.dims.hidden as usize, w.dims.granule as usize);
    let module = module_on(w, CbOutput::On);
    let n_rec = if module { 3 * h + g } else { 3 * h };
    let b = job.rows;
    let k = job.batch.len * b;
    let layout = w.layout;
    let dz = &s.dz[..k * n_rec];
    let h_prev = Mat::new(&s.hs[..k * h], k, h);
    matmul(layout.get_mut(grads, model::W_H), h, Mat::strided(dz, k, 3 * h, n_rec).t(), h_prev, true); // [3H, H]
    // b_hh takes the state side's gradients, b_ih and W_ih the input side's (r, z, and n's own)
    let (mut d_ih, mut d_hh, mut d_wx) = (vec![T::zero(); 3 * h], vec![T::zero(); 3 * h], vec![T::zero(); 3 * h]);
    for t in 0..job.batch.len {
        for i in 0..b {
            let x = job.bit(t, i);
            let row = &dz[(t * b + i) * n_rec..(t * b + i) * n_rec + 3 * h];
            let candidate = &s.d_candidate[(t * b + i) * h..(t * b + i + 1) * h];
            add(&mut d_hh, row);
            add(&mut d_ih[..2 * h], &row[..2 * h]);
            add(&mut d_ih[2 * h..], candidate);
            if x {
                add(&mut d_wx[..2 * h], &row[..2 * h]);
                add(&mut d_wx[2 * h..], candidate);
            }
        }
    }
    add(layout.get_mut(grads, model::W_X), &d_wx);
    add(layout.get_mut(grads, model::B_X), &d_ih);
    add(layout.get_mut(grads, model::B_H), &d_hh);
    if module {
        let stored = cerebellum::Stored {
            dz,
            n_rec,
            offset: 3 * h,
            h_prev: &s.hs,
            granule: &s.g,
            purkinje: &s.p,
            d_purkinje: &s.dp,
            d_output: &s.d_output[..k * h],
            ld_output: h,
        };
        cerebellum::weight_grads(w, job, &stored, grads);
    }
}
