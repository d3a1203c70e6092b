//! The leaky Elman RNN and the CB-RNN (docs/science.md#models) for a pack of M trials: every
//! parameter carries a leading pack axis M and every product is a batched matmul, so M trials
//! with equal shapes run as one computation. M = 1 is not a special case.
//!
//! Weights are drawn per trial from the trial's own seeded Rust RNG (`tasks::Stream::Weights`)
//! and copied into the packed tensors, so a trial starts from the same numbers whatever pack it
//! is in. Also here: the per-trial loss and correct counts of a pack's logits, and its test
//! accuracy in passes (`count_correct`), which the libtorch engine and the ablation share.
//! Tests against the PyTorch reference live in `model/tests.rs`.

use super::input::{Batches, PackedInput, host_tensor, in_passes};
use super::tasks::{self, Stream};
use cbsweep_common::{Arch, TrialSpec};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use tch::{Device, Kind, TchError, Tensor};

/// Leak of the state update: a = 1 / tau with tau = 1.5.
pub(crate) const ALPHA: f64 = 1.0 / 1.5;

/// The parts of a model that learn at their own rate and freeze on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    /// W_x, b_x, W_h, b_h.
    Core,
    /// The 2-class linear readout.
    Readout,
    /// Granule, Purkinje and deep-nuclei layers.
    Cb,
}

impl Module {
    pub(crate) const ALL: [Module; 3] = [Module::Core, Module::Readout, Module::Cb];

    /// Position in `Module::ALL`, for per-module arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Module::Core => 0,
            Module::Readout => 1,
            Module::Cb => 2,
        }
    }
}

/// Whether the cerebellar output enters the core (ablation switches it off: b_cb = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CbOutput {
    On,
    Off,
}

/// The populations of units whose activity the analyses read (docs/science.md#analyses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Population {
    /// The core's state h_t.
    Hidden,
    /// The granule layer g_t.
    Granule,
    /// The Purkinje layer p_t.
    Purkinje,
    /// The module's output b_cb_t.
    CbOutput,
}

/// What one step of the time loop computed, for an observer of `PackedModel::unroll`.
pub(crate) struct Step<'a> {
    /// The step's index, 0-based.
    pub(crate) t: i64,
    /// Activity in `Population::ALL` order, [M, B, units] each; the module's populations are
    /// None for the plain RNN and with the module switched off.
    pub(crate) activity: [Option<&'a Tensor>; 4],
}

/// What a time loop calls with every step's activity.
pub(crate) type Observe<'o> = dyn FnMut(Step<'_>) -> Result<(), TchError> + 'o;

/// A time loop over a packed model with `PackedModel::unroll`'s contract; the analyses' long
/// drives run on the one the engine offers (`PackEngine::unroll`).
pub(crate) type Unroll<'u> = dyn Fn(&PackedModel, &PackedInput, CbOutput, &mut Observe<'_>) -> Result<Tensor, TchError> + 'u;

/// The tensor shapes shared by every trial of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) arch: Arch,
    pub(crate) hidden: i64,
    pub(crate) granule: i64,
    pub(crate) purkinje: i64,
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// U(-bound, bound), the linear-layer default with bound = 1 / sqrt(fan_in).
    Uniform {
        bound: f64,
    },
    /// N(0, std^2).
    Normal {
        std: f64,
    },
    Zeros,
}

/// One parameter of one trial: its name in the module tree, module, shape and init.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParamSpec {
    pub(crate) name: &'static str,
    pub(crate) module: Module,
    /// Shape of one trial's tensor (the packed tensor has M in front).
    pub(crate) shape: Vec<i64>,
    pub(crate) init: Init,
}

/// The parameters of M trials of one shape, each with the pack axis in front, in the order of
/// `Dims::param_specs`.
#[derive(Debug)]
pub(crate) struct PackedModel {
    dims: Dims,
    params: Vec<Tensor>,
}

/// The cerebellar module's tensors laid out for the time loop.
struct CbLayers {
    /// The granule layer's input drive per step.
    granule_in: Vec<Tensor>,
    w_pc: Tensor,
    b_pc: Tensor,
    w_dcn: Tensor,
    b_dcn: Tensor,
}

// Positions in `Dims::param_specs` (and `PackedModel::params`).
pub(crate) const W_X: usize = 0;
pub(crate) const B_X: usize = 1;
pub(crate) const W_H: usize = 2;
pub(crate) const B_H: usize = 3;
pub(crate) const W_O: usize = 4;
pub(crate) const B_O: usize = 5;
pub(crate) const W_GC: usize = 6;
pub(crate) const B_GC: usize = 7;
pub(crate) const W_PC: usize = 8;
pub(crate) const B_PC: usize = 9;
pub(crate) const W_DCN: usize = 10;
pub(crate) const B_DCN: usize = 11;

