//! The scheduler: the one owner of sweep state. It runs on its own thread (SQLite calls block),
//! receives `Command`s over a channel and answers each on a oneshot; nothing else touches the
//! store for writing. Handlers (gRPC, the local runner) hold a cheap `SchedulerHandle`.
//! Commands that queue up while one is handled share its transaction (group commit); their
//! replies and events leave only after that commit, so nothing acknowledged is ever lost.
//!
//! This file is the handle (the async API); `api.rs` holds the types commands and replies are
//! made of; `state.rs` the thread that owns the store and handles each command; `clock.rs` the
//! clock leases expire by. This file uses `api.rs` and `state.rs`, `state.rs` uses `api.rs` and
//! `clock.rs`, and none uses this file.

mod api;
mod clock;
mod state;

pub use api::{
    Counters, Event, LeaseGrant, MetricsReport, NextLease, SchedError, SchedulerOptions, StatusReport, SubmitOutcome, SweepMetrics,
    SweepStatus, WorkerHello, WorkerStatus,
};

use crate::store::{StoredCheckpoint, SweepRow};
use api::{Command, Reply};
use cbsweep_common::{Attempt, EpochRecord, SweepId, SweepSpec, TrialId, TrialResult, WorkerId};
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// A cheap, cloneable handle to the scheduler thread.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    heartbeat: Duration,
}

impl SchedulerHandle {
    /// Opens the store in `state_dir` and starts the scheduler thread.
    pub fn start(state_dir: &std::path::Path, opts: SchedulerOptions) -> Result<SchedulerHandle, SchedError> {
        let (tx, events) = state::spawn(state_dir, opts.clone())?;
        Ok(SchedulerHandle { tx, events, heartbeat: opts.heartbeat })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The interval workers are told to heartbeat at (`SchedulerOptions::heartbeat`).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SchedError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| SchedError::Stopped)?;
        rx.await.map_err(|_| SchedError::Stopped)?
    }

    pub async fn submit(&self, spec: SweepSpec, path: String) -> Result<SubmitOutcome, SchedError> {
        self.call(|reply| Command::Submit { spec, path, reply }).await
    }

    pub async fn register(&self, hello: WorkerHello) -> Result<WorkerId, SchedError> {
        self.call(|reply| Command::Register { hello, reply }).await
    }

    /// Leases a pack of at most `max` trials, no more than fit in `memory_budget` bytes by
    /// `cbsweep_common::memory` (but at least one); None: no budget.
    pub async fn lease(&self, worker: WorkerId, max: u32, memory_budget: Option<NonZeroU64>) -> Result<LeaseGrant, SchedError> {
        self.call(|reply| Command::Lease { worker, max, memory_budget, reply }).await
    }

    pub async fn heartbeat(&self, worker: WorkerId, held: Vec<(TrialId, Attempt)>) -> Result<Vec<TrialId>, SchedError> {
        self.call(|reply| Command::Heartbeat { worker, held, reply }).await
    }

    pub async fn progress(&self, worker: WorkerId, items: Vec<(TrialId, Attempt, EpochRecord)>) -> Result<Vec<TrialId>, SchedError> {
        self.call(|reply| Command::Progress { worker, items, reply }).await
    }

    pub async fn complete(&self, worker: WorkerId, trial: TrialId, attempt: Attempt, result: TrialResult) -> Result<bool, SchedError> {
        Ok(self.complete_and_lease(worker, trial, attempt, result, None).await?.0)
    }

    /// Records a result and then, when `next` is given, leases the worker's next pack in the
    /// same batch: whether the result was new, and the grant.
    pub async fn complete_and_lease(
        &self,
        worker: WorkerId,
        trial: TrialId,
        attempt: Attempt,
        result: TrialResult,
        next: Option<NextLease>,
    ) -> Result<(bool, Option<LeaseGrant>), SchedError> {
        self.call(|reply| Command::Complete { worker, trial, attempt, result, next, reply }).await
    }

    pub async fn release(&self, worker: WorkerId, trials: Vec<TrialId>) -> Result<u32, SchedError> {
        self.call(|reply| Command::Release { worker, trials, reply }).await
    }

    /// Stores a trial's checkpoint, sent by the worker holding attempt `attempt`'s lease;
    /// answered once committed. False: the store holds a later one.
    pub async fn save_checkpoint(
        &self,
        worker: WorkerId,
        trial: TrialId,
        attempt: Attempt,
        epochs_done: u32,
        sha256: String,
        data: Vec<u8>,
    ) -> Result<bool, SchedError> {
        self.call(|reply| Command::SaveCheckpoint { worker, trial, attempt, epochs_done, sha256, data, reply }).await
    }

    /// Whether `worker` holds attempt `attempt`'s lease of `trial` now and a checkpoint of
    /// `epochs_done` epochs is within the trial's budget: Ok, or the refusal that
    /// `save_checkpoint` would give (checked before a checkpoint's bytes are taken in).
    pub async fn check_checkpoint(&self, worker: WorkerId, trial: TrialId, attempt: Attempt, epochs_done: u32) -> Result<(), SchedError> {
        self.call(|reply| Command::CheckCheckpoint { worker, trial, attempt, epochs_done, reply }).await
    }

    /// A trial's latest checkpoint, for the worker holding attempt `attempt`'s lease.
    pub async fn fetch_checkpoint(
        &self,
        worker: WorkerId,
        trial: TrialId,
        attempt: Attempt,
    ) -> Result<Option<StoredCheckpoint>, SchedError> {
        self.call(|reply| Command::FetchCheckpoint { worker, trial, attempt, reply }).await
    }

    pub async fn status(&self, sweep: Option<SweepId>) -> Result<StatusReport, SchedError> {
        self.call(|reply| Command::Status { sweep, reply }).await
    }

    pub async fn cancel(&self, sweep: SweepId) -> Result<u32, SchedError> {
        self.call(|reply| Command::Cancel { sweep, reply }).await
    }

    pub async fn retry_failed(&self, sweep: SweepId) -> Result<u32, SchedError> {
        self.call(|reply| Command::RetryFailed { sweep, reply }).await
    }

    /// What /metrics reports, from the counts the scheduler keeps: no trial row is read, so a
    /// scrape costs its thread the same at 10 trials as at 10^5. Answered after the batch it
    /// joined has committed (or been undone), from what is committed.
    pub async fn metrics(&self) -> Result<MetricsReport, SchedError> {
        self.call(|reply| Command::Metrics { reply }).await
    }

    pub async fn counters(&self) -> Result<Counters, SchedError> {
        Ok(self.metrics().await?.counters)
    }

    /// Expires the leases that will have expired `ahead` from now on the lease clock (in tests:
    /// a lease that must expire needs no wait, and one that must not is never short), as the
    /// tick does with the clock's time; the number expired.
    pub async fn expire_leases_within(&self, ahead: Duration) -> Result<u32, SchedError> {
        self.call(|reply| Command::ExpireLeases { ahead, reply }).await
    }

    /// The stored row of a sweep (its spec text, for resume).
    pub async fn sweep_row(&self, sweep: SweepId) -> Result<SweepRow, SchedError> {
        self.call(|reply| Command::Spec { sweep, reply }).await
    }
}
