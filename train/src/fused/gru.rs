//! The GRU core on the CPU engine (docs/science.md#gru-variant), the lab's cell, with the
//! cerebellar module (the CB-GRU) or without (the GRU), forward and back through time in the
//! Elman time loop's way (`forward`, `backward`): `model::unroll_gru`'s arithmetic. Per step
//! forward: the state's product with the stacked [W_hr; W_hz; W_gc[:, :H]] (gates r and z, then
//! the granule layer), the Purkinje and deep-nuclei products, the reset state's product with
//! W_hn, then the module's output rescaled per sequence to at most `GRU_CB_NORM_RATIO` times the
//! norm of the rest of the candidate's pre-activation (that norm a constant, as the lab's
//! no_grad makes it), and the update; backward, those products' transposes; the weight
//! gradients as products over T x rows at the end.

use super::cerebellum;
use super::matmul::{Mat, Real, matmul};
use super::step::{Job, NEGATIVE_SLOPE, Prepared, Scratch, add, leaky_relu, sized, two_slots};
use crate::model::{self, CbOutput, GRU_CB_NORM_RATIO, GRU_MIN_NORM};

/// The rescaling of one sequence's module output at one step, from the squared norms of the
/// rest of the candidate's pre-activation and of the raw output: the raw output's norm (clamped
/// from below as `model`'s), the ratio GRU_CB_NORM_RATIO x (the rest's clamped norm) / that
/// norm, and the scale (that ratio, at most 1). NaN stays NaN, as libtorch's clamps keep it.
#[derive(Clone, Copy)]
struct Rescale<T> {
    raw: T,
    ratio: T,
    scale: T,
}

