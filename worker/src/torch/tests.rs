//! Tests of the libtorch trainer as its callers see it, on the CPU with small budgets, and the
//! helpers that build small trial specs for the module tests.

use super::TorchTrainer;
use super::model::{Dims, Module, PackedModel, init_trial};
use super::tasks::{self, Stream};
use crate::trainer::{Control, Trainer};
use cbsweep_common::{
    AnalysisPlan, Arch, EpochRecord, FreezePoint, Regime, Seed, SweepId, Task, TrainBudget, TrialOutcome, TrialResult, TrialSpec,
};
use rand::Rng;
use std::path::Path;
use tch::{Device, Kind};

/// A budget that runs in well under a second per trial on one CPU core.
pub(crate) fn small_budget() -> TrainBudget {
    TrainBudget {
        epochs: 6,
        steps_per_epoch: 10,
        test_batches: 3,
        batch_size: 16,
        start_level: 2,
        max_level: 4,
        solve_threshold: 0.6,
        momentum: 0.1,
        clip_norm: 7.5,
    }
}

/// A small CB-RNN (H = 16, G = 32, P = 8) or the plain RNN of the same pack shape.
pub(crate) fn small_spec(seed: u64, task: Task, arch: Arch, regime: Regime) -> TrialSpec {
    TrialSpec {
        sweep: SweepId::from("torch-tests"),
        task,
        arch,
        hidden: 16,
        granule: 32,
        purkinje: 8,
        seed: Seed(seed),
        regime,
        lr_core: 0.05,
        lr_cb: 0.05,
        lr_readout: 0.05,
        core_plasticity: 1.0,
        budget: small_budget(),
        analysis: AnalysisPlan { every_levels: 0, ..AnalysisPlan::study() },
    }
}

/// A float64 pack of `specs` (shapes `dims`) whose cerebellar weights are drawn from
/// U(-0.3, 0.3) on weight stream `seed`: the module starts near zero, and larger values make it
/// matter in a comparison of forward and backward passes.
pub(crate) fn model_with_active_module(dims: Dims, specs: &[TrialSpec], seed: u64) -> PackedModel {
    let mut rng = tasks::stream(Seed(seed), Stream::Weights);
    let inits: Vec<Vec<Vec<f64>>> = specs
        .iter()
        .map(|s| {
            let mut init = init_trial(&dims, s);
            for (p, values) in dims.param_specs().iter().zip(init.iter_mut()) {
                if p.module == Module::Cb {
                    values.iter_mut().for_each(|v| *v = 0.6 * rng.random::<f64>() - 0.3);
                }
            }
            init
        })
        .collect();
    PackedModel::from_host(dims, &inits, Kind::Double, Device::Cpu).unwrap()
}

/// Every analysis at every solved level, at sizes that take a fraction of a second for the
/// small models; no saved weights.
pub(crate) fn analysis_plan() -> AnalysisPlan {
    AnalysisPlan {
        every_levels: 1,
        ablation_batches: 2,
        dimensionality_batches: 2,
        timescale_steps: 700,
        timescale_trials: 2,
        timescale_burn_in: 100,
        timescale_max_lag: 40,
        timescale_fit_lags: 10,
        save_checkpoints: false,
    }
}

/// One intra-op thread for the calling test thread: the test harness already runs tests in
/// parallel, and OpenMP threads spinning against each other on a busy machine cost far more than
/// they bring at these sizes.
pub(crate) fn one_thread() {
    tch::set_num_threads(1);
}

/// Trains `pack` on the CPU, collecting the records reported through `on_epoch` per trial.
fn train(pack: &[TrialSpec]) -> (Vec<TrialResult>, Vec<Vec<EpochRecord>>) {
    train_saving(pack, None)
}

/// `train`, saving checkpoint weights under `dir`.
fn train_saving(pack: &[TrialSpec], dir: Option<&Path>) -> (Vec<TrialResult>, Vec<Vec<EpochRecord>>) {
    one_thread();
    let mut reported = vec![Vec::new(); pack.len()];
    let mut trainer = TorchTrainer::new(Device::Cpu).with_checkpoint_dir(dir.map(Path::to_path_buf));
    let results = trainer.train_pack(pack, &mut |i, r| {
        reported[i].push(*r);
        Control::Continue
    });
    (results, reported)
}

