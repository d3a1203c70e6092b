//! Why a pack could not train: the error of the engines and of the training loop above them.
//! A `TrainError` ends every unfinished trial of its pack as a failure (data, not a dead
//! worker), its reason the error and its sources joined (`error_chain`). Depends on nothing
//! of the trainer.

use tch::TchError;

/// Why a pack could not train.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrainError {
    #[error("libtorch error")]
    Torch(#[from] TchError),
    #[error("trial {index} of the pack has pack key {found}, the first has {expected}")]
    MixedPack { index: usize, found: String, expected: String },
    #[error("an empty pack")]
    EmptyPack,
    #[error("training panicked: {0}")]
    Panicked(String),
}

/// The error and its sources, joined: what a failed trial reports.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
