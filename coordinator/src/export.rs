//! The coordinator's side of the results: its store read as a `cbsweep_results::ResultsSource`
//! through a read-only connection (WAL lets it read while the scheduler writes), the sweep-level
//! metadata the tables carry (the spec hash, computed here from the stored spec text), and
//! `export`, which opens that connection and writes every table.

use crate::store::{Store, StoreError};
use cbsweep_common::{AnalysisRecord, EpochRecord, SweepId, TrialId};
use cbsweep_results::{ResultsError, ResultsSource, SweepMeta, TrialRow};
use std::path::{Path, PathBuf};

impl ResultsSource for Store {
    type Error = StoreError;

    fn sweep(&self, sweep: &SweepId) -> Result<Option<SweepMeta>, StoreError> {
        // The stored text is the validated spec's resolved form, so this is `SweepSpec::hash`.
        Ok(Store::sweep(self, sweep)?
            .map(|s| SweepMeta { spec_hash: cbsweep_common::spec_hash(&s.spec_toml), spec_overrides: s.overrides }))
    }

    fn trials(&self, sweep: &SweepId) -> Result<Vec<TrialRow>, StoreError> {
        Store::trials(self, sweep)
    }

    fn curves(&self, sweep: &SweepId) -> Result<Vec<(TrialId, EpochRecord)>, StoreError> {
        Store::curves(self, sweep)
    }

    fn analyses(&self, sweep: &SweepId) -> Result<Vec<(TrialId, AnalysisRecord)>, StoreError> {
        Store::analyses(self, sweep)
    }
}

/// Exports every table of `sweep` from the store in `state_dir` into OUT/SWEEP/, through a
/// read-only connection of its own. Returns the directory written.
pub fn export(state_dir: &Path, sweep: &SweepId, out: &Path) -> Result<PathBuf, ResultsError> {
    let store = Store::open_read_only(state_dir).map_err(ResultsError::reading)?;
    cbsweep_results::export(&store, sweep, out)
}
