//! The CPU engine: the forward pass and a hand-written backward pass through time of one trial's
//! model (cb-rnn-spec.md, "Models"), on host memory, with `gemm`'s AVX-512/AVX2 kernels.
//!
//! Why it exists: on a CPU the cost of these small networks is per-operation overhead and small
//! matrix products, not arithmetic (issue 7). libtorch's autograd records ~40 operations per time
//! step and runs every weight-gradient product once per step with 64 rows. Here a time step is
//! three products forward and three backward; the input bit is a select, not a product; bias,
//! activation and leak are one pass; and the weight gradients of all T steps are three large
//! products at the end (K = T x 32 instead of 32).
//!
//! Work is split into jobs of one trial, one batch and at most `CHUNK` sequences, spread over the
//! rayon pool. Job sizes depend on neither the pack nor the thread count, and the per-trial sums
//! run in job order, so a trial's numbers are the same alone or packed, on 1 thread or 16.
//!
//! Layouts follow libtorch's: a trial's parameters are one flat vector, each parameter
//! row-major in `Dims::param_specs` order; activations are [T, rows, units].

// `gemm` is an unsafe API over raw pointers; `matmul` is the one place that calls it, behind
// bounds checks on every operand.
#![allow(unsafe_code)]

use super::model::{self, ALPHA, CbOutput, Dims, Module};
use super::tasks::TaskBatch;
use super::train::Learning;
use cbsweep_common::{Arch, TrainBudget};
use rayon::prelude::*;
use std::sync::Mutex;

/// Sequences per job: the study's whole batch of 64. Halving it kept two cores busy on a pack
/// of one trial but cost about 1.3x per trial-step (smaller products); packs fill the cores.
pub(crate) const CHUNK: usize = 64;

/// LeakyReLU's negative slope (libtorch's default, as in `model`).
const NEGATIVE_SLOPE: f64 = 0.01;

