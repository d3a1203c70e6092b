//! The trials' number per sweep and state, and each sweep's epochs lost, kept in memory as the
//! commands change them (`Tally`), so that /metrics reads no trial row; a batch's changes are
//! logged and undone when its commit fails.

use crate::store::{Store, StoreError};
use cbsweep_common::{SweepId, TrialId, TrialState};
use std::collections::{BTreeMap, HashMap};

/// The trials' number per sweep and state, and each sweep's epochs lost, as the store has them,
/// kept up to date by the commands that change them, so that /metrics never reads trial rows
/// (tallying every row, as status does, took this thread about 0.5 s per scrape at 10^5
/// trials; four scrapers pushed heartbeats from 15 ms to 2 s). Read from the store at start.
/// A batch's changes are logged and undone when its commit fails, so the counts always match
/// what is committed.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) sweeps: BTreeMap<SweepId, SweepTally>,
    /// Epochs lost per trial, of the trials that lost any: a lease tells the trial's new total,
    /// and its sweep's sum moves by the difference.
    lost: HashMap<TrialId, u64>,
    /// The batch's changes, oldest first.
    changes: Vec<Change>,
    /// Counts to read again from the store after the next commit: a commit failed (SQLite rolls
    /// back a transaction itself on a full disk, and the batch's later statements then commit
    /// one by one, so undoing the log may not match the store), or a change did not add up.
    pub(super) reload: bool,
}

#[derive(Clone, Copy, Default)]
pub(super) struct SweepTally {
    pub(super) created_ms: i64,
    /// Indexed by `TrialState as usize`.
    pub(super) counts: [u32; TrialState::ALL.len()],
    pub(super) epochs_lost: u64,
}

/// One change to the tally, kept until its batch commits.
enum Change {
    /// A sweep first counted.
    Added(SweepId),
    /// `n` trials moved from one state to another (from None: inserted).
    Moved { sweep: SweepId, from: Option<TrialState>, to: TrialState, n: u32 },
    /// A trial's epochs lost went from `before` to `after`.
    Lost { sweep: SweepId, trial: TrialId, before: u64, after: u64 },
}

impl Tally {
    /// The store's counts: reads every trial row (at start, and after a failed commit).
    pub(super) fn load(store: &Store) -> Result<Tally, StoreError> {
        let mut t = Tally::default();
        for (sweep, created_ms, counts) in store.trial_counts()? {
            let s = t.sweeps.entry(sweep).or_default();
            s.created_ms = created_ms;
            for (state, n) in counts {
                s.counts[state as usize] = n;
            }
        }
        for (trial, sweep, lost) in store.epochs_lost_by_trial()? {
            t.sweeps.entry(sweep).or_default().epochs_lost += lost;
            t.lost.insert(trial, lost);
        }
        Ok(t)
    }

    /// How many trials it counts in all.
    pub(super) fn trials(&self) -> u64 {
        self.sweeps.values().flat_map(|s| s.counts).map(u64::from).sum()
    }

    pub(super) fn count(&self, sweep: &SweepId, state: TrialState) -> u32 {
        self.sweeps.get(sweep).map_or(0, |s| s.counts[state as usize])
    }

    fn sweep(&mut self, sweep: &SweepId) -> &mut SweepTally {
        if !self.sweeps.contains_key(sweep) {
            // a change to a sweep it never counted: its counts are off; read them again
            self.reload = true;
        }
        self.sweeps.entry(sweep.clone()).or_default()
    }

    /// Counts a sweep from now on (nothing when it already does).
    pub(super) fn add_sweep(&mut self, sweep: &SweepId, created_ms: i64) {
        if !self.sweeps.contains_key(sweep) {
            self.sweeps.insert(sweep.clone(), SweepTally { created_ms, ..SweepTally::default() });
            self.changes.push(Change::Added(sweep.clone()));
        }
    }

    pub(super) fn moved(&mut self, sweep: &SweepId, from: Option<TrialState>, to: TrialState, n: u32) {
        if n == 0 {
            return;
        }
        self.shift(sweep, from, Some(to), n);
        self.changes.push(Change::Moved { sweep: sweep.clone(), from, to, n });
    }

    fn shift(&mut self, sweep: &SweepId, from: Option<TrialState>, to: Option<TrialState>, n: u32) {
        let s = self.sweep(sweep);
        if let Some(from) = from {
            s.counts[from as usize] = s.counts[from as usize].saturating_sub(n);
        }
        if let Some(to) = to {
            s.counts[to as usize] += n;
        }
    }

    /// A trial's epochs lost now stand at `after` (what its lease wrote).
    pub(super) fn lost(&mut self, sweep: &SweepId, trial: &TrialId, after: u64) {
        let before = self.lost.get(trial).copied().unwrap_or(0);
        if before != after {
            self.set_lost(sweep, trial, before, after);
            self.changes.push(Change::Lost { sweep: sweep.clone(), trial: trial.clone(), before, after });
        }
    }

    fn set_lost(&mut self, sweep: &SweepId, trial: &TrialId, before: u64, after: u64) {
        let s = self.sweep(sweep);
        s.epochs_lost = (s.epochs_lost + after).saturating_sub(before);
        if after == 0 {
            self.lost.remove(trial);
        } else {
            self.lost.insert(trial.clone(), after);
        }
    }

    /// The batch committed: its changes stand.
    pub(super) fn commit(&mut self) {
        self.changes.clear();
    }

    /// The batch's commit failed: its changes are undone, newest first.
    pub(super) fn undo(&mut self) {
        while let Some(c) = self.changes.pop() {
            match c {
                Change::Added(sweep) => {
                    self.sweeps.remove(&sweep);
                }
                Change::Moved { sweep, from, to, n } => self.shift(&sweep, Some(to), from, n),
                Change::Lost { sweep, trial, before, after } => self.set_lost(&sweep, &trial, after, before),
            }
        }
        self.reload = true;
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;
    use cbsweep_common::{SweepId, TrialId, TrialState};

    #[test]
    fn a_failed_commit_leaves_the_counts_as_they_were_committed() {
        let (old, new) = (SweepId("old".into()), SweepId("new".into()));
        let mut t = Tally::default();
        t.add_sweep(&old, 1);
        t.moved(&old, None, TrialState::Pending, 5);
        t.moved(&old, Some(TrialState::Pending), TrialState::Leased, 2);
        t.lost(&old, &TrialId("a".into()), 3);
        t.commit();
        let counts = t.sweeps[&old].counts;
        // a batch that adds a sweep, moves trials and records lost epochs, then fails to commit
        t.add_sweep(&new, 2);
        t.moved(&new, None, TrialState::Pending, 4);
        t.moved(&old, Some(TrialState::Leased), TrialState::Done, 1);
        t.moved(&old, Some(TrialState::Pending), TrialState::Cancelled, 3);
        t.lost(&old, &TrialId("a".into()), 7);
        t.lost(&old, &TrialId("b".into()), 2);
        t.undo();
        assert_eq!(t.sweeps.keys().collect::<Vec<_>>(), [&old]);
        assert_eq!(t.sweeps[&old].counts, counts);
        assert_eq!(t.sweeps[&old].epochs_lost, 3);
        assert_eq!(t.lost.len(), 1);
        assert!(t.reload, "read again after the next commit, in case SQLite undid only part of it");
        assert_eq!(t.trials(), 5);
    }
}
