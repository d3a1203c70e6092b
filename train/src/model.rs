//! Every architecture (docs/science.md#models) for a pack of M trials: the leaky Elman core or
//! the GRU core, with the cerebellar module, the recurrent module of the recurrent-module
//! control, or none. Every parameter carries a leading pack axis M and every product is a
//! batched matmul, so M trials with equal shapes run as one computation. M = 1 is not a special
//! case.
//!
//! Weights are drawn per trial from the trial's own seeded Rust RNG (`tasks::Stream::Weights`)
//! and copied into the packed tensors, so a trial starts from the same numbers whatever pack it
//! is in. Also here: the per-trial loss and correct counts of a pack's logits, and its test
//! accuracy in passes (`count_correct`), which the libtorch engine and the ablation share.
//! Tests against the PyTorch reference live in `model/tests.rs`.

use super::input::{Batches, PackedInput, host_tensor, in_passes};
use super::tasks::{self, Stream};
use cbsweep_common::{Arch, Core, ModuleKind, ModuleStart, TrialSpec, model_size};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use tch::{Device, Kind, TchError, Tensor};

/// Leak of the state update: a = 1 / tau with tau = 1.5.
pub(crate) const ALPHA: f64 = 1.0 / 1.5;

/// The parts of a model that learn at their own rate and freeze on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    /// W_x, b_x, W_h, b_h (the GRU: every gate's input and state layers, weights and biases).
    Core,
    /// The 2-class linear readout.
    Readout,
    /// The module whose output biases the core: the cerebellar module's granule, Purkinje and
    /// deep-nuclei layers, or the recurrent module's input, recurrent and output layers.
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

/// Whether the module's output enters the core (ablation switches it off: b_cb = 0), for either
/// module kind.
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
    /// The module's output b_cb_t (the GRU: as it enters the candidate, rescaled).
    CbOutput,
    /// The recurrent module's state a_t (the recurrent-module control).
    RecurrentModule,
}

/// What one step of the time loop computed, for an observer of `PackedModel::unroll`.
pub(crate) struct Step<'a> {
    /// The step's index, 0-based.
    pub(crate) t: i64,
    /// Activity in `Population::ALL` order, [M, B, units] each; the module's populations are
    /// None for the plain baselines, for the populations another module kind has and with the
    /// module switched off.
    pub(crate) activity: [Option<&'a Tensor>; 5],
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

/// The recurrent module's tensors laid out for the time loop.
struct RecurrentLayers {
    /// Its input drive per step (b_in + b_aa + W_in[:, H] x_t), T x [M, B, A].
    drive: Vec<Tensor>,
    /// W_aa^T [M, A, A], W_out^T [M, A, H], b_out [M, 1, H].
    w_aa: Tensor,
    w_out: Tensor,
    b_out: Tensor,
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
// The recurrent module's parameters take the cerebellar module's positions.
pub(crate) const W_IN: usize = 6;
pub(crate) const B_IN: usize = 7;
pub(crate) const W_AA: usize = 8;
pub(crate) const B_AA: usize = 9;
pub(crate) const W_OUT: usize = 10;
pub(crate) const B_OUT: usize = 11;

impl Population {
    pub(crate) const ALL: [Population; 5] =
        [Population::Hidden, Population::Granule, Population::Purkinje, Population::CbOutput, Population::RecurrentModule];
    /// The recurrent-module control's populations.
    const RECURRENT: [Population; 3] = [Population::Hidden, Population::RecurrentModule, Population::CbOutput];

    /// The name analyses report it under.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Population::Hidden => "hidden",
            Population::Granule => "granule",
            Population::Purkinje => "purkinje",
            Population::CbOutput => "cb_output",
            Population::RecurrentModule => "recurrent_module",
        }
    }

    /// Position in `Population::ALL` (and in `Step::activity`).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The populations a model of `arch` has.
    pub(crate) fn of(arch: Arch) -> &'static [Population] {
        match arch.module() {
            None => &Population::ALL[..1],
            Some(ModuleKind::Cerebellar) => &Population::ALL[..4],
            Some(ModuleKind::Recurrent) => &Population::RECURRENT,
        }
    }

    /// Units in this population of a model of shape `dims`.
    pub(crate) fn size(self, dims: &Dims) -> i64 {
        match self {
            Population::Hidden | Population::CbOutput => dims.hidden,
            Population::Granule => dims.granule,
            Population::Purkinje => dims.purkinje,
            Population::RecurrentModule => dims.module_units(),
        }
    }
}

