//! The scheduler's vocabulary: what comes back to a command (on a oneshot `Reply`: grants,
//! outcomes, the status report, the metrics report), what it refuses (`SchedError`), what it
//! tells listeners (`Event`), and its options and counters.

use crate::store::{Leased, ResumeTally, StoreError};
use cbsweep_common::{EpochRecord, SweepId, SweepState, TrialId, TrialState, WorkerId};
use cbsweep_results::ConditionTally;
use std::num::NonZeroU64;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why the scheduler refused a command. The gRPC layer maps these to statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("unknown sweep {0}")]
    UnknownSweep(SweepId),
    #[error("unknown trial {0}")]
    UnknownTrial(TrialId),
    #[error("unknown worker {0}: register first")]
    UnknownWorker(WorkerId),
    #[error("stale attempt {attempt} of trial {trial}: the current attempt is {current}")]
    StaleAttempt { trial: TrialId, attempt: u32, current: u32 },
    #[error("attempt {attempt} of trial {trial} no longer holds a lease (it expired or was handed back)")]
    NotLeased { trial: TrialId, attempt: u32 },
    #[error("trial {trial} is leased to another worker than {worker}")]
    NotOwner { trial: TrialId, worker: WorkerId },
    #[error("trial {0} belongs to a cancelled sweep")]
    Cancelled(TrialId),
    /// A report (progress, result, checkpoint) outside the trial's budget: nothing of it is kept.
    #[error("trial {trial}: {why}")]
    OutOfBudget { trial: TrialId, why: cbsweep_common::OutOfBudget },
    #[error("sweep {sweep} already has cells whose meaning this spec changes:\n{diff}")]
    Conflict { sweep: SweepId, diff: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the scheduler has stopped")]
    Stopped,
}

/// Something that happened, for progress displays and exporters.
#[derive(Clone, Debug)]
pub enum Event {
    TrialLeased {
        sweep: SweepId,
        trial: TrialId,
        worker: WorkerId,
    },
    TrialFinished {
        sweep: SweepId,
        trial: TrialId,
        cell: String,
        state: TrialState,
        outcome: String,
        max_level: u32,
        error: Option<String>,
    },
    TrialRetry {
        sweep: SweepId,
        trial: TrialId,
        error: String,
    },
    Epoch {
        sweep: SweepId,
        trial: TrialId,
        record: EpochRecord,
    },
    SweepFinished {
        sweep: SweepId,
    },
}

#[derive(Clone, Debug)]
pub struct SubmitOutcome {
    pub sweep: SweepId,
    pub total: u32,
    pub new: u32,
    /// What a resubmission (the sweep was stored) kept and changed besides adding cells.
    pub resubmission: cbsweep_common::Resubmission,
}

#[derive(Clone, Debug)]
pub struct WorkerHello {
    pub hostname: String,
    pub device: String,
    pub pid: u32,
}

#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub trials: Vec<Leased>,
    /// No running sweep has work left, now or later.
    pub drained: bool,
}

#[derive(Clone, Debug)]
pub struct SweepStatus {
    pub sweep: SweepId,
    pub state: SweepState,
    pub total: u32,
    pub counts: Vec<(TrialState, u32)>,
    /// Per condition, in the order of the condition strings (the full condition, not shortened).
    pub conditions: Vec<ConditionTally>,
    pub trials_per_minute: f64,
    pub eta_seconds: f64,
    /// What interruptions have cost it (epochs trained again, resumes, checkpoint ages).
    pub resumes: ResumeTally,
}

#[derive(Clone, Debug)]
pub struct WorkerStatus {
    pub id: String,
    pub hostname: String,
    pub device: String,
    pub leased: u32,
    pub last_seen_ms_ago: i64,
}

#[derive(Clone, Debug)]
pub struct StatusReport {
    pub sweeps: Vec<SweepStatus>,
    pub workers: Vec<WorkerStatus>,
}

/// What /metrics reports: the counts the scheduler keeps in memory, so that a scrape reads no
/// trial row (unlike `StatusReport`, which tallies every trial of every sweep).
#[derive(Clone, Debug)]
pub struct MetricsReport {
    /// Oldest sweep first.
    pub sweeps: Vec<SweepMetrics>,
    /// Workers seen in the last minute.
    pub workers_live: u32,
    pub counters: Counters,
}

#[derive(Clone, Debug)]
pub struct SweepMetrics {
    pub sweep: SweepId,
    /// Every state, in `TrialState::ALL`'s order.
    pub counts: Vec<(TrialState, u32)>,
    /// Epochs trained again after interruptions (`ResumeTally::epochs_lost`).
    pub epochs_lost: u64,
    /// Completions per minute this run; NaN until two trials finished, or once none is open.
    pub trials_per_minute: f64,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, SchedError>>;

/// A lease asked for with a completion: at most `max` trials within `memory_budget` bytes.
#[derive(Clone, Copy, Debug)]
pub struct NextLease {
    pub max: u32,
    pub memory_budget: Option<NonZeroU64>,
}

/// Monotonic counters since the scheduler started, for /metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub lease_requests: u64,
    pub trials_leased: u64,
    pub trials_finished: u64,
    pub attempts_failed: u64,
    pub checkpoints_saved: u64,
    pub checkpoint_bytes_saved: u64,
    /// Trial rows read to tally whole sweeps (each status request, the counts' start): what
    /// `cbsweep status` callers cost this thread. /metrics adds nothing to it.
    pub trial_rows_read: u64,
}

/// Options of a scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// How often leases are checked for expiry.
    pub tick: Duration,
    /// Interval workers are told to heartbeat at.
    pub heartbeat: Duration,
    /// Put every lease back into the queue at start (an embedded coordinator whose local workers
    /// died with it).
    pub reclaim_leases_at_start: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { tick: Duration::from_millis(500), heartbeat: Duration::from_secs(5), reclaim_leases_at_start: false }
    }
}
