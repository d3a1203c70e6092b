//! The commands about trials, mostly from workers: register, lease, heartbeat, progress,
//! checkpoints, results and handing leases back, and the tick's expiry of leases. Each report
//! passes `fence.rs`'s rules first; each change to a trial's state moves the counts (`Tally`)
//! and queues its event.

use super::api::{Event, LeaseGrant, NextLease, SchedError, WorkerHello};
use super::fence::Fence;
use super::state::{Scheduler, Seen};
use crate::store::{self, StoredCheckpoint, TrialLease};
use cbsweep_common::{Attempt, EpochRecord, TrialId, TrialOutcome, TrialResult, TrialState, WorkerId};
use std::collections::HashSet;
use std::num::NonZeroU64;
use std::time::Duration;

impl Scheduler {
    pub(super) fn register(&mut self, hello: WorkerHello) -> Result<WorkerId, SchedError> {
        let id = WorkerId(format!("{}-{}-{:04x}", hello.hostname, hello.pid, rand::random::<u16>()));
        self.store.register_worker(&id, &hello.hostname, &hello.device, hello.pid)?;
        self.workers.insert(id.clone(), Seen { last_seen_ms: store::now_ms(), written: true });
        tracing::info!(worker_id = %id, device = %hello.device, "worker registered");
        Ok(id)
    }

    pub(super) fn lease(&mut self, worker: &WorkerId, max: u32, memory_budget: Option<NonZeroU64>) -> Result<LeaseGrant, SchedError> {
        self.known(worker)?;
        self.counters.lease_requests += 1;
        let now = self.clock.now_ms();
        let mut trials = self.store.lease(worker, max, memory_budget, now)?;
        let wall = store::now_ms();
        for t in &mut trials {
            t.expires_ms = wall + (t.expires_ms - now);
        }
        self.counters.trials_leased += trials.len() as u64;
        for t in &trials {
            self.tally.moved(&t.spec.sweep, Some(TrialState::Pending), TrialState::Leased, 1);
            // an attempt after the first may have lost epochs: its lease wrote the trial's total
            if t.attempt.0 > 1 {
                match self.store.trial_epochs_lost(&t.id) {
                    Ok(lost) => self.tally.lost(&t.spec.sweep, &t.id, lost),
                    Err(e) => {
                        tracing::warn!(trial_id = %t.id, error = %e, "cannot read the epochs lost; the counts are read again");
                        self.tally.reload = true;
                    }
                }
            }
            self.keep_budget(&t.id, t.spec.budget);
            tracing::debug!(trial_id = %t.id, attempt = t.attempt.0, worker_id = %worker, "leased");
            self.emit(Event::TrialLeased { sweep: t.spec.sweep.clone(), trial: t.id.clone(), worker: worker.clone() });
        }
        let drained = trials.is_empty() && !self.store.has_running_sweeps()?;
        Ok(LeaseGrant { trials, drained })
    }

    /// Renews the leases `worker` holds of `held`; the trials it no longer holds.
    pub(super) fn heartbeat(&mut self, worker: &WorkerId, held: &[(TrialId, Attempt)]) -> Result<Vec<TrialId>, SchedError> {
        self.known(worker)?;
        Ok(self.store.renew(worker, held, self.clock.now_ms())?)
    }

    pub(super) fn progress(&mut self, worker: &WorkerId, items: Vec<(TrialId, Attempt, EpochRecord)>) -> Result<Vec<TrialId>, SchedError> {
        self.known(worker)?;
        for (trial, _, record) in &items {
            if let Some(budget) = self.budget(trial)? {
                budget.check_epoch("progress", record).map_err(|why| SchedError::OutOfBudget { trial: trial.clone(), why })?;
            }
        }
        let held: Vec<(TrialId, Attempt)> = items.iter().map(|(t, a, _)| (t.clone(), *a)).collect();
        let revoked = self.store.renew(worker, &held, self.clock.now_ms())?;
        for (trial, _, record) in items {
            if revoked.contains(&trial) {
                continue;
            }
            if let Some(lease) = self.store.trial_lease(&trial)? {
                self.emit(Event::Epoch { sweep: lease.sweep, trial: trial.clone(), record });
            }
            let attempt = held.iter().find(|(t, _)| *t == trial).map_or(Attempt(0), |(_, a)| *a);
            self.store.note_progress(&trial, attempt, record.epoch)?;
        }
        Ok(revoked)
    }

    /// Whether `worker` holds attempt `attempt`'s lease of `trial` now and a checkpoint of
    /// `epochs_done` epochs is within the trial's budget.
    pub(super) fn check_checkpoint(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
        epochs_done: u32,
    ) -> Result<(), SchedError> {
        self.holds(worker, trial, attempt)?;
        self.within_budget(trial, |b| b.check_checkpoint(epochs_done))
    }

    /// Stores a checkpoint from the lease's holder (fenced as a result is); the lease is
    /// renewed with it.
    pub(super) fn save_checkpoint(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
        epochs_done: u32,
        sha256: &str,
        data: &[u8],
    ) -> Result<bool, SchedError> {
        self.check_checkpoint(worker, trial, attempt, epochs_done)?;
        let stored = self.store.save_checkpoint(trial, attempt, epochs_done, sha256, data)?;
        self.store.renew(worker, &[(trial.clone(), attempt)], self.clock.now_ms())?;
        self.store.note_progress(trial, attempt, epochs_done)?;
        self.counters.checkpoints_saved += u64::from(stored);
        self.counters.checkpoint_bytes_saved += if stored { data.len() as u64 } else { 0 };
        tracing::debug!(trial_id = %trial, attempt = attempt.0, epochs_done, bytes = data.len(), stored, "checkpoint");
        Ok(stored)
    }

