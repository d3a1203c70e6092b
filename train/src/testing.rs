//! Helpers of the trainer's tests: small trial specs and budgets, an analysis plan that runs
//! in a fraction of a second, and packs whose cerebellar module matters. Depends on `model` and
//! `tasks` only, so every module's tests can use it.

use super::input::Batches;
use super::model::{Dims, Module, PackedModel, init_trial};
use super::tasks::{self, Stream, draw_batch, draw_states};
use cbsweep_common::{AnalysisPlan, Arch, Core, GruCell, ModuleStart, Regime, Seed, SweepId, Task, TrainBudget, TrialSpec};
use rand::Rng;
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
        curriculum: cbsweep_common::Curriculum::Climb,
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
        grid_hidden: 16,
        gru_cell: GruCell::of(arch),
        module_start: ModuleStart::Lab.of(arch),
    }
}

/// A float64 pack of `specs` (shapes `dims`) whose module weights are drawn from U(-0.3, 0.3)
/// on weight stream `seed` (the GRU: U(-0.8, 0.8)): the module starts near zero, and larger
/// values make it matter in a comparison of forward and backward passes. The GRU's candidate
/// pre-activation is larger (its input layers start in U(-1, 1)); at 0.8 its rescaling binds in
/// about half the crosscheck's sequences.
pub(crate) fn model_with_active_module(dims: Dims, specs: &[TrialSpec], seed: u64) -> PackedModel {
    let mut rng = tasks::stream(Seed(seed), Stream::Weights);
    let spread = match dims.arch.core() {
        Core::Elman => 0.3,
        Core::Gru => 0.8,
    };
    let inits: Vec<Vec<Vec<f64>>> = specs
        .iter()
        .map(|s| {
            let mut init = init_trial(&dims, s);
            for (p, values) in dims.param_specs().iter().zip(init.iter_mut()) {
                if p.module == Module::Cb {
                    values.iter_mut().for_each(|v| *v = 2.0 * spread * rng.random::<f64>() - spread);
                }
            }
            init
        })
        .collect();
    PackedModel::from_host(dims, &inits, Kind::Double, Device::Cpu).unwrap()
}

/// Per trial m of `trials`: two parity batches of `size` sequences at level 2 + m (so lengths
/// differ within and between trials), drawn with their initial states (`Dims::state_units`; the
/// recurrent module's a_0 as the lab's start draws it) from training streams of seed `first + m`.
pub(crate) fn two_batches_per_trial(dims: &Dims, trials: u32, first: u64, size: usize) -> Batches {
    let (hidden, module) = (dims.hidden as usize, dims.module_units() as usize);
    (0..trials)
        .map(|m| {
            let seed = Seed(first + u64::from(m));
            let (mut rng, mut a0) = (tasks::stream(seed, Stream::TrainData), tasks::stream(seed, Stream::TrainA0));
            (0..2)
                .map(|_| {
                    let batch = draw_batch(&mut rng, Task::Parity, 2 + m, size);
                    (batch, draw_states(&mut rng, &mut a0, ModuleStart::Lab, size, hidden, module))
                })
                .collect()
        })
        .collect()
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
        recovery_steps: 20,
        recovery_eval_batches: 2,
    }
}

/// One intra-op thread for the calling test thread: the test harness already runs tests in
/// parallel, and OpenMP threads spinning against each other on a busy machine cost far more than
/// they bring at these sizes.
pub(crate) fn one_thread() {
    tch::set_num_threads(1);
}
