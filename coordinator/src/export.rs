//! The coordinator's side of the results: its store read as a `cbsweep_results::ResultsSource`
//! through a read-only connection (WAL lets it read while the scheduler writes), the sweep-level
//! metadata the tables carry (the spec hash, computed here from the stored spec text), and
//! `export`, which opens that connection and writes every table; and the exports of this
//! process that failed (`failures`), which status shows until one succeeds.

use crate::store::{Store, StoreError};
use cbsweep_common::{AnalysisRecord, EpochRecord, SweepId, TrialId};
use cbsweep_results::{ResultsError, ResultsSource, SweepMeta, TrialRow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl ResultsSource for Store {
    type Error = StoreError;

    fn sweep(&self, sweep: &SweepId) -> Result<Option<SweepMeta>, StoreError> {
        // The stored text is the validated spec's resolved form, so this is `SweepSpec::hash`.
        Ok(Store::sweep(self, sweep)?.map(|s| SweepMeta {
            spec_hash: cbsweep_common::spec_hash(&s.spec_toml),
            stats: cbsweep_common::spec::resolved_stats(&s.spec_toml),
            spec_overrides: s.overrides,
        }))
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

/// Sweeps whose latest export in this process failed, with why. The exporter (the coordinator's
/// loop, `cbsweep run`) and the status it serves live in one process, so a process-wide table
/// is all they need to share; a success clears the sweep's entry.
static FAILURES: std::sync::LazyLock<std::sync::Mutex<HashMap<SweepId, String>>> = std::sync::LazyLock::new(Default::default);

/// One lock per sweep, held while it is exported.
static LOCKS: std::sync::LazyLock<std::sync::Mutex<HashMap<SweepId, std::sync::Arc<std::sync::Mutex<()>>>>> =
    std::sync::LazyLock::new(Default::default);

/// Exports every table of `sweep` from the store in `state_dir` into OUT/SWEEP/, through a
/// read-only connection of its own. Returns the directory written. The outcome is noted for
/// `failure` (and so for status).
pub fn export(state_dir: &Path, sweep: &SweepId, out: &Path) -> Result<PathBuf, ResultsError> {
    // One export of a sweep at a time: two at once (two trials finishing together) would write
    // the same tables at once. Each reads the store once it holds the lock, so the last to run
    // writes the latest state, whatever order they started in.
    let lock = {
        let mut locks = LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(sweep.clone()).or_default().clone()
    };
    let _one_at_a_time = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let result =
        Store::open_read_only(state_dir).map_err(ResultsError::reading).and_then(|store| cbsweep_results::export(&store, sweep, out));
    let mut failures = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match &result {
        Ok(_) => failures.remove(sweep),
        Err(e) => failures.insert(sweep.clone(), e.to_string()),
    };
    result
}

/// Why the latest export of `sweep` in this process failed; None when it succeeded (or none ran).
pub fn failure(sweep: &SweepId) -> Option<String> {
    FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(sweep).cloned()
}

/// The sweeps whose latest export failed.
pub fn failed_sweeps() -> Vec<SweepId> {
    FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect()
}
