//! Sweeps and workers in the store: a sweep's row (its validated spec, overrides and state),
//! its cells, its state changes (done, cancelled, failed trials queued again), the counts the
//! scheduler starts its own from, and the workers' registrations and last-seen times.

use super::{LiveWorker, Store, StoreError, SweepRow, now_ms, parse_spec, parse_state, sql};
use cbsweep_common::{SweepId, SweepState, TrialId, TrialSpec, TrialState, WorkerId};
use rusqlite::{OptionalExtension, params};

/// A sweep, its creation time, and its trials' number per state.
type SweepCounts = (SweepId, i64, Vec<(TrialState, u32)>);

impl Store {
    pub fn sweep(&self, id: &SweepId) -> Result<Option<SweepRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sweep_id, description, spec_toml, spec_path, overrides, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms, checkpoint_every, checkpoint_seconds FROM sweeps WHERE sweep_id = ?1",
                params![id.as_str()],
                sweep_row,
            )
            .optional()?)
    }

    pub fn sweeps(&self) -> Result<Vec<SweepRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sweep_id, description, spec_toml, spec_path, overrides, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms, checkpoint_every, checkpoint_seconds FROM sweeps ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], sweep_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Cell keys and trial ids of a sweep's existing trials.
    pub fn cells(&self, sweep: &SweepId) -> Result<Vec<(String, TrialId, TrialSpec)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT cell_key, trial_id, spec_json FROM trials WHERE sweep_id = ?1")?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(k, id, json)| Ok((k, TrialId(id), parse_spec(&json)?))).collect()
    }

    /// Creates or updates a sweep and inserts the given new trials, in one transaction.
    pub fn upsert_sweep(&mut self, row: &SweepRow, new_trials: &[(u32, TrialSpec)]) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        tx.execute(
            "INSERT INTO sweeps(sweep_id, description, spec_toml, spec_path, max_attempts, pack_size, lease_seconds, state, created_ms, finished_ms,
               overrides, checkpoint_every, checkpoint_seconds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, ?11, ?12)
             ON CONFLICT(sweep_id) DO UPDATE SET description = ?2, spec_toml = ?3, spec_path = ?4, max_attempts = ?5,
               pack_size = ?6, lease_seconds = ?7, state = ?8, finished_ms = NULL, overrides = ?10, checkpoint_every = ?11,
               checkpoint_seconds = ?12",
            params![
                row.id.as_str(),
                row.description,
                row.spec_toml,
                row.spec_path,
                row.max_attempts,
                row.pack_size,
                row.lease_seconds,
                row.state.as_str(),
                row.created_ms,
                row.overrides,
                row.checkpoint_every,
                row.checkpoint_seconds
            ],
        )?;
        {
            let mut ins = tx.prepare_cached(sql(
                "INSERT INTO trials(trial_id, sweep_id, cell_index, cell_key, condition, pack_key, spec_json, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {pending})",
            ))?;
            for (index, t) in new_trials {
                let json = serde_json::to_string(t).map_err(|e| StoreError::Corrupt { what: "trial spec", detail: e.to_string() })?;
                ins.execute(params![t.id().as_str(), row.id.as_str(), index, t.cell_key(), t.condition(), t.pack_key().0, json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every sweep, oldest first, with its creation time and how many of its trials are in each
    /// state (states without trials left out). Reads every trial row: the scheduler calls it
    /// once at start and keeps the counts itself from then on.
    pub fn trial_counts(&self) -> Result<Vec<SweepCounts>, StoreError> {
        let mut out: Vec<SweepCounts> = {
            let mut stmt = self.conn.prepare_cached("SELECT sweep_id, created_ms FROM sweeps ORDER BY created_ms")?;
            stmt.query_map([], |r| Ok((SweepId(r.get(0)?), r.get(1)?, Vec::new())))?.collect::<Result<_, _>>()?
        };
        let mut stmt = self.conn.prepare_cached("SELECT sweep_id, state, COUNT(*) FROM trials GROUP BY sweep_id, state")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        for (sweep, state, n) in rows {
            let state = parse_state(&state)?;
            if let Some((_, _, counts)) = out.iter_mut().find(|(id, _, _)| id.as_str() == sweep) {
                counts.push((state, n));
            }
        }
        Ok(out)
    }

    /// The trials that have lost epochs to interruptions, with their sweep and how many. Reads
    /// every trial row (once, at the scheduler's start).
    pub fn epochs_lost_by_trial(&self) -> Result<Vec<(TrialId, SweepId, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT trial_id, sweep_id, epochs_lost FROM trials WHERE epochs_lost > 0")?;
        let rows = stmt
            .query_map([], |r| Ok((TrialId(r.get(0)?), SweepId(r.get(1)?), r.get::<_, i64>(2)?.max(0) as u64)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A trial's epochs lost so far (a key lookup; 0 for an unknown trial).
    pub fn trial_epochs_lost(&self, id: &TrialId) -> Result<u64, StoreError> {
        let lost: Option<i64> = self
            .conn
            .prepare_cached("SELECT epochs_lost FROM trials WHERE trial_id = ?1")?
            .query_row(params![id.as_str()], |r| r.get(0))
            .optional()?;
        Ok(lost.unwrap_or(0).max(0) as u64)
    }

    pub fn set_sweep_state(&self, sweep: &SweepId, state: SweepState, finished: Option<i64>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE sweeps SET state = ?2, finished_ms = ?3 WHERE sweep_id = ?1",
            params![sweep.as_str(), state.as_str(), finished],
        )?;
        Ok(())
    }

    /// A sweep's state alone (its row without the spec text).
    pub fn sweep_state(&self, sweep: &SweepId) -> Result<Option<SweepState>, StoreError> {
        let state: Option<String> = self
            .conn
            .prepare_cached("SELECT state FROM sweeps WHERE sweep_id = ?1")?
            .query_row(params![sweep.as_str()], |r| r.get(0))
            .optional()?;
        state.map(|s| s.parse().map_err(|detail| StoreError::Corrupt { what: "sweep state", detail })).transpose()
    }

    pub fn register_worker(&self, id: &WorkerId, hostname: &str, device: &str, pid: u32) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO workers(worker_id, hostname, device, pid, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT(worker_id) DO UPDATE SET last_seen_ms = ?5",
            params![id.as_str(), hostname, device, pid, now],
        )?;
        Ok(())
    }

    /// Whether any sweep is running (else a worker that finds no work may exit).
    pub fn has_running_sweeps(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(sql("SELECT EXISTS(SELECT 1 FROM sweeps WHERE state = {sweep_running})"))?
            .query_row([], |r| r.get(0))?)
    }

    /// Every registered worker with the time it was last seen.
    pub fn workers(&self) -> Result<Vec<(WorkerId, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT worker_id, last_seen_ms FROM workers")?;
        let rows = stmt.query_map([], |r| Ok((WorkerId(r.get(0)?), r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records when workers were last seen, in one transaction (the scheduler keeps these times
    /// in memory and writes them now and then, not on every call).
    pub fn touch_workers<'a>(&mut self, seen: impl IntoIterator<Item = (&'a WorkerId, i64)>) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        {
            let mut upd = tx.prepare_cached("UPDATE workers SET last_seen_ms = ?2 WHERE worker_id = ?1")?;
            for (id, ms) in seen {
                upd.execute(params![id.as_str(), ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Workers seen in the last `within_ms`, with the number of trials each holds.
    pub fn live_workers(&self, within_ms: i64) -> Result<Vec<LiveWorker>, StoreError> {
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(sql("SELECT w.worker_id, w.hostname, w.device, w.last_seen_ms,
                    (SELECT COUNT(*) FROM trials t WHERE t.worker_id = w.worker_id AND t.state = {leased})
             FROM workers w WHERE w.last_seen_ms >= ?1 ORDER BY w.registered_ms"))?;
        let rows = stmt
            .query_map(params![now - within_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?, now - r.get::<_, i64>(3)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Whether any trial of the sweep is still pending or leased (an index lookup).
    pub fn has_open_trials(&self, sweep: &SweepId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(sql("SELECT EXISTS(SELECT 1 FROM trials WHERE state = {pending} AND sweep_id = ?1)
                     OR EXISTS(SELECT 1 FROM trials WHERE state = {leased} AND sweep_id = ?1)"))?
            .query_row(params![sweep.as_str()], |r| r.get(0))?)
    }

    /// Sets every non-terminal trial of a sweep to cancelled.
    pub fn cancel(&self, sweep: &SweepId) -> Result<u32, StoreError> {
        Ok(self.conn.execute(
            sql("UPDATE trials SET state = {cancelled}, lease_expires_ms = NULL WHERE sweep_id = ?1 AND state IN ({pending}, {leased})"),
            params![sweep.as_str()],
        )? as u32)
    }

    /// Failed and cancelled trials of a sweep go back to the queue with fresh attempts.
    pub fn requeue_failed(&self, sweep: &SweepId) -> Result<u32, StoreError> {
        Ok(self.conn.execute(
            sql("UPDATE trials SET state = {pending}, uncounted = attempt, outcome = NULL, completed_ms = NULL WHERE sweep_id = ?1 AND state IN ({failed}, {cancelled})"),
            params![sweep.as_str()],
        )? as u32)
    }
}

fn sweep_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SweepRow> {
    Ok(SweepRow {
        id: SweepId(r.get(0)?),
        description: r.get(1)?,
        spec_toml: r.get(2)?,
        spec_path: r.get(3)?,
        overrides: r.get(4)?,
        max_attempts: r.get(5)?,
        pack_size: r.get(6)?,
        lease_seconds: r.get(7)?,
        state: r.get::<_, String>(8)?.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, format!("sweep state: {e}").into())
        })?,
        created_ms: r.get(9)?,
        finished_ms: r.get(10)?,
        checkpoint_every: r.get(11)?,
        checkpoint_seconds: r.get(12)?,
    })
}
