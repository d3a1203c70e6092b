//! The libtorch trainer: the CB-RNN and its parameter-matched plain RNN (docs/science.md), the
//! three curriculum tasks, and the training of a pack of same-shape trials as one batched
//! computation on one device.
//!
//! Layers, each using only those below it: `tasks` (data from each trial's own seed), `input`
//! (host batches packed into tensors), `model` (the packed models), `regime` (which modules
//! learn), `error`; the engines behind the `engine` seam (`engine::cpu` over `fused`,
//! `engine::libtorch`); the analyses at each checkpoint (`analysis`); a trial's curriculum
//! (`trial`), its checkpoint to resume from (`resume`) and a pack's epoch loop (`run`); and `train`, the `Trainer` that picks each pack's
//! engine. This is the only module of the worker that knows tch (the benches aside); everything
//! else sees `crate::trainer::Trainer`.

mod analysis;
pub mod cuda;
mod engine;
mod error;
mod fused;
mod input;
pub mod libtorch_version;
mod model;
#[cfg(test)]
mod ops;
mod regime;
mod resume;
mod run;
mod tasks;
mod train;
mod trial;

pub use train::{Engine, TorchTrainer};

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
