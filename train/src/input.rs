//! Host data on its way to libtorch: a pack's batches (`Batches`) packed into one padded
//! `PackedInput`, evaluated in passes of a bounded number of batches, and host vectors moved to
//! the pack's device (through pinned memory onto a GPU). Depends on `tasks` only; knows no
//! model and no engine.

use super::tasks::TaskBatch;
use tch::{Device, Kind, TchError, Tensor};

/// Per row of a pack (one trial), its batches, each with its sequences' initial states ([B, S]
/// row-major, S = `Dims::state_units`: h_0, then the recurrent module's a_0 where the model has
/// one). Every row has the same number of sequences.
pub(crate) type Batches = Vec<Vec<(TaskBatch, Vec<f64>)>>;

/// The inputs of one packed forward pass. Padding past a sequence's own length is ignored.
#[derive(Debug)]
pub(crate) struct PackedInput {
    /// Bits as numbers, [T, M, B]; T is the longest length in the pack.
    pub(crate) x: Tensor,
    /// Each sequence's own length, [M, B] (int64).
    pub(crate) lengths: Tensor,
    /// The shortest length in `lengths`: steps before it need no masking.
    pub(crate) min_len: i64,
    /// Initial states, [M, B, S]: h_0 ([.., H]), then the recurrent module's a_0 where the model
    /// has one (S = `Dims::state_units`).
    pub(crate) initial: Tensor,
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

/// Calls `f` on each row's batches packed in passes of at most `per_pass` batches; each row's
/// batches are sorted by length first, so passes carry little padding. `units`: S of the states.
pub(crate) fn in_passes(
    mut drawn: Batches,
    per_pass: usize,
    units: i64,
    kind: Kind,
    device: Device,
    f: &mut dyn FnMut(&PackedInput, &Tensor) -> Result<(), TchError>,
) -> Result<(), TchError> {
    for batches in &mut drawn {
        batches.sort_by_key(|(b, _)| b.len);
    }
    while let Some(left) = drawn.first().map(Vec::len).filter(|&left| left > 0) {
        let take = left.min(per_pass.max(1));
        let part: Batches = drawn.iter_mut().map(|b| b.drain(..take).collect()).collect();
        let (input, labels) = pack_batches(&part, units, kind, device)?;
        f(&input, &labels)?;
    }
    Ok(())
}

/// Packs per-trial batches (`per_row[m]`: trial m's batches, concatenated along B, their states
/// `units` wide) into one padded input and the labels [M, B'].
pub(crate) fn pack_batches(
    per_row: &[Vec<(TaskBatch, Vec<f64>)>],
    units: i64,
    kind: Kind,
    device: Device,
) -> Result<(PackedInput, Tensor), TchError> {
    let m = per_row.len();
    let h = units as usize;
    let row_width = |r: &Vec<(TaskBatch, Vec<f64>)>| r.iter().map(|(b, _)| b.labels.len()).sum::<usize>();
    let width = per_row.first().map(row_width).unwrap_or(0);
    if per_row.iter().any(|r| row_width(r) != width) {
        return Err(TchError::Shape("every trial of a pack needs the same number of sequences".into()));
    }
    let t_max = per_row.iter().flatten().map(|(b, _)| b.len).max().unwrap_or(0);
    let min_len = per_row.iter().flatten().map(|(b, _)| b.len).min().unwrap_or(0);
    let mut x = vec![0u8; t_max * m * width]; // [T, M, B']
    let mut lengths = vec![0i64; m * width]; // [M, B']
    let mut labels = vec![0i64; m * width]; // [M, B']
    let mut initial = vec![0f64; m * width * h]; // [M, B', S]
    for (row, batches) in per_row.iter().enumerate() {
        let mut offset = 0;
        for (b, state) in batches {
            let n = b.labels.len();
            for t in 0..b.len {
                let dst = (t * m + row) * width + offset;
                x[dst..dst + n].copy_from_slice(&b.bits[t * n..(t + 1) * n]);
            }
            let at = row * width + offset;
            lengths[at..at + n].fill(b.len as i64);
            labels[at..at + n].copy_from_slice(&b.labels);
            initial[at * h..(at + n) * h].copy_from_slice(state);
            offset += n;
        }
    }
    let (m, width, t_max) = (m as i64, width as i64, t_max as i64);
    let x = to_device(Tensor::f_from_slice(&x)?.f_view([t_max, m, width])?, device)?.f_to_kind(kind)?; // [T, M, B']
    let lengths = to_device(Tensor::f_from_slice(&lengths)?.f_view([m, width])?, device)?; // [M, B']
    let labels = to_device(Tensor::f_from_slice(&labels)?.f_view([m, width])?, device)?; // [M, B']
    let initial = host_tensor(&initial, &[m, width, units], kind, device)?; // [M, B', S]
    Ok((PackedInput { x, lengths, min_len: min_len as i64, initial }, labels))
}