impl Population {
    pub(crate) const ALL: [Population; 4] = [Population::Hidden, Population::Granule, Population::Purkinje, Population::CbOutput];

    /// The name analyses report it under.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Population::Hidden => "hidden",
            Population::Granule => "granule",
            Population::Purkinje => "purkinje",
            Population::CbOutput => "cb_output",
        }
    }

    /// Position in `Population::ALL` (and in `Step::activity`).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The populations a model of `arch` has.
    pub(crate) fn of(arch: Arch) -> &'static [Population] {
        match arch {
            Arch::Rnn => &Population::ALL[..1],
            Arch::Cbrnn => &Population::ALL,
        }
    }

    /// Units in this population of a model of shape `dims`.
    pub(crate) fn size(self, dims: &Dims) -> i64 {
        match self {
            Population::Hidden | Population::CbOutput => dims.hidden,
            Population::Granule => dims.granule,
            Population::Purkinje => dims.purkinje,
        }
    }
}

impl Dims {
    pub(crate) fn of(spec: &TrialSpec) -> Dims {
        Dims { arch: spec.arch, hidden: i64::from(spec.hidden), granule: i64::from(spec.granule), purkinje: i64::from(spec.purkinje) }
    }

    /// Every parameter of one trial's model, in draw and storage order: core, readout, then the
    /// cerebellar module (CB-RNN only).
    pub(crate) fn param_specs(&self) -> Vec<ParamSpec> {
        let (h, g, p) = (self.hidden, self.granule, self.purkinje);
        let uniform = |fan_in: i64| Init::Uniform { bound: 1.0 / (fan_in as f64).sqrt() };
        let spec = |name, module, shape: &[i64], init| ParamSpec { name, module, shape: shape.to_vec(), init };
        let mut specs = vec![
            // input size 1: the input layer's fan-in is 1 for its weight and bias alike
            spec("core.w_x", Module::Core, &[h, 1], uniform(1)),
            spec("core.b_x", Module::Core, &[h], uniform(1)),
            spec("core.w_h", Module::Core, &[h, h], uniform(h)),
            spec("core.b_h", Module::Core, &[h], uniform(h)),
            spec("readout.weight", Module::Readout, &[2, h], uniform(h)),
            spec("readout.bias", Module::Readout, &[2], uniform(h)),
        ];
        if self.arch == Arch::Cbrnn {
            specs.extend([
                spec("cb.granule.weight", Module::Cb, &[g, h + 1], Init::Normal { std: 0.01 }),
                spec("cb.granule.bias", Module::Cb, &[g], Init::Zeros),
                spec("cb.purkinje.weight", Module::Cb, &[p, g], Init::Normal { std: 0.1 }),
                spec("cb.purkinje.bias", Module::Cb, &[p], Init::Zeros),
                spec("cb.dcn.weight", Module::Cb, &[h, p], Init::Normal { std: 0.1 }),
                spec("cb.dcn.bias", Module::Cb, &[h], Init::Zeros),
            ]);
        }
        specs
    }

    /// Trainable parameters of one trial's model.
    #[cfg(test)]
    pub(crate) fn param_count(&self) -> i64 {
        self.param_specs().iter().map(|s| s.shape.iter().product::<i64>()).sum()
    }
}

/// One trial's initial parameters, drawn from its own weight stream, in `param_specs` order.
pub(crate) fn init_trial(dims: &Dims, spec: &TrialSpec) -> Vec<Vec<f64>> {
    let mut rng = tasks::stream(spec.seed, Stream::Weights);
    dims.param_specs().iter().map(|p| draw_init(&mut rng, p)).collect()
}

fn draw_init(rng: &mut impl Rng, p: &ParamSpec) -> Vec<f64> {
    let n = p.shape.iter().product::<i64>() as usize;
    match p.init {
        Init::Uniform { bound } => (0..n).map(|_| bound * (2.0 * rng.random::<f64>() - 1.0)).collect(),
        Init::Normal { std } => {
            let normal = Normal::new(0.0, std).expect("a positive, finite standard deviation");
            (0..n).map(|_| normal.sample(rng)).collect()
        }
        Init::Zeros => vec![0.0; n],
    }
}

