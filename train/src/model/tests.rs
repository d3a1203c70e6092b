//! The packed models against an independent PyTorch reference (train/tests/torch_crosscheck.py)
//! and the parameter table against the trial spec's count.

use super::*;
use crate::input::pack_batches;
use crate::testing::{model_with_active_module, one_thread, small_spec, two_batches_per_trial};
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
fn new_architectures_have_the_labs_parameter_counts() {
    let mut cbgru = small_spec(1, Task::Dms, Arch::Cbgru, Regime::Simult);
    (cbgru.hidden, cbgru.granule, cbgru.purkinje) = (64, 256, 64);
    let gru = TrialSpec { arch: Arch::Gru, hidden: model_size::matched_gru_hidden(64, 256, 64), ..cbgru.clone() };
    let rmrnn = TrialSpec { arch: Arch::Rmrnn, ..cbgru.clone() };
    let control = model_size::rnn_params(64) + 37_594;
    for (spec, expected) in [(&cbgru, 50_498), (&gru, 50_562), (&rmrnn, control)] {
        let dims = Dims::of(spec);
        assert_eq!(spec.param_count(), expected, "{}", spec.arch);
        assert_eq!(dims.param_count(), expected as i64, "{}", spec.arch);
    }
    assert_eq!(Dims::of(&rmrnn).module_units(), 139);
    let module: i64 =
        Dims::of(&rmrnn).param_specs().iter().filter(|p| p.module == Module::Cb).map(|p| p.shape.iter().product::<i64>()).sum();
    assert_eq!(module, 37_594);
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
    // the GRU, the lab's cell: every gate's input layer U(-1, 1) (fan-in 1), its state layer
    // U(-1/sqrt(H), 1/sqrt(H)) (H = 16)
    let gru = Dims::of(&small_spec(9, Task::Dms, Arch::Gru, Regime::Simult)).param_specs();
    let bounds: Vec<Init> = gru[..4].iter().map(|p| p.init).collect();
    assert_eq!(bounds, [1.0, 1.0, 0.25, 0.25].map(|bound| Init::Uniform { bound }));
    assert!(gru[..4].iter().all(|p| p.module == Module::Core && p.shape[0] == 48));
    // the recurrent module: the linear-layer default everywhere at the lab's start, its output
    // layer near zero at the near-zero start
    let rm = Dims::of(&small_spec(9, Task::Dms, Arch::Rmrnn, Regime::Simult));
    let a = rm.module_units() as f64;
    assert_eq!(rm.param_specs()[W_OUT].init, Init::Uniform { bound: 1.0 / a.sqrt() });
    assert_eq!(rm.param_specs()[B_OUT].init, Init::Uniform { bound: 1.0 / a.sqrt() });
    assert_eq!(rm.param_specs_for(ModuleStart::Lab), rm.param_specs());
    let near_zero = rm.param_specs_for(ModuleStart::NearZero);
    assert_eq!((near_zero[W_OUT].init, near_zero[B_OUT].init), (Init::Normal { std: 0.01 }, Init::Zeros));
    assert_eq!(near_zero[..W_OUT], rm.param_specs()[..W_OUT]);
    // a trial draws the inits of its own start: the same numbers up to the output layer
    let lab = small_spec(9, Task::Dms, Arch::Rmrnn, Regime::Simult);
    let old = TrialSpec { module_start: ModuleStart::NearZero, ..lab.clone() };
    let (lab_init, old_init) = (init_trial(&rm, &lab), init_trial(&rm, &old));
    assert_eq!(lab_init[..W_OUT], old_init[..W_OUT]);
    assert!(old_init[B_OUT].iter().all(|&v| v == 0.0) && lab_init[B_OUT].iter().any(|&v| v != 0.0));
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

/// The largest difference from the reference relative to its scale (at least 1), after checking
/// it is within `tolerance`.
fn assert_close(ours: &Tensor, reference: &Tensor, tolerance: f64, what: &str) -> f64 {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let diff = (ours - reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]).max(1.0);
    assert!(diff <= tolerance * scale, "{what}: max difference {diff} against the reference (scale {scale})");
    diff / scale
}

/// Runs one pack through our forward and backward and through the Python reference, and
/// compares logits and (with the module on) every parameter's gradient: to 1e-10 in float64.
fn crosscheck(arch: Arch, cb: CbOutput) {
    crosscheck_in(arch, cb, Kind::Double, 1e-10);
}

