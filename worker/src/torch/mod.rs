//! The libtorch trainer: the CB-RNN and its parameter-matched plain RNN (cb-rnn-spec.md), the
//! three curriculum tasks, and the training of a pack of same-shape trials as one batched
//! computation on one device.
//!
//! Owns: task data generation from each trial's own seed (`tasks`), the packed models
//! (`model`), the optimiser, regimes and curriculum (`train`), and the analyses and saved
//! weights at each checkpoint (`analysis`). This is the only module of the worker that knows tch
//! (the benches aside); everything else sees `crate::trainer::Trainer`.

mod analysis;
pub mod cuda;
mod fused;
mod model;
mod tasks;
mod train;

pub use train::{Engine, TorchTrainer};

#[cfg(test)]
mod tests;
