//! A trial's checkpoint (docs/science.md#training): its whole training state at an epoch
//! boundary as one `codec::SavedTrial` message, written from a row of a pack's state and read
//! back into a row of another pack. Everything a trial's next step depends on is in it: weights
//! and Nesterov buffers (raw bytes, so nothing is rounded), the curriculum (level, epochs, levels
//! solved, SGD steps, from which the freeze rules follow), the word positions of its training
//! and test streams, the curve and the analyses so far. Resuming from it continues the trial bit
//! for bit as if it had never stopped, in whatever pack it lands; the engines' per-row
//! computations depend on nothing else (`fused`'s jobs never span trials, the libtorch engine's
//! operations are per row over the pack axis).

use super::engine::PackState;
use super::model::Dims;
use super::trial::{Mark, TrialRun};
use crate::codec::SavedTrial;
use cbsweep_common::TrialSpec;
use tch::{Device, Kind, TchError, Tensor};

/// The layout of a checkpoint's contents this worker writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// The name of a float kind in a checkpoint.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Double => "f64",
        _ => "f32",
    }
}

/// Row `row` of `t` as little-endian bytes of `kind`.
fn row_bytes(t: &Tensor, row: i64, kind: Kind) -> Result<Vec<u8>, TchError> {
    let flat = t.f_get(row)?.f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_contiguous()?.f_flatten(0, -1)?;
    Ok(match kind {
        Kind::Double => Vec::<f64>::try_from(&flat)?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => Vec::<f32>::try_from(&flat)?.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// The checkpoint of `trial` as it was at the epoch boundary `mark` was taken at, whose weights
/// and buffers are row `row` of `state` (the pack's state at that boundary).
pub(crate) fn encode(trial: &TrialRun, mark: &Mark, state: &PackState, row: usize, kind: Kind) -> Result<Vec<u8>, TchError> {
    let row = row as i64;
    let params = state.model.params().iter().map(|p| row_bytes(p, row, kind)).collect::<Result<Vec<_>, _>>()?;
    let momentum = state.momentum.iter().map(|b| row_bytes(b, row, kind)).collect::<Result<Vec<_>, _>>()?;
    let message = SavedTrial {
        format: FORMAT,
        trial_id: trial.spec.id().0,
        epochs_done: trial.epochs_done,
        level: trial.level,
        levels_solved: trial.levels_solved(),
        steps_done: mark.steps_done,
        stream_words: mark.words.iter().flat_map(|w| [*w as u64, (*w >> 64) as u64]).collect(),
        curve: trial.curve.iter().map(Into::into).collect(),
        analyses: trial.analyses.iter().map(Into::into).collect(),
        wall_time_ms: trial.elapsed_ms(),
        kind: kind_name(kind).into(),
        params,
        momentum,
    };
    Ok(message.encode_to_vec())
}

/// Reads a checkpoint of `spec` (a trial of shape `dims`, trained in `kind`), refusing one of
/// another trial, shape, kind or layout, naming what differs.
pub(crate) fn decode(bytes: &[u8], spec: &TrialSpec, dims: &Dims, kind: Kind) -> Result<SavedTrial, String> {
    let c = SavedTrial::decode(bytes)?;
    if c.format != FORMAT {
        return Err(format!("checkpoint format {} (this worker reads {FORMAT})", c.format));
    }
    if c.trial_id != spec.id().0 {
        return Err(format!("checkpoint of trial {}, not {}", c.trial_id, spec.id()));
    }
    if c.kind != kind_name(kind) {
        return Err(format!("checkpoint in {}, this pack trains in {}", c.kind, kind_name(kind)));
    }
    if c.epochs_done >= spec.budget.epochs {
        return Err(format!("checkpoint at epoch {} of a budget of {}", c.epochs_done, spec.budget.epochs));
    }
    if c.stream_words.len() != 2 * Mark::STREAMS && c.stream_words.len() != 2 * Mark::EARLIER_STREAMS {
        return Err(format!("checkpoint with {} stream words, expected {}", c.stream_words.len(), 2 * Mark::STREAMS));
    }
    let width = if kind == Kind::Double { 8 } else { 4 };
    let specs = dims.param_specs();
    for (what, tensors) in [("parameter", &c.params), ("momentum buffer", &c.momentum)] {
        if tensors.len() != specs.len() {
            return Err(format!("checkpoint with {} {what}s, the model has {}", tensors.len(), specs.len()));
        }
        for (bytes, p) in tensors.iter().zip(&specs) {
            let expected = p.shape.iter().product::<i64>() as usize * width;
            if bytes.len() != expected {
                return Err(format!("checkpoint {what} {} holds {} bytes, expected {expected}", p.name, bytes.len()));
            }
        }
    }
    Ok(c)
}

/// A tensor of `kind` of `shape` from little-endian bytes.
fn tensor_of(bytes: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, TchError> {
    let t = match kind {
        Kind::Double => {
            let v: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            Tensor::f_from_slice(&v)?
        }
        _ => {
            let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect();
            Tensor::f_from_slice(&v)?
        }
    };
    t.f_view(shape)
}

/// Writes each checkpoint's weights and buffers into its row of `state`: `rows[k]` = (row,
/// checkpoint), checkpoints read with `decode`.
pub(crate) fn write_rows(state: &PackState, rows: &[(usize, &SavedTrial)]) -> Result<(), TchError> {
    let _no_grad = tch::no_grad_guard();
    let specs = state.model.dims().param_specs();
    for &(row, c) in rows {
        let row = row as i64;
        for (i, p) in specs.iter().enumerate() {
            for (target, bytes) in [(&state.model.params()[i], &c.params[i]), (&state.momentum[i], &c.momentum[i])] {
                let source = tensor_of(bytes, &p.shape, target.kind())?.f_to_device(target.device())?;
                target.f_get(row)?.f_copy_(&source)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{analysis_plan, one_thread, small_budget, small_spec};
    use super::super::{Engine, TorchTrainer};
    use crate::codec::SavedTrial;
    use crate::trainer::{Cadence, Control, PackEvents, PackTrial, Saved, Trainer, TrialEnd};
    use cbsweep_common::{Arch, EpochRecord, FreezePoint, Regime, Task, TrialResult, TrialSpec};
    use std::cell::Cell;
    use std::path::Path;

    /// Records what a pack reports, and stops it before step `stop_at` (counted from 1).
    #[derive(Default)]
    struct Recorder {
        stop_at: Option<usize>,
        polls: Cell<usize>,
        checkpoints: Vec<(usize, Saved)>,
    }

    impl PackEvents for Recorder {
        fn epoch(&mut self, _: usize, _: &EpochRecord) -> Control {
            Control::Continue
        }
        fn checkpoint(&mut self, index: usize, saved: Saved) {
            self.checkpoints.push((index, saved));
        }
        fn stop_requested(&self) -> bool {
            self.polls.set(self.polls.get() + 1);
            self.stop_at.is_some_and(|k| self.polls.get() >= k)
        }
        fn stops(&self) -> bool {
            self.stop_at.is_some()
        }
    }

    /// A checkpoint's contents but its wall time (which no two runs share).
    fn contents(bytes: &[u8]) -> SavedTrial {
        SavedTrial { wall_time_ms: 0, ..SavedTrial::decode(bytes).unwrap() }
    }

    /// Trains `pack`, checkpointing every epoch unless `events` stops it (then never: what it
    /// hands back at the stop is the checkpoint).
    fn train(engine: Engine, pack: &[PackTrial], events: &mut Recorder, dir: &Path) -> Vec<TrialEnd> {
        let mut trainer = TorchTrainer::new(tch::Device::Cpu).with_engine(engine).with_checkpoint_dir(Some(dir.to_path_buf()));
        let cadence = if events.stop_at.is_some() { Cadence::default() } else { Cadence { epochs: 1, time: None } };
        trainer.train(pack, cadence, events)
    }

    fn fresh(specs: &[TrialSpec]) -> Vec<PackTrial> {
        specs.iter().map(|s| PackTrial { spec: s.clone(), resume: None }).collect()
    }

    fn result(end: &TrialEnd) -> &TrialResult {
        end.result().expect("a finished trial")
    }

    /// A trial stopped mid-epoch and resumed from its checkpoint, in a pack of another size and
    /// other trials (which start at epoch 1 beside it), ends exactly as the uninterrupted run:
    /// the same curve and analyses, the same saved weights at its solved levels, and the same
    /// state (weights, buffers, streams, curriculum) at every epoch after the resume. Its
    /// freeze point counts its own steps, not the pack's. The CB-RNN on both engines, the
    /// recurrent-module control and the CB-GRU on the CPU engine.
    #[test]
    fn a_resumed_trial_in_another_pack_ends_bit_identical_to_an_uninterrupted_run() {
        resumes_bit_identical(Arch::Cbrnn, &[Engine::Fused, Engine::Libtorch], 1);
        resumes_bit_identical(Arch::Rmrnn, &[Engine::Fused], 1);
        // seed 1's CB-GRU solves no level in this budget
        resumes_bit_identical(Arch::Cbgru, &[Engine::Fused], 3);
    }

    /// `a_resumed_trial_in_another_pack_ends_bit_identical_to_an_uninterrupted_run` for a trial
    /// of `arch` seeded `seed` (one that solves a level in the small budget).
    fn resumes_bit_identical(arch: Arch, engines: &[Engine], seed: u64) {
        one_thread();
        let budget = cbsweep_common::TrainBudget { epochs: 6, max_level: 40, solve_threshold: 0.55, ..small_budget() };
        let spec = |seed, arch, regime| TrialSpec {
            budget,
            analysis: cbsweep_common::AnalysisPlan { save_checkpoints: true, ..analysis_plan() },
            ..small_spec(seed, Task::Dms, arch, regime)
        };
        let trial = spec(seed, arch, Regime::Reservoir { freeze: FreezePoint::Step(35) });
        let mate = spec(2, arch, Regime::Simult);
        let others: Vec<TrialSpec> = (10..13).map(|s| spec(s, arch, Regime::Reservoir { freeze: FreezePoint::Epoch(2) })).collect();
        for &engine in engines {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut whole = Recorder::default();
            let ends = train(engine, &fresh(&[trial.clone(), mate.clone()]), &mut whole, a.path());
            let reference = result(&ends[0]).clone();
            assert!(
                reference.max_level() > budget.start_level,
                "{arch} {engine:?}: the trial solves levels (so analyses and saved weights are compared)"
            );

            // stopped before step 25: in its third epoch, so it hands back the end of the second
            let mut cut = Recorder { stop_at: Some(25), ..Recorder::default() };
            let ends = train(engine, &fresh(&[trial.clone(), mate.clone()]), &mut cut, b.path());
            let TrialEnd::Stopped { checkpoint: Some(saved), curve } = &ends[0] else {
                panic!("{arch} {engine:?}: stopped with a checkpoint")
            };
            assert_eq!((saved.epochs_done, curve.len()), (2, 2), "{arch} {engine:?}");

            let mut pack = fresh(&others);
            pack.insert(1, PackTrial { spec: trial.clone(), resume: Some(saved.bytes.clone()) });
            let mut rest = Recorder::default();
            let ends = train(engine, &pack, &mut rest, b.path());
            let resumed = result(&ends[1]);
            assert_eq!(resumed.curve, reference.curve, "{arch} {engine:?}: the curve, bit for bit");
            assert_eq!(resumed.analyses, reference.analyses, "{arch} {engine:?}: the analyses, bit for bit");
            assert_eq!(resumed.outcome, reference.outcome, "{arch} {engine:?}");
            let before: Vec<_> =
                whole.checkpoints.iter().filter(|(i, s)| *i == 0 && s.epochs_done > 2).map(|(_, s)| contents(&s.bytes)).collect();
            let after: Vec<_> = rest.checkpoints.iter().filter(|(i, _)| *i == 1).map(|(_, s)| contents(&s.bytes)).collect();
            assert_eq!(after.len(), 3, "{arch} {engine:?}: checkpoints after epochs 3, 4 and 5");
            assert!(before == after, "{arch} {engine:?}: the whole state after every epoch since the resume");
            let dir = trial.id().0;
            for entry in std::fs::read_dir(a.path().join(&dir)).unwrap() {
                let name = entry.unwrap().file_name();
                let (x, y) =
                    (std::fs::read(a.path().join(&dir).join(&name)).unwrap(), std::fs::read(b.path().join(&dir).join(&name)).unwrap());
                assert!(x == y, "{arch} {engine:?}: saved weights {name:?}");
            }
        }
    }

    /// A checkpoint of another trial, or a damaged one, is not used: the trial starts afresh
    /// and ends as a fresh run does.
    #[test]
    fn a_checkpoint_of_another_trial_or_a_damaged_one_is_not_used() {
        one_thread();
        let trial = small_spec(1, Task::Parity, Arch::Rnn, Regime::Simult);
        let other = small_spec(2, Task::Parity, Arch::Rnn, Regime::Simult);
        let dir = tempfile::tempdir().unwrap();
        let mut cut = Recorder { stop_at: Some(25), ..Recorder::default() };
        let ends = train(Engine::Fused, &fresh(std::slice::from_ref(&other)), &mut cut, dir.path());
        let TrialEnd::Stopped { checkpoint: Some(saved), .. } = &ends[0] else { panic!("stopped with a checkpoint") };
        let reference = train(Engine::Fused, &fresh(std::slice::from_ref(&trial)), &mut Recorder::default(), dir.path());
        for bytes in [saved.bytes.clone(), saved.bytes[..saved.bytes.len() / 2].to_vec()] {
            let pack = [PackTrial { spec: trial.clone(), resume: Some(bytes) }];
            let ends = train(Engine::Fused, &pack, &mut Recorder::default(), dir.path());
            assert_eq!(result(&ends[0]).curve, result(&reference[0]).curve);
        }
        let wrong = super::decode(&saved.bytes, &trial, &super::super::model::Dims::of(&trial), tch::Kind::Float).unwrap_err();
        assert!(wrong.contains(&other.id().0) && wrong.contains(&trial.id().0), "{wrong}");
    }

    /// A checkpoint written before the recurrent module's a0 streams (four streams' words) is
    /// still read, its trial (one that never draws from them) resuming its four streams where
    /// they were and the a0 streams at their start; a checkpoint of another count is refused.
    #[test]
    fn a_checkpoint_of_four_streams_is_still_read() {
        one_thread();
        let trial = small_spec(1, Task::Parity, Arch::Cbrnn, Regime::Simult);
        let dir = tempfile::tempdir().unwrap();
        let mut cut = Recorder { stop_at: Some(25), ..Recorder::default() };
        let ends = train(Engine::Fused, &fresh(std::slice::from_ref(&trial)), &mut cut, dir.path());
        let TrialEnd::Stopped { checkpoint: Some(saved), .. } = &ends[0] else { panic!("stopped with a checkpoint") };
        let dims = super::super::model::Dims::of(&trial);
        let read = |words: usize| {
            let mut c = SavedTrial::decode(saved.bytes.as_slice()).unwrap();
            c.stream_words.truncate(words);
            super::decode(&c.encode_to_vec(), &trial, &dims, tch::Kind::Float)
        };
        let now = read(12).unwrap();
        assert!(now.stream_words[..8].iter().any(|&w| w != 0) && now.stream_words[8..].iter().all(|&w| w == 0), "a CB-RNN draws no a0");
        let older = read(8).unwrap();
        let resumed = super::super::trial::TrialRun::resumed(&trial, std::time::Instant::now(), &older).unwrap();
        let words: Vec<u64> = resumed.mark().words.iter().flat_map(|w| [*w as u64, (*w >> 64) as u64]).collect();
        assert_eq!(words, now.stream_words);
        assert!(read(10).unwrap_err().contains("10 stream words"));
    }
}
