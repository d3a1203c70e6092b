//! The CPU engine against libtorch's autograd: losses, gradients and logits to 1e-10 in float64,
//! bit-identical gradients alone and packed on any thread count, and `unroll`'s activity.

use super::FusedPack;
use super::unroll::unroll;
use crate::input::{Batches, PackedInput, pack_batches};
use crate::model::{CbOutput, Dims, PackedModel, Population, cross_entropy};
use crate::testing::{model_with_active_module, one_thread, small_spec, two_batches_per_trial};
use cbsweep_common::{Arch, Regime, Task, TrialSpec};
use tch::{Device, Kind, Tensor};

/// Three trials with the module's weights made large enough to matter, and per trial two
/// batches of 40 sequences (one job each) at different lengths.
fn setup(arch: Arch) -> (Dims, PackedModel, Batches) {
    let dims = Dims { arch, hidden: 12, granule: 20, purkinje: 7 };
    let specs: Vec<TrialSpec> = (31..34).map(|s| small_spec(s, Task::Parity, arch, Regime::Simult)).collect();
    let model = model_with_active_module(dims, &specs, 77);
    (dims, model, two_batches_per_trial(&dims, 3, 200, 40))
}

fn host(model: &PackedModel) -> FusedPack<f64> {
    let momentum: Vec<Tensor> = model.params().iter().map(Tensor::zeros_like).collect();
    FusedPack::from_tensors(*model.dims(), model.params(), &momentum, &[[0.1, 0.1, 0.1]; 3]).unwrap()
}

/// Asserts `ours` within 1e-10 of `reference` (relative to its largest value, at least 1);
/// returns the largest difference.
fn assert_close(ours: &[f64], reference: &[f64], what: &str) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let scale = reference.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let diff = ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-10 * scale, "{what}: max difference {diff} (scale {scale})");
    diff
}

