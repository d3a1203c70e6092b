//! What the results read from the store: a sweep's trial rows, curves and checkpoint analyses,
//! in grid order (`export.rs` serves them as a `cbsweep_results::ResultsSource`).

use super::{Store, StoreError, parse_spec, parse_state, sql};
use cbsweep_common::{AnalysisRecord, EpochRecord, SweepId, TrialId};
use cbsweep_results::TrialRow;
use rusqlite::params;

impl Store {
    /// All trials of a sweep in grid order.
    pub fn trials(&self, sweep: &SweepId) -> Result<Vec<TrialRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT trial_id, sweep_id, cell_index, condition, spec_json, state, attempt, worker_id, last_error, outcome, max_level,
                    final_level, epochs_run, wall_time_ms, device, pack_size, completed_ms, resumes, epochs_lost
             FROM trials WHERE sweep_id = ?1 ORDER BY cell_index",
        )?;
        let raw = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ),
                    (r.get::<_, u32>(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?),
                    (r.get(12)?, r.get::<_, Option<i64>>(13)?, r.get(14)?, r.get(15)?, r.get(16)?, r.get(17)?, r.get(18)?),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raw.into_iter()
            .map(
                |(
                    (id, sweep, cell_index, condition, json, state),
                    (attempt, worker, last_error, outcome, max_level, final_level),
                    (epochs_run, wall, device, pack_size, completed_ms, resumes, epochs_lost),
                )| {
                    Ok(TrialRow {
                        id: TrialId(id),
                        sweep: SweepId(sweep),
                        cell_index,
                        condition,
                        spec: parse_spec(&json)?,
                        state: parse_state(&state)?,
                        attempt,
                        worker,
                        last_error,
                        outcome,
                        max_level,
                        final_level,
                        epochs_run,
                        wall_time_ms: wall.map(|w| w as u64),
                        device,
                        pack_size,
                        completed_ms,
                        resumes,
                        epochs_lost,
                    })
                },
            )
            .collect()
    }

    /// Curve rows of a sweep's finished trials, ordered by trial and epoch.
    pub fn curves(&self, sweep: &SweepId) -> Result<Vec<(TrialId, EpochRecord)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            sql("SELECT c.trial_id, c.epoch, c.level, c.train_loss, c.test_accuracy, c.solved, c.grad_norm, c.core_learning, c.cb_learning
             FROM curves c JOIN trials t ON t.trial_id = c.trial_id WHERE t.sweep_id = ?1 AND t.state = {done} ORDER BY t.cell_index, c.epoch"),
        )?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    TrialId(r.get(0)?),
                    EpochRecord {
                        epoch: r.get(1)?,
                        level: r.get(2)?,
                        train_loss: r.get(3)?,
                        test_accuracy: r.get(4)?,
                        solved: r.get(5)?,
                        grad_norm: r.get(6)?,
                        core_learning: r.get(7)?,
                        cb_learning: r.get(8)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Checkpoint analyses of a sweep's finished trials.
    pub fn analyses(&self, sweep: &SweepId) -> Result<Vec<(TrialId, AnalysisRecord)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql("SELECT a.trial_id, a.level, a.epoch, a.population, a.metric, a.value
             FROM analyses a JOIN trials t ON t.trial_id = a.trial_id WHERE t.sweep_id = ?1 AND t.state = {done}
             ORDER BY t.cell_index, a.level, a.population, a.metric"))?;
        let rows = stmt
            .query_map(params![sweep.as_str()], |r| {
                Ok((
                    TrialId(r.get(0)?),
                    AnalysisRecord { level: r.get(1)?, epoch: r.get(2)?, population: r.get(3)?, metric: r.get(4)?, value: r.get(5)? },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
