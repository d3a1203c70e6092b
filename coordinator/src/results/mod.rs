//! Parquet results: one schema module per table, one function for the writer properties, and
//! atomic files (written under a temporary name, closed, then renamed) so a reader never sees a
//! half-written table. The tables are derived from the coordinator's store, which stays the
//! source of truth: exporting again after a crash rewrites them whole.

pub mod analyses;
pub mod curves;
pub mod levels;
pub mod stats;
pub mod trials;

use crate::store::{Store, StoreError};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use cbsweep_common::SweepId;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("cannot build the {table} table: {source}")]
    Arrow { table: &'static str, source: arrow_schema::ArrowError },
}

/// The writer settings every table uses.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("cbsweep {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Writes `columns` as one Parquet file at `path`, atomically.
pub fn write_table(path: &Path, schema: SchemaRef, columns: Vec<ArrayRef>, table: &'static str) -> Result<(), ResultsError> {
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|source| ResultsError::Arrow { table, source })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| ResultsError::Io { path: dir.to_owned(), source })?;
    let tmp = path.with_extension("parquet.tmp");
    let io_err = |source| ResultsError::Io { path: tmp.clone(), source };
    let file = std::fs::File::create(&tmp).map_err(io_err)?;
    let pq_err = |source| ResultsError::Parquet { path: tmp.clone(), source };
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties())).map_err(pq_err)?;
    writer.write(&batch).map_err(pq_err)?;
    let file = writer.into_inner().map_err(pq_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|source| ResultsError::Io { path: path.to_owned(), source })?;
    Ok(())
}

/// Where a sweep's tables go.
pub fn sweep_dir(out: &Path, sweep: &SweepId) -> PathBuf {
    out.join(sweep.as_str())
}

/// Exports every table of `sweep` from the store in `state_dir` into OUT/SWEEP/.
/// Returns the directory written.
pub fn export(state_dir: &Path, sweep: &SweepId, out: &Path) -> Result<PathBuf, ResultsError> {
    let store = Store::open_read_only(state_dir)?;
    let rows = store.trials(sweep)?;
    let curves = store.curves(sweep)?;
    let analyses = store.analyses(sweep)?;
    let dir = sweep_dir(out, sweep);
    let spec_hash = store.sweep(sweep)?.map(|s| cbsweep_common::spec_hash(&s.spec_toml)).unwrap_or_default();
    trials::write(&dir.join(trials::FILE), &rows, &curves, &spec_hash)?;
    curves::write(&dir.join(curves::FILE), &rows, &curves)?;
    levels::write(&dir.join(levels::FILE), &rows, &curves)?;
    analyses::write(&dir.join(analyses::FILE), &rows, &analyses)?;
    stats::write(&dir.join(stats::FILE), &stats::compute(&rows, &curves))?;
    tracing::info!(sweep = %sweep, trials = rows.len(), curve_rows = curves.len(), dir = %dir.display(), "results exported");
    Ok(dir)
}