fn assert_same_curve(packed: &TrialResult, alone: &TrialResult, what: &str) {
    assert_eq!(packed.outcome, alone.outcome, "{what}: outcome");
    assert_eq!(packed.curve.len(), alone.curve.len(), "{what}: epochs");
    for (p, a) in packed.curve.iter().zip(&alone.curve) {
        assert_eq!((p.epoch, p.level, p.solved), (a.epoch, a.level, a.solved), "{what}: epoch {}", a.epoch);
        assert_eq!((p.core_learning, p.cb_learning), (a.core_learning, a.cb_learning), "{what}: epoch {}", a.epoch);
        for (name, x, y) in [("loss", p.train_loss, a.train_loss), ("grad norm", p.grad_norm, a.grad_norm)] {
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1e-3), "{what}: epoch {} {name} {x} vs {y}", a.epoch);
        }
        assert!((p.test_accuracy - a.test_accuracy).abs() <= 0.01, "{what}: epoch {} accuracy", a.epoch);
    }
    assert_eq!(packed.analyses.len(), alone.analyses.len(), "{what}: analyses");
    for (p, a) in packed.analyses.iter().zip(&alone.analyses) {
        let at = format!("{what}: level {} {} {}", a.level, a.population, a.metric);
        assert_eq!((p.level, p.epoch, &p.population, &p.metric), (a.level, a.epoch, &a.population, &a.metric), "{at}");
        // an accuracy may flip one sequence of the fixed batches between float32 reduction orders
        let tolerance = if a.population == "network" { 0.01 } else { 1e-4 * a.value.abs().max(1e-2) };
        assert!((p.value - a.value).abs() <= tolerance, "{at}: {} packed, {} alone", p.value, a.value);
    }
}

#[test]
fn packed_equals_one_by_one() {
    let cb = Arch::Cbrnn;
    let mut fast = small_spec(5, Task::Dms, cb, Regime::Simult);
    fast.lr_core = 0.2;
    let mut slow_core = small_spec(6, Task::Oddball, cb, Regime::Reservoir { freeze: FreezePoint::Epoch(2) });
    slow_core.core_plasticity = 0.1;
    let mut exploding = small_spec(7, Task::Dms, cb, Regime::Simult);
    (exploding.lr_core, exploding.lr_cb, exploding.lr_readout) = (1e9, 1e9, 1e9);
    let mut pack = vec![
        small_spec(1, Task::Dms, cb, Regime::Reservoir { freeze: FreezePoint::Level(2) }),
        small_spec(2, Task::Parity, cb, Regime::Interleaved { freeze: FreezePoint::Step(15), every: 1 }),
        fast,
        slow_core,
        exploding,
        small_spec(8, Task::Oddball, cb, Regime::Reservoir { freeze: FreezePoint::Never }),
    ];
    for spec in &mut pack {
        spec.analysis = analysis_plan();
    }
    // a plan of other sizes is analysed apart from the rest
    pack[5].analysis.timescale_trials = 3;
    let (packed, reported) = train(&pack);
    for (i, spec) in pack.iter().enumerate() {
        let (alone, _) = train(std::slice::from_ref(spec));
        assert_same_curve(&packed[i], &alone[0], &format!("trial {i}"));
        assert_eq!(reported[i], packed[i].curve, "trial {i}: every recorded epoch was reported");
        assert_eq!(packed[i].pack_size, 6);
    }
    assert_eq!(packed[4].outcome, TrialOutcome::Diverged, "a huge learning rate diverges");
    assert!(packed.iter().filter(|r| !r.analyses.is_empty()).count() >= 2, "trials that solve a level are analysed");
    let levels: Vec<u32> = packed.iter().map(TrialResult::final_level).collect();
    assert!(levels.iter().any(|&l| l != levels[0]), "the pack's trials reach different levels: {levels:?}");
}

/// The CPU engine against libtorch's autograd over whole trainings: the same levels, losses
/// within float32 rounding, through freezes, clipping and a diverging trial. (`fused`'s own tests
/// check its gradients against autograd to 1e-10 in float64.)
#[test]
fn the_cpu_engine_trains_as_libtorch_does() {
    one_thread();
    let cb = Arch::Cbrnn;
    let mut exploding = small_spec(7, Task::Dms, cb, Regime::Simult);
    (exploding.lr_core, exploding.lr_cb, exploding.lr_readout) = (1e9, 1e9, 1e9);
    let mut slow_core = small_spec(6, Task::Oddball, cb, Regime::Reservoir { freeze: FreezePoint::Epoch(2) });
    slow_core.core_plasticity = 0.1;
    let pack = vec![
        small_spec(1, Task::Dms, cb, Regime::Reservoir { freeze: FreezePoint::Level(2) }),
        small_spec(2, Task::Parity, cb, Regime::Interleaved { freeze: FreezePoint::Step(15), every: 1 }),
        slow_core,
        exploding,
    ];
    let rnn = vec![small_spec(3, Task::Dms, Arch::Rnn, Regime::Simult), small_spec(4, Task::Parity, Arch::Rnn, Regime::Simult)];
    for pack in [pack, rnn] {
        let run = |engine| {
            let mut trainer = TorchTrainer::new(Device::Cpu).with_engine(engine);
            trainer.train_pack(&pack, &mut |_, _| Control::Continue)
        };
        let (fused, libtorch) = (run(super::Engine::Fused), run(super::Engine::Libtorch));
        for (i, (f, l)) in fused.iter().zip(&libtorch).enumerate() {
            assert_same_curve(f, l, &format!("{} trial {i}", pack[i].arch));
        }
    }
}

