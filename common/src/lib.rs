//! Domain types of cbsweep, shared by the coordinator and the worker: sweep specs (loaded with
//! serde + config and validated into typed values), grid expansion into trials, trial identity,
//! parameter counting and matching, the memory model that sizes packs, the outcomes a
//! trial reports and the per-trial learning measures taken from its curve (`measures`).
//!
//! This crate must not depend on tonic, prost, tch, arrow or tokio: it is pure data and rules,
//! so both sides (and the tests) can use it without a runtime, a GPU library or a wire format.

pub mod bounds;
pub mod exit;
pub mod ids;
pub mod kinds;
pub mod measures;
pub mod memory;
pub mod model_size;
pub mod outcome;
pub mod retry;
pub mod spec;
pub mod trial;

pub use bounds::OutOfBudget;
pub use ids::{Attempt, Seed, SweepId, TrialId, WorkerId};
pub use kinds::TrainerKind;
pub use outcome::{AnalysisRecord, EpochRecord, SweepState, TrialOutcome, TrialResult, TrialState};
pub use spec::{
    Resubmission, RunChange, RunPolicy, SpecError, SpecOverride, SweepSpec, env_overrides, load_spec, overrides_text, parse_overrides_text,
    parse_resolved, parse_spec, parse_spec_with_overrides, spec_hash,
};
pub use trial::{
    AnalysisPlan, Arch, ComparePair, CompareSide, Core, Curriculum, FreezePoint, GruCell, ModuleKind, ModuleStart, PackKey, Regime,
    RegimeKind, StatsPlan, Task, TrainBudget, TrialSpec, varying_parts,
};

/// Version of the trial semantics. It is part of every trial's identity: a change to what a
/// trial computes must bump it, so old results are never mistaken for new ones.
pub const CODE_VERSION: &str = concat!("cbsweep-", env!("CARGO_PKG_VERSION"));
