//! Tests of the libtorch trainer as its callers see it, on the CPU with small budgets, and the
//! helpers that build small trial specs for the module tests.

use super::TorchTrainer;
use crate::trainer::{Control, Trainer};
use cbsweep_common::{
    Arch, EpochRecord, FreezePoint, Regime, Seed, SweepId, Task, TrainBudget, TrialOutcome, TrialResult, TrialSpec,
};
use tch::Device;

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
        analysis: cbsweep_common::AnalysisPlan { every_levels: 0, ..cbsweep_common::AnalysisPlan::study() },
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
    one_thread();
    let mut reported = vec![Vec::new(); pack.len()];
    let results = TorchTrainer::new(Device::Cpu).train_pack(pack, &mut |i, r| {
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
    let pack = vec![
        small_spec(1, Task::Dms, cb, Regime::Reservoir { freeze: FreezePoint::Level(2) }),
        small_spec(2, Task::Parity, cb, Regime::Interleaved { freeze: FreezePoint::Step(15), every: 1 }),
        fast,
        slow_core,
        exploding,
        small_spec(8, Task::Oddball, cb, Regime::Reservoir { freeze: FreezePoint::Never }),
    ];
    let (packed, reported) = train(&pack);
    for (i, spec) in pack.iter().enumerate() {
        let (alone, _) = train(std::slice::from_ref(spec));
        assert_same_curve(&packed[i], &alone[0], &format!("trial {i}"));
        assert_eq!(reported[i], packed[i].curve, "trial {i}: every recorded epoch was reported");
        assert_eq!(packed[i].pack_size, 6);
    }
    assert_eq!(packed[4].outcome, TrialOutcome::Diverged, "a huge learning rate diverges");
    let levels: Vec<u32> = packed.iter().map(TrialResult::final_level).collect();
    assert!(levels.iter().any(|&l| l != levels[0]), "the pack's trials reach different levels: {levels:?}");
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
    spec.budget = TrainBudget {
        epochs: 1,
        steps_per_epoch: 100,
        test_batches: 50,
        batch_size: 64,
        solve_threshold: 1.01,
        ..small_budget()
    };
    for m in [1, 8] {
        let pack: Vec<TrialSpec> = (0..m).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
        let started = std::time::Instant::now();
        let results = train(&pack);
        let took = started.elapsed().as_secs_f64();
        assert!(results.0.iter().all(|r| r.outcome == TrialOutcome::Completed));
        println!("pack of {m}: one epoch in {took:.2} s ({:.2} s per trial)", took / m as f64);
    }
}