    /// A trial's latest checkpoint, for the worker holding attempt `attempt`'s lease.
    pub(super) fn fetch_checkpoint(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
    ) -> Result<Option<StoredCheckpoint>, SchedError> {
        self.holds(worker, trial, attempt)?;
        Ok(self.store.checkpoint(trial)?)
    }

    pub(super) fn complete(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
        result: TrialResult,
    ) -> Result<bool, SchedError> {
        // a repeat of a recorded attempt is acknowledged without change
        let lease = match self.fence(worker, trial, attempt)? {
            Fence::Holds(lease) => lease,
            Fence::Ended => return Ok(false),
        };
        self.within_budget(trial, |b| b.check_result(&result))?;
        self.budgets.remove(trial);
        match &result.outcome {
            TrialOutcome::Completed | TrialOutcome::Diverged => {
                self.store.record_done(trial, &result)?;
                self.tally.moved(&lease.sweep, Some(TrialState::Leased), TrialState::Done, 1);
                tracing::info!(trial_id = %trial, worker_id = %worker, outcome = result.outcome.status(), max_level = result.max_level(), "trial done");
                self.finished(trial, lease, TrialState::Done, result.outcome.status(), result.max_level(), None)?;
            }
            TrialOutcome::Failed(error) => {
                let terminal = lease.counted >= lease.max_attempts;
                self.counters.attempts_failed += 1;
                self.store.record_failure(trial, error, terminal)?;
                tracing::warn!(trial_id = %trial, worker_id = %worker, attempt = lease.attempt, terminal, error = %error, "trial attempt failed");
                self.attempt_failed(trial, lease, terminal, error.clone())?;
            }
        }
        Ok(true)
    }

    /// Records a result, then, when `next` is given and the result was not refused, leases the
    /// worker's next pack: whether the result was new, and the grant.
    pub(super) fn complete_and_lease(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
        result: TrialResult,
        next: Option<NextLease>,
    ) -> Result<(bool, Option<LeaseGrant>), SchedError> {
        let recorded = self.complete(worker, trial, attempt, result)?;
        let grant = next.map(|n| self.lease(worker, n.max, n.memory_budget)).transpose()?;
        Ok((recorded, grant))
    }

    /// A failed attempt (its result, or its lease expired) leaves its trial failed for good when
    /// `terminal`, else back in the queue to be tried again.
    fn attempt_failed(&mut self, trial: &TrialId, lease: TrialLease, terminal: bool, error: String) -> Result<(), SchedError> {
        let to = if terminal { TrialState::Failed } else { TrialState::Pending };
        self.tally.moved(&lease.sweep, Some(TrialState::Leased), to, 1);
        if terminal {
            self.finished(trial, lease, TrialState::Failed, "failed", 0, Some(error))
        } else {
            self.emit(Event::TrialRetry { sweep: lease.sweep, trial: trial.clone(), error });
            Ok(())
        }
    }

    /// A trial has ended: its completion time and count, its event, and its sweep's end when it
    /// was the last open one.
    fn finished(
        &mut self,
        trial: &TrialId,
        lease: TrialLease,
        state: TrialState,
        outcome: &str,
        max_level: u32,
        error: Option<String>,
    ) -> Result<(), SchedError> {
        let TrialLease { sweep, cell, .. } = lease;
        self.finished_at.entry(sweep.clone()).or_default().push(self.clock.elapsed_ms());
        self.counters.trials_finished += 1;
        self.emit(Event::TrialFinished {
            sweep: sweep.clone(),
            trial: trial.clone(),
            cell,
            state,
            outcome: outcome.into(),
            max_level,
            error,
        });
        self.check_finished(&sweep)
    }

    /// Expires the leases that will have expired `ahead` from now on the lease clock; how many.
    pub(super) fn expire_leases_within(&mut self, ahead: Duration) -> Result<u32, SchedError> {
        let at = self.clock.now_ms().saturating_add(i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX));
        self.expire_leases(at)
    }

    /// Puts back (or fails, out of attempts) every lease that has expired by `now` (the lease
    /// clock's time); how many.
    pub(super) fn expire_leases(&mut self, now: i64) -> Result<u32, SchedError> {
        let expired = self.store.expired(now)?;
        let n = expired.len() as u32;
        for (trial, attempt, counted, max_attempts) in expired {
            let terminal = counted >= max_attempts;
            let error = format!("lease of attempt {attempt} expired (worker lost or too slow to heartbeat)");
            self.store.record_failure(&trial, &error, terminal)?;
            self.budgets.remove(&trial);
            tracing::warn!(trial_id = %trial, attempt, terminal, "lease expired");
            let Some(lease) = self.store.trial_lease(&trial)? else { continue };
            self.attempt_failed(&trial, lease, terminal, error)?;
        }
        Ok(n)
    }

    /// Hands leases back unfinished (the worker stops); each released trial's sweep is looked up
    /// first (key lookups), for the counts.
    pub(super) fn release(&mut self, worker: &WorkerId, trials: &[TrialId]) -> Result<u32, SchedError> {
        self.known(worker)?;
        let mut seen = HashSet::new();
        let mut sweeps = Vec::new();
        for trial in trials {
            if seen.insert(trial)
                && let Some(lease) = self.store.trial_lease(trial)?
                && lease.state == TrialState::Leased
                && lease.worker.as_deref() == Some(worker.as_str())
            {
                sweeps.push(lease.sweep);
            }
        }
        let n = self.store.release(worker, trials)?;
        for sweep in &sweeps {
            self.tally.moved(sweep, Some(TrialState::Leased), TrialState::Pending, 1);
        }
        self.tally.reload |= n as usize != sweeps.len();
        Ok(n)
    }
}
