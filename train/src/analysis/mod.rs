//! The checkpoint analyses (docs/science.md#analyses): the cerebellar output's ablation, the
//! readout's recovery without the module, PCA dimensionality and timescales per population, and
//! the checkpoint's weights as safetensors.
//!
//! They run under no_grad on a pack with one row per analysed trial and draw only from the
//! analysis streams (`Stream::Analysis*`, `Stream::Recovery*`, `Stream::Timescale*`), re-seeded
//! at every checkpoint: successive checkpoints see the same inputs at a given level, and a
//! trial's training data never shifts because it was analysed.
//!
//! Files: `ablation`, `recovery`, `pca` (dimensionality), `timescales` with its exponential
//! `fits`, and `checkpoint` (the weights as safetensors). The analyses run on packed tensors
//! (`PackedModel`) whatever engine trained them; the timescales' long drive runs on the time
//! loop the caller passes (`PackEngine::unroll`), so they know no engine.

mod ablation;
mod fits;
mod pca;
mod recovery;
mod timescales;
pub(crate) mod weights;

use super::input::Batches;
use super::model::{PackedModel, Unroll};
use super::tasks::{self, Stream};
use cbsweep_common::{AnalysisRecord, TrialSpec};
use tch::{Device, Kind, TchError};

pub(crate) use weights::{save_weights, weights_path};

/// Sequences per batch of the ablation, recovery and dimensionality analyses (the study's 64).
const BATCH: usize = 64;

/// One trial's checkpoint: the level it just solved and the epoch it solved it in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkpoint<'a> {
    pub(crate) spec: &'a TrialSpec,
    pub(crate) level: u32,
    pub(crate) epoch: u32,
}

/// Runs the analyses of `points[r]` on row r of `model`, all under the first point's plan (the
/// caller groups checkpoints by plan), the timescales' drive on `unroll`. Returns each point's
/// records, in the order taken.
pub(crate) fn analyse(
    model: &PackedModel,
    points: &[Checkpoint],
    kind: Kind,
    device: Device,
    unroll: &Unroll<'_>,
) -> Result<Vec<Vec<AnalysisRecord>>, TchError> {
    let Some(first) = points.first() else {
        return Ok(Vec::new());
    };
    let plan = first.spec.analysis;
    let _no_grad = tch::no_grad_guard();
    let mut out: Vec<Vec<AnalysisRecord>> = vec![Vec::new(); points.len()];
    let mut push = |row: usize, population: &str, metric: &str, value: f64| {
        let point = &points[row];
        out[row].push(AnalysisRecord {
            level: point.level,
            epoch: point.epoch,
            population: population.to_string(),
            metric: metric.to_string(),
            value,
        });
    };

    // the readout recovery (of a model with a module) is evaluated on the fixed batches too
    let recovers = plan.recovery_steps > 0 && model.dims().arch.module().is_some();
    let recovery_eval = if recovers { plan.recovery_eval_batches } else { 0 };
    let fixed = fixed_batches(points, plan.ablation_batches.max(plan.dimensionality_batches).max(recovery_eval) as usize, model);
    let first_n = |n: u32| fixed.iter().map(|b| b[..n as usize].to_vec()).collect::<Vec<_>>();
    ablation::ablation(model, first_n(plan.ablation_batches), kind, device, &mut push)?;
    if recovers {
        let train =
            draw_batches(points, plan.recovery_steps as usize, [Stream::RecoveryData, Stream::RecoveryH0, Stream::RecoveryA0], model);
        recovery::recovery(model, train, first_n(recovery_eval), kind, device, &mut push)?;
    }
    pca::dimensionality(model, first_n(plan.dimensionality_batches), kind, device, &mut push)?;
    let trials: Vec<&TrialSpec> = points.iter().map(|p| p.spec).collect();
    timescales::timescales(model, &trials, &plan, kind, device, unroll, &mut push)?;
    Ok(out)
}

/// `n` fixed batches of `BATCH` sequences per point at its level, from its analysis streams.
fn fixed_batches(points: &[Checkpoint], n: usize, model: &PackedModel) -> Batches {
    draw_batches(points, n, [Stream::AnalysisData, Stream::AnalysisH0, Stream::AnalysisA0], model)
}

