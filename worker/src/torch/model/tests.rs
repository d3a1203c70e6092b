//! The packed models against an independent PyTorch reference (worker/tests/torch_crosscheck.py)
//! and the parameter table against the trial spec's count.

use super::*;
use crate::torch::input::pack_batches;
use crate::torch::tasks::{draw_batch, draw_h0};
use crate::torch::testing::{model_with_active_module, one_thread, small_spec};
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
    one_thread();
    let dims = Dims { arch, hidden: 12, granule: 20, purkinje: 7 };
    let specs: Vec<TrialSpec> = (21..24).map(|s| small_spec(s, Task::Dms, arch, Regime::Simult)).collect();
    let model = model_with_active_module(dims, &specs, 99);
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
