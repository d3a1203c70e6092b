//! The scheduler: the one owner of sweep state. It runs on its own thread (SQLite calls block),
//! receives commands over a channel and answers each on a oneshot; nothing else touches the
//! store for writing. Handlers (gRPC, the local runner) hold a cheap `SchedulerHandle`.
//! Commands that queue up while one is handled share its transaction (group commit); their
//! replies and events leave only after that commit, so nothing acknowledged is ever lost.
//!
//! This file is the handle (the async API): each of its methods sends the thread a command that
//! calls the `Scheduler` method of the same job. `api.rs` holds the types replies are made of;
//! `state.rs` the `Scheduler` the thread owns; `batch.rs` the thread (batches, commits, answers,
//! the lease clock's stops); `fence.rs` the rules a worker's report must pass; `trials.rs` and
//! `sweeps.rs` the commands about trials and sweeps; `report.rs` status and /metrics;
//! `tally.rs` the in-memory counts; `clock.rs` the clock leases expire by. `state.rs` uses none
//! of the files that add methods to `Scheduler`, and no file uses this one.

mod api;
mod batch;
mod clock;
mod fence;
mod report;
mod state;
mod sweeps;
mod tally;
mod trials;

pub use api::{
    Counters, Event, LeaseGrant, MetricsReport, NextLease, SchedError, SchedulerOptions, StatusReport, SubmitOutcome, SweepMetrics,
    SweepStatus, WorkerHello, WorkerStatus,
};

use crate::store::{StoredCheckpoint, SweepRow};
use api::Reply;
use batch::{Answer, Command, answer};
use cbsweep_common::{Attempt, EpochRecord, SweepId, SweepSpec, TrialId, TrialResult, WorkerId};
use state::Scheduler;
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
        let (tx, events) = batch::spawn(state_dir, opts.clone())?;
        Ok(SchedulerHandle { tx, events, heartbeat: opts.heartbeat })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The interval workers are told to heartbeat at (`SchedulerOptions::heartbeat`).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Runs `f` on the scheduler thread, in the batch it joins, and waits for its reply, sent
    /// once that batch is committed.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Scheduler) -> Result<T, SchedError> + Send + 'static,
    ) -> Result<T, SchedError> {
        self.send(move |s, reply| answer(reply, f(s))).await
    }

    /// Runs `f` on the scheduler thread; it answers `reply` itself (`answer`, or as /metrics
    /// does).
    async fn send<T: Send + 'static>(&self, f: impl FnOnce(&mut Scheduler, Reply<T>) -> Answer + Send + 'static) -> Result<T, SchedError> {
        let (reply, rx) = oneshot::channel();
        let cmd: Command = Box::new(move |s| f(s, reply));
        self.tx.send(cmd).map_err(|_| SchedError::Stopped)?;
        rx.await.map_err(|_| SchedError::Stopped)?
    }

    pub async fn submit(&self, spec: SweepSpec, path: String) -> Result<SubmitOutcome, SchedError> {
        self.call(move |s| s.submit(spec, path)).await
    }

    pub async fn register(&self, hello: WorkerHello) -> Result<WorkerId, SchedError> {
        self.call(move |s| s.register(hello)).await
    }

    /// Leases a pack of at most `max` trials, no more than fit in `memory_budget` bytes by
    /// `cbsweep_common::memory` (but at least one); None: no budget.
    pub async fn lease(&self, worker: WorkerId, max: u32, memory_budget: Option<NonZeroU64>) -> Result<LeaseGrant, SchedError> {
        self.call(move |s| s.lease(&worker, max, memory_budget)).await
    }

    pub async fn heartbeat(&self, worker: WorkerId, held: Vec<(TrialId, Attempt)>) -> Result<Vec<TrialId>, SchedError> {
        self.call(move |s| s.heartbeat(&worker, &held)).await
    }

    pub async fn progress(&self, worker: WorkerId, items: Vec<(TrialId, Attempt, EpochRecord)>) -> Result<Vec<TrialId>, SchedError> {
        self.call(move |s| s.progress(&worker, items)).await
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
        self.call(move |s| s.complete_and_lease(&worker, &trial, attempt, result, next)).await
    }

    pub async fn release(&self, worker: WorkerId, trials: Vec<TrialId>) -> Result<u32, SchedError> {
        self.call(move |s| s.release(&worker, &trials)).await
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
        self.call(move |s| s.save_checkpoint(&worker, &trial, attempt, epochs_done, &sha256, &data)).await
    }

    /// Whether `worker` holds attempt `attempt`'s lease of `trial` now and a checkpoint of
    /// `epochs_done` epochs is within the trial's budget: Ok, or the refusal that
    /// `save_checkpoint` would give (checked before a checkpoint's bytes are taken in).
    pub async fn check_checkpoint(&self, worker: WorkerId, trial: TrialId, attempt: Attempt, epochs_done: u32) -> Result<(), SchedError> {
        self.call(move |s| s.check_checkpoint(&worker, &trial, attempt, epochs_done)).await
    }

    /// A trial's latest checkpoint, for the worker holding attempt `attempt`'s lease.
    pub async fn fetch_checkpoint(
        &self,
        worker: WorkerId,
        trial: TrialId,
        attempt: Attempt,
    ) -> Result<Option<StoredCheckpoint>, SchedError> {
        self.call(move |s| s.fetch_checkpoint(&worker, &trial, attempt)).await
    }

    pub async fn status(&self, sweep: Option<SweepId>) -> Result<StatusReport, SchedError> {
        self.call(move |s| s.status(sweep)).await
    }

    pub async fn cancel(&self, sweep: SweepId) -> Result<u32, SchedError> {
        self.call(move |s| s.cancel(&sweep)).await
    }

    pub async fn retry_failed(&self, sweep: SweepId) -> Result<u32, SchedError> {
        self.call(move |s| s.retry_failed(&sweep)).await
    }

    /// What /metrics reports, from the counts the scheduler keeps: no trial row is read, so a
    /// scrape costs its thread the same at 10 trials as at 10^5. Answered after the batch it
    /// joined has committed (or been undone), from what is committed.
    pub async fn metrics(&self) -> Result<MetricsReport, SchedError> {
        self.send(|s, reply| s.scrape(reply)).await
    }

    pub async fn counters(&self) -> Result<Counters, SchedError> {
        Ok(self.metrics().await?.counters)
    }

    /// Expires the leases that will have expired `ahead` from now on the lease clock (in tests:
    /// a lease that must expire needs no wait, and one that must not is never short), as the
    /// tick does with the clock's time; the number expired.
    pub async fn expire_leases_within(&self, ahead: Duration) -> Result<u32, SchedError> {
        self.call(move |s| s.expire_leases_within(ahead)).await
    }

    /// The stored row of a sweep (its spec text, for resume).
    pub async fn sweep_row(&self, sweep: SweepId) -> Result<SweepRow, SchedError> {
        self.call(move |s| s.sweep_row(&sweep)).await
    }
}
