//! The module output's ablation: accuracy on fixed batches with the module's output on and off
//! (every architecture with a module, cerebellar or recurrent), and the drop.

use crate::input::Batches;
use crate::model::{CbOutput, PackedModel, count_correct};
use tch::{Device, Kind, TchError};

/// Accuracy with the module's output on and off (architectures with a module) and the drop, on each row's
/// `batches` (every row the same number of sequences); `push(row, population, metric, value)`.
pub(super) fn ablation(
    model: &PackedModel,
    batches: Batches,
    kind: Kind,
    device: Device,
    push: &mut dyn FnMut(usize, &str, &str, f64),
) -> Result<(), TchError> {
    if batches.first().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    let sequences = batches[0].iter().map(|(b, _)| b.labels.len()).sum::<usize>() as f64;
    let accuracy = |batches, cb| -> Result<Vec<f64>, TchError> {
        let correct = count_correct(model, batches, cb, kind, device)?.f_to_device(Device::Cpu)?;
        Ok(Vec::<i64>::try_from(&correct)?.into_iter().map(|c| c as f64 / sequences).collect())
    };
    let off = match model.dims().arch.module() {
        Some(_) => Some(accuracy(batches.clone(), CbOutput::Off)?),
        None => None,
    };
    let on = accuracy(batches, CbOutput::On)?;
    for (row, &on) in on.iter().enumerate() {
        push(row, "network", "accuracy_cb_on", on);
        if let Some(off) = &off {
            push(row, "network", "accuracy_cb_off", off[row]);
            push(row, "network", "ablation_drop", on - off[row]);
        }
    }
    Ok(())
}