/// `crosscheck` computing in `kind` (the reference too), to `tolerance` relative to each
/// tensor's scale; returns the largest relative difference.
fn crosscheck_in(arch: Arch, cb: CbOutput, kind: Kind, tolerance: f64) -> f64 {
    one_thread();
    let dims = Dims { arch, hidden: 12, granule: 20, purkinje: 7 };
    let specs: Vec<TrialSpec> = (21..24).map(|s| small_spec(s, Task::Dms, arch, Regime::Simult)).collect();
    let model = model_with_active_module(dims, &specs, 99);
    let model = PackedModel::from_tensors(dims, model.params().iter().map(|p| p.to_kind(kind)).collect()).unwrap();
    let per_row = two_batches_per_trial(&dims, 3, 100, 3);
    let (input, labels) = pack_batches(&per_row, dims.state_units(), kind, Device::Cpu).unwrap();
    let logits = model.forward(&input, cb).unwrap();
    let loss = cross_entropy(&logits, &labels).unwrap().sum(None::<Kind>);
    let grads = Tensor::run_backward(&[loss], model.params(), false, false);

    let dir = tempfile::tempdir().unwrap();
    for (p, t) in dims.param_specs().iter().zip(model.params()) {
        write_npy(&t.detach(), dir.path(), &format!("param_{}", p.name));
    }
    write_npy(&input.x, dir.path(), "x");
    write_npy(&input.lengths, dir.path(), "lengths");
    let (h, a) = (dims.hidden, dims.module_units());
    write_npy(&input.initial.narrow(2, 0, h), dir.path(), "h0");
    if a > 0 {
        write_npy(&input.initial.narrow(2, h, a), dir.path(), "a0");
    }
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
    let mut worst = assert_close(&logits.detach(), &read("logits"), tolerance, "logits");
    if cb == CbOutput::On {
        for (p, g) in dims.param_specs().iter().zip(&grads) {
            worst = worst.max(assert_close(g, &read(&format!("grad_{}", p.name)), tolerance, &format!("gradient of {}", p.name)));
        }
    } else {
        let on = model.forward(&input, CbOutput::On).unwrap();
        let moved = (on - &logits).abs().max().double_value(&[]);
        assert!(arch.module().is_none() || moved > 1e-3, "switching the module off changes the logits ({moved})");
    }
    println!("{arch} {cb:?} {kind:?}: largest difference from the reference {worst:.2e} of scale");
    worst
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

#[test]
fn recurrent_module_control_matches_an_independent_pytorch_reference() {
    crosscheck(Arch::Rmrnn, CbOutput::On);
}

#[test]
fn recurrent_module_control_without_its_module_matches_the_reference_ablation() {
    crosscheck(Arch::Rmrnn, CbOutput::Off);
}

#[test]
fn cbgru_matches_an_independent_pytorch_reference() {
    crosscheck(Arch::Cbgru, CbOutput::On);
}

#[test]
fn cbgru_without_its_module_matches_the_reference_ablation() {
    crosscheck(Arch::Cbgru, CbOutput::Off);
}

#[test]
fn gru_matches_an_independent_pytorch_reference() {
    crosscheck(Arch::Gru, CbOutput::On);
}

/// The criterion: forward and gradients of every architecture within 1e-5 of the
/// reference in float32 (relative to each tensor's scale).
#[test]
fn every_architecture_matches_the_reference_in_float32() {
    for arch in Arch::ALL {
        crosscheck_in(arch, CbOutput::On, Kind::Float, 1e-5);
    }
}

/// The GRU's rescaling binds in the crosscheck's packs (so the reference comparison covers it):
/// some sequences' module output is larger than the rest of the candidate's pre-activation.
#[test]
fn the_gru_bias_rescaling_binds_in_the_crosscheck_packs() {
    one_thread();
    let dims = Dims { arch: Arch::Cbgru, hidden: 12, granule: 20, purkinje: 7 };
    let specs: Vec<TrialSpec> = (21..24).map(|s| small_spec(s, Task::Dms, Arch::Cbgru, Regime::Simult)).collect();
    let model = model_with_active_module(dims, &specs, 99);
    let per_row = two_batches_per_trial(&dims, 3, 100, 3);
    let (input, _) = pack_batches(&per_row, dims.state_units(), Kind::Double, Device::Cpu).unwrap();
    let rest_of = |b_cb: &Tensor| b_cb.square().sum_dim_intlist(Some([2i64].as_slice()), false, None::<Kind>).sqrt();
    let (mut bound, mut free) = (0, 0);
    // the observed output is the rescaled one; with the scale at 1 it equals W_dcn p + b_dcn
    let _final_state = model
        .unroll(&input, CbOutput::On, &mut |step| {
            let [_, _, Some(purkinje), Some(b_cb), _] = step.activity else { panic!("a CB-GRU has its module's populations") };
            let raw = model.params()[B_DCN].unsqueeze(1).baddbmm(purkinje, &model.params()[W_DCN].transpose(1, 2), 1.0, 1.0);
            let ratio = rest_of(b_cb) / rest_of(&raw); // [M, B]
            let ratio = Vec::<f64>::try_from(ratio.flatten(0, -1)).unwrap();
            bound += ratio.iter().filter(|&&r| r < 1.0 - 1e-9).count();
            free += ratio.iter().filter(|&&r| (r - 1.0).abs() <= 1e-9).count();
            Ok(())
        })
        .unwrap();
    assert!(bound > 0 && free > 0, "rescaled {bound}, unscaled {free}");
}
