//! cbsweep's results science: everything a sweep's results are made of once the coordinator
//! has recorded them. The per-trial learning measures taken from each curve (defined in
//! `cbsweep_common::measures`, joined to a sweep's rows in `measures`), conditions and their
//! tally for status views (`conditions`), the statistics across seeds (`summary`, `stats`), one
//! schema module per Parquet table (`keys` for the grid-key columns every table starts with;
//! `trials`, `curves`, `levels`, `analyses`, `stats`), atomic table files (`table`), the export
//! of a whole sweep (`export`) and the study's figures (`plot`).
//!
//! It reads the coordinator's state only through `ResultsSource` (read-only, defined here and
//! implemented by the coordinator's store), and sweep-level metadata such as the spec hash
//! comes from that source: this crate never parses or hashes spec text. It must not depend on
//! the coordinator, the store (rusqlite), gRPC (tonic, prost, cbsweep-proto), tokio or tch.

pub mod analyses;
mod conditions;
pub mod curves;
mod error;
mod export;
pub mod keys;
pub mod levels;
pub mod measures;
pub mod plot;
mod source;
pub mod stats;
pub mod summary;
mod table;
pub mod trials;

pub use conditions::{ConditionTally, by_condition, tally};
pub use error::ResultsError;
pub use export::export;
pub use source::{ResultsSource, SweepMeta, TrialRow};
pub use table::sweep_dir;
