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
    // a name of this writer's own: two processes exporting one sweep (a coordinator and a
    // `cbsweep export`) never write into each other's file
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("parquet.{}-{n}.tmp", std::process::id()));
    // a table that could not be written whole leaves nothing behind (a full disk's 0-byte file
    // would otherwise stay); the previous table, if any, stays as it was
    let written = write_file(&tmp, schema, &batch);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path).map_err(|source| ResultsError::Io { path: path.to_owned(), source })?;
    Ok(())
}

/// Writes `batch` as a Parquet file at `tmp`, fsynced.
fn write_file(tmp: &Path, schema: SchemaRef, batch: &RecordBatch) -> Result<(), ResultsError> {
    let io_err = |source| ResultsError::Io { path: tmp.to_owned(), source };
    let file = std::fs::File::create(tmp).map_err(io_err)?;
    let pq_err = |source| ResultsError::Parquet { path: tmp.to_owned(), source };
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties())).map_err(pq_err)?;
    writer.write(batch).map_err(pq_err)?;
    let file = writer.into_inner().map_err(pq_err)?;
    file.sync_all().map_err(io_err)
}

/// Where a sweep's tables go.
pub fn sweep_dir(out: &Path, sweep: &SweepId) -> PathBuf {
    out.join(sweep.as_str())
}
