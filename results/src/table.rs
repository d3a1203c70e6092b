//! Parquet files: the one function that builds the writer properties every table uses, atomic
//! files (written under a temporary name, fsynced, then renamed) so a reader never sees a
//! half-written table, and where a sweep's tables go.

use crate::error::ResultsError;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use cbsweep_common::SweepId;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};

/// The writer settings every table uses.
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("cbsweep {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Writes `columns` as one Parquet file at `path`, atomically.
pub(crate) fn write_table(path: &Path, schema: SchemaRef, columns: Vec<ArrayRef>, table: &'static str) -> Result<(), ResultsError> {
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