/// The floating-point types the engine computes in: f32 for training, f64 for the cross-check
/// against the PyTorch reference.
pub(crate) trait Real:
    num_traits::Float + std::ops::AddAssign + std::iter::Sum + Default + Send + Sync + std::fmt::Debug + 'static
{
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// A strided matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows` x `cols` at the start of `data`.
    fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// Row-major with row stride `rs` (a block of columns of a wider matrix).
    fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat { data, rows, cols, rs, cs: 1 }
    }

    fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = lhs . rhs`, or `dst += lhs . rhs` with `accumulate`; `dst` is row-major with row
/// stride `ld`. Panics when an operand does not fit its slice.
fn matmul<T: Real>(dst: &mut [T], ld: usize, lhs: Mat<'_, T>, rhs: Mat<'_, T>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions of a product");
    assert!(lhs.fits() && rhs.fits(), "a product's operand exceeds its slice");
    assert!(m == 0 || n == 0 || (m - 1) * ld + n <= dst.len(), "a product's result exceeds its slice");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * ld..i * ld + n].fill(T::zero()));
        }
        return;
    }
    // SAFETY: the asserts above keep every element gemm reads or writes inside the three slices,
    // and `dst` is borrowed mutably, so it cannot overlap `lhs` or `rhs`. T is f32 or f64 (Real),
    // both of which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Where each parameter lives in a trial's flat vector.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// (offset, length) per parameter, in `Dims::param_specs` order.
    spans: Vec<(usize, usize)>,
    modules: Vec<Module>,
    total: usize,
}

impl Layout {
    pub(crate) fn of(dims: &Dims) -> Self {
        let mut spans = Vec::new();
        let mut modules = Vec::new();
        let mut total = 0;
        for p in dims.param_specs() {
            let n = p.shape.iter().product::<i64>() as usize;
            spans.push((total, n));
            modules.push(p.module);
            total += n;
        }
        Layout { spans, modules, total }
    }

    fn get<'a, T>(&self, flat: &'a [T], param: usize) -> &'a [T] {
        let (at, n) = self.spans[param];
        &flat[at..at + n]
    }

    fn get_mut<'a, T>(&self, flat: &'a mut [T], param: usize) -> &'a mut [T] {
        let (at, n) = self.spans[param];
        &mut flat[at..at + n]
    }
}

/// One trial's host state: parameters, Nesterov buffers and per-module rates.
#[derive(Clone, Debug)]
struct Row<T> {
    params: Vec<T>,
    momentum: Vec<T>,
    /// Learning rate per module, in `Module::ALL` order.
    rates: [T; 3],
}

/// Buffers one job works in, reused from job to job (page faults of fresh megabyte buffers
/// would cost more than the arithmetic).
#[derive(Default)]
struct Scratch<T> {
    /// States h_0 .. h_T, [T + 1, rows, H] (two slots when nothing is stored).
    hs: Vec<T>,
    /// The core's input to LeakyReLU, [T, rows, H].
    a: Vec<T>,
    /// Granule and Purkinje activity, [T, rows, G] and [T, rows, P].
    g: Vec<T>,
    p: Vec<T>,
    /// Recurrent products [rows, H (+ G)], module output [T, rows, H], logits [rows, 2].
    z: Vec<T>,
    c: Vec<T>,
    logits: Vec<T>,
    /// Gradients: of [a | granule pre-activation] per step [T, rows, H (+ G)], of the Purkinje
    /// pre-activation [T, rows, P], and of the state (two buffers).
    dz: Vec<T>,
    dp: Vec<T>,
    dh: Vec<T>,
    dh_next: Vec<T>,
}

fn sized<T: Real>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::zero());
    }
    &mut v[..n]
}

/// A trial's weights laid out for the time loop: the core's and the granule layer's recurrent
/// weights stacked, [W_h; W_gc[:, :H]] ([H + G, H]), every forward weight also transposed (the
/// kernels run fastest on a row-major right operand), and the constant drives of the core and
/// the granule layer for an input bit of 0 and of 1 (the input's product is a select).
struct Prepared<'a, T> {
    dims: Dims,
    layout: &'a Layout,
    params: &'a [T],
    /// [H + G, H] and its transpose [H, H + G] (the RNN: W_h and its transpose).
    w_rec: Vec<T>,
    w_rec_t: Vec<T>,
    /// W_pc^T [G, P], W_dcn^T [P, H], W_o^T [H, 2].
    w_pc_t: Vec<T>,
    w_dcn_t: Vec<T>,
    w_o_t: Vec<T>,
    /// b_x + b_h (+ W_x for a 1 bit), [H] each.
    core_drive: [Vec<T>; 2],
    /// b_gc (+ W_gc[:, H] for a 1 bit), [G] each.
    granule_drive: [Vec<T>; 2],
}

fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..cols).flat_map(|j| (0..rows).map(move |i| m[i * cols + j])).collect()
}

impl<'a, T: Real> Prepared<'a, T> {
    fn new(dims: Dims, layout: &'a Layout, params: &'a [T]) -> Self {
        let (h, g, p) = (dims.hidden as usize, dims.granule as usize, dims.purkinje as usize);
        let w = |i| layout.get(params, i);
        let mut w_rec = w(model::W_H).to_vec();
        let cb = dims.arch == Arch::Cbrnn;
        if cb {
            for row in w(model::W_GC).chunks(h + 1) {
                w_rec.extend_from_slice(&row[..h]);
            }
        }
        let n_rec = w_rec.len() / h;
        let w_rec_t = transpose(&w_rec, n_rec, h);
        let core_bias: Vec<T> = w(model::B_X).iter().zip(w(model::B_H)).map(|(&a, &b)| a + b).collect();
        let core_one = core_bias.iter().zip(w(model::W_X)).map(|(&b, &x)| b + x).collect();
        let (w_pc_t, w_dcn_t, granule_drive) = if cb {
            let b_gc = w(model::B_GC).to_vec();
            let one = b_gc.iter().zip(w(model::W_GC).chunks(h + 1)).map(|(&b, row)| b + row[h]).collect();
            (transpose(w(model::W_PC), p, g), transpose(w(model::W_DCN), h, p), [b_gc, one])
        } else {
            (Vec::new(), Vec::new(), [Vec::new(), Vec::new()])
        };
        Prepared {
            dims,
            layout,
            params,
            w_rec,
            w_rec_t,
            w_pc_t,
            w_dcn_t,
            w_o_t: transpose(w(model::W_O), 2, h),
            core_drive: [core_bias, core_one],
            granule_drive,
        }
    }

    fn w(&self, param: usize) -> &'a [T] {
        self.layout.get(self.params, param)
    }

    /// Units of the stacked recurrent product with the module `cb`.
    fn n_rec(&self, cb: CbOutput) -> usize {
        let h = self.dims.hidden as usize;
        if self.module_on(cb) { h + self.dims.granule as usize } else { h }
    }

    fn module_on(&self, cb: CbOutput) -> bool {
        self.dims.arch == Arch::Cbrnn && cb == CbOutput::On
    }
}

/// One job: sequences `start .. start + rows` of one batch of one trial (row of the pack).
struct Job<'a> {
    row: usize,
    batch: &'a TaskBatch,
    h0: &'a [f64],
    start: usize,
    rows: usize,
    /// 1 / (sequences of the trial in this call): the loss is a mean over them.
    scale: f64,
}

impl Job<'_> {
    fn width(&self) -> usize {
        self.batch.labels.len()
    }

    fn bit(&self, t: usize, i: usize) -> bool {
        self.batch.bits[t * self.width() + self.start + i] != 0
    }

    fn label(&self, i: usize) -> usize {
        self.batch.labels[self.start + i] as usize
    }
}

fn jobs(per_row: &[Vec<(TaskBatch, Vec<f64>)>]) -> Vec<Job<'_>> {
    let mut out = Vec::new();
    for (row, batches) in per_row.iter().enumerate() {
        let n: usize = batches.iter().map(|(b, _)| b.labels.len()).sum();
        for (batch, h0) in batches {
            let width = batch.labels.len();
            let hidden = h0.len() / width.max(1);
            for start in (0..width).step_by(CHUNK) {
                let rows = CHUNK.min(width - start);
                let h0 = &h0[start * hidden..(start + rows) * hidden];
                out.push(Job { row, batch, h0, start, rows, scale: 1.0 / n as f64 });
            }
        }
    }
    out
}

/// Runs the time loop of `job` and leaves the final state in `s.hs` (slot `final_slot`); with
/// `store`, every step's activity is kept for the backward pass.
#[inline(never)]
fn forward<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, cb: CbOutput, store: bool, s: &mut Scratch<T>) -> usize {
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
    for (dst, src) in hs[..b * h].iter_mut().zip(job.h0) {
        *dst = T::of(*src);
    }
    // the stacked product's columns: all of [H + G] with the module, the core's H without it
    let w_rec_t = Mat::strided(&w.w_rec_t, h, n_rec, w.w_rec_t.len() / h);
    let (keep, slope) = (T::one() - T::of(ALPHA), T::of(NEGATIVE_SLOPE));
    for t in 0..t_len {
        let (cur, next) = if store { (t, t + 1) } else { (t % 2, (t + 1) % 2) };
        let step = t * slot;
        let (h_prev, h_next) = if cur < next {
            let (lo, hi) = hs.split_at_mut(next * b * h);
            (&lo[cur * b * h..], &mut hi[..b * h])
        } else {
            let (lo, hi) = hs.split_at_mut(cur * b * h);
            (&hi[..b * h], &mut lo[next * b * h..(next + 1) * b * h])
        };
        matmul(z, n_rec, Mat::new(h_prev, b, h), w_rec_t, false);
        if module {
            let gt = &mut g_all[step * b * g..(step + 1) * b * g];
            for (i, (zi, gi)) in z.chunks(n_rec).zip(gt.chunks_mut(g)).enumerate() {
                let drive = &w.granule_drive[usize::from(job.bit(t, i))];
                for ((out, &rec), &d) in gi.iter_mut().zip(&zi[h..]).zip(drive) {
                    *out = (rec + d).max(T::zero());
                }
            }
            let pt = &mut p_all[step * b * p..(step + 1) * b * p];
            let b_pc = w.w(model::B_PC);
            pt.chunks_mut(p).for_each(|r| r.copy_from_slice(b_pc));
            matmul(pt, p, Mat::new(gt, b, g), Mat::new(&w.w_pc_t, g, p), true);
            pt.iter_mut().for_each(|v| *v = v.max(T::zero()));
            let b_dcn = w.w(model::B_DCN);
            let c = &mut c_all[step * b * h..(step + 1) * b * h];
            c.chunks_mut(h).for_each(|r| r.copy_from_slice(b_dcn));
            matmul(c, h, Mat::new(pt, b, p), Mat::new(&w.w_dcn_t, p, h), true);
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
fn readout<T: Real>(w: &Prepared<'_, T>, rows: usize, last: usize, s: &mut Scratch<T>) {
    let h = w.dims.hidden as usize;
    let state = &s.hs[last * rows * h..(last + 1) * rows * h];
    let logits = sized(&mut s.logits, rows * 2);
    let b_o = w.w(model::B_O);
    logits.chunks_mut(2).for_each(|r| r.copy_from_slice(b_o));
    matmul(logits, 2, Mat::new(state, rows, h), Mat::new(&w.w_o_t, h, 2), true);
}

/// Forward and backward of one job: adds the gradient of (sum of its sequences' losses) x
/// `job.scale` to `grads` (a trial's flat layout) and returns the summed loss.
fn train_job<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) -> f64 {
    let h = w.dims.hidden as usize;
    let b = job.rows;
    let last = forward(w, job, CbOutput::On, true, s);
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

    backward_steps(w, job, s);
    weight_grads(w, job, s, grads);
    loss * job.scale
}

/// Back through time from the state's gradient in `s.dh`: per step the gradients of the core's
/// and granule layer's pre-activations (`s.dz`) and of the Purkinje layer's (`s.dp`).
#[inline(never)]
fn backward_steps<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>) {
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
    let w_rec = Mat::new(&w.w_rec[..n_rec * h], n_rec, h);
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
            let (gt, pt) = (&s.g[t * b * g..(t + 1) * b * g], &s.p[t * b * p..(t + 1) * b * p]);
            let dpt = &mut dp_all[t * b * p..(t + 1) * b * p];
            matmul(dpt, p, Mat::strided(dzt, b, h, n_rec), Mat::new(w.w(model::W_DCN), h, p), false);
            dpt.iter_mut().zip(pt).for_each(|(d, &v)| *d = if v > T::zero() { *d } else { T::zero() });
            let (_, dg) = dzt.split_at_mut(h);
            matmul(dg, n_rec, Mat::new(dpt, b, p), Mat::new(w.w(model::W_PC), p, g), false);
            for (dgi, gi) in dg.chunks_mut(n_rec).zip(gt.chunks(g)) {
                for (d, &v) in dgi[..g].iter_mut().zip(gi) {
                    *d = if v > T::zero() { *d } else { T::zero() };
                }
            }
        }
        dh_next.iter_mut().zip(dh.iter()).for_each(|(n, &d)| *n = d * keep);
        matmul(dh_next, h, Mat::new(dzt, b, n_rec), w_rec, true);
        std::mem::swap(&mut dh, &mut dh_next);
    }
}

/// Every step's contribution to the weight gradients, as one product over T x rows each.
#[inline(never)]
fn weight_grads<T: Real>(w: &Prepared<'_, T>, job: &Job<'_>, s: &mut Scratch<T>, grads: &mut [T]) {
    let (h, g, p) = (w.dims.hidden as usize, w.dims.granule as usize, w.dims.purkinje as usize);
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
    let mut d_gx = vec![T::zero(); if module { g } else { 0 }];
    let mut d_bgc = vec![T::zero(); if module { g } else { 0 }];
    for t in 0..t_len {
        for i in 0..b {
            let x = job.bit(t, i);
            let row = &dz[(t * b + i) * n_rec..(t * b + i + 1) * n_rec];
            for j in 0..h {
                d_bias[j] += row[j];
                if x {
                    d_wx[j] += row[j];
                }
            }
            for j in 0..d_gx.len() {
                d_bgc[j] += row[h + j];
                if x {
                    d_gx[j] += row[h + j];
                }
            }
        }
    }
    add(layout.get_mut(grads, model::W_X), &d_wx);
    add(layout.get_mut(grads, model::B_X), &d_bias);
    add(layout.get_mut(grads, model::B_H), &d_bias);
    if module {
        let w_gc = layout.get_mut(grads, model::W_GC);
        matmul(w_gc, h + 1, Mat::strided(&dz[h..], k, g, n_rec).t(), Mat::new(h_prev, k, h), true);
        for j in 0..g {
            w_gc[j * (h + 1) + h] += d_gx[j];
        }
        add(layout.get_mut(grads, model::B_GC), &d_bgc);
        let dp = &s.dp[..k * p];
        matmul(layout.get_mut(grads, model::W_PC), g, Mat::new(dp, k, p).t(), Mat::new(&s.g[..k * g], k, g), true);
        add_column_sums(layout.get_mut(grads, model::B_PC), dp, p);
        let d_a = Mat::strided(dz, k, h, n_rec).t();
        matmul(layout.get_mut(grads, model::W_DCN), p, d_a, Mat::new(&s.p[..k * p], k, p), true);
        add(layout.get_mut(grads, model::B_DCN), &d_bias);
    }
}

/// `PackedModel::unroll` on the CPU engine: runs the time loop of every row of the pack on host
/// memory and hands `observe` each step's activity, as libtorch tensors [M, B, units]. Only for
/// a float32 pack on the CPU and an input without padding (every sequence as long as the
/// input); returns None otherwise, having observed nothing. The analyses' long drives (the
/// timescales' thousands of steps) take this path.
pub(crate) fn unroll(
    model: &model::PackedModel,
    input: &model::PackedInput,
    cb: CbOutput,
    observe: &mut dyn FnMut(model::Step<'_>) -> Result<(), tch::TchError>,
) -> Result<Option<tch::Tensor>, tch::TchError> {
    use tch::{Device, Kind, Tensor};
    let (t_len, m, b) = input.x.size3()?;
    let first = model.params().first();
    if first.map(Tensor::kind) != Some(Kind::Float) || first.map(Tensor::device) != Some(Device::Cpu) || input.min_len < t_len {
        return Ok(None);
    }
    let dims = *model.dims();
    let (t_len, m, b, h) = (t_len as usize, m as usize, b as usize, dims.hidden as usize);
    let (g, p) = (dims.granule as usize, dims.purkinje as usize);
    let pack = FusedPack::<f32>::from_tensors(dims, model.params(), model.params(), &vec![[0.0; 3]; m])?;
    let x = Vec::<f32>::try_from(&input.x.f_flatten(0, -1)?)?; // [T, M, B]
    let h0 = Vec::<f64>::try_from(&input.h0.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)?; // [M, B, H]
    let batches: Vec<TaskBatch> = (0..m)
        .map(|row| TaskBatch {
            len: t_len,
            bits: (0..t_len).flat_map(|t| x[(t * m + row) * b..(t * m + row + 1) * b].iter().map(|&v| u8::from(v != 0.0))).collect(),
            labels: vec![0; b],
        })
        .collect();
    let runs: Vec<Scratch<f32>> = (0..m)
        .into_par_iter()
        .map(|row| {
            let w = Prepared::new(dims, &pack.layout, &pack.rows[row].params);
            let job = Job { row, batch: &batches[row], h0: &h0[row * b * h..(row + 1) * b * h], start: 0, rows: b, scale: 1.0 };
            let mut s = Scratch::default();
            forward(&w, &job, cb, true, &mut s);
            s
        })
        .collect();
    let module = dims.arch == Arch::Cbrnn && cb == CbOutput::On;
    // rows' slices of one step, stacked [M, B, units]
    let stacked = |part: &dyn Fn(&Scratch<f32>) -> &[f32], units: usize| -> Result<Tensor, tch::TchError> {
        let values: Vec<f32> = runs.iter().flat_map(|s| part(s).iter().copied()).collect();
        Tensor::f_from_slice(&values)?.f_view([m as i64, b as i64, units as i64])
    };
    for t in 0..t_len {
        let (at, n) = ((t + 1) * b * h, b * h);
        let hidden = stacked(&|s| &s.hs[at..at + n], h)?;
        let module_parts = if module {
            Some([
                stacked(&|s| &s.g[t * b * g..(t + 1) * b * g], g)?,
                stacked(&|s| &s.p[t * b * p..(t + 1) * b * p], p)?,
                stacked(&|s| &s.c[t * b * h..(t + 1) * b * h], h)?,
            ])
        } else {
            None
        };
        let [granule, purkinje, output] = match &module_parts {
            Some([g, p, c]) => [Some(g), Some(p), Some(c)],
            None => [None; 3],
        };
        observe(model::Step { t: t as i64, activity: [Some(&hidden), granule, purkinje, output] })?;
    }
    let last = t_len * b * h;
    Ok(Some(stacked(&|s| &s.hs[last..last + b * h], h)?))
}

fn add<T: Real>(dst: &mut [T], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

/// Adds the column sums of row-major `m` (`cols` wide) to `dst`.
fn add_column_sums<T: Real>(dst: &mut [T], m: &[T], cols: usize) {
    let mut sums = vec![T::zero(); cols];
    for row in m.chunks(cols) {
        add(&mut sums, row);
    }
    add(dst, &sums);
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

    /// One Nesterov SGD step per row with the row's `flags`, from `grads` (as `loss_and_grads`
    /// returns them), with per-trial clipping over the trainable parameters; returns each row's
    /// pre-clip gradient norm. The same arithmetic as `PackRun`'s libtorch step: frozen modules
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

    #[cfg(test)]
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl Layout {
    /// Splits a trial's flat vector into its parameters, in `param_specs` order.
    #[cfg(test)]
    pub(crate) fn split<'a, T>(&self, flat: &'a [T]) -> Vec<&'a [T]> {
        (0..self.spans.len()).map(|i| self.get(flat, i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::model::{PackedModel, cross_entropy};
    use crate::torch::tasks::{self, Stream, draw_batch, draw_h0};
    use crate::torch::tests::{one_thread, small_spec};
    use crate::torch::train::pack_batches;
    use cbsweep_common::{Regime, Seed, Task, TrialSpec};
    use tch::{Device, Kind, Tensor};

    /// Per trial of a pack, its batches with their initial states.
    type Batches = Vec<Vec<(TaskBatch, Vec<f64>)>>;

    /// Three trials with the module's weights made large enough to matter, and per trial two
    /// batches of 40 sequences (one job each) at different lengths.
    fn setup(arch: Arch) -> (Dims, PackedModel, Batches) {
        let dims = Dims { arch, hidden: 12, granule: 20, purkinje: 7 };
        let specs: Vec<TrialSpec> = (31..34).map(|s| small_spec(s, Task::Parity, arch, Regime::Simult)).collect();
        let model = crate::torch::tests::model_with_active_module(dims, &specs, 77);
        let per_row = (0..3u32)
            .map(|m| {
                let mut rng = tasks::stream(Seed(200 + u64::from(m)), Stream::TrainData);
                (0..2).map(|_| (draw_batch(&mut rng, Task::Parity, 2 + m, 40), draw_h0(&mut rng, 40, 12))).collect()
            })
            .collect();
        (dims, model, per_row)
    }

    fn host(model: &PackedModel) -> FusedPack<f64> {
        let momentum: Vec<Tensor> = model.params().iter().map(Tensor::zeros_like).collect();
        FusedPack::from_tensors(*model.dims(), model.params(), &momentum, &[[0.1, 0.1, 0.1]; 3]).unwrap()
    }

    fn assert_close(ours: &[f64], reference: &[f64], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        let scale = reference.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-10 * scale, "{what}: max difference {diff} (scale {scale})");
    }

    /// The engine's losses, gradients and logits against libtorch's autograd in float64 (which
    /// `model`'s tests check against an independent PyTorch reference).
    fn matches_autograd(arch: Arch) {
        one_thread();
        let (dims, model, per_row) = setup(arch);
        let (input, labels) = pack_batches(&per_row, dims.hidden, Kind::Double, Device::Cpu).unwrap();
        let logits = model.forward(&input, CbOutput::On).unwrap();
        let losses = cross_entropy(&logits, &labels).unwrap();
        let grads = Tensor::run_backward(&[losses.sum(None::<Kind>)], model.params(), false, false);

        let mut fused = host(&model);
        let (our_losses, our_grads) = fused.loss_and_grads(&per_row);
        assert_close(&our_losses, &Vec::<f64>::try_from(&losses.detach()).unwrap(), "losses");
        let layout = fused.layout().clone();
        for (i, spec) in dims.param_specs().iter().enumerate() {
            for (row, ours) in our_grads.iter().enumerate() {
                let reference = Vec::<f64>::try_from(&grads[i].get(row as i64).flatten(0, -1)).unwrap();
                assert_close(layout.split(ours)[i], &reference, &format!("gradient of {} row {row}", spec.name));
            }
        }
        for cb in [CbOutput::On, CbOutput::Off] {
            let reference = model.forward(&input, cb).unwrap();
            let ours = fused.logits(&per_row, cb);
            for (row, ours) in ours.iter().enumerate() {
                let r = Vec::<f64>::try_from(&reference.get(row as i64).flatten(0, -1)).unwrap();
                assert_close(ours, &r, &format!("logits {cb:?} row {row}"));
            }
        }
    }

    #[test]
    fn cbrnn_gradients_and_logits_match_autograd() {
        matches_autograd(Arch::Cbrnn);
    }

    #[test]
    fn rnn_gradients_and_logits_match_autograd() {
        matches_autograd(Arch::Rnn);
    }

    #[test]
    fn a_trial_computes_the_same_alone_packed_and_on_any_thread_count() {
        let (_, model, per_row) = setup(Arch::Cbrnn);
        let (_, packed) = host(&model).loss_and_grads(&per_row);
        let one = PackedModel::from_tensors(*model.dims(), model.params().iter().map(|p| p.narrow(0, 1, 1)).collect()).unwrap();
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut alone_host = host_rows(&one, 1);
        let (_, alone) = single.install(|| alone_host.loss_and_grads(&per_row[1..2]));
        assert_eq!(packed[1], alone[0], "bit-identical gradients");
    }

    fn host_rows(model: &PackedModel, m: usize) -> FusedPack<f64> {
        let momentum: Vec<Tensor> = model.params().iter().map(Tensor::zeros_like).collect();
        FusedPack::from_tensors(*model.dims(), model.params(), &momentum, &vec![[0.1, 0.1, 0.1]; m]).unwrap()
    }

    /// Every step's activity and the final state of the engine's `unroll` against libtorch's, in
    /// float32, for the CB-RNN with its module on and off and for the plain RNN.
    #[test]
    fn unroll_observes_what_libtorch_computes() {
        one_thread();
        for (arch, cb) in [(Arch::Cbrnn, CbOutput::On), (Arch::Cbrnn, CbOutput::Off), (Arch::Rnn, CbOutput::On)] {
            let (dims, model, _) = setup(arch);
            let model = PackedModel::from_tensors(dims, model.params().iter().map(|p| p.to_kind(Kind::Float)).collect()).unwrap();
            let (t_len, m, b) = (60, 3, 8);
            let x = Tensor::randint(2, [t_len, m, b], (Kind::Float, Device::Cpu));
            let input = || crate::torch::model::PackedInput {
                x: x.shallow_clone(),
                lengths: Tensor::full([m, b], t_len, (Kind::Int64, Device::Cpu)),
                min_len: t_len,
                h0: Tensor::rand([m, b, dims.hidden], (Kind::Float, Device::Cpu)) * 0.1,
            };
            let first = input();
            let same_h0 = crate::torch::model::PackedInput { h0: first.h0.copy(), ..input() };
            let (mut ours, mut theirs): (Vec<Vec<Tensor>>, Vec<Vec<Tensor>>) = (Vec::new(), Vec::new());
            let our_state = unroll(&model, &first, cb, &mut |step| {
                ours.push(step.activity.iter().flatten().map(|t| t.copy()).collect());
                Ok(())
            })
            .unwrap()
            .expect("a float32 CPU pack");
            let their_state = model
                .unroll(&same_h0, cb, &mut |step| {
                    theirs.push(step.activity.iter().flatten().map(|t| t.copy()).collect());
                    Ok(())
                })
                .unwrap();
            assert_eq!(ours.len(), t_len as usize);
            let expected = if arch == Arch::Cbrnn && cb == CbOutput::On { 4 } else { 1 };
            for (t, (o, r)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!((o.len(), r.len()), (expected, expected), "{arch} {cb:?} step {t}: populations");
                for (a, b) in o.iter().zip(r) {
                    let diff = (a - b).abs().max().double_value(&[]);
                    assert!(diff < 1e-5, "{arch} {cb:?} step {t}: activity differs by {diff}");
                }
            }
            assert!((our_state - their_state).abs().max().double_value(&[]) < 1e-5);
            let padded = crate::torch::model::PackedInput { min_len: t_len - 1, ..input() };
            assert!(unroll(&model, &padded, cb, &mut |_| Ok(())).unwrap().is_none(), "padding goes to libtorch");
        }
    }

    #[test]
    fn matmul_handles_strided_operands() {
        // [2 x 3] . [3 x 2] with the rhs a transposed view, accumulated onto ones
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut dst = [1.0; 4];
        matmul(&mut dst, 2, Mat::new(&lhs, 2, 3), Mat::new(&rhs_t, 2, 3).t(), true);
        assert_eq!(dst, [1.0 - 2.0, 1.0 + 4.0, 1.0 - 2.0, 1.0 + 13.0]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::torch::model::{PackedModel, init_trial};
    use crate::torch::tasks::{self, Stream, draw_batch, draw_h0};
    use crate::torch::tests::small_spec;
    use cbsweep_common::{Regime, Seed, Task};

    #[test]
    #[ignore = "prints the time of each phase of a main-size training step"]
    fn phase_times() {
        let dims = Dims { arch: Arch::Cbrnn, hidden: 64, granule: 256, purkinje: 64 };
        let mut spec = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
        (spec.hidden, spec.granule, spec.purkinje) = (64, 256, 64);
        let model = PackedModel::from_host(dims, &[init_trial(&dims, &spec)], tch::Kind::Float, tch::Device::Cpu).unwrap();
        let momentum: Vec<tch::Tensor> = model.params().iter().map(tch::Tensor::zeros_like).collect();
        let pack = FusedPack::<f32>::from_tensors(dims, model.params(), &momentum, &[[0.01; 3]]).unwrap();
        let mut rng = tasks::stream(Seed(5), Stream::TrainData);
        let mut batch = draw_batch(&mut rng, Task::Dms, 10, 64);
        while batch.len != 26 {
            batch = draw_batch(&mut rng, Task::Dms, 10, 64);
        }
        let h0 = draw_h0(&mut rng, 64, 64);
        let job = Job { row: 0, batch: &batch, h0: &h0, start: 0, rows: 64, scale: 1.0 / 64.0 };
        let w = Prepared::new(dims, &pack.layout, &pack.rows[0].params);
        let mut s = Scratch::default();
        let mut grads = vec![0f32; pack.layout.total];
        let reps = 300;
        let (mut fwd, mut bwd, mut wg, mut prep) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..reps {
            let t0 = std::time::Instant::now();
            let _ = Prepared::new(dims, &pack.layout, &pack.rows[0].params);
            let t1 = std::time::Instant::now();
            let last = forward(&w, &job, CbOutput::On, true, &mut s);
            readout(&w, 64, last, &mut s);
            let t2 = std::time::Instant::now();
            sized(&mut s.dh, 64 * 64).fill(0.01);
            backward_steps(&w, &job, &mut s);
            let t3 = std::time::Instant::now();
            weight_grads(&w, &job, &mut s, &mut grads);
            let t4 = std::time::Instant::now();
            prep += (t1 - t0).as_secs_f64();
            fwd += (t2 - t1).as_secs_f64();
            bwd += (t3 - t2).as_secs_f64();
            wg += (t4 - t3).as_secs_f64();
        }
        let flop = 2.0 * 64.0 * 26.0 * (64.0 * 64.0 + 256.0 * 64.0 + 64.0 * 256.0 + 64.0 * 64.0);
        for (name, secs) in [("prepare", prep), ("forward", fwd), ("backward steps", bwd), ("weight gradients", wg)] {
            let us = secs / f64::from(reps) * 1e6;
            println!("{name:>17}: {us:8.1} us  {:6.1} GFLOP/s", flop / (us * 1e-6) / 1e9);
        }
        println!("total {:.1} us per trial-step", (prep + fwd + bwd + wg) / f64::from(reps) * 1e6);
    }

    #[test]
    #[ignore = "prints timings of the per-step products"]
    fn per_step_product_rates() {
        for (m, k, n, transposed) in [
            (64, 64, 320, false),
            (64, 64, 320, false),
            (64, 256, 64, false),
            (64, 64, 64, false),
            (64, 64, 256, false),
            (64, 320, 64, false),
            (320, 1664, 64, false),
            (64, 202, 202, false),
            (64, 208, 208, false),
            (64, 192, 192, false),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let reps = 20_000_000 / (m * n * k).max(1) + 10;
            let rhs = if transposed { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                matmul(&mut c, n, Mat::new(&a, m, k), rhs, true);
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "{m}x{k} . {k}x{n} (rhs transposed {transposed}): {:.1} GFLOP/s, {:.2} us",
                2.0 * (m * n * k * reps) as f64 / s / 1e9,
                s / reps as f64 * 1e6
            );
        }
        // weight gradients: dZ^T [320 x K] . H [K x 64] from row-major dZ [K x 320], or its transpose
        let (k, a_cols, b_cols) = (1664, 320, 64);
        let dz: Vec<f32> = (0..k * a_cols).map(|i| (i % 7) as f32 * 0.1).collect();
        let hh: Vec<f32> = (0..k * b_cols).map(|i| (i % 5) as f32 * 0.1).collect();
        for variant in 0..2 {
            let mut c = vec![0f32; a_cols * b_cols];
            let t0 = std::time::Instant::now();
            for _ in 0..20 {
                if variant == 0 {
                    matmul(&mut c, b_cols, Mat::new(&dz, k, a_cols).t(), Mat::new(&hh, k, b_cols), true);
                } else {
                    matmul(&mut c, a_cols, Mat::new(&hh, k, b_cols).t(), Mat::new(&dz, k, a_cols), true);
                }
            }
            let s = t0.elapsed().as_secs_f64();
            println!("weight gradient variant {variant}: {:.1} GFLOP/s", 2.0 * (k * a_cols * b_cols * 20) as f64 / s / 1e9);
        }
    }
}
