//! What every architecture's time loop shares: a trial's weights laid out for the loop
//! (`Prepared`), the jobs a pack's batches split into, the buffers a job works in (`Scratch`),
//! and small elementwise helpers.

use super::layout::Layout;
use super::matmul::{Real, Weight};
use crate::model::{self, CbOutput, Dims};
use crate::tasks::TaskBatch;
use cbsweep_common::{Arch, Core, ModuleKind};

/// Sequences per job: the study's whole batch of 64. Halving it kept two cores busy on a pack
/// of one trial but cost about 1.3x per trial-step (smaller products); packs fill the cores.
pub(super) const CHUNK: usize = 64;

/// LeakyReLU's negative slope (libtorch's default, as in `model`).
pub(super) const NEGATIVE_SLOPE: f64 = 0.01;

/// Buffers one job works in, reused from job to job (page faults of fresh megabyte buffers
/// would cost more than the arithmetic).
#[derive(Default)]
pub(super) struct Scratch<T> {
    /// States h_0 .. h_T, [T + 1, rows, H] (two slots when nothing is stored).
    pub(super) hs: Vec<T>,
    /// The core's input to LeakyReLU, [T, rows, H].
    pub(super) a: Vec<T>,
    /// Granule and Purkinje activity, [T, rows, G] and [T, rows, P].
    pub(super) g: Vec<T>,
    pub(super) p: Vec<T>,
    /// Recurrent products [rows, H (+ G)], module output [T, rows, H], logits [rows, 2].
    pub(super) z: Vec<T>,
    pub(super) c: Vec<T>,
    pub(super) logits: Vec<T>,
    /// Gradients: of [a | granule pre-activation] per step [T, rows, H (+ G)], of the Purkinje
    /// pre-activation [T, rows, P], and of the state (two buffers).
    pub(super) dz: Vec<T>,
    pub(super) dp: Vec<T>,
    pub(super) dh: Vec<T>,
    pub(super) dh_next: Vec<T>,
    /// The recurrent module (`recurrent`): its states a_0 .. a_T, [T + 1, rows, A] (two slots
    /// when nothing is stored; its input to LeakyReLU goes in `g`), and its state's gradient
    /// (two buffers [rows, A]).
    pub(super) states: Vec<T>,
    pub(super) d_states: Vec<T>,
    /// The GRU (`gru`): per step r, z and the candidate's pre-activation without the module's
    /// output c, [T, rows, 3H]; the reset state r h_{t-1}, [T, rows, H]; the squared norms of c
    /// and of the module's raw output, [T, rows, 2] (the raw output goes in `c`); the gradients
    /// of c and of the module's raw output, [T, rows, H] each, and of one step's reset state
    /// [rows, H].
    pub(super) gates: Vec<T>,
    pub(super) reset: Vec<T>,
    pub(super) norms: Vec<T>,
    pub(super) d_candidate: Vec<T>,
    pub(super) d_output: Vec<T>,
    pub(super) d_reset: Vec<T>,
}

pub(super) fn sized<T: Real>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::zero());
    }
    &mut v[..n]
}

/// Slot `cur` of `buf` (slots of `n` values) to read and slot `next` to write, `cur != next`.
pub(super) fn two_slots<T>(buf: &mut [T], cur: usize, next: usize, n: usize) -> (&[T], &mut [T]) {
    if cur < next {
        let (lo, hi) = buf.split_at_mut(next * n);
        (&lo[cur * n..(cur + 1) * n], &mut hi[..n])
    } else {
        let (lo, hi) = buf.split_at_mut(cur * n);
        (&hi[..n], &mut lo[next * n..(next + 1) * n])
    }
}

/// LeakyReLU with `NEGATIVE_SLOPE` (`slope`), as libtorch computes it.
#[inline(always)]
pub(super) fn leaky_relu<T: Real>(x: T, slope: T) -> T {
    if x > T::zero() { x } else { x * slope }
}

