//! What the results read: a small read-only interface to the coordinator's state
//! (`ResultsSource`) and the rows it hands over. The coordinator's store implements it; tests
//! and benches build the rows by hand.
//!
//! Sweep-level metadata (`SweepMeta`) is the source's to compute: this crate neither parses nor
//! hashes spec text.

use cbsweep_common::{AnalysisRecord, EpochRecord, StatsPlan, SweepId, TrialId, TrialSpec, TrialState};

/// Read-only access to one sweep's state, in grid order.
pub trait ResultsSource {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The sweep's metadata, None when the sweep is unknown.
    fn sweep(&self, sweep: &SweepId) -> Result<Option<SweepMeta>, Self::Error>;
    /// All trials of the sweep in grid order (cell index).
    fn trials(&self, sweep: &SweepId) -> Result<Vec<TrialRow>, Self::Error>;
    /// Curve rows of the sweep's finished trials, by trial (grid order) and epoch.
    fn curves(&self, sweep: &SweepId) -> Result<Vec<(TrialId, EpochRecord)>, Self::Error>;
    /// Checkpoint analyses of the sweep's finished trials, by trial, level, population, metric.
    fn analyses(&self, sweep: &SweepId) -> Result<Vec<(TrialId, AnalysisRecord)>, Self::Error>;
}

/// What the tables say about a whole sweep, as the source computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepMeta {
    /// trials.parquet's spec_hash: names the validated spec that produced the table.
    pub spec_hash: String,
    /// trials.parquet's spec_overrides: the `CBSWEEP_SPEC__*` overrides the spec was validated
    /// with, in `cbsweep_common::overrides_text`'s form (empty when none).
    pub spec_overrides: String,
    /// What stats.parquet compares (the spec's `[stats]`).
    pub stats: StatsPlan,
}

impl Default for SweepMeta {
    /// No hash or overrides; the default comparison (CB-RNN against the matched RNN).
    fn default() -> SweepMeta {
        SweepMeta { spec_hash: String::new(), spec_overrides: String::new(), stats: StatsPlan::default() }
    }
}

/// A trial's row as the results and the status view need it.
#[derive(Clone, Debug)]
pub struct TrialRow {
    pub id: TrialId,
    pub sweep: SweepId,
    pub cell_index: u32,
    pub condition: String,
    pub spec: TrialSpec,
    pub state: TrialState,
    pub attempt: u32,
    pub worker: Option<String>,
    pub last_error: Option<String>,
    pub outcome: Option<String>,
    pub max_level: Option<u32>,
    pub final_level: Option<u32>,
    pub epochs_run: Option<u32>,
    pub wall_time_ms: Option<u64>,
    pub device: Option<String>,
    pub pack_size: Option<u32>,
    pub completed_ms: Option<i64>,
    /// Attempts that resumed from a checkpoint.
    pub resumes: u32,
    /// Epochs trained again because an interruption lost them.
    pub epochs_lost: u32,
}
