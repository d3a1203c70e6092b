//! The readout recovery (docs/science.md#readout-recovery): is the core alone sufficient once the
//! module is gone? With the module switched off (b_cb = 0, the module not run), a copy of the
//! readout alone is retrained by Nesterov SGD on fresh batches at the checkpoint's level, then
//! evaluated on the fixed batches beside the intact model. Models with a module only.
//!
//! With the module off and the core not learning, a sequence's final state h_T does not depend
//! on the readout: each batch's h_T is computed once, under no_grad, and the readout is trained
//! on them with the cross-entropy's gradient in closed form. That is the step backpropagation
//! through the whole network would take with every other parameter frozen. The pack's weights
//! are only read.

use crate::input::{Batches, pack_batches};
use crate::model::{B_O, CbOutput, PackedModel, W_O, correct_counts, count_correct};
use crate::tasks::TaskBatch;
use tch::{Device, Kind, TchError, Tensor};

/// The readout's learning rate while it recovers (the study's 0.01, whatever the trial's).
const LR: f64 = 0.01;
/// Its Nesterov momentum (the study's 0.1; no clipping).
const MOMENTUM: f64 = 0.1;

/// Recovers each row's readout on its `train` batches (one SGD step per batch) and evaluates it
/// on its `eval` batches; `push(row, population, metric, value)`. For a model with a module;
/// nothing without batches to train or evaluate on.
pub(super) fn recovery(
    model: &PackedModel,
    train: Batches,
    eval: Batches,
    kind: Kind,
    device: Device,
    push: &mut dyn FnMut(usize, &str, &str, f64),
) -> Result<(), TchError> {
    let empty = |b: &Batches| b.first().is_none_or(Vec::is_empty);
    if empty(&train) || empty(&eval) {
        return Ok(());
    }
    let sequences = eval[0].iter().map(|(b, _)| b.labels.len()).sum::<usize>() as f64;
    let intact = count_correct(model, eval.clone(), CbOutput::On, kind, device)?; // [M]
    let (eval_states, eval_labels) = final_states(model, eval, kind, device)?; // [M, S, B, H], [M, S, B]
    let (train_states, train_labels) = final_states(model, train, kind, device)?;

    // a copy of the readout: the pack's own is never written
    let mut w = model.params()[W_O].f_detach_copy()?; // [M, 2, H]
    let mut b = model.params()[B_O].f_detach_copy()?; // [M, 2]
    let zero_shot = readout_correct(&w, &b, &eval_states, &eval_labels)?; // [M]
    let mut buf_w = w.f_zeros_like()?;
    let mut buf_b = b.f_zeros_like()?;
    for step in 0..train_states.size()[1] {
        let (g_w, g_b) = readout_gradient(&w, &b, &train_states.f_select(1, step)?, &train_labels.f_select(1, step)?)?;
        // torch.optim.SGD, dampening 0, Nesterov: buf = mu buf + g; p -= lr (g + mu buf)
        buf_w = buf_w.f_mul_scalar(MOMENTUM)?.f_add(&g_w)?;
        buf_b = buf_b.f_mul_scalar(MOMENTUM)?.f_add(&g_b)?;
        w = w.f_sub(&g_w.f_add(&buf_w.f_mul_scalar(MOMENTUM)?)?.f_mul_scalar(LR)?)?;
        b = b.f_sub(&g_b.f_add(&buf_b.f_mul_scalar(MOMENTUM)?)?.f_mul_scalar(LR)?)?;
    }
    let recovered = readout_correct(&w, &b, &eval_states, &eval_labels)?; // [M]

    let counts = Tensor::f_stack(&[intact, zero_shot, recovered], 0)?.f_to_device(Device::Cpu)?; // [3, M]
    let counts = Vec::<Vec<i64>>::try_from(&counts)?;
    for row in 0..counts[0].len() {
        let [intact, zero_shot, recovered] = [0, 1, 2].map(|i| counts[i][row] as f64 / sequences);
        push(row, "network", "recovery_intact_accuracy", intact);
        push(row, "network", "recovery_zero_shot_accuracy", zero_shot);
        push(row, "network", "recovery_accuracy", recovered);
        push(row, "network", "recovery_gap", intact - recovered);
    }
    Ok(())
}

/// Each row's final states with the module off, [M, S, B, H], and the labels, [M, S, B], of its
/// S batches of B sequences in the order drawn. They run in passes of batches sorted by length,
/// so passes carry little padding.
fn final_states(model: &PackedModel, drawn: Batches, kind: Kind, device: Device) -> Result<(Tensor, Tensor), TchError> {
    let (m, s) = (drawn.len(), drawn[0].len());
    let b = drawn[0][0].0.labels.len();
    let h = model.dims().hidden;
    let labels: Vec<i64> = drawn.iter().flatten().flat_map(|(batch, _)| batch.labels.iter().copied()).collect();
    // each row's batches in length order, with the place each was drawn at
    let mut sorted: Vec<Vec<(usize, (TaskBatch, Vec<f64>))>> = drawn
        .into_iter()
        .map(|row| {
            let mut row: Vec<_> = row.into_iter().enumerate().collect();
            row.sort_by_key(|(_, (batch, _))| batch.len);
            row
        })
        .collect();
    // where each drawn batch stands in its row's length order, [M, S]
    let mut place = vec![0i64; m * s];
    for (r, row) in sorted.iter().enumerate() {
        for (at, (drawn_at, _)) in row.iter().enumerate() {
            place[r * s + drawn_at] = at as i64;
        }
    }
    let per_pass = cbsweep_common::memory::TEST_BATCHES_PER_PASS as usize;
    let mut passes = Vec::new();
    while let Some(left) = sorted.first().map(Vec::len).filter(|&left| left > 0) {
        let take = left.min(per_pass);
        let part: Batches = sorted.iter_mut().map(|row| row.drain(..take).map(|(_, batch)| batch).collect()).collect();
        let (input, _) = pack_batches(&part, model.dims().state_units(), kind, device)?;
        // the core's h_T: the recurrent-module control's state also holds a_T after it
        passes.push(model.unroll(&input, CbOutput::Off, &mut |_| Ok(()))?.f_narrow(2, 0, h)?); // [M, take B, H]
    }
    let (m, s, b) = (m as i64, s as i64, b as i64);
    let by_length = Tensor::f_cat(&passes, 1)?.f_view([m, s, b, h])?; // [M, S, B, H]
    let index = Tensor::f_from_slice(&place)?.f_view([m, s, 1, 1])?.f_expand([m, s, b, h], false)?.f_to_device(device)?; // [M, S, B, H]
    let states = by_length.f_gather(1, &index, false)?; // [M, S, B, H]
    let labels = Tensor::f_from_slice(&labels)?.f_view([m, s, b])?.f_to_device(device)?; // [M, S, B]
    Ok((states, labels))
}

