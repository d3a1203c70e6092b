//! cbsweep's training: the CB-RNN and its parameter-matched plain RNN (docs/science.md), the
//! three curriculum tasks, and the training of a pack of same-shape trials as one batched
//! computation on one device, on the crate's own CPU engine or on libtorch (tch).
//!
//! Layers, each using only those below it: `tasks` (data from each trial's own seed), `input`
//! (host batches packed into tensors), `model` (the packed models), `regime` (which modules
//! learn), `error`; the engines behind the `engine` seam (`engine::cpu` over `fused`,
//! `engine::libtorch`); the analyses at each checkpoint (`analysis`); a trial's curriculum
//! (`trial`), its saved state to resume from (`resume`, in `codec`'s bytes) and a pack's epoch
//! loop (`run`); and `train`, the `Trainer` that picks each pack's engine. `trainer` is the seam
//! the worker drives any trainer through (this crate's, or the worker's fake one).
//!
//! Knows no wire protocol, no coordinator and no worker: it takes trial specs and reports epochs,
//! checkpoints and results through `trainer::PackEvents`. The CPU engine (`fused`) still keeps
//! its weights and the analyses their data in tch tensors, so the crate links libtorch.

mod analysis;
pub mod codec;
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
pub mod trainer;
mod trial;

pub use train::{Engine, TorchTrainer, start_threads};

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
