//! What the scheduler reports of itself: the status of sweeps and workers (every trial row of
//! the sweeps asked about) and what /metrics reads (the in-memory counts only, no trial row).

use super::api::{MetricsReport, SchedError, StatusReport, SweepMetrics, SweepStatus, WorkerStatus};
use super::state::Scheduler;
use super::tally::SweepTally;
use crate::store;
use cbsweep_common::{SweepId, TrialState};
use std::collections::BTreeMap;

/// A worker seen within this long counts as live (status, /metrics).
const LIVE_WITHIN_MS: i64 = 60_000;

impl Scheduler {
    pub(super) fn status(&mut self, only: Option<SweepId>) -> Result<StatusReport, SchedError> {
        self.write_last_seen()?;
        let rows = match &only {
            Some(id) => vec![self.sweep_row(id)?],
            None => self.store.sweeps()?,
        };
        let mut sweeps = Vec::new();
        for row in rows {
            let trials = self.store.trials(&row.id)?;
            self.counters.trial_rows_read += trials.len() as u64;
            let mut counts: BTreeMap<TrialState, u32> = BTreeMap::new();
            for t in &trials {
                *counts.entry(t.state).or_default() += 1;
            }
            let conditions = cbsweep_results::tally(&trials);
            let open = counts.iter().filter(|(s, _)| !s.is_terminal()).map(|(_, n)| *n).sum::<u32>();
            let (per_min, eta) = pace(self.finished_at.get(&row.id), open);
            sweeps.push(SweepStatus {
                sweep: row.id.clone(),
                state: row.state,
                total: trials.len() as u32,
                counts: TrialState::ALL.iter().map(|s| (*s, counts.get(s).copied().unwrap_or(0))).collect(),
                conditions,
                trials_per_minute: per_min,
                eta_seconds: eta,
                resumes: self.store.resume_tally(&row.id)?,
            });
        }
        let workers = self
            .store
            .live_workers(LIVE_WITHIN_MS)?
            .into_iter()
            .map(|(id, hostname, device, leased, ago)| WorkerStatus { id, hostname, device, leased, last_seen_ms_ago: ago })
            .collect();
        Ok(StatusReport { sweeps, workers })
    }

    /// What /metrics reports, from memory: O(sweeps + workers), no trial row read.
    pub(super) fn metrics(&self) -> MetricsReport {
        let mut sweeps: Vec<(&SweepId, &SweepTally)> = self.tally.sweeps.iter().collect();
        sweeps.sort_by_key(|(id, t)| (t.created_ms, *id));
        let sweeps = sweeps
            .into_iter()
            .map(|(id, t)| {
                let open = TrialState::ALL.iter().filter(|s| !s.is_terminal()).map(|s| t.counts[*s as usize]).sum();
                SweepMetrics {
                    sweep: id.clone(),
                    counts: TrialState::ALL.iter().map(|s| (*s, t.counts[*s as usize])).collect(),
                    epochs_lost: t.epochs_lost,
                    trials_per_minute: pace(self.finished_at.get(id), open).0,
                }
            })
            .collect();
        let since = store::now_ms() - LIVE_WITHIN_MS;
        let workers_live = self.workers.values().filter(|s| s.last_seen_ms >= since).count() as u32;
        MetricsReport { sweeps, workers_live, counters: self.counters }
    }
}

/// A sweep's completions per minute this run and the seconds its `open` trials need at that
/// pace; NaN until two trials finished, or once none is open.
fn pace(finished_at: Option<&Vec<i64>>, open: u32) -> (f64, f64) {
    match finished_at {
        Some(times) if times.len() >= 2 && open > 0 => {
            let span = (times[times.len() - 1] - times[0]).max(1) as f64 / 60_000.0;
            let rate = (times.len() - 1) as f64 / span;
            (rate, f64::from(open) / rate * 60.0)
        }
        _ => (f64::NAN, f64::NAN),
    }
}