/// Logits of the readout (w [M, 2, H], b [M, 2]) on final states [M, B, H], [M, B, 2].
fn readout(w: &Tensor, b: &Tensor, states: &Tensor) -> Result<Tensor, TchError> {
    b.f_unsqueeze(1)?.f_baddbmm(states, &w.f_transpose(1, 2)?, 1.0, 1.0) // [M, B, 2]
}

/// Correct answers per row, [M], of the readout on final states [M, S, B, H] with labels
/// [M, S, B].
fn readout_correct(w: &Tensor, b: &Tensor, states: &Tensor, labels: &Tensor) -> Result<Tensor, TchError> {
    let logits = readout(w, b, &states.f_flatten(1, 2)?)?; // [M, S B, 2]
    correct_counts(&logits, &labels.f_flatten(1, 2)?)
}

/// The gradient of each row's mean cross-entropy (`model::cross_entropy`) on one batch of final
/// states [M, B, H] with labels [M, B], with respect to the readout: [M, 2, H] and [M, 2].
fn readout_gradient(w: &Tensor, b: &Tensor, states: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor), TchError> {
    let batch = states.size()[1] as f64;
    let logits = readout(w, b, states)?; // [M, B, 2]
    // d(mean CE)/d logits = (softmax - one-hot) / B
    let d = logits.f_softmax(-1, logits.kind())?.f_sub(&labels.f_one_hot(2)?.f_to_kind(logits.kind())?)?.f_div_scalar(batch)?; // [M, B, 2]
    let g_w = d.f_transpose(1, 2)?.f_bmm(states)?; // [M, 2, H]
    let g_b = d.f_sum_dim_intlist(Some([1i64].as_slice()), false, None::<Kind>)?; // [M, 2]
    Ok((g_w, g_b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cross_entropy;
    use crate::tasks::{self, Stream};
    use cbsweep_common::{Seed, Task};

    #[test]
    fn the_readout_gradient_is_autograds() {
        let opts = (Kind::Double, Device::Cpu);
        tch::manual_seed(3);
        let (m, batch, h) = (3, 5, 4);
        let w = Tensor::randn([m, 2, h], opts).set_requires_grad(true);
        let b = Tensor::randn([m, 2], opts).set_requires_grad(true);
        let states = Tensor::randn([m, batch, h], opts);
        let labels = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1]).view([m, batch]);
        // every row's loss has its own readout: the sum's gradient is each row's own
        let loss = cross_entropy(&readout(&w, &b, &states).unwrap(), &labels).unwrap().sum(Kind::Double);
        let auto = Tensor::run_backward(&[loss], &[&w, &b], false, false);
        let (g_w, g_b) = readout_gradient(&w.detach(), &b.detach(), &states, &labels).unwrap();
        assert!(g_w.allclose(&auto[0], 1e-12, 1e-12, false), "{g_w} vs {}", auto[0]);
        assert!(g_b.allclose(&auto[1], 1e-12, 1e-12, false), "{g_b} vs {}", auto[1]);
    }

    #[test]
    fn final_states_keep_the_order_drawn() {
        let spec = crate::testing::small_spec(2, Task::Dms, cbsweep_common::Arch::Cbrnn, cbsweep_common::Regime::Simult);
        let dims = crate::model::Dims::of(&spec);
        let model = PackedModel::new(dims, &[spec.clone(), spec], Kind::Double, Device::Cpu).unwrap();
        let mut data = tasks::stream(Seed(9), Stream::RecoveryData);
        let mut h0 = tasks::stream(Seed(9), Stream::RecoveryH0);
        let drawn: Batches = (0..2)
            .map(|_| (0..13).map(|_| (tasks::draw_batch(&mut data, Task::Dms, 4, 3), tasks::draw_h0(&mut h0, 3, 16))).collect())
            .collect();
        let (states, labels) = final_states(&model, drawn.clone(), Kind::Double, Device::Cpu).unwrap();
        assert_eq!(states.size(), [2, 13, 3, 16]);
        for (r, row) in drawn.iter().enumerate() {
            for (i, batch) in row.iter().enumerate() {
                // one batch alone, no padding
                let (input, want) = pack_batches(&[vec![batch.clone()], vec![batch.clone()]], 16, Kind::Double, Device::Cpu).unwrap();
                let alone = model.unroll(&input, CbOutput::Off, &mut |_| Ok(())).unwrap().get(r as i64);
                let got = states.get(r as i64).get(i as i64);
                assert!(got.allclose(&alone, 1e-12, 1e-12, false), "row {r} batch {i}");
                assert!(labels.get(r as i64).get(i as i64).equal(&want.get(0)), "row {r} batch {i}");
            }
        }
    }
}