#[test]
fn same_seed_same_curve() {
    let spec = small_spec(11, Task::Parity, Arch::Cbrnn, Regime::Reservoir { freeze: FreezePoint::Level(2) });
    let (first, _) = train(std::slice::from_ref(&spec));
    let (second, _) = train(std::slice::from_ref(&spec));
    assert_eq!(first[0].curve, second[0].curve);
    assert!(!first[0].curve.is_empty());
    let other = TrialSpec { seed: Seed(12), ..spec };
    let (third, _) = train(std::slice::from_ref(&other));
    assert_ne!(first[0].curve, third[0].curve, "another seed gives another curve");
}

#[test]
fn plain_rnn_trains_and_reports_no_cerebellar_learning() {
    let spec = small_spec(3, Task::Dms, Arch::Rnn, Regime::Reservoir { freeze: FreezePoint::Epoch(1) });
    let (results, _) = train(&[spec]);
    let curve = &results[0].curve;
    assert_eq!(results[0].outcome, TrialOutcome::Completed);
    assert!(curve.iter().all(|r| !r.cb_learning && r.train_loss.is_finite()));
    assert!(curve[0].core_learning && !curve[1].core_learning, "the core freezes after epoch 1");
}

#[test]
fn a_trial_that_solves_the_top_level_stops_early_and_completes() {
    let mut spec = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    spec.budget.solve_threshold = 0.0;
    spec.budget.max_level = 3;
    let (results, _) = train(&[spec.clone(), TrialSpec { seed: Seed(40), ..spec }]);
    for r in &results {
        assert_eq!(r.outcome, TrialOutcome::Completed);
        let levels: Vec<u32> = r.curve.iter().map(|e| e.level).collect();
        assert_eq!(levels, [2, 3]);
        assert_eq!(r.max_level(), 3);
    }
}

/// Every (population, metric) a CB-RNN checkpoint reports.
fn cbrnn_metrics() -> Vec<(&'static str, &'static str)> {
    let mut expected: Vec<(&str, &str)> = ["accuracy_cb_on", "accuracy_cb_off", "ablation_drop"].iter().map(|&m| ("network", m)).collect();
    let populations = ["hidden", "granule", "purkinje", "cb_output"];
    let dimensionality = ["d90", "d95", "d90_fraction", "d95_fraction", "participation_ratio"];
    let timescales = ["units_fitted", "timescale_median_steps", "timescale_mean_steps", "population_lag_1e_steps"];
    for metrics in [dimensionality.as_slice(), timescales.as_slice()] {
        for population in populations {
            expected.extend(metrics.iter().map(|&m| (population, m)));
        }
    }
    expected
}

#[test]
fn solved_levels_are_analysed_and_their_weights_saved() {
    let mut every = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    every.budget.solve_threshold = 0.0; // every epoch solves its level
    every.budget.max_level = 4; // a pack shares its budget: levels 2, 3 and 4 in three epochs
    every.analysis = AnalysisPlan { save_checkpoints: true, ..analysis_plan() };
    let mut every_other = TrialSpec { seed: Seed(41), ..every.clone() };
    every_other.analysis.every_levels = 2;
    let mut unsaved = TrialSpec { seed: Seed(42), ..every.clone() };
    unsaved.analysis.save_checkpoints = false;
    // every checkpoint comes in the same epoch: three plans, the first analysed for two trials
    // at once
    let pack = [every.clone(), every_other.clone(), unsaved.clone(), TrialSpec { seed: Seed(43), ..every.clone() }];
    let dir = tempfile::tempdir().unwrap();
    let (results, _) = train_saving(&pack, Some(dir.path()));
    let (alone, _) = train(std::slice::from_ref(&every));
    assert_same_curve(&results[0], &alone[0], "analysed with another trial");

    let levels = |r: &TrialResult| {
        let mut l: Vec<u32> = r.analyses.iter().map(|a| a.level).collect();
        l.dedup();
        l
    };
    assert_eq!(levels(&results[0]), [2, 3, 4]);
    assert_eq!(levels(&results[1]), [2, 4], "the 1st and 3rd solved level");
    for r in &results {
        assert_eq!(r.outcome, TrialOutcome::Completed);
        for level in levels(r) {
            let taken: Vec<_> = r.analyses.iter().filter(|a| a.level == level).collect();
            let epoch = r.curve.iter().find(|e| e.level == level && e.solved).unwrap().epoch;
            assert!(taken.iter().all(|a| a.epoch == epoch && a.value.is_finite()), "level {level}: {taken:?}");
            let metrics: Vec<(&str, &str)> = taken.iter().map(|a| (a.population.as_str(), a.metric.as_str())).collect();
            assert_eq!(metrics, cbrnn_metrics(), "level {level}");
        }
    }
    let saved = |spec: &TrialSpec, level| dir.path().join(spec.id().as_str()).join(format!("level-{level}.safetensors"));
    for (spec, result) in [(&every, &results[0]), (&every_other, &results[1])] {
        for level in levels(result) {
            let read = tch::Tensor::read_safetensors(saved(spec, level)).unwrap();
            assert!(read.iter().any(|(name, t)| name == "core.w_h" && t.size() == [16, 16]), "level {level}");
        }
    }
    assert!(!saved(&every_other, 3).exists(), "level 3 was not a checkpoint");
    assert!(!dir.path().join(unsaved.id().as_str()).exists(), "its plan saves nothing");
}

