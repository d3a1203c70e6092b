//! The bytes of a trial's saved training state (what `resume` writes and reads, and the fake
//! trainer's too): a protobuf message of this crate's own, hand-declared, so that training names
//! no generated wire type. Its field numbers are those of the `TrialCheckpoint` message the
//! worker once took from the wire protocol, so states saved by earlier workers read back as
//! they were written (`codec_reads_what_the_wire_message_wrote` holds the two together).
//! To the coordinator these bytes are opaque.

use cbsweep_common::{AnalysisRecord, EpochRecord};

/// A trial's whole training state at an epoch boundary (see `resume`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTrial {
    /// Layout version of the contents; a trainer refuses one it does not know.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(string, tag = "2")]
    pub trial_id: String,
    #[prost(uint32, tag = "3")]
    pub epochs_done: u32,
    #[prost(uint32, tag = "4")]
    pub level: u32,
    #[prost(uint32, tag = "5")]
    pub levels_solved: u32,
    #[prost(uint64, tag = "6")]
    pub steps_done: u64,
    /// Word positions of the trial's random streams (ChaCha), as (low, high) halves.
    #[prost(uint64, repeated, tag = "7")]
    pub stream_words: Vec<u64>,
    #[prost(message, repeated, tag = "8")]
    pub curve: Vec<SavedEpoch>,
    #[prost(message, repeated, tag = "9")]
    pub analyses: Vec<SavedAnalysis>,
    /// Training time of the attempts so far.
    #[prost(uint64, tag = "10")]
    pub wall_time_ms: u64,
    /// Element type of the tensors ("f32", "f64"; "fake" for the fake trainer's).
    #[prost(string, tag = "11")]
    pub kind: String,
    /// Each parameter and momentum buffer of the trial, little-endian, in the model's order.
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub params: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "13")]
    pub momentum: Vec<Vec<u8>>,
}

/// One epoch of the curve (`EpochRecord`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedEpoch {
    #[prost(uint32, tag = "1")]
    pub epoch: u32,
    #[prost(uint32, tag = "2")]
    pub level: u32,
    #[prost(double, tag = "3")]
    pub train_loss: f64,
    #[prost(double, tag = "4")]
    pub test_accuracy: f64,
    #[prost(bool, tag = "5")]
    pub solved: bool,
    #[prost(double, tag = "6")]
    pub grad_norm: f64,
    #[prost(bool, tag = "7")]
    pub core_learning: bool,
    #[prost(bool, tag = "8")]
    pub cb_learning: bool,
}

/// One analysis value (`AnalysisRecord`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedAnalysis {
    #[prost(uint32, tag = "1")]
    pub level: u32,
    #[prost(uint32, tag = "2")]
    pub epoch: u32,
    #[prost(string, tag = "3")]
    pub population: String,
    #[prost(string, tag = "4")]
    pub metric: String,
    #[prost(double, tag = "5")]
    pub value: f64,
}

impl SavedTrial {
    pub fn encode_to_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Reads saved bytes; the error names their length.
    pub fn decode(bytes: &[u8]) -> Result<SavedTrial, String> {
        <SavedTrial as prost::Message>::decode(bytes).map_err(|e| format!("unreadable checkpoint ({} bytes): {e}", bytes.len()))
    }

    /// The curve as records.
    pub fn curve(&self) -> Vec<EpochRecord> {
        self.curve.iter().map(EpochRecord::from).collect()
    }

    /// The analyses as records.
    pub fn analyses(&self) -> Vec<AnalysisRecord> {
        self.analyses.iter().map(AnalysisRecord::from).collect()
    }
}

impl From<&EpochRecord> for SavedEpoch {
    fn from(e: &EpochRecord) -> SavedEpoch {
        SavedEpoch {
            epoch: e.epoch,
            level: e.level,
            train_loss: e.train_loss,
            test_accuracy: e.test_accuracy,
            solved: e.solved,
            grad_norm: e.grad_norm,
            core_learning: e.core_learning,
            cb_learning: e.cb_learning,
        }
    }
}

impl From<&SavedEpoch> for EpochRecord {
    fn from(e: &SavedEpoch) -> EpochRecord {
        EpochRecord {
            epoch: e.epoch,
            level: e.level,
            train_loss: e.train_loss,
            test_accuracy: e.test_accuracy,
            solved: e.solved,
            grad_norm: e.grad_norm,
            core_learning: e.core_learning,
            cb_learning: e.cb_learning,
        }
    }
}

impl From<&AnalysisRecord> for SavedAnalysis {
    fn from(a: &AnalysisRecord) -> SavedAnalysis {
        SavedAnalysis { level: a.level, epoch: a.epoch, population: a.population.clone(), metric: a.metric.clone(), value: a.value }
    }
}

impl From<&SavedAnalysis> for AnalysisRecord {
    fn from(a: &SavedAnalysis) -> AnalysisRecord {
        AnalysisRecord { level: a.level, epoch: a.epoch, population: a.population.clone(), metric: a.metric.clone(), value: a.value }
    }
}
