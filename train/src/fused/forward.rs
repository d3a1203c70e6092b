//! The CPU engine's forward pass for the Elman core (the RNN and the CB-RNN): the time loop of
//! one job with the readout, keeping every step's activity in the job's `Scratch` when a
//! backward pass follows.

use super::cerebellum;
use super::matmul::{Mat, Real, matmul};
use super::step::{Job, NEGATIVE_SLOPE, Prepared, Scratch, sized, two_slots};
use crate::model::{self, ALPHA, CbOutput};

/// Runs the time loop of `job` and leaves the final state in `s.hs` (slot `final_slot`); with
/// `store`, every step's activity is kept for the backward pass.
#[inline(never)]
pub(super) fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
    let b = job.rows;
    let t_len = job.batch.len;
    let module = w.module_on(cb);
    let n_rec = w.n_rec(cb);
    let steps = if store { t_len } else { 1 };
    let (hs_slots, slot) = if store { (t_len + 1, 1) } else { (2, 0) };
    let hs = sized(&mut s.hs, hs_slots * b * h);
    let a_all = sized(&mut s.a, steps * b * h);
    let g_all = sized(&mut s.g, if module { steps * b * g } else { 0 });
    let p_all = sized(&mut s.p, if module { steps * b * p } else { 0 });
    let z = sized(&mut s.z, b * n_rec);
    let c_all = sized(&mut s.c, if module { steps * b * h } else { 0 });
    // the recurrent-module control with its module switched off runs here: its a_0 stays unread
    job.load_initial(h, w.dims.module_units() as usize, &mut hs[..b * h], None);
    // the stacked product's columns: all of [H + G] with the module, the core's H without it
    let w_rec_t = w.w_rec_t.block(h, n_rec);
    let (keep, slope) = (T::one() - T::of(ALPHA), T::of(NEGATIVE_SLOPE));
    for t in 0..t_len {
        let (cur, next) = if store { (t, t + 1) } else { (t % 2, (t + 1) % 2) };
        let step = t * slot;
        let (h_prev, h_next) = two_slots(hs, cur, next, b * h);
        matmul(z, n_rec, Mat::new(h_prev, b, h), w_rec_t, false);
        if module {
            let (gt, pt) = (&mut g_all[step * b * g..(step + 1) * b * g], &mut p_all[step * b * p..(step + 1) * b * p]);
            let c = &mut c_all[step * b * h..(step + 1) * b * h];
            cerebellum::forward_step(w, job, t, z, n_rec, h, gt, pt, c);
        }
        let at = &mut a_all[step * b * h..(step + 1) * b * h];
        for i in 0..b {
            let drive = &w.core_drive[usize::from(job.bit(t, i))][..h];
            let (zi, ai) = (&z[i * n_rec..i * n_rec + h], &mut at[i * h..(i + 1) * h]);
            let (prev, next) = (&h_prev[i * h..(i + 1) * h], &mut h_next[i * h..(i + 1) * h]);
            if module {
                let ci = &c_all[(step * b + i) * h..(step * b + i + 1) * h];
                for ((a, &zv), (&d, &cv)) in ai.iter_mut().zip(zi).zip(drive.iter().zip(ci)) {
                    *a = zv + d + cv;
                }
            } else {
                for ((a, &zv), &d) in ai.iter_mut().zip(zi).zip(drive) {
                    *a = zv + d;
                }
            }
            for ((n, &pre), &old) in next.iter_mut().zip(ai.iter()).zip(prev) {
                let act = if pre > T::zero() { pre } else { pre * slope };
                // libtorch's lerp for a weight >= 0.5: end - (end - start) (1 - weight)
                *n = act - (act - old) * keep;
            }
        }
    }
    if store { t_len } else { t_len % 2 }
}

/// Logits of the final states in slot `last` of `s.hs`, into `s.logits` [rows, 2].
pub(super) fn readout<T: Real>(w: &Prepared<'_, T>, rows: usize, last: usize, s: &mut Scratch<T>) {
    let h = w.dims.hidden as usize;
    let state = &s.hs[last * rows * h..(last + 1) * rows * h];
    let logits = sized(&mut s.logits, rows * 2);
    let b_o = w.w(model::B_O);
    logits.chunks_mut(2).for_each(|r| r.copy_from_slice(b_o));
    matmul(logits, 2, Mat::new(state, rows, h), Mat::new(&w.w_o_t, h, 2), true);
}