impl Dims {
    pub(crate) fn of(spec: &TrialSpec) -> Dims {
        Dims { arch: spec.arch, hidden: i64::from(spec.hidden), granule: i64::from(spec.granule), purkinje: i64::from(spec.purkinje) }
    }

    /// Units A of the recurrent module (the recurrent-module control; 0 for the others): the
    /// closest count to the cerebellar module of this shape.
    pub(crate) fn module_units(&self) -> i64 {
        match self.arch.module() {
            Some(ModuleKind::Recurrent) => {
                let units = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
                i64::from(model_size::recurrent_module_units(units(self.hidden), units(self.granule), units(self.purkinje)))
            }
            _ => 0,
        }
    }

    /// Units of a sequence's state that carry from step to step: the core's H, and the recurrent
    /// module's A after them (the layout of `PackedInput::initial` and of `unroll`'s result).
    pub(crate) fn state_units(&self) -> i64 {
        self.hidden + self.module_units()
    }

    /// Every parameter of one trial's model, in draw and storage order: core, readout, then the
    /// module (cerebellar or recurrent) where the architecture has one. The inits are those of
    /// the lab's start (`param_specs_for` gives the near-zero start's).
    pub(crate) fn param_specs(&self) -> Vec<ParamSpec> {
        let (h, g, p) = (self.hidden, self.granule, self.purkinje);
        let uniform = |fan_in: i64| Init::Uniform { bound: 1.0 / (fan_in as f64).sqrt() };
        let spec = |name, module, shape: &[i64], init| ParamSpec { name, module, shape: shape.to_vec(), init };
        let mut specs = match self.arch.core() {
            Core::Elman => vec![
                // input size 1: the input layer's fan-in is 1 for its weight and bias alike
                spec("core.w_x", Module::Core, &[h, 1], uniform(1)),
                spec("core.b_x", Module::Core, &[h], uniform(1)),
                spec("core.w_h", Module::Core, &[h, h], uniform(h)),
                spec("core.b_h", Module::Core, &[h], uniform(h)),
            ],
            // the lab's cell: per gate a linear layer on the input and one on the state, each with
            // its bias and the linear-layer default; the gates' layers stacked r, z, n
            Core::Gru => vec![
                spec("core.w_x", Module::Core, &[3 * h, 1], uniform(1)),
                spec("core.b_x", Module::Core, &[3 * h], uniform(1)),
                spec("core.w_h", Module::Core, &[3 * h, h], uniform(h)),
                spec("core.b_h", Module::Core, &[3 * h], uniform(h)),
            ],
        };
        specs.extend([
            spec("readout.weight", Module::Readout, &[2, h], uniform(h)),
            spec("readout.bias", Module::Readout, &[2], uniform(h)),
        ]);
        if self.arch.module() == Some(ModuleKind::Recurrent) {
            let a = self.module_units();
            // docs/science.md#recurrent-module-control: the linear-layer default everywhere
            specs.extend([
                spec("rm.input.weight", Module::Cb, &[a, h + 1], uniform(h + 1)),
                spec("rm.input.bias", Module::Cb, &[a], uniform(h + 1)),
                spec("rm.recurrent.weight", Module::Cb, &[a, a], uniform(a)),
                spec("rm.recurrent.bias", Module::Cb, &[a], uniform(a)),
                spec("rm.output.weight", Module::Cb, &[h, a], uniform(a)),
                spec("rm.output.bias", Module::Cb, &[h], uniform(a)),
            ]);
        }
        if self.arch.module() == Some(ModuleKind::Cerebellar) {
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

    /// `param_specs` with the inits of a trial whose module starts as `start`: the near-zero
    /// start's recurrent module has its output layer near zero, W_out ~ N(0, 0.01^2), b_out = 0.
    pub(crate) fn param_specs_for(&self, start: ModuleStart) -> Vec<ParamSpec> {
        let mut specs = self.param_specs();
        if self.arch.module() == Some(ModuleKind::Recurrent) && start != ModuleStart::Lab {
            specs[W_OUT].init = Init::Normal { std: 0.01 };
            specs[B_OUT].init = Init::Zeros;
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
    dims.param_specs_for(spec.module_start).iter().map(|p| draw_init(&mut rng, p)).collect()
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
        let (state, _) = self.unroll_parts(input, cb, &mut |_| Ok(()))?; // [M, B, H]
        let w_o = self.params[W_O].f_transpose(1, 2)?; // [M, H, 2]
        self.params[B_O].f_unsqueeze(1)?.f_baddbmm(&state, &w_o, 1.0, 1.0) // [M, B, 2]
    }

    /// Runs the time loop from `input.initial` and returns the final states, [M, B, S] in its
    /// layout (h_T, then the recurrent module's a_T); `observe` sees every step's activity (the
    /// state recorded past a sequence's own length is its frozen final state).
    pub(crate) fn unroll(&self, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<Tensor, TchError> {
        match self.unroll_parts(input, cb, observe)? {
            (state, Some(module)) => Tensor::f_cat(&[&state, &module], 2), // [M, B, H + A]
            (state, None) => Ok(state),
        }
    }

    /// `unroll`'s final states apart: h_T [M, B, H] and the recurrent module's a_T [M, B, A]
    /// (its a_0 with the module switched off; None without the module).
    fn unroll_parts(&self, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<(Tensor, Option<Tensor>), TchError> {
        match self.dims.arch.core() {
            Core::Elman => self.unroll_elman(input, cb, observe),
            Core::Gru => Ok((self.unroll_gru(input, cb, observe)?, None)),
        }
    }

    /// `unroll_parts` of the Elman core, with the cerebellar module, the recurrent module or
    /// none.
    fn unroll_elman(&self, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<(Tensor, Option<Tensor>), TchError> {
        let (t_max, _, _) = input.x.size3()?;
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
        // the recurrent module (docs/science.md#recurrent-module-control): its input layer's
        // recurrent product shares the core's matmul as the granule layer's does
        let a = self.dims.module_units();
        let rm_layers = if self.dims.arch.module() == Some(ModuleKind::Recurrent) && cb == CbOutput::On {
            let w_in_x = p[W_IN].f_narrow(2, h, 1)?.f_transpose(1, 2)?; // [M, 1, A]
            let rm_bias = p[B_IN].f_add(&p[B_AA])?.f_unsqueeze(1)?; // [M, 1, A]
            Some(RecurrentLayers {
                drive: rm_bias.f_addcmul(&x, &w_in_x)?.f_unbind(0)?, // T x [M, B, A]
                w_aa: p[W_AA].f_transpose(1, 2)?,                    // [M, A, A]
                w_out: p[W_OUT].f_transpose(1, 2)?,                  // [M, A, H]
                b_out: p[B_OUT].f_unsqueeze(1)?,                     // [M, 1, H]
            })
        } else {
            None
        };
        let w_rec = if cb_layers.is_some() {
            let w_gc_h = p[W_GC].f_narrow(2, 0, h)?; // [M, G, H]
            Tensor::f_cat(&[&p[W_H], &w_gc_h], 1)?.f_transpose(1, 2)? // [M, H, H+G]
        } else if rm_layers.is_some() {
            let w_in_h = p[W_IN].f_narrow(2, 0, h)?; // [M, A, H]
            Tensor::f_cat(&[&p[W_H], &w_in_h], 1)?.f_transpose(1, 2)? // [M, H, H+A]
        } else {
            p[W_H].f_transpose(1, 2)? // [M, H, H]
        };

        // active[t] = t < own length, [T, M, B, 1]; consulted from the shortest length on
        let steps = Tensor::f_arange(t_max, (Kind::Int64, input.x.device()))?.f_view([t_max, 1, 1])?; // [T, 1, 1]
        let active = input.lengths.f_unsqueeze(0)?.f_gt_tensor(&steps)?.f_unsqueeze(-1)?.f_unbind(0)?; // T x [M, B, 1]

        // (contiguous: a product's kernel, and so its rounding, may depend on the layout)
        let mut state = input.initial.f_narrow(2, 0, h)?.f_contiguous()?; // [M, B, H]
        // the recurrent module's state from its a_0
        let a0 = if a > 0 { Some(input.initial.f_narrow(2, h, a)?.f_contiguous()?) } else { None }; // [M, B, A]
        let mut rm_state = if rm_layers.is_some() { a0.as_ref().map(Tensor::shallow_clone) } else { None };
        for t in 0..t_max {
            let rec = state.f_bmm(&w_rec)?; // [M, B, H], [M, B, H+G] or [M, B, H+A]
            let mut pre = rec.f_narrow(2, 0, h)?.f_add(&core_in[t as usize])?; // [M, B, H]
            let mut module = None;
            let mut rm_out = None;
            if let (Some(rm), Some(prev)) = (&rm_layers, &rm_state) {
                // a_t = (1 - a) a_{t-1} + a LeakyReLU(W_in [h; x] + b_in + W_aa a_{t-1} + b_aa)
                let rm_pre = rec.f_narrow(2, h, a)?.f_add(&rm.drive[t as usize])?.f_add(&prev.f_bmm(&rm.w_aa)?)?; // [M, B, A]
                let mut next = prev.f_lerp(&rm_pre.f_leaky_relu()?, ALPHA)?; // [M, B, A]
                if t >= input.min_len {
                    next = next.f_where_self(&active[t as usize], prev)?;
                }
                let b_cb = rm.b_out.f_baddbmm(&next, &rm.w_out, 1.0, 1.0)?; // [M, B, H]
                pre = pre.f_add(&b_cb)?;
                rm_state = Some(next);
                rm_out = Some(b_cb);
            }
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
                None => [None, None, rm_out.as_ref()],
            };
            observe(Step { t, activity: [Some(&state), granule, purkinje, b_cb, rm_state.as_ref()] })?;
        }
        // the module's state as it ended, or as it started with the module switched off
        Ok((state, rm_state.or(a0)))
    }

    /// `unroll` of the GRU core (docs/science.md#gru-variant), the lab's cell with a LeakyReLU
    /// candidate, with the cerebellar module's output inside the candidate's pre-activation,
    /// rescaled per sequence to at most the norm of the rest of it (that norm without gradient).
    fn unroll_gru(&self, input: &PackedInput, cb: CbOutput, observe: &mut Observe<'_>) -> Result<Tensor, TchError> {
        let (t_max, _, _) = input.x.size3()?;
        let h = self.dims.hidden;
        let g = self.dims.granule;
        let p = &self.params;

        let x = input.x.f_unsqueeze(-1)?; // [T, M, B, 1]
        // every bias and the input layers for all steps at once: W_x x_t + b_x + b_h, gates r, z, n
        // (the state layer's bias of n adds to W_hn (r h) as the input layer's does)
        let core_bias = p[B_X].f_add(&p[B_H])?.f_unsqueeze(1)?; // [M, 1, 3H]
        let w_x = p[W_X].f_transpose(1, 2)?; // [M, 1, 3H]
        let gates_in = core_bias.f_addcmul(&x, &w_x)?.f_unbind(0)?; // T x [M, B, 3H]
        let w_hn = p[W_H].f_narrow(1, 2 * h, h)?.f_transpose(1, 2)?; // [M, H, H]
        let cb_layers = if self.dims.arch.module() == Some(ModuleKind::Cerebellar) && cb == CbOutput::On {
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
        // the state layers of r and z and the granule layer's recurrent product share one matmul
        let w_hrz = p[W_H].f_narrow(1, 0, 2 * h)?; // [M, 2H, H]
        let w_rec = match &cb_layers {
            Some(_) => Tensor::f_cat(&[&w_hrz, &p[W_GC].f_narrow(2, 0, h)?], 1)?.f_transpose(1, 2)?, // [M, H, 2H+G]
            None => w_hrz.f_transpose(1, 2)?,                                                        // [M, H, 2H]
        };

        let steps = Tensor::f_arange(t_max, (Kind::Int64, input.x.device()))?.f_view([t_max, 1, 1])?; // [T, 1, 1]
        let active = input.lengths.f_unsqueeze(0)?.f_gt_tensor(&steps)?.f_unsqueeze(-1)?.f_unbind(0)?; // T x [M, B, 1]
        // ||v|| per sequence over units, clamped below at the lab's eps
        let norm = |v: &Tensor| -> Result<Tensor, TchError> {
            v.f_norm_scalaropt_dim(2.0, [2i64].as_slice(), true)?.f_clamp_min(GRU_MIN_NORM) // [M, B, 1]
        };

        let mut state = input.initial.shallow_clone(); // [M, B, H]
        for t in 0..t_max {
            let gi = &gates_in[t as usize]; // [M, B, 3H]
            let rec = state.f_bmm(&w_rec)?; // [M, B, 2H] or [M, B, 2H+G]
            let r = gi.f_narrow(2, 0, h)?.f_add(&rec.f_narrow(2, 0, h)?)?.f_sigmoid()?; // [M, B, H]
            let z = gi.f_narrow(2, h, h)?.f_add(&rec.f_narrow(2, h, h)?)?.f_sigmoid()?; // [M, B, H]
            // c_t = W_xn x + b_xn + W_hn (r h) + b_hn, the reset before the state's product
            let mut pre = gi.f_narrow(2, 2 * h, h)?.f_baddbmm(&r.f_mul(&state)?, &w_hn, 1.0, 1.0)?; // [M, B, H]
            let mut module = None;
            if let Some(cb) = &cb_layers {
                let granule = rec.f_narrow(2, 2 * h, g)?.f_add(&cb.granule_in[t as usize])?.f_relu()?; // [M, B, G]
                let purkinje = cb.b_pc.f_baddbmm(&granule, &cb.w_pc, 1.0, 1.0)?.f_relu()?; // [M, B, P]
                let raw = cb.b_dcn.f_baddbmm(&purkinje, &cb.w_dcn, 1.0, 1.0)?; // [M, B, H]
                // s = min(1, GRU_CB_NORM_RATIO ||c|| / ||b_cb||), ||c|| a constant (the lab's no_grad)
                let reference = norm(&pre.f_detach()?)?.f_mul_scalar(GRU_CB_NORM_RATIO)?; // [M, B, 1]
                let scale = reference.f_div(&norm(&raw)?)?.f_clamp_max(1.0)?; // [M, B, 1]
                let b_cb = raw.f_mul(&scale)?; // [M, B, H]
                pre = pre.f_add(&b_cb)?;
                module = Some([granule, purkinje, b_cb]);
            }
            // h_t = (1 - z) h_{t-1} + z n = lerp(h_{t-1}, n, z)
            let next = state.f_lerp_tensor(&pre.f_leaky_relu()?, &z)?; // [M, B, H]
            state = if t >= input.min_len { next.f_where_self(&active[t as usize], &state)? } else { next };
            let [granule, purkinje, b_cb] = match &module {
                Some([g, p, b]) => [Some(g), Some(p), Some(b)],
                None => [None; 3],
            };
            observe(Step { t, activity: [Some(&state), granule, purkinje, b_cb, None] })?;
        }
        Ok(state)
    }
}

/// The GRU's bound on the cerebellar bias: its norm is at most this times the norm of the rest
/// of the candidate's pre-activation (the lab's `cb_max_ratio`, 1.0), per sequence over units.
pub(crate) const GRU_CB_NORM_RATIO: f64 = 1.0;

/// The floor under both norms of the GRU's rescaling (the lab's eps), so a zero vector divides
/// by no zero.
pub(crate) const GRU_MIN_NORM: f64 = 1e-8;

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
    in_passes(drawn, per_pass, model.dims().state_units(), kind, device, &mut |input, labels| {
        let logits = model.forward(input, cb)?; // [M, B', 2]
        correct = correct.f_add(&correct_counts(&logits, labels)?)?;
        Ok(())
    })?;
    Ok(correct)
}

#[cfg(test)]
mod tests;
