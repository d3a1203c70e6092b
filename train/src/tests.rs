//! Tests of the libtorch trainer as its callers see it, on the CPU with small budgets (packed
//! equals one by one, the CPU engine against libtorch over whole trainings, stops, analyses),
//! and of the engine seam under the run loop (freeze semantics, state written and read back).

use super::engine::PackState;
use super::model::Module;
use super::regime::Learning;
use super::run::PackRun;
use super::testing::{analysis_plan, one_thread, small_budget, small_spec};
use super::train::build_engine;
use super::trial::TrialRun;
use super::{Engine, TorchTrainer};
use crate::trainer::{Control, Trainer, TrialEnd};
use cbsweep_common::{
    AnalysisPlan, Arch, EpochRecord, FreezePoint, GruCell, ModuleStart, Regime, Seed, Task, TrainBudget, TrialOutcome, TrialResult,
    TrialSpec,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
    (finished(results), reported)
}

/// The results of trials none of which was stopped.
fn finished(ends: Vec<TrialEnd>) -> Vec<TrialResult> {
    ends.into_iter()
        .map(|end| match end {
            TrialEnd::Finished(result) => result,
            TrialEnd::Stopped { .. } => panic!("a trial was stopped"),
        })
        .collect()
}

/// A trial trained packed equals it trained alone on the CPU engine, bit for bit: its curve
/// (loss, gradient norm, accuracy and all) and its analyses (libtorch's, on the same weights).
fn assert_identical(packed: &TrialResult, alone: &TrialResult, what: &str) {
    assert_eq!(packed.outcome, alone.outcome, "{what}: outcome");
    assert_eq!(packed.curve, alone.curve, "{what}: the curve");
    // by their bits: a metric with nothing to measure is NaN on both sides
    let bits = |r: &TrialResult| -> Vec<_> {
        r.analyses.iter().map(|a| (a.level, a.epoch, a.population.clone(), a.metric.clone(), a.value.to_bits())).collect()
    };
    assert_eq!(bits(packed), bits(alone), "{what}: the analyses");
}

/// The same training on two engines (float32 sums in other orders): the same epochs, levels and
/// freezes, the numbers within a tolerance.
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
        assert_identical(&packed[i], &alone[0], &format!("trial {i}"));
        assert_eq!(reported[i], packed[i].curve, "trial {i}: every recorded epoch was reported");
        assert_eq!(packed[i].pack_size, 6);
    }
    assert_eq!(packed[4].outcome, TrialOutcome::Diverged, "a huge learning rate diverges");
    assert!(packed.iter().filter(|r| !r.analyses.is_empty()).count() >= 2, "trials that solve a level are analysed");
    let levels: Vec<u32> = packed.iter().map(TrialResult::final_level).collect();
    assert!(levels.iter().any(|&l| l != levels[0]), "the pack's trials reach different levels: {levels:?}");
}

/// The recurrent-module control, the CB-GRU and the GRU trained in a pack equal each trial
/// trained alone, through freezes, refreshes, reduced plasticity and analyses.
#[test]
fn new_architectures_train_packed_as_one_by_one() {
    for arch in [Arch::Rmrnn, Arch::Cbgru, Arch::Gru] {
        let mut slow_core = small_spec(6, Task::Oddball, arch, Regime::Reservoir { freeze: FreezePoint::Epoch(2) });
        slow_core.core_plasticity = 0.1;
        let mut fast = small_spec(5, Task::Dms, arch, Regime::Simult);
        (fast.lr_core, fast.lr_cb) = (0.3, 0.3);
        let mut pack = vec![
            small_spec(1, Task::Dms, arch, Regime::Reservoir { freeze: FreezePoint::Level(2) }),
            small_spec(2, Task::Parity, arch, Regime::Interleaved { freeze: FreezePoint::Step(15), every: 1 }),
            slow_core,
            fast,
        ];
        for spec in &mut pack {
            spec.analysis = analysis_plan();
        }
        let (packed, _) = train(&pack);
        for (i, spec) in pack.iter().enumerate() {
            let (alone, _) = train(std::slice::from_ref(spec));
            assert_identical(&packed[i], &alone[0], &format!("{arch} trial {i}"));
            assert_eq!(packed[i].pack_size, 4);
            assert!(packed[i].curve.iter().all(|e| e.train_loss.is_finite()), "{arch} trial {i}");
        }
        let levels: Vec<u32> = packed.iter().map(TrialResult::max_level).collect();
        assert!(packed.iter().any(|r| !r.analyses.is_empty()), "{arch}: trials that solve a level are analysed ({levels:?})");
    }
}