/// A trial's weights laid out for the time loop: the core's and the granule layer's recurrent
/// weights stacked, [W_h; W_gc[:, :H]] ([H + G, H]), every forward weight also transposed (the
/// kernels run fastest on a row-major right operand), and the constant drives of the core and
/// the granule layer for an input bit of 0 and of 1 (the input's product is a select). The
/// recurrent module's layers take the cerebellar module's places (its input layer the granule
/// layer's, W_aa and W_out those of W_pc and W_dcn); the GRU stacks the state layers of its r and
/// z gates ([2H, H], the first rows of W_h) where the Elman core has W_h, and keeps the n gate's
/// state layer W_hn ([H, H]) apart, as its product reads the reset state r h_{t-1}.
pub(super) struct Prepared<'a, T> {
    pub(super) dims: Dims,
    pub(super) layout: &'a Layout,
    pub(super) params: &'a [T],
    /// [H + G, H] and its transpose [H, H + G] (the RNN: W_h and its transpose; the recurrent
    /// module: [H + A, H]; the GRU: [2H (+ G), H]).
    pub(super) w_rec: Weight<T>,
    pub(super) w_rec_t: Weight<T>,
    /// W_pc [P, G] and W_dcn [H, P] for the backward pass, their transposes W_pc^T [G, P] and
    /// W_dcn^T [P, H] for the forward (the recurrent module: W_aa [A, A] and W_out [H, A]).
    pub(super) w_pc: Weight<T>,
    pub(super) w_dcn: Weight<T>,
    pub(super) w_pc_t: Weight<T>,
    pub(super) w_dcn_t: Weight<T>,
    /// The GRU's W_hn [H, H] for the backward pass and W_hn^T for the forward (no weight for
    /// the Elman core).
    pub(super) w_hn: Weight<T>,
    pub(super) w_hn_t: Weight<T>,
    /// W_o^T [H, 2].
    pub(super) w_o_t: Vec<T>,
    /// b_x + b_h (+ W_x for a 1 bit), [H] each (the GRU: [3H], gates r, z, n).
    pub(super) core_drive: [Vec<T>; 2],
    /// b_gc (+ W_gc[:, H] for a 1 bit), [G] each (the recurrent module: b_in + b_aa
    /// (+ W_in[:, H]), [A]).
    pub(super) granule_drive: [Vec<T>; 2],
}

/// `m` [rows, cols] transposed, in blocks of 16 x 16 (a column-by-column gather took most of a
/// step's preparation).
fn transpose<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    const BLOCK: usize = 16;
    let mut out = vec![T::zero(); rows * cols];
    for i0 in (0..rows).step_by(BLOCK) {
        for j0 in (0..cols).step_by(BLOCK) {
            for i in i0..(i0 + BLOCK).min(rows) {
                for j in j0..(j0 + BLOCK).min(cols) {
                    out[j * rows + i] = m[i * cols + j];
                }
            }
        }
    }
    out
}

impl<'a, T: Real> Prepared<'a, T> {
    pub(super) fn new(dims: Dims, layout: &'a Layout, params: &'a [T]) -> Self {
        let (h, g, p) = (dims.hidden as usize, dims.granule as usize, dims.purkinje as usize);
        let w = |i| layout.get(params, i);
        let module = dims.arch.module();
        // the GRU's n gate reads the reset state: its rows of W_h stay out of the stacked product
        let (w_h, w_hn) = match dims.arch.core() {
            Core::Elman => (w(model::W_H), &[][..]),
            Core::Gru => w(model::W_H).split_at(2 * h * h),
        };
        let mut w_rec = w_h.to_vec();
        if module.is_some() {
            // the module's input layer (W_gc or W_in, one position) on the state
            for row in w(model::W_GC).chunks(h + 1) {
                w_rec.extend_from_slice(&row[..h]);
            }
        }
        let n_rec = w_rec.len() / h;
        let w_rec_t = Weight::new(transpose(&w_rec, n_rec, h), h, n_rec);
        let w_rec = Weight::new(w_rec, n_rec, h);
        let core_bias: Vec<T> = w(model::B_X).iter().zip(w(model::B_H)).map(|(&a, &b)| a + b).collect();
        let (w_hn, w_hn_t) = match w_hn {
            [] => (Weight::none(), Weight::none()),
            _ => (Weight::new(w_hn.to_vec(), h, h), Weight::new(transpose(w_hn, h, h), h, h)),
        };
        let core_one = core_bias.iter().zip(w(model::W_X)).map(|(&b, &x)| b + x).collect();
        // the module's second and third layers, [P, G] and [H, P] (the recurrent module's W_aa
        // and W_out, [A, A] and [H, A]), as they are and transposed
        let weights = |second: &[T], (r2, c2): (usize, usize), third: &[T], (r3, c3): (usize, usize)| {
            let (w2, w3) = (Weight::new(second.to_vec(), r2, c2), Weight::new(third.to_vec(), r3, c3));
            let (w2_t, w3_t) = (Weight::new(transpose(second, r2, c2), c2, r2), Weight::new(transpose(third, r3, c3), c3, r3));
            [w2, w3, w2_t, w3_t]
        };
        let ([w_pc, w_dcn, w_pc_t, w_dcn_t], granule_drive) = match module {
            Some(ModuleKind::Cerebellar) => {
                let b_gc = w(model::B_GC).to_vec();
                let one = b_gc.iter().zip(w(model::W_GC).chunks(h + 1)).map(|(&b, row)| b + row[h]).collect();
                (weights(w(model::W_PC), (p, g), w(model::W_DCN), (h, p)), [b_gc, one])
            }
            Some(ModuleKind::Recurrent) => {
                let a = dims.module_units() as usize;
                let bias: Vec<T> = w(model::B_IN).iter().zip(w(model::B_AA)).map(|(&a, &b)| a + b).collect();
                let one = bias.iter().zip(w(model::W_IN).chunks(h + 1)).map(|(&b, row)| b + row[h]).collect();
                (weights(w(model::W_AA), (a, a), w(model::W_OUT), (h, a)), [bias, one])
            }
            None => ([Weight::none(), Weight::none(), Weight::none(), Weight::none()], [Vec::new(), Vec::new()]),
        };
        Prepared {
            dims,
            layout,
            params,
            w_rec,
            w_rec_t,
            w_pc,
            w_dcn,
            w_pc_t,
            w_dcn_t,
            w_hn,
            w_hn_t,
            w_o_t: transpose(w(model::W_O), 2, h),
            core_drive: [core_bias, core_one],
            granule_drive,
        }
    }

