//! What the scheduler thread owns: the store, the in-memory counts, the workers' last-seen
//! times, the lease clock, the budgets' cache and the batch's pending events and scrapes, in
//! one `Scheduler`. Its methods live by job in the files beside this one (`batch.rs` the
//! thread, `fence.rs` the rules a report must pass, `trials.rs` and `sweeps.rs` the commands,
//! `report.rs` status and /metrics); this file uses none of them, they all use it.

use super::api::SchedError;
use super::api::{Counters, Event, MetricsReport, Reply, SchedulerOptions};
use super::clock::LeaseClock;
use super::tally::Tally;
use crate::store::{self, Store};
use cbsweep_common::{SweepId, TrainBudget, TrialId, WorkerId};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::broadcast;

pub(super) struct Scheduler {
    pub(super) store: Store,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) opts: SchedulerOptions,
    /// Completion times per sweep (`LeaseClock::elapsed_ms`), for throughput (not durable: a
    /// restart restarts the clock).
    pub(super) finished_at: BTreeMap<SweepId, Vec<i64>>,
    pub(super) counters: Counters,
    /// The trials' number per sweep and state and each sweep's epochs lost, kept as commands
    /// change them (what /metrics reports).
    pub(super) tally: Tally,
    /// /metrics requests of the batch being handled, answered once it is committed or undone.
    pub(super) scrapes: Vec<Reply<MetricsReport>>,
    /// Registered workers and when each was last seen: kept here and written to the store on
    /// each tick, not on every call (not durable beyond that; it only feeds the status view).
    pub(super) workers: HashMap<WorkerId, Seen>,
    /// Events of the batch being handled, sent once it is committed.
    pub(super) outbox: Vec<Event>,
    /// The clock leases expire by: monotonic, stopped while the state cannot be written.
    pub(super) clock: LeaseClock,
    /// Budgets of trials leased lately, to check their reports by (a cache of the store's).
    pub(super) budgets: HashMap<TrialId, TrainBudget>,
    /// Checkpoints the store off this thread while the scheduler lives.
    pub(super) _wal_merger: store::wal::WalMerger,
}

/// When a worker was last seen, and whether the store has that time.
pub(super) struct Seen {
    pub(super) last_seen_ms: i64,
    pub(super) written: bool,
}

impl Scheduler {
    /// Queues an event; it is sent once the batch that caused it is committed.
    pub(super) fn emit(&mut self, e: Event) {
        self.outbox.push(e);
    }

    /// Writes the last-seen times the store lacks (on each tick, and before a status).
    pub(super) fn write_last_seen(&mut self) -> Result<(), SchedError> {
        let changed: Vec<(&WorkerId, i64)> = self.workers.iter().filter(|(_, s)| !s.written).map(|(id, s)| (id, s.last_seen_ms)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.store.touch_workers(changed)?;
        self.workers.values_mut().for_each(|s| s.written = true);
        Ok(())
    }
}