impl PackedModel {
    /// The models of `trials` (all of shape `dims`) packed along a leading axis, each with the
    /// weights its own seed gives.
    pub(crate) fn new(dims: Dims, trials: &[TrialSpec], kind: Kind, device: Device) -> Result<Self, TchError> {
        let inits: Vec<Vec<Vec<f64>>> = trials.iter().map(|t| init_trial(&dims, t)).collect();
        Self::from_host(dims, &inits, kind, device)
    }

    /// A pack built from given per-trial parameter values (`inits[trial][param]`).
    pub(crate) fn from_host(dims: Dims, inits: &[Vec<Vec<f64>>], kind: Kind, device: Device) -> Result<Self, TchError> {
        let m = inits.len() as i64;
        let params = dims
            .param_specs()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let values: Vec<f64> = inits.iter().flat_map(|trial| trial[i].iter().copied()).collect();
                let shape: Vec<i64> = std::iter::once(m).chain(p.shape.iter().copied()).collect();
                host_tensor(&values, &shape, kind, device)?.f_set_requires_grad(true)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PackedModel { dims, params })
    }

    /// A pack from packed tensors ([M, ...] each, in `Dims::param_specs` order), as new leaves.
    pub(crate) fn from_tensors(dims: Dims, params: Vec<Tensor>) -> Result<Self, TchError> {
        let params = params.into_iter().map(|p| p.f_detach()?.f_set_requires_grad(true)).collect::<Result<_, _>>()?;
        Ok(PackedModel { dims, params })
    }

    /// The packed parameters, in `Dims::param_specs` order.
    pub(crate) fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The shapes of the pack's trials.
    pub(crate) fn dims(&self) -> &Dims {
        &self.dims
    }

    /// Keeps only the trials at `rows` (int64 indices into the pack axis), as new leaf tensors.
    pub(crate) fn select(&self, rows: &Tensor) -> Result<Self, TchError> {
        let params =
            self.params.iter().map(|p| p.f_index_select(0, rows)?.f_detach()?.f_set_requires_grad(true)).collect::<Result<Vec<_>, _>>()?;
        Ok(PackedModel { dims: self.dims, params })
    }

    /// Logits of every trial's final states, [M, B, 2]. Each sequence runs for its own length;
    /// past it the state stays frozen, so padding changes nothing.
    pub(crate) fn forward(&self, input: &PackedInput, cb: CbOutput) -> Result<Tensor, TchError> {
        let state = self.unroll(input, cb, &mut |_| Ok(()))?; // [M, B, H]
        let w_o = self.params[W_O].f_transpose(1, 2)?; // [M, H, 2]
        self.params[B_O].f_unsqueeze(1)?.f_baddbmm(&state, &w_o, 1.0, 1.0) // [M, B, 2]
    }

    /// Runs the time loop from `input.h0` and returns the final states, [M, B, H]; `observe`
    /// sees every step's activity (the state recorded past a sequence's own length is its
    /// frozen final state).
    pub(crate) fn unroll(&self, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<Tensor, TchError> {
        let (t_max, _m, _b) = input.x.size3()?;
        let h = self.dims.hidden;
        let g = self.dims.granule;
        let p = &self.params;

        let x = input.x.f_unsqueeze(-1)?; // [T, M, B, 1]
        // input drive of the core for all steps at once: x_t W_x + b_x + b_h
        let core_bias = p[B_X].f_add(&p[B_H])?.f_unsqueeze(1)?; // [M, 1, H]
        let w_x = p[W_X].f_transpose(1, 2)?; // [M, 1, H]
        // Split into per-step views once: each step's `get(t)` would have its own backward that
        // fills a zero gradient of the whole [T, ...] tensor and adds it in, T full-size passes
        // per step and so quadratic in T; `unbind`'s one backward stacks the steps' gradients.
        let core_in = core_bias.f_addcmul(&x, &w_x)?.f_unbind(0)?; // T x [M, B, H]

        // the recurrent products of the core and of the granule layer share one matmul,
        // h [W_h; W_gc[:, :H]]^T, with the granule layer's input column applied apart
        let cb_layers = if self.dims.arch == Arch::Cbrnn && cb == CbOutput::On {
            let w_gc_x = p[W_GC].f_narrow(2, h, 1)?.f_transpose(1, 2)?; // [M, 1, G]
            Some(CbLayers {
                granule_in: p[B_GC].f_unsqueeze(1)?.f_addcmul(&x, &w_gc_x)?.f_unbind(0)?, // T x [M, B, G]
                w_pc: p[W_PC].f_transpose(1, 2)?,                                         // [M, G, P]
                b_pc: p[B_PC].f_unsqueeze(1)?,                                            // [M, 1, P]
                w_dcn: p[W_DCN].f_transpose(1, 2)?,                                       // [M, P, H]
                b_dcn: p[B_DCN].f_unsqueeze(1)?,                                          // [M, 1, H]
            })
        } else {
            None
        };
        let w_rec = match cb_layers {
            Some(_) => {
                let w_gc_h = p[W_GC].f_narrow(2, 0, h)?; // [M, G, H]
                Tensor::f_cat(&[&p[W_H], &w_gc_h], 1)?.f_transpose(1, 2)? // [M, H, H+G]
            }
            None => p[W_H].f_transpose(1, 2)?, // [M, H, H]
        };

        // active[t] = t < own length, [T, M, B, 1]; consulted from the shortest length on
        let steps = Tensor::f_arange(t_max, (Kind::Int64, input.x.device()))?.f_view([t_max, 1, 1])?; // [T, 1, 1]
        let active = input.lengths.f_unsqueeze(0)?.f_gt_tensor(&steps)?.f_unsqueeze(-1)?.f_unbind(0)?; // T x [M, B, 1]

        let mut state = input.h0.shallow_clone(); // [M, B, H]
        for t in 0..t_max {
            let rec = state.f_bmm(&w_rec)?; // [M, B, H] or [M, B, H+G]
            let mut pre = rec.f_narrow(2, 0, h)?.f_add(&core_in[t as usize])?; // [M, B, H]
            let mut module = None;
            if let Some(cb) = &cb_layers {
                let granule = rec.f_narrow(2, h, g)?.f_add(&cb.granule_in[t as usize])?.f_relu()?; // [M, B, G]
                let purkinje = cb.b_pc.f_baddbmm(&granule, &cb.w_pc, 1.0, 1.0)?.f_relu()?; // [M, B, P]
                let b_cb = cb.b_dcn.f_baddbmm(&purkinje, &cb.w_dcn, 1.0, 1.0)?; // [M, B, H]
                pre = pre.f_add(&b_cb)?;
                module = Some([granule, purkinje, b_cb]);
            }
            // (1 - a) h + a LeakyReLU(pre), negative slope 0.01 (libtorch's default)
            let next = state.f_lerp(&pre.f_leaky_relu()?, ALPHA)?; // [M, B, H]
            state = if t >= input.min_len { next.f_where_self(&active[t as usize], &state)? } else { next };
            let [granule, purkinje, b_cb] = match &module {
                Some([g, p, b]) => [Some(g), Some(p), Some(b)],
                None => [None; 3],
            };
            observe(Step { t, activity: [Some(&state), granule, purkinje, b_cb] })?;
        }
        Ok(state)
    }
}