    pub(super) fn w(&self, param: usize) -> &'a [T] {
        self.layout.get(self.params, param)
    }

    /// Units of the stacked recurrent product with the module `cb`.
    pub(super) fn n_rec(&self, cb: CbOutput) -> usize {
        let h = self.dims.hidden as usize;
        if self.module_on(cb) { h + self.dims.granule as usize } else { h }
    }

    pub(super) fn module_on(&self, cb: CbOutput) -> bool {
        self.dims.arch == Arch::Cbrnn && cb == CbOutput::On
    }
}

/// One job: sequences `start .. start + rows` of one batch of one trial (row of the pack).
pub(super) struct Job<'a> {
    pub(super) row: usize,
    pub(super) batch: &'a TaskBatch,
    /// The sequences' initial states, [rows, S] (h_0, then the recurrent module's a_0).
    pub(super) initial: &'a [f64],
    pub(super) start: usize,
    pub(super) rows: usize,
    /// 1 / (sequences of the trial in this call): the loss is a mean over them.
    pub(super) scale: f64,
}

impl Job<'_> {
    fn width(&self) -> usize {
        self.batch.labels.len()
    }

    pub(super) fn bit(&self, t: usize, i: usize) -> bool {
        self.batch.bits[t * self.width() + self.start + i] != 0
    }

    pub(super) fn label(&self, i: usize) -> usize {
        self.batch.labels[self.start + i] as usize
    }

    /// Copies the sequences' h_0 into `h` ([rows, H]) and, given `a`, their a_0 into it
    /// ([rows, A]), from the initial states' rows of H + `units` (A, 0 without the recurrent
    /// module).
    pub(super) fn load_initial<T: Real>(&self, hidden: usize, units: usize, h: &mut [T], a: Option<&mut [T]>) {
        let rows = self.initial.chunks(hidden + units);
        for (dst, src) in h.chunks_mut(hidden).zip(rows.clone()) {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = T::of(v));
        }
        if let Some(a) = a {
            for (dst, src) in a.chunks_mut(units).zip(rows) {
                dst.iter_mut().zip(&src[hidden..]).for_each(|(d, &v)| *d = T::of(v));
            }
        }
    }
}

pub(super) fn jobs(per_row: &[Vec<(TaskBatch, Vec<f64>)>]) -> Vec<Job<'_>> {
    let mut out = Vec::new();
    for (row, batches) in per_row.iter().enumerate() {
        let n: usize = batches.iter().map(|(b, _)| b.labels.len()).sum();
        for (batch, initial) in batches {
            let width = batch.labels.len();
            let units = initial.len() / width.max(1);
            for start in (0..width).step_by(CHUNK) {
                let rows = CHUNK.min(width - start);
                let initial = &initial[start * units..(start + rows) * units];
                out.push(Job { row, batch, initial, start, rows, scale: 1.0 / n as f64 });
            }
        }
    }
    out
}

/// `dst += src`, element by element.
pub(super) fn add<T: Real>(dst: &mut [T], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

/// Adds the column sums of row-major `m` (`cols` wide) to `dst`.
pub(super) fn add_column_sums<T: Real>(dst: &mut [T], m: &[T], cols: usize) {
    let mut sums = vec![T::zero(); cols];
    for row in m.chunks(cols) {
        add(&mut sums, row);
    }
    add(dst, &sums);
}
