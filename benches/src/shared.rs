//! The trial the training and memory benchmarks build their packs from: the study's main
//! shapes (CB-RNN H = 64, G = 256, P = 64, or the plain RNN matched to it), N-DMS, batch 64,
//! every parameter learning, a fixed level and no checkpoint analyses. A helper, not a
//! benchmark: it measures nothing and imports no other module of this crate.

use cbsweep_common::{AnalysisPlan, Arch, Regime, Seed, SweepId, Task, TrainBudget, TrialSpec, model_size};

/// One trial of the benches: `arch` at the study's shapes, seeded `seed`, one epoch of `steps` SGD
/// steps and one test batch at the fixed level `level`.
pub(crate) fn spec(arch: Arch, seed: u64, level: u32, steps: u32) -> TrialSpec {
    let hidden = match arch {
        Arch::Cbrnn | Arch::Rmrnn | Arch::Cbgru => 64,
        Arch::Rnn => model_size::matched_rnn_hidden(64, 256, 64),
        Arch::Gru => model_size::matched_gru_hidden(64, 256, 64),
    };
    TrialSpec {
        sweep: SweepId("bench".into()),
        task: Task::Dms,
        arch,
        hidden,
        granule: 256,
        purkinje: 64,
        seed: Seed(seed),
        regime: Regime::Simult,
        lr_core: 0.01,
        lr_cb: 0.01,
        lr_readout: 0.01,
        core_plasticity: 1.0,
        budget: TrainBudget {
            epochs: 1,
            steps_per_epoch: steps,
            test_batches: 1,
            batch_size: 64,
            start_level: level,
            max_level: level,
            solve_threshold: 1.0,
            momentum: 0.1,
            clip_norm: 7.5,
            curriculum: cbsweep_common::Curriculum::Climb,
        },
        analysis: AnalysisPlan { every_levels: 0, ..AnalysisPlan::study() },
        grid_hidden: cbsweep_common::trial::STUDY_SIZE,
        gru_cell: cbsweep_common::GruCell::of(arch),
        module_start: cbsweep_common::ModuleStart::Lab.of(arch),
    }
}
