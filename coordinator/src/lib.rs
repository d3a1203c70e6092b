//! cbsweep's coordinator: expands sweep specs into trials, leases them to workers over gRPC,
//! keeps durable state in SQLite so an interrupted sweep resumes where it stopped, and hands
//! its state to `cbsweep-results` (the tables, statistics and figures) through the read-only
//! `ResultsSource` its store implements (`export`). Also the `cbsweep` command line, including
//! `run`, which embeds a coordinator and starts local worker processes, and the dashboard
//! (`dashboard`: pages served on the HTTP side).
//!
//! Must not link libtorch (a coordinator node needs no CUDA) and must not know how trials are
//! trained: it sees trial specs and reported results only. Generated protobuf types stop at
//! `service` (server side), `cli` (client side) and `status_json` (the status as JSON, made
//! from the gRPC answer both sides hold).

pub mod cli;
pub mod dashboard;
pub mod export;
pub mod http;
pub mod local;
pub mod progress;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod slurm;
pub mod status_json;
pub mod store;
