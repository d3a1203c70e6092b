//! Exporting a sweep: every table, read from a `ResultsSource`, written into OUT/SWEEP/. The
//! tables are derived from the source (the coordinator's store), which stays the source of
//! truth: exporting again after a crash rewrites them whole.

use crate::error::ResultsError;
use crate::source::ResultsSource;
use crate::table::sweep_dir;
use crate::{analyses, curves, levels, stats, trials};
use cbsweep_common::SweepId;
use std::path::{Path, PathBuf};

/// Exports every table of `sweep` from `source` into OUT/SWEEP/; returns the directory written.
/// A sweep the source does not hold, or a name that is no sweep's (it would name a folder
/// outside OUT), is refused before anything is written.
pub fn export(source: &impl ResultsSource, sweep: &SweepId, out: &Path) -> Result<PathBuf, ResultsError> {
    SweepId::check(sweep.as_str()).map_err(|why| ResultsError::BadSweepName(sweep.0.clone(), why))?;
    let meta = source.sweep(sweep).map_err(ResultsError::reading)?.ok_or_else(|| ResultsError::UnknownSweep(sweep.clone()))?;
    let rows = source.trials(sweep).map_err(ResultsError::reading)?;
    let curves = source.curves(sweep).map_err(ResultsError::reading)?;
    let analyses = source.analyses(sweep).map_err(ResultsError::reading)?;
    let dir = sweep_dir(out, sweep);
    trials::write(&dir.join(trials::FILE), &rows, &curves, &meta)?;
    curves::write(&dir.join(curves::FILE), &rows, &curves)?;
    levels::write(&dir.join(levels::FILE), &rows, &curves)?;
    analyses::write(&dir.join(analyses::FILE), &rows, &analyses)?;
    stats::write(&dir.join(stats::FILE), &stats::compute(&rows, &curves, &meta.stats))?;
    tracing::info!(sweep = %sweep, trials = rows.len(), curve_rows = curves.len(), dir = %dir.display(), "results exported");
    Ok(dir)
}