/// The engine's losses, gradients and logits against libtorch's autograd in float64 (which
/// `model`'s tests check against an independent PyTorch reference).
fn matches_autograd(arch: Arch) {
    one_thread();
    let (dims, model, per_row) = setup(arch);
    let (input, labels) = pack_batches(&per_row, dims.state_units(), Kind::Double, Device::Cpu).unwrap();
    let logits = model.forward(&input, CbOutput::On).unwrap();
    let losses = cross_entropy(&logits, &labels).unwrap();
    let grads = Tensor::run_backward(&[losses.sum(None::<Kind>)], model.params(), false, false);

    let mut fused = host(&model);
    let (our_losses, our_grads) = fused.loss_and_grads(&per_row);
    let mut largest = assert_close(&our_losses, &Vec::<f64>::try_from(&losses.detach()).unwrap(), "losses");
    let layout = fused.layout().clone();
    for (i, spec) in dims.param_specs().iter().enumerate() {
        for (row, ours) in our_grads.iter().enumerate() {
            let reference = Vec::<f64>::try_from(&grads[i].get(row as i64).flatten(0, -1)).unwrap();
            let diff = assert_close(layout.split(ours)[i], &reference, &format!("gradient of {} row {row}", spec.name));
            largest = largest.max(diff);
        }
    }
    for cb in [CbOutput::On, CbOutput::Off] {
        let reference = model.forward(&input, cb).unwrap();
        let ours = fused.logits(&per_row, cb);
        for (row, ours) in ours.iter().enumerate() {
            let r = Vec::<f64>::try_from(&reference.get(row as i64).flatten(0, -1)).unwrap();
            largest = largest.max(assert_close(ours, &r, &format!("logits {cb:?} row {row}")));
        }
    }
    println!("{arch}: the largest difference from autograd is {largest:e}");
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
fn rmrnn_gradients_and_logits_match_autograd() {
    matches_autograd(Arch::Rmrnn);
}

#[test]
fn cbgru_gradients_and_logits_match_autograd() {
    matches_autograd(Arch::Cbgru);
}

#[test]
fn gru_gradients_and_logits_match_autograd() {
    matches_autograd(Arch::Gru);
}

#[test]
fn a_trial_computes_the_same_alone_packed_and_on_any_thread_count() {
    for arch in [Arch::Cbrnn, Arch::Rmrnn, Arch::Cbgru] {
        let (_, model, per_row) = setup(arch);
        let (_, packed) = host(&model).loss_and_grads(&per_row);
        let one = PackedModel::from_tensors(*model.dims(), model.params().iter().map(|p| p.narrow(0, 1, 1)).collect()).unwrap();
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut alone_host = host_rows(&one, 1);
        let (_, alone) = single.install(|| alone_host.loss_and_grads(&per_row[1..2]));
        assert_eq!(packed[1], alone[0], "{arch}: bit-identical gradients");
    }
}

fn host_rows(model: &PackedModel, m: usize) -> FusedPack<f64> {
    let momentum: Vec<Tensor> = model.params().iter().map(Tensor::zeros_like).collect();
    FusedPack::from_tensors(*model.dims(), model.params(), &momentum, &vec![[0.1, 0.1, 0.1]; m]).unwrap()
}

/// Every step's activity and the final state of the engine's `unroll` against libtorch's, in
/// float32, for every architecture, those with a module with it on and off.
#[test]
fn unroll_observes_what_libtorch_computes() {
    one_thread();
    let runs = Arch::ALL.into_iter().flat_map(|arch| {
        let switches: &[CbOutput] = if arch.module().is_some() { &[CbOutput::On, CbOutput::Off] } else { &[CbOutput::On] };
        switches.iter().map(move |&cb| (arch, cb))
    });
    for (arch, cb) in runs {
        let (dims, model, _) = setup(arch);
        let model = PackedModel::from_tensors(dims, model.params().iter().map(|p| p.to_kind(Kind::Float)).collect()).unwrap();
        let (t_len, m, b) = (60, 3, 8);
        let x = Tensor::randint(2, [t_len, m, b], (Kind::Float, Device::Cpu));
        let input = || PackedInput {
            x: x.shallow_clone(),
            lengths: Tensor::full([m, b], t_len, (Kind::Int64, Device::Cpu)),
            min_len: t_len,
            initial: Tensor::rand([m, b, dims.state_units()], (Kind::Float, Device::Cpu)) * 0.1,
        };
        let first = input();
        let same_h0 = PackedInput { initial: first.initial.copy(), ..input() };
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
        let expected = if cb == CbOutput::On { Population::of(arch).len() } else { 1 };
        for (t, (o, r)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!((o.len(), r.len()), (expected, expected), "{arch} {cb:?} step {t}: populations");
            for (a, b) in o.iter().zip(r) {
                assert_eq!(a.size(), b.size(), "{arch} {cb:?} step {t}: a population's shape");
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{arch} {cb:?} step {t}: activity differs by {diff}");
            }
        }
        assert!((our_state - their_state).abs().max().double_value(&[]) < 1e-5);
        let padded = PackedInput { min_len: t_len - 1, ..input() };
        assert!(unroll(&model, &padded, cb, &mut |_| Ok(())).unwrap().is_none(), "padding goes to libtorch");
    }
}

/// A drive cut in two chunks, the second starting from the states the first ended in (as the
/// timescale analysis runs it), ends as the drive in one piece on either engine: the recurrent
/// module's state carries over with the core's.
#[test]
fn an_unroll_in_two_chunks_ends_as_one_in_one_piece() {
    one_thread();
    let (dims, model, _) = setup(Arch::Rmrnn);
    let model = PackedModel::from_tensors(dims, model.params().iter().map(|p| p.to_kind(Kind::Float)).collect()).unwrap();
    let (t_len, m, b) = (40, 3, 8);
    let x = Tensor::randint(2, [t_len, m, b], (Kind::Float, Device::Cpu));
    let input = |x: Tensor, initial: Tensor| {
        let len = x.size()[0];
        PackedInput { x, lengths: Tensor::full([m, b], len, (Kind::Int64, Device::Cpu)), min_len: len, initial }
    };
    let initial = Tensor::rand([m, b, dims.state_units()], (Kind::Float, Device::Cpu)) * 0.1;
    let engines: [&dyn Fn(&PackedInput) -> Tensor; 2] = [&|i| model.unroll(i, CbOutput::On, &mut |_| Ok(())).unwrap(), &|i| {
        unroll(&model, i, CbOutput::On, &mut |_| Ok(())).unwrap().expect("a float32 CPU pack")
    }];
    for run in engines {
        let whole = run(&input(x.shallow_clone(), initial.copy()));
        assert_eq!(whole.size(), [m, b, dims.state_units()]);
        let half = run(&input(x.narrow(0, 0, t_len / 2), initial.copy()));
        let rest = run(&input(x.narrow(0, t_len / 2, t_len / 2).contiguous(), half));
        let diff = (&whole - &rest).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "the final states differ by {diff}");
    }
}
