//! What a trial reports: its per-epoch curve and how it ended. The measures taken from a
//! curve are in `measures.rs` (which uses this file, not the other way round).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A trial's place in the coordinator's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Waiting for a worker.
    Pending,
    /// Leased to a worker under a still-valid lease.
    Leased,
    /// Finished with a recorded result (completed or diverged).
    Done,
    /// Ran out of attempts; its last error is recorded.
    Failed,
    /// The sweep was cancelled before this trial finished.
    Cancelled,
}

impl TrialState {
    pub const ALL: [TrialState; 5] = [TrialState::Pending, TrialState::Leased, TrialState::Done, TrialState::Failed, TrialState::Cancelled];

    pub fn as_str(&self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Leased => "leased",
            TrialState::Done => "done",
            TrialState::Failed => "failed",
            TrialState::Cancelled => "cancelled",
        }
    }

    /// Finished for good: nothing will run it again unless a user asks (retry-failed).
    pub fn is_terminal(&self) -> bool {
        matches!(self, TrialState::Done | TrialState::Failed | TrialState::Cancelled)
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrialState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TrialState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown trial state {s:?}"))
    }
}

/// A sweep's place in the coordinator's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepState {
    /// Some trial is pending or leased.
    Running,
    /// Every trial has a terminal state.
    Done,
    /// A user cancelled it; `retry-failed` or a new submission runs it again.
    Cancelled,
}

impl SweepState {
    pub const ALL: [SweepState; 3] = [SweepState::Running, SweepState::Done, SweepState::Cancelled];

    pub fn as_str(&self) -> &'static str {
        match self {
            SweepState::Running => "running",
            SweepState::Done => "done",
            SweepState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for SweepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SweepState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SweepState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown sweep state {s:?}"))
    }
}

/// How one attempt at a trial ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum TrialOutcome {
    /// Ran its whole budget (or reached the level cap).
    Completed,
    /// The loss became NaN or infinite; the curve up to then is kept. A result, not an error.
    Diverged,
    /// The attempt broke (libtorch error, worker fault); it may be retried.
    Failed(String),
}

impl TrialOutcome {
    pub fn status(&self) -> &'static str {
        match self {
            TrialOutcome::Completed => "completed",
            TrialOutcome::Diverged => "diverged",
            TrialOutcome::Failed(_) => "failed",
        }
    }
}

/// One epoch of a trial's curriculum: trained at `level`, then tested there.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: u32,
    /// The memory depth N trained and tested in this epoch.
    pub level: u32,
    /// Mean cross-entropy over the epoch's training steps.
    pub train_loss: f64,
    /// Accuracy on the epoch's fresh test batches at `level`.
    pub test_accuracy: f64,
    /// Whether `level` counted as solved (accuracy at or above the threshold).
    pub solved: bool,
    /// Mean global gradient norm (before clipping) over the epoch's steps.
    pub grad_norm: f64,
    /// Whether the core (and readout) were learning at the end of the epoch.
    pub core_learning: bool,
    /// Whether the cerebellar module was learning at the end of the epoch.
    pub cb_learning: bool,
}

/// One measurement taken at a checkpoint (a solved level), in long format: the population it
/// describes and the metric's name. See docs/results.md for the metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// The level just solved.
    pub level: u32,
    /// The epoch in which it was solved.
    pub epoch: u32,
    /// "network", "hidden", "granule", "purkinje" or "cb_output".
    pub population: String,
    /// For example "accuracy_cb_on", "d95", "participation_ratio", "timescale_median_steps".
    pub metric: String,
    pub value: f64,
}

/// What a worker reports when an attempt ends. Its `max_level()` and `final_level()` are
/// defined with the other measures, in `measures.rs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub outcome: TrialOutcome,
    pub curve: Vec<EpochRecord>,
    /// Wall time of the attempt on the worker, in milliseconds.
    pub wall_time_ms: u64,
    /// The device it trained on ("cpu", "cuda:0").
    pub device: String,
    /// How many trials trained together in the pack this one was part of.
    pub pack_size: u32,
    /// Checkpoint analyses, in the order taken.
    #[serde(default)]
    pub analyses: Vec<AnalysisRecord>,
}

/// The most characters of an error text that the coordinator keeps of a failed trial (the start
/// and the end, where causes and their last words are).
pub const ERROR_TEXT_CHARS: usize = 4000;

/// An error text as the coordinator stores and logs it: control characters escaped (a newline or
/// an ANSI escape in a worker's text can forge no log line and colour no terminal) and at most
/// `ERROR_TEXT_CHARS` characters kept, the start and the end, saying how much was left out.
pub fn printable_error(text: &str) -> String {
    let escaped: String =
        text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
    let n = escaped.chars().count();
    if n <= ERROR_TEXT_CHARS {
        return escaped;
    }
    let half = ERROR_TEXT_CHARS / 2;
    let head: String = escaped.chars().take(half).collect();
    let tail: String = escaped.chars().skip(n - half).collect();
    let cut: usize = escaped.chars().skip(half).take(n - 2 * half).map(char::len_utf8).sum();
    format!("{head} [... {cut} bytes left out ...] {tail}")
}
