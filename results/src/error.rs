//! The results crate's one error type: reading the coordinator's state through a
//! `ResultsSource`, or writing a table.

use cbsweep_common::SweepId;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The source (the coordinator's store) could not be read; its own error, as it is.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("cannot build the {table} table: {source}")]
    Arrow { table: &'static str, source: arrow_schema::ArrowError },
    /// Nothing was written: the tables of a sweep the state does not hold would be empty ones
    /// over good ones.
    #[error("sweep {0} is not in the coordinator's state: nothing exported (`cbsweep status` lists its sweeps)")]
    UnknownSweep(SweepId),
    #[error("{0:?} is not a sweep name: it {1}")]
    BadSweepName(String, String),
}

impl ResultsError {
    /// A `ResultsSource`'s error, wrapped.
    pub fn reading(e: impl std::error::Error + Send + Sync + 'static) -> ResultsError {
        ResultsError::Source(Box::new(e))
    }
}
