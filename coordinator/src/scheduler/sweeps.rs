//! The commands about whole sweeps: submit (new cells stored, a changed cell refused with what
//! changed), cancel, retry the failed, the stored row, and a sweep's end once none of its trials
//! is open.

use super::api::{Event, SchedError, SubmitOutcome};
use super::state::Scheduler;
use crate::store::{self, SweepRow};
use cbsweep_common::{SweepId, SweepSpec, SweepState, TrialId, TrialState};
use std::collections::{HashMap, HashSet};

impl Scheduler {
    pub(super) fn submit(&mut self, spec: SweepSpec, path: String) -> Result<SubmitOutcome, SchedError> {
        let existing = self.store.cells(&spec.id)?;
        let by_cell: HashMap<&str, (&TrialId, &cbsweep_common::TrialSpec)> =
            existing.iter().map(|(k, id, s)| (k.as_str(), (id, s))).collect();
        let mut diff = Vec::new();
        let mut new = Vec::new();
        let base = existing.len() as u32;
        for t in &spec.trials {
            match by_cell.get(t.cell_key().as_str()) {
                Some((id, _)) if **id == t.id() => {}
                Some((_, old)) => diff.push(describe_change(&t.cell_key(), old, t)),
                None => new.push((base + new.len() as u32, t.clone())),
            }
        }
        if !diff.is_empty() {
            return Err(SchedError::Conflict { sweep: spec.id.clone(), diff: diff.join("\n") });
        }
        let stored = self.store.sweep(&spec.id)?;
        let created_ms = stored.as_ref().map_or_else(store::now_ms, |s| s.created_ms);
        // A resubmission only adds cells: the stored ones its spec lacks stay, and the user is
        // told so; its [run] settings replace the stored ones (the row below), and it says which.
        let cells: HashSet<String> = spec.trials.iter().map(|t| t.cell_key()).collect();
        let resubmission = cbsweep_common::Resubmission {
            kept: existing.iter().filter(|(k, _, _)| !cells.contains(k)).count() as u32,
            run_changes: stored.as_ref().map_or_else(Vec::new, |s| spec.run.changes_from(&s.run_policy())),
        };
        let row = SweepRow {
            id: spec.id.clone(),
            description: spec.description.clone(),
            spec_toml: spec.resolved.clone(),
            spec_path: path,
            overrides: cbsweep_common::overrides_text(&spec.overrides),
            max_attempts: spec.run.max_attempts,
            pack_size: spec.run.pack_size,
            lease_seconds: spec.run.lease_seconds,
            state: SweepState::Running,
            created_ms,
            finished_ms: None,
            checkpoint_every: spec.run.checkpoint_every,
            checkpoint_seconds: spec.run.checkpoint_seconds,
        };
        self.store.upsert_sweep(&row, &new)?;
        self.tally.add_sweep(&spec.id, created_ms);
        self.tally.moved(&spec.id, None, TrialState::Pending, new.len() as u32);
        tracing::info!(sweep = %spec.id, total = existing.len() + new.len(), new = new.len(), "sweep submitted");
        let out = SubmitOutcome { sweep: spec.id.clone(), total: (existing.len() + new.len()) as u32, new: new.len() as u32, resubmission };
        self.check_finished(&spec.id)?;
        Ok(out)
    }

    /// The stored row of `sweep` (its spec text, for resume); refused when there is none.
    pub(super) fn sweep_row(&self, sweep: &SweepId) -> Result<SweepRow, SchedError> {
        self.store.sweep(sweep)?.ok_or_else(|| SchedError::UnknownSweep(sweep.clone()))
    }

    /// Marks a running sweep done once none of its trials is pending or leased.
    pub(super) fn check_finished(&mut self, sweep: &SweepId) -> Result<(), SchedError> {
        // open trials first: an index lookup that answers most calls
        if self.store.has_open_trials(sweep)? {
            return Ok(());
        }
        if self.store.sweep_state(sweep)? == Some(SweepState::Running) {
            self.store.set_sweep_state(sweep, SweepState::Done, Some(store::now_ms()))?;
            tracing::info!(sweep = %sweep, "sweep finished");
            self.emit(Event::SweepFinished { sweep: sweep.clone() });
        }
        Ok(())
    }

    pub(super) fn cancel(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.sweep_row(sweep)?;
        let (pending, leased) = (self.tally.count(sweep, TrialState::Pending), self.tally.count(sweep, TrialState::Leased));
        let n = self.store.cancel(sweep)?;
        self.tally.moved(sweep, Some(TrialState::Pending), TrialState::Cancelled, pending);
        self.tally.moved(sweep, Some(TrialState::Leased), TrialState::Cancelled, leased);
        self.tally.reload |= n != pending + leased;
        self.store.set_sweep_state(sweep, SweepState::Cancelled, Some(store::now_ms()))?;
        tracing::info!(sweep = %sweep, trials = n, "sweep cancelled");
        self.emit(Event::SweepFinished { sweep: sweep.clone() });
        Ok(n)
    }

    pub(super) fn retry_failed(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.sweep_row(sweep)?;
        let (failed, cancelled) = (self.tally.count(sweep, TrialState::Failed), self.tally.count(sweep, TrialState::Cancelled));
        let n = self.store.requeue_failed(sweep)?;
        self.tally.moved(sweep, Some(TrialState::Failed), TrialState::Pending, failed);
        self.tally.moved(sweep, Some(TrialState::Cancelled), TrialState::Pending, cancelled);
        self.tally.reload |= n != failed + cancelled;
        if n > 0 {
            self.store.set_sweep_state(sweep, SweepState::Running, None)?;
        }
        Ok(n)
    }
}

/// One line per changed field of a cell, for the refusal of a spec that changes a cell.
fn describe_change(cell: &str, old: &cbsweep_common::TrialSpec, new: &cbsweep_common::TrialSpec) -> String {
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    let mut lines = Vec::new();
    flatten_diff("", &a, &b, &mut lines);
    if lines.is_empty() {
        lines.push("  code version changed (cbsweep was upgraded): use a new sweep name".into());
    }
    format!("cell [{cell}]:\n{}", lines.join("\n"))
}

fn flatten_diff(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, va) in x {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten_diff(&key, va, y.get(k).unwrap_or(&serde_json::Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("  {prefix}: {a} -> {b}")),
        _ => {}
    }
}
