//! The rules a worker's report must pass before it counts, each decided in one place: the worker
//! is registered (`known`), holds the attempt's lease now (`fence`, `holds`), and reports within
//! the trial's budget (`within_budget`, by a cache of the trials' budgets).

use super::api::SchedError;
use super::state::{Scheduler, Seen};
use crate::store::{self, TrialLease};
use cbsweep_common::{Attempt, TrainBudget, TrialId, TrialState, WorkerId};

/// Most budgets `Scheduler::budgets` keeps (then it starts over: a cache).
const BUDGETS_KEPT: usize = 100_000;

/// What the fencing rule (`Scheduler::fence`) says of a call that it does not refuse.
pub(super) enum Fence {
    /// The caller holds the attempt's lease now.
    Holds(TrialLease),
    /// The attempt has ended: its trial is done or failed.
    Ended,
}

impl Scheduler {
    /// Refuses an unregistered worker; notes the time a registered one was seen.
    pub(super) fn known(&mut self, worker: &WorkerId) -> Result<(), SchedError> {
        let seen = self.workers.get_mut(worker).ok_or_else(|| SchedError::UnknownWorker(worker.clone()))?;
        *seen = Seen { last_seen_ms: store::now_ms(), written: false };
        Ok(())
    }

    /// The fencing rule, the one place it is decided: a call about attempt `attempt` of `trial`
    /// counts only from the registered worker that holds that attempt's lease now. An attempt
    /// that has ended (its trial done or failed) is `Fence::Ended`: a repeat of a recorded result
    /// is acknowledged without change, anything else is refused by the caller.
    pub(super) fn fence(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt) -> Result<Fence, SchedError> {
        self.known(worker)?;
        let lease = self.store.trial_lease(trial)?.ok_or_else(|| SchedError::UnknownTrial(trial.clone()))?;
        if attempt.0 == 0 || attempt.0 != lease.attempt {
            return Err(SchedError::StaleAttempt { trial: trial.clone(), attempt: attempt.0, current: lease.attempt });
        }
        match lease.state {
            TrialState::Leased if lease.worker.as_deref() == Some(worker.as_str()) => Ok(Fence::Holds(lease)),
            TrialState::Leased => Err(SchedError::NotOwner { trial: trial.clone(), worker: worker.clone() }),
            TrialState::Cancelled => Err(SchedError::Cancelled(trial.clone())),
            TrialState::Pending => Err(SchedError::NotLeased { trial: trial.clone(), attempt: attempt.0 }),
            TrialState::Done | TrialState::Failed => Ok(Fence::Ended),
        }
    }

    /// The lease of `trial` when `worker` holds its attempt `attempt` now (`fence`); else the
    /// refusal that says why.
    pub(super) fn holds(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt) -> Result<TrialLease, SchedError> {
        match self.fence(worker, trial, attempt)? {
            Fence::Holds(lease) => Ok(lease),
            Fence::Ended => Err(SchedError::NotLeased { trial: trial.clone(), attempt: attempt.0 }),
        }
    }

    /// The budget of `trial` (None: no such trial), from the cache or the store.
    pub(super) fn budget(&mut self, trial: &TrialId) -> Result<Option<TrainBudget>, SchedError> {
        if let Some(b) = self.budgets.get(trial) {
            return Ok(Some(*b));
        }
        let budget = self.store.trial_budget(trial)?;
        if let Some(b) = budget {
            self.keep_budget(trial, b);
        }
        Ok(budget)
    }

    pub(super) fn keep_budget(&mut self, trial: &TrialId, budget: TrainBudget) {
        if self.budgets.len() >= BUDGETS_KEPT {
            self.budgets.clear();
        }
        self.budgets.insert(trial.clone(), budget);
    }

    /// Refuses a report of `trial` that `check` finds outside its budget.
    pub(super) fn within_budget(
        &mut self,
        trial: &TrialId,
        check: impl FnOnce(&TrainBudget) -> Result<(), cbsweep_common::OutOfBudget>,
    ) -> Result<(), SchedError> {
        match self.budget(trial)? {
            Some(b) => check(&b).map_err(|why| SchedError::OutOfBudget { trial: trial.clone(), why }),
            None => Err(SchedError::UnknownTrial(trial.clone())),
        }
    }
}
