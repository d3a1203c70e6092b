//! The leaky Elman RNN and the CB-RNN (cb-rnn-spec.md, "Models") for a pack of M trials: every
//! parameter carries a leading pack axis M and every product is a batched matmul, so M trials
//! with equal shapes run as one computation. M = 1 is not a special case.
//!
//! Weights are drawn per trial from the trial's own seeded Rust RNG (`tasks::Stream::Weights`)
//! and copied into the packed tensors, so a trial starts from the same numbers whatever pack it
//! is in.

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

/// The populations of units whose activity the analyses read (cb-rnn-spec.md, "Analyses").
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

/// The inputs of one packed forward pass. Padding past a sequence's own length is ignored.
#[derive(Debug)]
pub(crate) struct PackedInput {
    /// Bits as numbers, [T, M, B]; T is the longest length in the pack.
    pub(crate) x: Tensor,
    /// Each sequence's own length, [M, B] (int64).
    pub(crate) lengths: Tensor,
    /// The shortest length in `lengths`: steps before it need no masking.
    pub(crate) min_len: i64,
    /// Initial state, [M, B, H].
    pub(crate) h0: Tensor,
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
    granule_in: Tensor,
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

/// A host vector as a tensor of `kind` on `device` with the given shape.
pub(crate) fn host_tensor(values: &[f64], shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, TchError> {
    let t = if kind == Kind::Float {
        let narrow: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Tensor::f_from_slice(&narrow)?
    } else {
        Tensor::f_from_slice(values)?.f_to_kind(kind)?
    };
    to_device(t.f_reshape(shape)?, device)
}

/// A host tensor moved to `device` without holding the host up: onto a GPU it goes through
/// pinned memory as an asynchronous copy queued on the stream, where a copy from pageable
/// memory would first wait for every kernel already queued (a host-device round trip per step).
/// libtorch's pinned-memory cache keeps the staging block until its copy has run.
pub(crate) fn to_device(t: Tensor, device: Device) -> Result<Tensor, TchError> {
    match device {
        // `_pin_memory`: what `pin_memory` calls, without its warning (on every call) that the
        // device argument, which tch always passes, is deprecated
        Device::Cuda(_) => t.f_internal_pin_memory(device)?.f_to_device_(device, t.kind(), true, false),
        _ => t.f_to_device(device),
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
    pub(crate) fn unroll(
        &self,
        input: &PackedInput,
        cb: CbOutput,
        observe: &mut dyn FnMut(Step<'_>) -> Result<(), TchError>,
    ) -> Result<Tensor, TchError> {
        let (t_max, _m, _b) = input.x.size3()?;
        let h = self.dims.hidden;
        let g = self.dims.granule;
        let p = &self.params;

        let x = input.x.f_unsqueeze(-1)?; // [T, M, B, 1]
        // input drive of the core for all steps at once: x_t W_x + b_x + b_h
        let core_bias = p[B_X].f_add(&p[B_H])?.f_unsqueeze(1)?; // [M, 1, H]
        let w_x = p[W_X].f_transpose(1, 2)?; // [M, 1, H]
        let core_in = core_bias.f_addcmul(&x, &w_x)?; // [T, M, B, H]

        // the recurrent products of the core and of the granule layer share one matmul,
        // h [W_h; W_gc[:, :H]]^T, with the granule layer's input column applied apart
        let cb_layers = if self.dims.arch == Arch::Cbrnn && cb == CbOutput::On {
            let w_gc_x = p[W_GC].f_narrow(2, h, 1)?.f_transpose(1, 2)?; // [M, 1, G]
            Some(CbLayers {
                granule_in: p[B_GC].f_unsqueeze(1)?.f_addcmul(&x, &w_gc_x)?, // [T, M, B, G]
                w_pc: p[W_PC].f_transpose(1, 2)?,                            // [M, G, P]
                b_pc: p[B_PC].f_unsqueeze(1)?,                               // [M, 1, P]
                w_dcn: p[W_DCN].f_transpose(1, 2)?,                          // [M, P, H]
                b_dcn: p[B_DCN].f_unsqueeze(1)?,                             // [M, 1, H]
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
        let active = input.lengths.f_unsqueeze(0)?.f_gt_tensor(&steps)?.f_unsqueeze(-1)?; // [T, M, B, 1]

        let mut state = input.h0.shallow_clone(); // [M, B, H]
        for t in 0..t_max {
            let rec = state.f_bmm(&w_rec)?; // [M, B, H] or [M, B, H+G]
            let mut pre = rec.f_narrow(2, 0, h)?.f_add(&core_in.f_get(t)?)?; // [M, B, H]
            let mut module = None;
            if let Some(cb) = &cb_layers {
                let granule = rec.f_narrow(2, h, g)?.f_add(&cb.granule_in.f_get(t)?)?.f_relu()?; // [M, B, G]
                let purkinje = cb.b_pc.f_baddbmm(&granule, &cb.w_pc, 1.0, 1.0)?.f_relu()?; // [M, B, P]
                let b_cb = cb.b_dcn.f_baddbmm(&purkinje, &cb.w_dcn, 1.0, 1.0)?; // [M, B, H]
                pre = pre.f_add(&b_cb)?;
                module = Some([granule, purkinje, b_cb]);
            }
            // (1 - a) h + a LeakyReLU(pre), negative slope 0.01 (libtorch's default)
            let next = state.f_lerp(&pre.f_leaky_relu()?, ALPHA)?; // [M, B, H]
            state = if t >= input.min_len { next.f_where_self(&active.f_get(t)?, &state)? } else { next };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::tasks::{draw_batch, draw_h0};
    use crate::torch::tests::small_spec;
    use crate::torch::train::pack_batches;
    use cbsweep_common::{Regime, Seed, Task, model_size};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    #[test]
    fn built_models_have_the_trial_spec_parameter_count() {
        let mut cb = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
        (cb.hidden, cb.granule, cb.purkinje) = (64, 256, 64);
        let rnn = TrialSpec { arch: Arch::Rnn, hidden: model_size::matched_rnn_hidden(64, 256, 64), ..cb.clone() };
        for (spec, expected) in [(&cb, 41_922), (&rnn, 41_816)] {
            let dims = Dims::of(spec);
            assert_eq!(spec.param_count(), expected);
            assert_eq!(dims.param_count(), expected as i64);
            let pack = [spec.clone(), TrialSpec { seed: Seed(2), ..spec.clone() }];
            let model = PackedModel::new(dims, &pack, Kind::Float, Device::Cpu).unwrap();
            let numel: usize = model.params().iter().map(Tensor::numel).sum();
            assert_eq!(numel as u64, 2 * expected, "{}", spec.arch);
        }
    }

    #[test]
    fn initial_weights_follow_the_spec() {
        let spec = small_spec(9, Task::Dms, Arch::Cbrnn, Regime::Simult);
        let dims = Dims::of(&spec);
        let init = init_trial(&dims, &spec);
        assert_eq!(init, init_trial(&dims, &spec), "the weights follow from the seed");
        for (p, values) in dims.param_specs().iter().zip(&init) {
            let n = values.len() as f64;
            match p.init {
                Init::Uniform { bound } => assert!(values.iter().all(|v| v.abs() <= bound), "{}", p.name),
                Init::Zeros => assert!(values.iter().all(|&v| v == 0.0), "{}", p.name),
                Init::Normal { std } => {
                    let sd = (values.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
                    assert!((sd / std - 1.0).abs() < 0.2, "{}: sd {sd} for {std}", p.name);
                }
            }
        }
        assert_eq!(dims.param_specs()[0].init, Init::Uniform { bound: 1.0 });
        assert_eq!(dims.param_specs()[2].init, Init::Uniform { bound: 0.25 });
    }

    /// The project's Python (scripts/setup.sh makes it).
    fn venv_python() -> PathBuf {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
        python
    }

    fn write_npy(t: &Tensor, dir: &Path, name: &str) {
        t.contiguous().write_npy(dir.join(format!("{name}.npy"))).unwrap();
    }

    fn assert_close(ours: &Tensor, reference: &Tensor, what: &str) {
        assert_eq!(ours.size(), reference.size(), "{what}: shape");
        let diff = (ours - reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]).max(1.0);
        assert!(diff <= 1e-9 * scale, "{what}: max difference {diff} against the reference (scale {scale})");
    }

    /// Runs one pack through our forward and backward and through the Python reference, and
    /// compares logits and (with the module on) every parameter's gradient.
    fn crosscheck(arch: Arch, cb: CbOutput) {
        crate::torch::tests::one_thread();
        let dims = Dims { arch, hidden: 12, granule: 20, purkinje: 7 };
        let specs: Vec<TrialSpec> = (21..24).map(|s| small_spec(s, Task::Dms, arch, Regime::Simult)).collect();
        let model = crate::torch::tests::model_with_active_module(dims, &specs, 99);
        // trial m: two batches of three sequences at level 2 + m, so lengths differ within and
        // between trials
        let per_row: Vec<Vec<_>> = (0..3u32)
            .map(|m| {
                let mut rng = tasks::stream(Seed(100 + u64::from(m)), Stream::TrainData);
                (0..2).map(|_| (draw_batch(&mut rng, Task::Parity, 2 + m, 3), draw_h0(&mut rng, 3, 12))).collect()
            })
            .collect();
        let (input, labels) = pack_batches(&per_row, dims.hidden, Kind::Double, Device::Cpu).unwrap();
        let logits = model.forward(&input, cb).unwrap();
        let loss = cross_entropy(&logits, &labels).unwrap().sum(None::<Kind>);
        let grads = Tensor::run_backward(&[loss], model.params(), false, false);

        let dir = tempfile::tempdir().unwrap();
        for (p, t) in dims.param_specs().iter().zip(model.params()) {
            write_npy(&t.detach(), dir.path(), &format!("param_{}", p.name));
        }
        write_npy(&input.x, dir.path(), "x");
        write_npy(&input.lengths, dir.path(), "lengths");
        write_npy(&input.h0, dir.path(), "h0");
        write_npy(&labels, dir.path(), "labels");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torch_crosscheck.py");
        let with_grads = if cb == CbOutput::On { "grads" } else { "nograds" };
        let cb_arg = if cb == CbOutput::On { "on" } else { "off" };
        let out = Command::new(venv_python())
            .arg(&script)
            .args([dir.path().to_str().unwrap(), &arch.to_string(), cb_arg, with_grads])
            .output()
            .unwrap();
        assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));

        let read = |name: &str| Tensor::read_npy(dir.path().join(format!("{name}.npy"))).unwrap();
        assert_close(&logits.detach(), &read("logits"), "logits");
        if cb == CbOutput::On {
            for (p, g) in dims.param_specs().iter().zip(&grads) {
                assert_close(g, &read(&format!("grad_{}", p.name)), &format!("gradient of {}", p.name));
            }
        } else {
            let on = model.forward(&input, CbOutput::On).unwrap();
            let moved = (on - &logits).abs().max().double_value(&[]);
            assert!(arch == Arch::Rnn || moved > 1e-3, "switching the module off changes the logits ({moved})");
        }
    }

    #[test]
    fn cbrnn_matches_an_independent_pytorch_reference() {
        crosscheck(Arch::Cbrnn, CbOutput::On);
    }

    #[test]
    fn cbrnn_without_its_module_matches_the_reference_ablation() {
        crosscheck(Arch::Cbrnn, CbOutput::Off);
    }

    #[test]
    fn rnn_matches_an_independent_pytorch_reference() {
        crosscheck(Arch::Rnn, CbOutput::On);
    }
}
