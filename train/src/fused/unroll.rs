//! `PackedModel::unroll` on the CPU engine, for the analyses' long drives (the timescales'
//! thousands of steps): the time loop of every row on host memory, each step's activity handed
//! to the observer as libtorch tensors.

use super::step::{Job, Prepared, Scratch};
use super::{FusedPack, forward, gru};
use crate::input::PackedInput;
use crate::model::{self, CbOutput, Observe, PackedModel};
use crate::tasks::TaskBatch;
use cbsweep_common::{Core, ModuleKind};
use rayon::prelude::*;

/// `PackedModel::unroll` on the CPU engine: runs the time loop of every row of the pack on host
/// memory and hands `observe` each step's activity, as libtorch tensors [M, B, units], the
/// populations of `Step::activity` that the architecture has. Only for a float32 pack on the
/// CPU, an input without padding (every sequence as long as the input) and an architecture the
/// engine has (`supports`); returns None otherwise, having observed nothing. The analyses' long
/// drives (the timescales' thousands of steps) take this path.
pub(crate) fn unroll(
    model: &PackedModel,
    input: &PackedInput,
    cb: CbOutput,
    observe: &mut Observe<'_>,
) -> Result<Option<tch::Tensor>, tch::TchError> {
    use tch::{Device, Kind, Tensor};
    let (t_len, m, b) = input.x.size3()?;
    let first = model.params().first();
    let cpu_f32 = first.map(Tensor::kind) == Some(Kind::Float) && first.map(Tensor::device) == Some(Device::Cpu);
    if !cpu_f32 || input.min_len < t_len || !super::supports(model.dims().arch) {
        return Ok(None);
    }
    let dims = *model.dims();
    let (t_len, m, b, h) = (t_len as usize, m as usize, b as usize, dims.hidden as usize);
    let (g, p, a) = (dims.granule as usize, dims.purkinje as usize, dims.module_units() as usize);
    let module = if cb == CbOutput::On { dims.arch.module() } else { None };
    let cerebellar = module == Some(ModuleKind::Cerebellar);
    let pack = FusedPack::<f32>::from_tensors(dims, model.params(), model.params(), &vec![[0.0; 3]; m])?;
    let x = Vec::<f32>::try_from(&input.x.f_flatten(0, -1)?)?; // [T, M, B]
    let units = dims.state_units() as usize;
    let initial = Vec::<f64>::try_from(&input.initial.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)?; // [M, B, S]
    let batches: Vec<TaskBatch> = (0..m)
        .map(|row| TaskBatch {
            len: t_len,
            bits: (0..t_len).flat_map(|t| x[(t * m + row) * b..(t * m + row + 1) * b].iter().map(|&v| u8::from(v != 0.0))).collect(),
            labels: vec![0; b],
        })
        .collect();
    let runs: Vec<Scratch<f32>> = (0..m)
        .into_par_iter()
        .map(|row| {
            let w = Prepared::new(dims, &pack.layout, &pack.rows[row].params);
            let initial = &initial[row * b * units..(row + 1) * b * units];
            let job = Job { row, batch: &batches[row], initial, start: 0, rows: b, scale: 1.0 };
            let mut s = Scratch::default();
            forward(&w, &job, cb, true, &mut s);
            if cerebellar && dims.arch.core() == Core::Gru {
                gru::rescale_outputs(&mut s, h, b, t_len);
            }
            s
        })
        .collect();
    // rows' slices of one step, stacked [M, B, units]
    let stacked = |part: &dyn Fn(&Scratch<f32>) -> &[f32], units: usize| -> Result<Tensor, tch::TchError> {
        let values: Vec<f32> = runs.iter().flat_map(|s| part(s).iter().copied()).collect();
        Tensor::f_from_slice(&values)?.f_view([m as i64, b as i64, units as i64])
    };
    for t in 0..t_len {
        let (at, n) = ((t + 1) * b * h, b * h);
        let hidden = stacked(&|s| &s.hs[at..at + n], h)?;
        // in `Population::ALL` order: granule, Purkinje, the module's output, the recurrent
        // module's state
        let stacked_if = |on: bool, part: &dyn Fn(&Scratch<f32>) -> &[f32], units| on.then(|| stacked(part, units)).transpose();
        let recurrent = module == Some(ModuleKind::Recurrent);
        let parts = [
            stacked_if(cerebellar, &|s| &s.g[t * b * g..(t + 1) * b * g], g)?,
            stacked_if(cerebellar, &|s| &s.p[t * b * p..(t + 1) * b * p], p)?,
            stacked_if(module.is_some(), &|s| &s.c[t * b * h..(t + 1) * b * h], h)?,
            stacked_if(recurrent, &|s| &s.states[(t + 1) * b * a..(t + 2) * b * a], a)?,
        ];
        let [granule, purkinje, output, state] = [0, 1, 2, 3].map(|i| parts[i].as_ref());
        observe(model::Step { t: t as i64, activity: [Some(&hidden), granule, purkinje, output, state] })?;
    }
    // the final states in the initial states' layout: h_T, then the recurrent module's a_T (its
    // a_0 with the module switched off)
    let (last, last_a) = (t_len * b * h, t_len * b * a);
    let mut end = Vec::with_capacity(m * b * units);
    for (row, s) in runs.iter().enumerate() {
        for i in 0..b {
            end.extend_from_slice(&s.hs[last + i * h..last + (i + 1) * h]);
            if units > h {
                let from = (row * b + i) * units + h;
                match module {
                    Some(ModuleKind::Recurrent) => end.extend_from_slice(&s.states[last_a + i * a..last_a + (i + 1) * a]),
                    _ => end.extend(initial[from..from + a].iter().map(|&v| v as f32)),
                }
            }
        }
    }
    Ok(Some(Tensor::f_from_slice(&end)?.f_view([m as i64, b as i64, units as i64])?))
}