impl<T: Real> Rescale<T> {
    fn of(rest_squared: T, raw_squared: T) -> Self {
        let floor = T::of(GRU_MIN_NORM);
        let norm = |v: T| {
            let n = v.sqrt();
            if n < floor { floor } else { n }
        };
        let raw = norm(raw_squared);
        let ratio = norm(rest_squared) * T::of(GRU_CB_NORM_RATIO) / raw;
        Rescale { raw, ratio, scale: if ratio > T::one() { T::one() } else { ratio } }
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
/// candidate's pre-activation without the module in `s.gates`, the reset states in `s.reset`, and
/// with the module its layers' activity in `s.g`, `s.p`, its raw output in `s.c` and the squared
/// norms in `s.norms`.
#[inline(never)]
pub(super) fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let module = module_on(w, cb);
    let n_rec = if module { 2 * h + g } else { 2 * h };
    let b = job.rows;
    let t_len = job.batch.len;
    let steps = if store { t_len } else { 1 };
    let (slots, slot) = if store { (t_len + 1, 1) } else { (2, 0) };
    let hs = sized(&mut s.hs, slots * b * h);
    let gates_all = sized(&mut s.gates, steps * b * 3 * h);
    let reset_all = sized(&mut s.reset, steps * b * h);
    let g_all = sized(&mut s.g, if module { steps * b * g } else { 0 });
    let p_all = sized(&mut s.p, if module { steps * b * p } else { 0 });
    let c_all = sized(&mut s.c, if module { steps * b * h } else { 0 });
    let norms_all = sized(&mut s.norms, if module { steps * b * 2 } else { 0 });
    let z = sized(&mut s.z, b * n_rec);
    job.load_initial(h, 0, &mut hs[..b * h], None);
    // the stacked product's columns: all of [2H + G] with the module, the gates' 2H without it
    let w_rec_t = w.w_rec_t.block(h, n_rec);
    let slope = T::of(NEGATIVE_SLOPE);
    for t in 0..t_len {
        let (cur, next) = if store { (t, t + 1) } else { (t % 2, (t + 1) % 2) };
        let step = t * slot;
        let (h_prev, h_next) = two_slots(hs, cur, next, b * h);
        matmul(z, n_rec, Mat::new(h_prev, b, h), w_rec_t, false); // [B, 2H (+ G)]
        if module {
            let (gt, pt) = (&mut g_all[step * b * g..(step + 1) * b * g], &mut p_all[step * b * p..(step + 1) * b * p]);
            let c = &mut c_all[step * b * h..(step + 1) * b * h];
            cerebellum::forward_step(w, job, t, z, n_rec, 2 * h, gt, pt, c);
        }
        let gates = &mut gates_all[step * b * 3 * h..(step + 1) * b * 3 * h];
        let reset = &mut reset_all[step * b * h..(step + 1) * b * h];
        for i in 0..b {
            let drive = &w.core_drive[usize::from(job.bit(t, i))];
            let zi = &z[i * n_rec..i * n_rec + 2 * h];
            let (gi, ri) = (&mut gates[i * 3 * h..(i + 1) * 3 * h], &mut reset[i * h..(i + 1) * h]);
            let prev = &h_prev[i * h..(i + 1) * h];
            let (r, tail) = gi.split_at_mut(h);
            let (zg, c) = tail.split_at_mut(h);
            for j in 0..h {
                r[j] = sigmoid(drive[j] + zi[j]);
                zg[j] = sigmoid(drive[h + j] + zi[h + j]);
                ri[j] = r[j] * prev[j];
            }
            // the candidate's input side and both biases, to which W_hn (r h) adds
            c.copy_from_slice(&drive[2 * h..]);
        }
        matmul(&mut gates[2 * h..], 3 * h, Mat::new(reset, b, h), w.w_hn_t.mat(), true); // [B, H] of [B, 3H]
        for i in 0..b {
            let c = &gates[i * 3 * h + 2 * h..(i + 1) * 3 * h];
            let zg = &gates[i * 3 * h + h..i * 3 * h + 2 * h];
            let (prev, next) = (&h_prev[i * h..(i + 1) * h], &mut h_next[i * h..(i + 1) * h]);
            if module {
                let raw = &c_all[(step * b + i) * h..(step * b + i + 1) * h];
                let squared = |v: &[T]| v.iter().map(|&x| x * x).sum::<T>();
                let (rest_squared, raw_squared) = (squared(c), squared(raw));
                norms_all[(step * b + i) * 2..(step * b + i) * 2 + 2].copy_from_slice(&[rest_squared, raw_squared]);
                let scale = Rescale::of(rest_squared, raw_squared).scale;
                for j in 0..h {
                    next[j] = lerp(prev[j], leaky_relu(c[j] + raw[j] * scale, slope), zg[j]);
                }
            } else {
                for j in 0..h {
                    next[j] = lerp(prev[j], leaky_relu(c[j], slope), zg[j]);
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
/// stacked product's outputs (the r and z pre-activations on the state's side and the granule
/// layer's, [T, rows, 2H (+ G)] in `s.dz`), of the candidate's pre-activation without the module
/// (`s.d_candidate`), of the module's raw output (`s.d_output`) and of the Purkinje layer's
/// pre-activation (`s.dp`).
#[inline(never)]
pub(super) fn backward_steps<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let module = module_on(w, CbOutput::On);
    let n_rec = if module { 2 * h + g } else { 2 * h };
    let b = job.rows;
    let t_len = job.batch.len;
    let dz = sized(&mut s.dz, t_len * b * n_rec);
    let d_candidate = sized(&mut s.d_candidate, t_len * b * h);
    let d_output = sized(&mut s.d_output, if module { t_len * b * h } else { 0 });
    let dp_all = sized(&mut s.dp, if module { t_len * b * p } else { 0 });
    let d_reset = sized(&mut s.d_reset, b * h);
    let mut dh: &mut [T] = &mut s.dh[..b * h];
    let mut dh_next: &mut [T] = sized(&mut s.dh_next, b * h);
    let (slope, floor) = (T::of(NEGATIVE_SLOPE), T::of(GRU_MIN_NORM));
    let w_rec = w.w_rec.block(n_rec, h); // [2H (+ G), H]
    for t in (0..t_len).rev() {
        let dzt = &mut dz[t * b * n_rec..(t + 1) * b * n_rec];
        let dct = &mut d_candidate[t * b * h..(t + 1) * b * h];
        for i in 0..b {
            let gi = &s.gates[(t * b + i) * 3 * h..(t * b + i + 1) * 3 * h];
            let (zg, c) = (&gi[h..2 * h], &gi[2 * h..]);
            let prev = &s.hs[(t * b + i) * h..(t * b + i + 1) * h];
            let dhi = &dh[i * h..(i + 1) * h];
            let dzi = &mut dzt[i * n_rec..i * n_rec + 2 * h];
            let dci = &mut dct[i * h..(i + 1) * h];
            // h_t = (1 - z) h_{t-1} + z n; the candidate's pre-activation's gradient into `dci`
            let raw = if module { &s.c[(t * b + i) * h..(t * b + i + 1) * h] } else { &[][..] };
            let rescale = module.then(|| Rescale::of(s.norms[(t * b + i) * 2], s.norms[(t * b + i) * 2 + 1]));
            let scale = rescale.map_or(T::zero(), |r| r.scale);
            for j in 0..h {
                let pre = if module { c[j] + raw[j] * scale } else { c[j] };
                let n = leaky_relu(pre, slope);
                let dn = dhi[j] * zg[j];
                dzi[h + j] = dhi[j] * (n - prev[j]) * (zg[j] * (T::one() - zg[j]));
                dci[j] = if pre > T::zero() { dn } else { dn * slope };
            }
            if let Some(rs) = rescale {
                // pre = c + raw x scale, scale = min(bound |c| / |raw|, 1) with |c| a constant:
                // c's gradient is dci as it stands, raw's through the scale too
                let doi = &mut d_output[(t * b + i) * h..(t * b + i + 1) * h];
                doi.iter_mut().zip(dci.iter()).for_each(|(o, &d)| *o = d * rs.scale);
                // libtorch's clamp_max passes the gradient where its input is at most the bound,
                // clamp_min where its input is at least the floor
                if rs.ratio <= T::one() && s.norms[(t * b + i) * 2 + 1].sqrt() >= floor {
                    let d_scale: T = dci.iter().zip(raw).map(|(&d, &v)| d * v).sum();
                    let f = -(d_scale * rs.ratio / rs.raw) / rs.raw;
                    doi.iter_mut().zip(raw).for_each(|(d, &v)| *d += f * v);
                }
            }
            dh_next[i * h..(i + 1) * h].iter_mut().zip(dhi.iter().zip(zg)).for_each(|(n, (&d, &zv))| *n = d * (T::one() - zv));
        }
        // c = W_xn x + b_xn + W_hn (r h) + b_hn: the reset state's gradient dc W_hn
        matmul(d_reset, h, Mat::new(dct, b, h), w.w_hn.mat(), false); // [B, H]
        for i in 0..b {
            let r = &s.gates[(t * b + i) * 3 * h..(t * b + i) * 3 * h + h];
            let prev = &s.hs[(t * b + i) * h..(t * b + i + 1) * h];
            let dri = &d_reset[i * h..(i + 1) * h];
            let dzi = &mut dzt[i * n_rec..i * n_rec + h];
            let dhi = &mut dh_next[i * h..(i + 1) * h];
            for j in 0..h {
                dzi[j] = dri[j] * prev[j] * (r[j] * (T::one() - r[j]));
                dhi[j] += dri[j] * r[j];
            }
        }
        if module {
            let (gt, pt) = (&s.g[t * b * g..(t + 1) * b * g], &s.p[t * b * p..(t + 1) * b * p]);
            let dpt = &mut dp_all[t * b * p..(t + 1) * b * p];
            cerebellum::purkinje_step(w, Mat::new(&d_output[t * b * h..(t + 1) * b * h], b, h), pt, dpt);
            cerebellum::granule_step(w, dpt, gt, &mut dzt[2 * h..], n_rec);
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
    let n_rec = if module { 2 * h + g } else { 2 * h };
    let b = job.rows;
    let k = job.batch.len * b;
    let layout = w.layout;
    let dz = &s.dz[..k * n_rec];
    let d_candidate = &s.d_candidate[..k * h];
    let h_prev = Mat::new(&s.hs[..k * h], k, h);
    let (w_hrz, w_hn) = layout.get_mut(grads, model::W_H).split_at_mut(2 * h * h);
    matmul(w_hrz, h, Mat::strided(dz, k, 2 * h, n_rec).t(), h_prev, true); // [2H, H]
    matmul(w_hn, h, Mat::new(d_candidate, k, h).t(), Mat::new(&s.reset[..k * h], k, h), true); // [H, H]
    // every bias adds where its gate's input layer does: b_x and b_h take the same gradients
    let (mut d_bias, mut d_wx) = (vec![T::zero(); 3 * h], vec![T::zero(); 3 * h]);
    for t in 0..job.batch.len {
        for i in 0..b {
            let row = &dz[(t * b + i) * n_rec..(t * b + i) * n_rec + 2 * h];
            let candidate = &d_candidate[(t * b + i) * h..(t * b + i + 1) * h];
            add(&mut d_bias[..2 * h], row);
            add(&mut d_bias[2 * h..], candidate);
            if job.bit(t, i) {
                add(&mut d_wx[..2 * h], row);
                add(&mut d_wx[2 * h..], candidate);
            }
        }
    }
    add(layout.get_mut(grads, model::W_X), &d_wx);
    add(layout.get_mut(grads, model::B_X), &d_bias);
    add(layout.get_mut(grads, model::B_H), &d_bias);
    if module {
        let stored = cerebellum::Stored {
            dz,
            n_rec,
            offset: 2 * h,
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
