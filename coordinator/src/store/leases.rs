//! The trial queue in the store: leasing packs (sized by the worker's memory budget), renewing
//! and releasing leases, recording a finished or failed attempt, and reclaiming expired leases.
//! Each call is one transaction (a savepoint inside the scheduler's batch).

use super::{Leased, Store, StoreError, TrialLease, now_ms, parse_spec, parse_state, sql};
use cbsweep_common::memory;
use cbsweep_common::{Attempt, SweepId, TrainBudget, TrialId, TrialOutcome, TrialResult, TrialState, WorkerId};
use rusqlite::{OptionalExtension, params};
use std::num::NonZeroU64;

impl Store {
    /// Leases up to `max` pending trials of one pack key to `worker`, oldest cell first, from
    /// running sweeps, no more than fit in `memory_budget` (at least one). Each leased trial's
    /// attempt (the fencing token) goes up by one. `now`: the lease clock's time (the
    /// scheduler's `LeaseClock`, not the wall clock); each lease expires a term after it.
    pub fn lease(&mut self, worker: &WorkerId, max: u32, memory_budget: Option<NonZeroU64>, now: i64) -> Result<Vec<Leased>, StoreError> {
        let tx = self.conn.savepoint()?;
        // Oldest running sweep first, then its oldest pending cell: each step an index lookup.
        let running: Vec<(String, u32, u32, (u32, u32))> = {
            let mut stmt = tx.prepare_cached(sql(
                "SELECT sweep_id, pack_size, lease_seconds, checkpoint_every, checkpoint_seconds FROM sweeps WHERE state = {sweep_running}
                 ORDER BY created_ms",
            ))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, (r.get(3)?, r.get(4)?))))?.collect::<Result<Vec<_>, _>>()?
        };
        let mut head = None;
        for (sweep, pack_size, lease_seconds, cadence) in running {
            let key: Option<String> = tx
                .prepare_cached(sql("SELECT pack_key FROM trials WHERE state = {pending} AND sweep_id = ?1 ORDER BY cell_index LIMIT 1"))?
                .query_row(params![sweep], |r| r.get(0))
                .optional()?;
            if let Some(key) = key {
                head = Some((sweep, key, pack_size, lease_seconds, cadence));
                break;
            }
        }
        let Some((sweep, pack_key, pack_size, lease_seconds, cadence)) = head else {
            tx.commit()?;
            return Ok(Vec::new());
        };
        let limit = max.min(pack_size).max(1);
        let expires = now + i64::from(lease_seconds) * 1000;
        let mut out = Vec::new();
        {
            let mut pick = tx.prepare_cached(sql(
                "SELECT trial_id, attempt, spec_json FROM trials WHERE state = {pending} AND sweep_id = ?1 AND pack_key = ?2
                 ORDER BY cell_index LIMIT ?3",
            ))?;
            let mut picked = pick
                .query_map(params![sweep, pack_key, limit], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            // one pack key, one shape and budget: the head trial's spec sizes the pack
            if let (Some(budget), Some((id, _, json))) = (memory_budget, picked.first()) {
                let spec = parse_spec(json)?;
                let fit = memory::trials_within(budget.get(), &spec);
                if fit == 0 {
                    let trial_bytes = memory::trial_memory_bytes(&spec);
                    tracing::warn!(trial_id = %id, trial_bytes, budget_bytes = budget.get(), "trial exceeds the worker's memory budget; leasing it alone");
                }
                picked.truncate(usize::try_from(fit).unwrap_or(usize::MAX).max(1));
            }
            // An attempt resumes from the trial's checkpoint, if it has one: the epochs an
            // earlier attempt reported past it are lost (trained again).
            let mut upd =
                tx.prepare_cached(sql("UPDATE trials SET state = {leased}, attempt = ?2, worker_id = ?3, lease_expires_ms = ?4,
                   epochs_lost = epochs_lost + MAX(progress_epoch - ?5, 0), progress_epoch = ?5, resumes = resumes + ?6
                 WHERE trial_id = ?1"))?;
            let mut saved = tx.prepare_cached("SELECT epochs_done, length(data) FROM trial_checkpoints WHERE trial_id = ?1")?;
            for (id, attempt, json) in picked {
                let resume: Option<(u32, u64)> =
                    saved.query_row(params![id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))).optional()?;
                let from = resume.map_or(0, |(epochs, _)| epochs);
                upd.execute(params![id, attempt + 1, worker.as_str(), expires, from, u32::from(resume.is_some())])?;
                let (id, attempt, spec) = (TrialId(id), Attempt(attempt + 1), parse_spec(&json)?);
                out.push(Leased { id, attempt, spec, expires_ms: expires, resume, cadence });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Extends the leases `worker` still holds among `held` to a term after `now` (the lease
    /// clock's time); returns the ones it no longer holds.
    pub fn renew(&mut self, worker: &WorkerId, held: &[(TrialId, Attempt)], now: i64) -> Result<Vec<TrialId>, StoreError> {
        let mut revoked = Vec::new();
        if held.is_empty() {
            return Ok(revoked);
        }
        let tx = self.conn.savepoint()?;
        {
            let mut upd = tx.prepare_cached(sql(
                "UPDATE trials SET lease_expires_ms = ?4 + 1000 * (SELECT lease_seconds FROM sweeps s WHERE s.sweep_id = trials.sweep_id)
                 WHERE trial_id = ?1 AND worker_id = ?2 AND attempt = ?3 AND state = {leased}",
            ))?;
            for (id, attempt) in held {
                if upd.execute(params![id.as_str(), worker.as_str(), attempt.0, now])? == 0 {
                    revoked.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(revoked)
    }

    /// A trial's budget (its spec's), for checking what its worker reports.
    pub fn trial_budget(&self, id: &TrialId) -> Result<Option<TrainBudget>, StoreError> {
        let json: Option<String> = self
            .conn
            .prepare_cached("SELECT spec_json FROM trials WHERE trial_id = ?1")?
            .query_row(params![id.as_str()], |r| r.get(0))
            .optional()?;
        json.map(|j| parse_spec(&j).map(|s| s.budget)).transpose()
    }

    /// The lease state of a trial, for deciding whether a completion is current.
    pub fn trial_lease(&self, id: &TrialId) -> Result<Option<TrialLease>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT t.state, t.attempt, t.worker_id, t.sweep_id, s.max_attempts, t.cell_key, t.attempt - t.uncounted
                 FROM trials t JOIN sweeps s ON s.sweep_id = t.sweep_id WHERE t.trial_id = ?1",
            )?
            .query_row(params![id.as_str()], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, Option<String>>(2)?),
                    (r.get::<_, String>(3)?, r.get::<_, u32>(4)?, r.get::<_, String>(5)?, r.get::<_, u32>(6)?),
                ))
            })
            .optional()?;
        row.map(|((state, attempt, worker), (sweep, max_attempts, cell, counted))| {
            Ok(TrialLease { state: parse_state(&state)?, attempt, counted, worker, sweep: SweepId(sweep), max_attempts, cell })
        })
        .transpose()
    }

    /// Records a finished attempt (completed or diverged): the trial row and its whole curve,
    /// in one transaction.
    pub fn record_done(&mut self, id: &TrialId, result: &TrialResult) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        tx.prepare_cached("DELETE FROM curves WHERE trial_id = ?1")?.execute(params![id.as_str()])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO curves(trial_id, epoch, level, train_loss, test_accuracy, solved, grad_norm, core_learning, cb_learning)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in &result.curve {
                ins.execute(params![
                    id.as_str(),
                    e.epoch,
                    e.level,
                    e.train_loss,
                    e.test_accuracy,
                    e.solved,
                    e.grad_norm,
                    e.core_learning,
                    e.cb_learning
                ])?;
            }
        }
        tx.prepare_cached("DELETE FROM analyses WHERE trial_id = ?1")?.execute(params![id.as_str()])?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO analyses(trial_id, level, epoch, population, metric, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for a in &result.analyses {
                ins.execute(params![id.as_str(), a.level, a.epoch, a.population, a.metric, a.value])?;
            }
        }
        tx.prepare_cached("DELETE FROM trial_checkpoints WHERE trial_id = ?1")?.execute(params![id.as_str()])?;
        tx.prepare_cached(sql(
            "UPDATE trials SET state = {done}, outcome = ?2, max_level = ?3, final_level = ?4, epochs_run = ?5, wall_time_ms = ?6,
               device = ?7, pack_size = ?8, completed_ms = ?9, lease_expires_ms = NULL, last_error = NULL WHERE trial_id = ?1",
        ))?
        .execute(params![
            id.as_str(),
            result.outcome.status(),
            result.max_level(),
            result.final_level(),
            result.curve.len() as u32,
            result.wall_time_ms as i64,
            result.device,
            result.pack_size,
            now_ms()
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Records a failed attempt: back to the queue, or failed for good when out of attempts.
    pub fn record_failure(&self, id: &TrialId, error: &str, terminal: bool) -> Result<(), StoreError> {
        let state = if terminal { TrialState::Failed } else { TrialState::Pending };
        self.conn
            .prepare_cached(
                "UPDATE trials SET state = ?2, last_error = ?3, lease_expires_ms = NULL,
                   outcome = CASE WHEN ?5 THEN ?6 ELSE outcome END,
                   completed_ms = CASE WHEN ?5 THEN ?4 ELSE completed_ms END
                 WHERE trial_id = ?1",
            )?
            .execute(params![id.as_str(), state.as_str(), error, now_ms(), terminal, TrialOutcome::Failed(String::new()).status()])?;
        Ok(())
    }

    /// Hands leases back unfinished (worker shutdown): the trials are pending again and the
    /// attempt does not count against max_attempts.
    pub fn release(&mut self, worker: &WorkerId, ids: &[TrialId]) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        let mut n = 0;
        {
            // The attempt number stays (a fencing token only grows: the handed-back attempt's
            // late result stays stale); the attempt just does not count toward max_attempts.
            let mut upd = tx
                .prepare_cached(sql("UPDATE trials SET state = {pending}, uncounted = uncounted + 1, lease_expires_ms = NULL
                 WHERE trial_id = ?1 AND worker_id = ?2 AND state = {leased}"))?;
            for id in ids {
                n += upd.execute(params![id.as_str(), worker.as_str()])? as u32;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Leases past their expiry by `now`, the lease clock's time: (trial, attempt, the attempts
    /// that count, max_attempts).
    pub fn expired(&self, now: i64) -> Result<Vec<(TrialId, u32, u32, u32)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql(
            "SELECT t.trial_id, t.attempt, t.attempt - t.uncounted, s.max_attempts FROM trials t JOIN sweeps s ON s.sweep_id = t.sweep_id
             WHERE t.state = {leased} AND t.lease_expires_ms < ?1",
        ))?;
        let rows =
            stmt.query_map(params![now], |r| Ok((TrialId(r.get(0)?), r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every held lease gets a whole term from `now`, the time of a lease clock that has just
    /// started: the expiries stored by an earlier run are on that run's clock, and the time the
    /// coordinator was away counts against no lease (its workers renew or hand back as before).
    pub fn restart_lease_terms(&self, now: i64) -> Result<u32, StoreError> {
        Ok(self.conn.execute(
            sql("UPDATE trials SET lease_expires_ms = ?1 + 1000 * (SELECT lease_seconds FROM sweeps s WHERE s.sweep_id = trials.sweep_id)
                 WHERE state = {leased}"),
            params![now],
        )? as u32)
    }

    /// Every held lease that would expire before `at` (the lease clock's time) expires then
    /// instead: after an outage of the state, time for the workers to call again.
    pub fn extend_leases_to(&self, at: i64) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .execute(sql("UPDATE trials SET lease_expires_ms = ?1 WHERE state = {leased} AND lease_expires_ms < ?1"), params![at])?
            as u32)
    }

    /// Every lease, whatever its expiry, goes back to the queue: for an embedded coordinator
    /// restarting after its own local workers died with it.
    pub fn reclaim_all_leases(&self) -> Result<u32, StoreError> {
        Ok(self.conn.execute(sql("UPDATE trials SET state = {pending}, lease_expires_ms = NULL WHERE state = {leased}"), [])? as u32)
    }
}
