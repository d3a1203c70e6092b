//! Trials' checkpoints in the store: the latest whole training state of each unfinished trial,
//! as its worker sent it, committed before the worker hears back; the epochs each attempt has
//! reported (so what an interruption loses is known after a restart too); and per sweep what
//! interruptions cost. The scheduler checks who may write (the lease's owner) before it calls
//! these.

use super::{ResumeTally, Store, StoreError, StoredCheckpoint, now_ms, sql};
use cbsweep_common::{Attempt, SweepId, TrialId};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// Stores `data` as the trial's latest checkpoint (attempt `attempt`, `epochs_done` epochs),
    /// unless the stored one has more epochs; true when stored.
    pub fn save_checkpoint(
        &mut self,
        id: &TrialId,
        attempt: Attempt,
        epochs_done: u32,
        sha256: &str,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO trial_checkpoints(trial_id, attempt, epochs_done, sha256, saved_ms, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(trial_id) DO UPDATE SET attempt = ?2, epochs_done = ?3, sha256 = ?4, saved_ms = ?5, data = ?6
             WHERE trial_checkpoints.epochs_done <= ?3",
            )?
            .execute(params![id.as_str(), attempt.0, epochs_done, sha256, now_ms(), data])?;
        Ok(n > 0)
    }

    /// The trial's latest checkpoint.
    pub fn checkpoint(&self, id: &TrialId) -> Result<Option<StoredCheckpoint>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT attempt, epochs_done, sha256, saved_ms, data FROM trial_checkpoints WHERE trial_id = ?1")?
            .query_row(params![id.as_str()], |r| {
                Ok(StoredCheckpoint { attempt: r.get(0)?, epochs_done: r.get(1)?, sha256: r.get(2)?, saved_ms: r.get(3)?, data: r.get(4)? })
            })
            .optional()?)
    }

    /// Notes the latest epoch attempt `attempt` of a leased trial reported.
    pub fn note_progress(&self, id: &TrialId, attempt: Attempt, epoch: u32) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql(
                "UPDATE trials SET progress_epoch = MAX(progress_epoch, ?3) WHERE trial_id = ?1 AND attempt = ?2 AND state = {leased}",
            ))?
            .execute(params![id.as_str(), attempt.0, epoch])?;
        Ok(())
    }

    /// What interruptions have cost `sweep` so far (see `ResumeTally`).
    pub fn resume_tally(&self, sweep: &SweepId) -> Result<ResumeTally, StoreError> {
        let (epochs_lost, resumes): (i64, i64) = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(epochs_lost), 0), COALESCE(SUM(resumes), 0) FROM trials WHERE sweep_id = ?1")?
            .query_row(params![sweep.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (oldest, without): (Option<i64>, i64) = self
            .conn
            .prepare_cached(sql(
                "SELECT MIN(c.saved_ms), COALESCE(SUM(c.trial_id IS NULL), 0) FROM trials t LEFT JOIN trial_checkpoints c ON c.trial_id = t.trial_id
                 WHERE t.sweep_id = ?1 AND t.state = {leased}",
            ))?
            .query_row(params![sweep.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(ResumeTally {
            epochs_lost: epochs_lost.max(0) as u64,
            resumes: resumes.max(0) as u32,
            oldest_checkpoint_ms: oldest,
            running_without_checkpoint: without.max(0) as u32,
        })
    }
}
