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
    #[error(
        "trial {index} of the pack asks for the GRU cell of PyTorch's convention, which an older cbsweep expanded and this worker no longer computes (docs/science.md#gru-variant): submit its sweep again to run the lab's cell"
    )]
    RetiredGruCell { index: usize },
    #[error(
        "trial {index} of the pack asks for the recurrent-module control as an older cbsweep computed it (its timescale drive restarted the module's state at every chunk), which this worker no longer computes: submit its sweep again (model.recurrent_module_start = \"near_zero\" for the same start)"
    )]
    RetiredModuleStart { index: usize },
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