#[test]
fn a_plain_rnn_checkpoint_reports_the_hidden_population_only() {
    let mut spec = small_spec(4, Task::Parity, Arch::Rnn, Regime::Simult);
    spec.budget.solve_threshold = 0.0;
    spec.budget.max_level = 2;
    spec.analysis = analysis_plan();
    let (results, _) = train(&[spec]);
    let metrics: Vec<(&str, &str)> = results[0].analyses.iter().map(|a| (a.population.as_str(), a.metric.as_str())).collect();
    let expected: Vec<(&str, &str)> = cbrnn_metrics().into_iter().filter(|&(p, m)| p == "hidden" || m == "accuracy_cb_on").collect();
    assert_eq!(metrics, expected);
}

#[test]
fn control_stops_one_trial_or_the_whole_pack() {
    let mut spec = small_spec(0, Task::Dms, Arch::Cbrnn, Regime::Simult);
    spec.budget.solve_threshold = 1.01; // never solved: every trial runs all its epochs
    let pack: Vec<TrialSpec> = (0..3).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
    let stopped = TrialOutcome::Failed("stopped".into());

    one_thread();
    let results = TorchTrainer::new(Device::Cpu).train_pack(&pack, &mut |i, r| {
        if i == 1 && r.epoch == 2 { Control::StopTrial } else { Control::Continue }
    });
    assert_eq!(results[1].outcome, stopped);
    assert_eq!(results[1].curve.len(), 2);
    for i in [0, 2] {
        assert_eq!(results[i].outcome, TrialOutcome::Completed);
        assert_eq!(results[i].curve.len(), 6);
    }

    let results = TorchTrainer::new(Device::Cpu).train_pack(&pack, &mut |i, r| {
        if i == 0 && r.epoch == 3 { Control::StopAll } else { Control::Continue }
    });
    assert!(results.iter().all(|r| r.outcome == stopped));
    assert_eq!(results.iter().map(|r| r.curve.len()).collect::<Vec<_>>(), [3, 2, 2]);
}

#[test]
fn a_pack_of_mixed_shapes_fails_as_data() {
    let a = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
    let b = TrialSpec { hidden: 20, ..a.clone() };
    let (results, reported) = train(&[a, b]);
    for r in &results {
        let TrialOutcome::Failed(reason) = &r.outcome else { panic!("expected a failure, got {:?}", r.outcome) };
        assert!(reason.contains("pack key"), "{reason}");
        assert!(r.curve.is_empty());
    }
    assert!(reported.iter().all(Vec::is_empty));
    assert!(train(&[]).0.is_empty());
}

/// One epoch of the main CB-RNN (H = 64, G = 256, P = 64; 100 steps of B = 64 at N = 2, then
/// 50 test batches) on one CPU thread, alone and in a pack of 8. Run with
/// `cargo test --release -p cbsweep-worker -- --ignored --nocapture epoch_timing`.
#[test]
#[ignore = "a measurement, not a check"]
fn cbrnn_epoch_timing() {
    one_thread();
    let mut spec = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
    (spec.hidden, spec.granule, spec.purkinje) = (64, 256, 64);
    (spec.lr_core, spec.lr_cb, spec.lr_readout) = (0.01, 0.01, 0.01);
    spec.budget =
        TrainBudget { epochs: 1, steps_per_epoch: 100, test_batches: 50, batch_size: 64, solve_threshold: 1.01, ..small_budget() };
    for m in [1, 8] {
        let pack: Vec<TrialSpec> = (0..m).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
        let started = std::time::Instant::now();
        let results = train(&pack);
        let took = started.elapsed().as_secs_f64();
        assert!(results.0.iter().all(|r| r.outcome == TrialOutcome::Completed));
        println!("pack of {m}: one epoch in {took:.2} s ({:.2} s per trial)", took / m as f64);
    }
}