/// `n` batches of `BATCH` sequences per point at its level, from the start of its streams of
/// data, h_0 and (the recurrent-module control's) a_0.
fn draw_batches(points: &[Checkpoint], n: usize, [data, h0, a0]: [Stream; 3], model: &PackedModel) -> Batches {
    let (hidden, module) = (model.dims().hidden as usize, model.dims().module_units() as usize);
    points
        .iter()
        .map(|p| {
            let mut data = tasks::stream(p.spec.seed, data);
            let (mut h0, mut a0) = (tasks::stream(p.spec.seed, h0), tasks::stream(p.spec.seed, a0));
            (0..n)
                .map(|_| {
                    let batch = tasks::draw_batch(&mut data, p.spec.task, p.level, BATCH);
                    (batch, tasks::draw_states(&mut h0, &mut a0, p.spec.module_start, BATCH, hidden, module))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fastest_unroll;
    use crate::model::{Dims, init_trial};
    use crate::testing::{analysis_plan, one_thread, small_spec};
    use cbsweep_common::{AnalysisPlan, Arch, Regime, Seed, Task};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn ablation_plan() -> AnalysisPlan {
        AnalysisPlan { dimensionality_batches: 0, timescale_steps: 0, recovery_steps: 0, ..analysis_plan() }
    }

    fn records<'r>(records: &'r [AnalysisRecord], population: &str, metric: &str) -> Vec<&'r AnalysisRecord> {
        records.iter().filter(|r| r.population == population && r.metric == metric).collect()
    }

    #[test]
    fn with_the_module_output_zeroed_accuracy_is_the_same_on_and_off() {
        one_thread();
        let mut spec = small_spec(3, Task::Parity, Arch::Cbrnn, Regime::Simult);
        spec.analysis = ablation_plan();
        let dims = Dims::of(&spec);
        let mut init = init_trial(&dims, &spec);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for (p, values) in dims.param_specs().iter().zip(init.iter_mut()) {
            if p.name.starts_with("cb.dcn") {
                values.iter_mut().for_each(|v| *v = 0.0);
            } else if p.name.starts_with("cb.") {
                // a module that would matter if its output were not zero
                values.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut rng));
            }
        }
        let model = PackedModel::from_host(dims, &[init], Kind::Float, Device::Cpu).unwrap();
        let points = [Checkpoint { spec: &spec, level: 3, epoch: 5 }];
        let out = analyse(&model, &points, Kind::Float, Device::Cpu, &fastest_unroll).unwrap();
        let value = |metric| records(&out[0], "network", metric)[0].value;
        assert_eq!(value("accuracy_cb_on"), value("accuracy_cb_off"));
        assert_eq!(value("ablation_drop"), 0.0);
        assert!(out[0].iter().all(|r| (r.level, r.epoch) == (3, 5)));
        assert_eq!(out[0].len(), 3, "the plan asks for the ablation only: {:?}", out[0]);

        // the plain RNN has no module to switch off
        let rnn = TrialSpec { arch: Arch::Rnn, ..spec.clone() };
        let model = PackedModel::new(Dims::of(&rnn), std::slice::from_ref(&rnn), Kind::Float, Device::Cpu).unwrap();
        let out = analyse(&model, &[Checkpoint { spec: &rnn, level: 3, epoch: 5 }], Kind::Float, Device::Cpu, &fastest_unroll).unwrap();
        let metrics: Vec<&str> = out[0].iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(metrics, ["accuracy_cb_on"]);
    }

    #[test]
    fn fixed_batches_repeat_at_a_level_and_follow_the_seed() {
        let spec = small_spec(4, Task::Dms, Arch::Rnn, Regime::Simult);
        let model = PackedModel::new(Dims::of(&spec), std::slice::from_ref(&spec), Kind::Float, Device::Cpu).unwrap();
        let at = |spec: &TrialSpec, level| fixed_batches(&[Checkpoint { spec, level, epoch: 1 }], 3, &model);
        assert_eq!(at(&spec, 3), at(&spec, 3));
        assert_ne!(at(&spec, 3), at(&spec, 4));
        assert_ne!(at(&spec, 3), at(&TrialSpec { seed: Seed(5), ..spec.clone() }, 3));
    }

    /// The analyses of one checkpoint of the main CB-RNN (H = 64, G = 256, P = 64) under the
    /// study's plan, on one CPU thread. Run with
    /// `cargo test --release -p cbsweep-worker -- --ignored --nocapture checkpoint_timing`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cbrnn_checkpoint_timing() {
        one_thread();
        let mut spec = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
        (spec.hidden, spec.granule, spec.purkinje) = (64, 256, 64);
        spec.analysis = AnalysisPlan::study();
        let model = PackedModel::new(Dims::of(&spec), std::slice::from_ref(&spec), Kind::Float, Device::Cpu).unwrap();
        let only = |plan: AnalysisPlan| TrialSpec { analysis: plan, ..spec.clone() };
        let study = AnalysisPlan::study();
        let parts = [
            ("ablation", only(AnalysisPlan { dimensionality_batches: 0, timescale_steps: 0, recovery_steps: 0, ..study })),
            ("recovery", only(AnalysisPlan { ablation_batches: 0, dimensionality_batches: 0, timescale_steps: 0, ..study })),
            ("dimensionality", only(AnalysisPlan { ablation_batches: 0, timescale_steps: 0, recovery_steps: 0, ..study })),
            ("timescales", only(AnalysisPlan { ablation_batches: 0, dimensionality_batches: 0, recovery_steps: 0, ..study })),
            ("all", spec.clone()),
        ];
        for level in [2, 6, 35] {
            for (what, spec) in &parts {
                let started = std::time::Instant::now();
                let out = analyse(&model, &[Checkpoint { spec, level, epoch: 1 }], Kind::Float, Device::Cpu, &fastest_unroll).unwrap();
                println!("level {level}, {what}: {:.2} s ({} records)", started.elapsed().as_secs_f64(), out[0].len());
            }
        }
        // three trials of a pack that solve a level in the same epoch
        let pack: Vec<TrialSpec> = (0..3).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
        let model = PackedModel::new(Dims::of(&spec), &pack, Kind::Float, Device::Cpu).unwrap();
        let points: Vec<Checkpoint> = pack.iter().map(|spec| Checkpoint { spec, level: 4, epoch: 1 }).collect();
        let started = std::time::Instant::now();
        analyse(&model, &points, Kind::Float, Device::Cpu, &fastest_unroll).unwrap();
        println!("level 4, all, 3 trials at once: {:.2} s", started.elapsed().as_secs_f64());
    }
}