/// The CPU engine against libtorch's autograd over whole trainings of every architecture: the
/// same levels, losses within float32 rounding, through freezes, clipping and a diverging trial.
/// (`fused`'s own tests check its gradients against autograd to 1e-10 in float64.)
#[test]
fn the_cpu_engine_trains_as_libtorch_does() {
    one_thread();
    let with_module = |arch| {
        let mut exploding = small_spec(7, Task::Dms, arch, Regime::Simult);
        (exploding.lr_core, exploding.lr_cb, exploding.lr_readout) = (1e9, 1e9, 1e9);
        let mut slow_core = small_spec(6, Task::Oddball, arch, Regime::Reservoir { freeze: FreezePoint::Epoch(2) });
        slow_core.core_plasticity = 0.1;
        vec![
            small_spec(1, Task::Dms, arch, Regime::Reservoir { freeze: FreezePoint::Level(2) }),
            small_spec(2, Task::Parity, arch, Regime::Interleaved { freeze: FreezePoint::Step(15), every: 1 }),
            slow_core,
            exploding,
        ]
    };
    let plain = |arch| vec![small_spec(3, Task::Dms, arch, Regime::Simult), small_spec(4, Task::Parity, arch, Regime::Simult)];
    let packs = [with_module(Arch::Cbrnn), plain(Arch::Rnn), with_module(Arch::Rmrnn), with_module(Arch::Cbgru), plain(Arch::Gru)];
    for pack in packs {
        let run = |engine| {
            let mut trainer = TorchTrainer::new(Device::Cpu).with_engine(engine);
            finished(trainer.train_pack(&pack, &mut |_, _| Control::Continue))
        };
        let (fused, libtorch) = (run(Engine::Fused), run(Engine::Libtorch));
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

#[test]
fn a_fixed_level_trial_trains_at_its_level_for_the_whole_budget() {
    let mut spec = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    // every epoch counts as solved: the curriculum would climb one level per epoch and stop at 3
    spec.budget.solve_threshold = 0.0;
    spec.budget.epochs = 4;
    spec.analysis = analysis_plan();
    spec.budget.start_level = 3;
    spec.budget.max_level = 3;
    spec.budget.curriculum = cbsweep_common::Curriculum::Fixed;
    let (results, _) = train(&[spec.clone(), TrialSpec { task: Task::Parity, ..spec }]);
    for r in &results {
        assert_eq!(r.outcome, TrialOutcome::Completed);
        let levels: Vec<u32> = r.curve.iter().map(|e| e.level).collect();
        assert_eq!(levels, [3, 3, 3, 3], "the whole budget at the fixed level");
        assert!(r.curve.iter().all(|e| e.solved && e.test_accuracy.is_finite()), "{:?}", r.curve);
        // analysed once, at the first solved epoch, not at every one
        let epochs: BTreeSet<u32> = r.analyses.iter().map(|a| a.epoch).collect();
        assert_eq!(epochs, BTreeSet::from([1]), "{:?}", r.analyses);
    }
}

/// The lab's fixed level: the first solved epoch ends the trial (analysed there).
#[test]
fn a_fixed_level_trial_stops_at_its_first_solve() {
    let mut spec = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    spec.budget.solve_threshold = 0.0;
    spec.budget.epochs = 4;
    spec.analysis = analysis_plan();
    (spec.budget.start_level, spec.budget.max_level) = (3, 3);
    spec.budget.curriculum = cbsweep_common::Curriculum::FixedUntilSolved;
    let (results, _) = train(&[spec]);
    assert_eq!(results[0].outcome, TrialOutcome::Completed);
    let curve: Vec<(u32, u32, bool)> = results[0].curve.iter().map(|e| (e.epoch, e.level, e.solved)).collect();
    assert_eq!(curve, [(1, 3, true)], "stops at the first solve");
    assert!(results[0].analyses.iter().all(|a| (a.level, a.epoch) == (3, 1)) && !results[0].analyses.is_empty());
}

/// The lab's fixed-schedule control: the level goes up every k epochs whether or not it was
/// solved; each level's first solved epoch is analysed, the trial ends after k epochs at the cap.
#[test]
fn a_fixed_schedule_moves_the_level_every_k_epochs_whatever_the_accuracy() {
    let mut never = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    never.budget.solve_threshold = 1.0 + f64::EPSILON; // no epoch can pass
    never.budget.epochs = 9;
    never.budget.max_level = 4;
    never.budget.curriculum = cbsweep_common::Curriculum::Schedule { every: 2 };
    let mut always = TrialSpec { seed: Seed(41), ..never.clone() };
    always.budget.solve_threshold = 0.0;
    always.analysis = analysis_plan();
    // (their thresholds differ, so they are packs of their own)
    let results: Vec<TrialResult> = [never, always].iter().map(|s| train(std::slice::from_ref(s)).0.remove(0)).collect();
    for r in &results {
        let levels: Vec<u32> = r.curve.iter().map(|e| e.level).collect();
        assert_eq!(levels, [2, 2, 3, 3, 4, 4], "two epochs a level, then the cap's two end it");
        assert_eq!(r.outcome, TrialOutcome::Completed);
    }
    assert!(results[0].curve.iter().all(|e| !e.solved) && results[0].analyses.is_empty());
    let analysed: BTreeSet<(u32, u32)> = results[1].analyses.iter().map(|a| (a.level, a.epoch)).collect();
    assert_eq!(analysed, BTreeSet::from([(2, 1), (3, 3), (4, 5)]), "each level once, at its first solved epoch");
}

/// Claim 2's reduced plasticity is the lab's: the readout learns in the core's group, so a
/// spec with `core_plasticity = 0.01` trains bit for bit as one with `lr_core = 1e-4`, readout
/// included, on both engines.
#[test]
fn reduced_plasticity_trains_as_the_scaled_core_rate_readout_included() {
    let spec = |grid: &str| {
        let text = format!(
            "[sweep]\nname = \"p\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [3]\ngranule = [32]\n{grid}\n\
             [train]\nepochs = 4\nsteps_per_epoch = 10\ntest_batches = 3\nbatch_size = 16\nsolve_threshold = 0.6\n"
        );
        let mut trials = cbsweep_common::parse_spec_with_overrides(&text, Path::new("p.toml"), vec![]).unwrap().trials;
        for t in &mut trials {
            (t.hidden, t.purkinje, t.grid_hidden) = if t.arch == Arch::Cbrnn { (16, 8, 16) } else { (24, 8, 16) };
            t.analysis = analysis_plan();
        }
        trials
    };
    let (reduced, scaled) = (spec("core_plasticity = [0.01]\nlr_core = [0.01]"), spec("lr_core = [0.0001]"));
    for (r, s) in reduced.iter().zip(&scaled) {
        assert_eq!((r.lr_core * r.core_plasticity, r.lr_readout), (s.lr_core, s.lr_readout), "{}: the rates", r.arch);
        assert_eq!(r.lr_readout, 1e-4, "{}: the readout learns at the core's reduced rate", r.arch);
    }
    one_thread();
    for engine in [Engine::Fused, Engine::Libtorch] {
        let run = |pack: &[TrialSpec]| {
            let mut trainer = TorchTrainer::new(Device::Cpu).with_engine(engine);
            finished(trainer.train_pack(pack, &mut |_, _| Control::Continue))
        };
        for (r, s) in run(&reduced).iter().zip(run(&scaled)) {
            assert_eq!(r.curve, s.curve, "{engine:?}: the same curve, bit for bit");
            assert_eq!(r.analyses, s.analyses, "{engine:?}: the same analyses");
        }
    }
}

/// Every (population, metric) a CB-RNN checkpoint reports.
fn cbrnn_metrics() -> Vec<(&'static str, &'static str)> {
    metrics_of(&["hidden", "granule", "purkinje", "cb_output"], true)
}

/// Every (population, metric) a checkpoint of a model with these populations reports; the
/// ablation's module-off accuracy and drop, and the readout recovery, only for a model with a
/// module.
fn metrics_of(populations: &[&'static str], module: bool) -> Vec<(&'static str, &'static str)> {
    let ablation: &[&str] = if module {
        &[
            "accuracy_cb_on",
            "accuracy_cb_off",
            "ablation_drop",
            "recovery_intact_accuracy",
            "recovery_zero_shot_accuracy",
            "recovery_accuracy",
            "recovery_gap",
        ]
    } else {
        &["accuracy_cb_on"]
    };
    let mut expected: Vec<(&str, &str)> = ablation.iter().map(|&m| ("network", m)).collect();
    let dimensionality = ["d90", "d95", "d90_fraction", "d95_fraction", "participation_ratio"];
    let timescales = ["units_fitted", "timescale_median_steps", "timescale_mean_steps", "population_lag_1e_steps"];
    for metrics in [dimensionality.as_slice(), timescales.as_slice()] {
        for &population in populations {
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

/// The populations each new architecture's checkpoints analyse, and the ablation for every
/// model with a module (cerebellar or recurrent).
#[test]
fn new_architectures_report_their_populations_and_the_ablation() {
    for (arch, expected) in [
        (Arch::Rmrnn, metrics_of(&["hidden", "recurrent_module", "cb_output"], true)),
        (Arch::Cbgru, cbrnn_metrics()),
        (Arch::Gru, metrics_of(&["hidden"], false)),
    ] {
        let mut spec = small_spec(4, Task::Parity, arch, Regime::Simult);
        spec.budget.solve_threshold = 0.0;
        spec.budget.max_level = 2;
        spec.analysis = analysis_plan();
        let (results, _) = train(&[spec]);
        let metrics: Vec<(&str, &str)> = results[0].analyses.iter().map(|a| (a.population.as_str(), a.metric.as_str())).collect();
        assert_eq!(metrics, expected, "{arch}");
        assert!(results[0].analyses.iter().all(|a| a.value.is_finite()), "{arch}");
    }
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

/// The value of `metric` at each analysed level of `r`, in the order taken.
fn metric_at_levels(r: &TrialResult, metric: &str) -> Vec<(u32, f64)> {
    r.analyses.iter().filter(|a| a.metric == metric).map(|a| (a.level, a.value)).collect()
}

/// The study's recovery (500 steps, 50 batches) at the checkpoints of a trained CB-RNN that
/// solves levels 2 to 4 at 90%: with the module off the accuracy drops, and retraining the
/// readout alone never leaves it lower and wins most of a large drop back.
#[test]
fn a_trained_checkpoint_recovers_its_readout_without_the_module() {
    let mut spec = small_spec(5, Task::Dms, Arch::Cbrnn, Regime::Simult);
    spec.budget = TrainBudget { epochs: 60, steps_per_epoch: 25, test_batches: 4, solve_threshold: 0.9, max_level: 4, ..small_budget() };
    spec.analysis = AnalysisPlan { dimensionality_batches: 1, timescale_steps: 0, ..AnalysisPlan::study() };
    let (results, _) = train(std::slice::from_ref(&spec));
    let r = &results[0];
    let intact = metric_at_levels(r, "recovery_intact_accuracy");
    let zero_shot = metric_at_levels(r, "recovery_zero_shot_accuracy");
    let recovered = metric_at_levels(r, "recovery_accuracy");
    let gap = metric_at_levels(r, "recovery_gap");
    println!("levels and accuracies, intact {intact:?}, zero-shot {zero_shot:?}, recovered {recovered:?}");
    let solved: Vec<u32> = r.curve.iter().filter(|e| e.solved).map(|e| e.level).collect();
    assert_eq!(solved, [2, 3, 4], "{:?}", r.curve);
    assert_eq!(intact.iter().map(|&(l, _)| l).collect::<Vec<_>>(), solved, "a recovery at every analysed level");
    for i in 0..intact.len() {
        let level = intact[i].0;
        assert!(intact[i].1 > 0.75, "level {level}: the intact model solved it ({})", intact[i].1);
        assert!(recovered[i].1 >= zero_shot[i].1, "level {level}: recovered {} below zero-shot {}", recovered[i].1, zero_shot[i].1);
        assert_eq!(gap[i].1, intact[i].1 - recovered[i].1, "level {level}");
    }
    // where the module matters most, the retrained readout wins back most of what was lost
    let most = (0..intact.len()).max_by(|&i, &j| (intact[i].1 - zero_shot[i].1).total_cmp(&(intact[j].1 - zero_shot[j].1))).unwrap();
    let lost = intact[most].1 - zero_shot[most].1;
    assert!(lost > 0.1, "level {}: the module matters ({lost})", intact[most].0);
    assert!(gap[most].1 < lost / 2.0, "level {}: the gap {} is under half the drop {lost}", intact[most].0, gap[most].1);
}

/// The recovery trains a copy of the readout: with it and without it, a trial's training, levels
/// and other analyses are the same to the bit.
#[test]
fn the_readout_recovery_leaves_the_training_that_follows_bit_identical() {
    let mut with = small_spec(4, Task::Dms, Arch::Cbrnn, Regime::Simult);
    with.budget = TrainBudget { epochs: 8, solve_threshold: 0.7, max_level: 5, ..small_budget() };
    with.analysis = AnalysisPlan { recovery_steps: 60, ..analysis_plan() };
    let without = TrialSpec { analysis: AnalysisPlan { recovery_steps: 0, ..with.analysis }, ..with.clone() };
    let (a, _) = train(std::slice::from_ref(&with));
    let (b, _) = train(std::slice::from_ref(&without));
    let (a, b) = (&a[0], &b[0]);
    let analysed: BTreeSet<u32> = metric_at_levels(a, "recovery_accuracy").iter().map(|&(l, _)| l).collect();
    let solved: BTreeSet<u32> = a.curve.iter().filter(|e| e.solved).map(|e| e.level).collect();
    assert!(!analysed.is_empty() && analysed == solved, "recovered at {analysed:?}, solved {solved:?}");
    let first_solve = a.curve.iter().position(|e| e.solved).unwrap();
    assert!(first_solve + 1 < a.curve.len(), "the trial trains on after its first checkpoint: {:?}", a.curve);
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.curve, b.curve, "the curves, losses and gradient norms included");
    let others = |r: &TrialResult| r.analyses.iter().filter(|x| !x.metric.starts_with("recovery_")).cloned().collect::<Vec<_>>();
    assert_eq!(others(a), others(b), "the other analyses");
    assert!(b.analyses.iter().all(|x| !x.metric.starts_with("recovery_")), "recovery_steps = 0 skips it");
}

#[test]
fn control_stops_one_trial_or_the_whole_pack() {
    let mut spec = small_spec(0, Task::Dms, Arch::Cbrnn, Regime::Simult);
    spec.budget.solve_threshold = 1.01; // never solved: every trial runs all its epochs
    let pack: Vec<TrialSpec> = (0..3).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
    let stopped = |end: &TrialEnd| matches!(end, TrialEnd::Stopped { .. });

    one_thread();
    let results = TorchTrainer::new(Device::Cpu).train_pack(&pack, &mut |i, r| {
        if i == 1 && r.epoch == 2 { Control::StopTrial } else { Control::Continue }
    });
    assert!(stopped(&results[1]));
    assert_eq!(results[1].curve().len(), 2);
    for i in [0, 2] {
        assert_eq!(results[i].result().map(|r| &r.outcome), Some(&TrialOutcome::Completed));
        assert_eq!(results[i].curve().len(), 6);
    }

    let results = TorchTrainer::new(Device::Cpu).train_pack(&pack, &mut |i, r| {
        if i == 0 && r.epoch == 3 { Control::StopAll } else { Control::Continue }
    });
    // the epoch ends for every trial; each hands back its checkpoint of that epoch's end
    assert!(results.iter().all(stopped));
    assert_eq!(results.iter().map(|r| r.curve().len()).collect::<Vec<_>>(), [3, 3, 3]);
    for r in &results {
        let TrialEnd::Stopped { checkpoint: Some(saved), .. } = r else { panic!("a checkpoint with a stopped trial") };
        assert_eq!(saved.epochs_done, 3);
    }
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

/// A GRU trial of the cell older cbsweep computed, or a recurrent-module control of its earlier
/// start (both expanded by an older cbsweep), fails as data saying why, on either engine.
#[test]
fn trials_of_a_retired_computation_fail_naming_it() {
    let gru = TrialSpec { gru_cell: GruCell::Original, ..small_spec(1, Task::Dms, Arch::Cbgru, Regime::Simult) };
    let rmrnn = TrialSpec { module_start: ModuleStart::Original, ..small_spec(1, Task::Dms, Arch::Rmrnn, Regime::Simult) };
    for (spec, why) in [(gru, "GRU cell of PyTorch's convention"), (rmrnn, "recurrent-module control as an older cbsweep")] {
        for engine in [Engine::Fused, Engine::Libtorch] {
            let mut trainer = TorchTrainer::new(Device::Cpu).with_engine(engine);
            let results = finished(trainer.train_pack(std::slice::from_ref(&spec), &mut |_, _| Control::Continue));
            let TrialOutcome::Failed(reason) = &results[0].outcome else { panic!("expected a failure, got {:?}", results[0].outcome) };
            assert!(reason.contains(why) && reason.contains("submit its sweep again"), "{reason}");
        }
    }
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

/// Copies of one row's parameters and momentum buffers of `module`.
fn row_state(state: &PackState, row: i64, module: Module) -> Vec<Tensor> {
    let specs = state.model.dims().param_specs();
    let params = state.model.params().iter().zip(&state.momentum).zip(&specs);
    params.filter(|(_, s)| s.module == module).flat_map(|((p, b), _)| [p.get(row).copy(), b.get(row).copy()]).collect()
}

fn identical(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.equal(y))
}

fn steps(run: &mut PackRun, trials: &mut [TrialRun], n: usize) {
    for _ in 0..n {
        run.train_step(trials).unwrap();
    }
}

#[test]
fn frozen_modules_stay_bit_identical_momentum_included() {
    for arch in [Arch::Cbrnn, Arch::Rmrnn, Arch::Cbgru] {
        frozen_modules_stay_bit_identical(arch);
    }
}

/// A reservoir trial of `arch` and a simult pack mate on both engines: frozen modules keep their
/// weights and momentum.
fn frozen_modules_stay_bit_identical(arch: Arch) {
    one_thread();
    let specs = [
        small_spec(1, Task::Dms, arch, Regime::Reservoir { freeze: FreezePoint::Step(100) }),
        small_spec(2, Task::Parity, arch, Regime::Simult),
    ];
    for engine in [Engine::Fused, Engine::Libtorch] {
        let started = Instant::now();
        let mut trials: Vec<TrialRun> = specs.iter().map(|s| TrialRun::new(s, started)).collect();
        let engine = build_engine(engine, &specs, Kind::Float, Device::Cpu).unwrap();
        let mut run = PackRun::new(&specs, engine, Kind::Float, Device::Cpu).unwrap();
        let snapshot = |run: &PackRun, row| {
            let state = run.state().unwrap();
            Module::ALL.map(|m| row_state(&state, row, m))
        };

        let start = [snapshot(&run, 0), snapshot(&run, 1)];
        steps(&mut run, &mut trials, 100);
        let mid = [snapshot(&run, 0), snapshot(&run, 1)];
        assert_eq!(trials[0].learning, Learning { core: true, cb: false });
        steps(&mut run, &mut trials, 100);
        let end = [snapshot(&run, 0), snapshot(&run, 1)];
        assert_eq!(trials[0].learning, Learning { core: false, cb: true });

        let (core, readout, cb) = (Module::Core.index(), Module::Readout.index(), Module::Cb.index());
        // the reservoir trial: module frozen before the freeze point, core after it
        assert!(identical(&start[0][cb], &mid[0][cb]), "the module is untouched before the freeze point");
        assert!(!identical(&start[0][core], &mid[0][core]) && !identical(&start[0][readout], &mid[0][readout]));
        assert!(identical(&mid[0][core], &end[0][core]), "the core is untouched after the freeze point");
        assert!(!identical(&mid[0][cb], &end[0][cb]) && !identical(&mid[0][readout], &end[0][readout]));
        // its pack mate learns everything throughout
        for module in [core, readout, cb] {
            assert!(!identical(&start[1][module], &mid[1][module]) && !identical(&mid[1][module], &end[1][module]));
        }
    }
}

/// A state written into either engine reads back as written, and both engines then train on
/// from it alike.
#[test]
fn a_state_written_into_either_engine_reads_back_and_trains_on_alike() {
    one_thread();
    let specs: Vec<TrialSpec> = (1..4).map(|s| small_spec(s, Task::Dms, Arch::Cbrnn, Regime::Simult)).collect();
    let other: Vec<TrialSpec> = (11..14).map(|s| small_spec(s, Task::Dms, Arch::Cbrnn, Regime::Simult)).collect();
    let written = PackState::initial(&other, Kind::Float, Device::Cpu).unwrap();
    let momentum: Vec<Tensor> = written.momentum.iter().map(|b| b.rand_like() * 0.01).collect();
    let written = PackState { momentum, ..written };
    let mut after = Vec::new();
    for choice in [Engine::Fused, Engine::Libtorch] {
        let mut engine = build_engine(choice, &specs, Kind::Float, Device::Cpu).unwrap();
        engine.set_state(&written).unwrap();
        let read = engine.state().unwrap();
        for (a, b) in read.model.params().iter().chain(&read.momentum).zip(written.model.params().iter().chain(&written.momentum)) {
            assert!(a.equal(b), "{choice:?}: read back as written");
        }
        let started = Instant::now();
        let mut trials: Vec<TrialRun> = specs.iter().map(|s| TrialRun::new(s, started)).collect();
        let mut run = PackRun::new(&specs, engine, Kind::Float, Device::Cpu).unwrap();
        steps(&mut run, &mut trials, 5);
        after.push(run.state().unwrap());
    }
    for (f, l) in after[0].model.params().iter().zip(after[1].model.params()) {
        let diff = (f - l).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "the engines differ by {diff} after five steps from the written state");
    }
    let wrong = PackState::initial(&specs[..2], Kind::Float, Device::Cpu).unwrap();
    for choice in [Engine::Fused, Engine::Libtorch] {
        assert!(build_engine(choice, &specs, Kind::Float, Device::Cpu).unwrap().set_state(&wrong).is_err(), "{choice:?}: rows must match");
    }
}