/// Per-trial mean cross-entropy of final-step logits [M, B, 2] against labels [M, B], [M].
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, TchError> {
    let log_p = logits.f_log_softmax(-1, None::<Kind>)?; // [M, B, 2]
    let picked = log_p.f_gather(2, &labels.f_unsqueeze(-1)?, false)?.f_squeeze_dim(-1)?; // [M, B]
    picked.f_mean_dim(Some([1i64].as_slice()), false, None::<Kind>)?.f_neg()
}

/// How many sequences of each trial the logits [M, B, 2] classify right, [M] (int64).
pub(crate) fn correct_counts(logits: &Tensor, labels: &Tensor) -> Result<Tensor, TchError> {
    let predicted = logits.f_argmax(-1, false)?; // [M, B]
    predicted.f_eq_tensor(labels)?.f_sum_dim_intlist(Some([1i64].as_slice()), false, Kind::Int64)
}

/// Correct answers per row, [M] (int64), of `model` on each row's batches (every row the same
/// number), under no_grad.
pub(crate) fn count_correct(model: &PackedModel, drawn: Batches, cb: CbOutput, kind: Kind, device: Device) -> Result<Tensor, TchError> {
    let _no_grad = tch::no_grad_guard();
    let mut correct = Tensor::f_zeros([drawn.len() as i64], (Kind::Int64, device))?;
    // test batches evaluated together in one forward pass (sorted by length, so little
    // padding); the memory model sizes packs for this many
    let per_pass = cbsweep_common::memory::TEST_BATCHES_PER_PASS as usize;
    in_passes(drawn, per_pass, model.dims().hidden, kind, device, &mut |input, labels| {
        let logits = model.forward(input, cb)?; // [M, B', 2]
        correct = correct.f_add(&correct_counts(&logits, labels)?)?;
        Ok(())
    })?;
    Ok(correct)
}

#[cfg(test)]
mod tests;
