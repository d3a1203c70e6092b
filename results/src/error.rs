//! The results crate's one error type: reading the coordinator's state through a
//! `ResultsSource`, or writing a table.

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
}

impl ResultsError {
    /// A `ResultsSource`'s error, wrapped.
    pub fn reading(e: impl std::error::Error + Send + Sync + 'static) -> ResultsError {
        ResultsError::Source(Box::new(e))
    }
}
