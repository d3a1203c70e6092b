//! The scheduler thread: it takes commands from a channel, carries out those of a batch in one
//! transaction, answers them and sends their events once that transaction is committed, and on
//! every tick expires leases and writes the workers' last-seen times. It stops the lease clock
//! while the state cannot be written and runs it again once it can.

use super::api::{Counters, Event, MetricsReport, Reply, SchedError, SchedulerOptions};
use super::clock::LeaseClock;
use super::state::{Scheduler, Seen};
use super::tally::Tally;
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// A command: what the scheduler thread is to do, run on it, and the reply it sends once the
/// batch is committed (`answer`). `SchedulerHandle`'s methods make them.
pub(super) type Command = Box<dyn FnOnce(&mut Scheduler) -> Answer + Send>;

/// Sends a command's reply once its batch is committed; given the commit's error if it failed.
/// True: the command failed on the state's disk (full, or an I/O error), which stops the lease
/// clock.
pub(super) type Answer = Box<dyn FnOnce(Option<&StoreError>) -> bool>;

/// Most commands one transaction holds.
const MAX_BATCH: usize = 64;

/// How often committed pages move from the WAL into the database file (on another thread):
/// often, so that each checkpoint's fsync is short. Under load a commit's writes can wait for
/// that fsync (the file system's journal): at 4,000 trials/s the lease bench's p99 was 3.8-12.6
/// ms (median 5.8, 11 runs) with every 5 ms against 8.4-18.2 ms (median 9.3, 5 runs) with every
/// 20 ms, and its longest wait 11-57 ms against 52-78 ms. Under sustained load the WAL does not
/// start over (a commit lands during nearly every checkpoint, and SQLite restarts the log only
/// for a writer that finds it wholly copied): it grew to about 40,000 frames in the 4 s of the
/// bench's phase at 2,500 trials/s, and starts over at the next pause. Forcing the restart
/// (`wal_checkpoint(RESTART)` once it held 4,096 frames) blocked the writer 5-20 ms each time
/// (p99 23-26 ms against 4.6-6.1 ms, 2 runs each); leaving checkpoints to the writer's backstop
/// gave p99 20-27 ms (2 runs).
const WAL_MERGE_EVERY: Duration = Duration::from_millis(5);

/// Sends `result` on `reply` once the batch is committed: a command's usual answer.
pub(super) fn answer<T: 'static>(reply: Reply<T>, result: Result<T, SchedError>) -> Answer {
    Box::new(move |failed: Option<&StoreError>| {
        let result = match failed {
            Some(e) if result.is_ok() => Err(SchedError::Store(StoreError::Commit { detail: e.to_string(), retryable: e.retryable() })),
            _ => result,
        };
        let disk = matches!(&result, Err(SchedError::Store(e)) if e.retryable());
        let _ = reply.send(result);
        disk
    })
}

/// Opens the store in `state_dir` and starts the scheduler thread; returns its command channel
/// and its event channel.
pub(super) fn spawn(
    state_dir: &std::path::Path,
    opts: SchedulerOptions,
) -> Result<(mpsc::Sender<Command>, broadcast::Sender<Event>), SchedError> {
    let store = Store::open(state_dir)?;
    if opts.reclaim_leases_at_start {
        let n = store.reclaim_all_leases()?;
        if n > 0 {
            tracing::info!(trials = n, "reclaimed leases of a previous run");
        }
    }
    let clock = LeaseClock::start();
    let held = store.restart_lease_terms(clock.now_ms())?;
    if held > 0 {
        tracing::info!(trials = held, "leases of a previous run held: each has a whole term to be renewed or handed back");
    }
    let (tx, rx) = mpsc::channel();
    let (events, _) = broadcast::channel(4096);
    let workers = store.workers()?.into_iter().map(|(id, last_seen_ms)| (id, Seen { last_seen_ms, written: true })).collect();
    let wal_merger = store.merge_wal_in_background(WAL_MERGE_EVERY)?;
    let tally = Tally::load(&store)?;
    let counters = Counters { trial_rows_read: tally.trials(), ..Counters::default() };
    let mut sched = Scheduler {
        store,
        events: events.clone(),
        opts: opts.clone(),
        finished_at: BTreeMap::new(),
        counters,
        tally,
        scrapes: Vec::new(),
        workers,
        outbox: Vec::new(),
        clock,
        budgets: HashMap::new(),
        _wal_merger: wal_merger,
    };
    std::thread::Builder::new()
        .name("cbsweep-scheduler".into())
        .spawn(move || sched.run(rx))
        .map_err(|e| SchedError::Store(StoreError::Corrupt { what: "scheduler thread", detail: e.to_string() }))?;
    Ok((tx, events))
}

impl Scheduler {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let mut next_tick = Instant::now() + self.opts.tick;
        loop {
            let first = match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.batch(None, &rx, true);
                    return;
                }
            };
            // once per tick, not per command: lease expiry and the workers' last-seen times
            let tick = Instant::now() >= next_tick;
            self.batch(first, &rx, tick);
            if tick {
                next_tick = Instant::now() + self.opts.tick;
            }
        }
    }

    /// Handles `first` and the commands queued behind it (up to `MAX_BATCH`), and the tick's
    /// work when `tick`, in one transaction; then answers them and sends their events, so that
    /// nothing a reply or an event tells is uncommitted. Under load one commit serves many
    /// commands; alone, a command waits for no other.
    fn batch(&mut self, first: Option<Command>, rx: &mpsc::Receiver<Command>, tick: bool) {
        let changes_before = self.store.total_changes();
        // without a batch transaction each call commits its own changes, as it would alone
        let grouped = match self.store.begin_batch() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a transaction; committing command by command");
                false
            }
        };
        let mut answers = Vec::new();
        let mut next = first;
        while let Some(cmd) = next {
            answers.push(cmd(self));
            next = if answers.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
        }
        let mut disk_failed = false;
        if tick {
            if let Err(e) = self.expire_leases(self.clock.now_ms()) {
                disk_failed |= matches!(&e, SchedError::Store(e) if e.retryable());
                tracing::error!(error = %e, "lease expiry check failed");
            }
            if let Err(e) = self.write_last_seen() {
                disk_failed |= matches!(&e, SchedError::Store(e) if e.retryable());
                tracing::error!(error = %e, "writing workers' last-seen times failed");
            }
        }
        let committed = if grouped { self.store.commit_batch() } else { Ok(()) };
        let events = std::mem::take(&mut self.outbox);
        if let Err(e) = &committed {
            if e.retryable() {
                tracing::error!(error = %e, commands = answers.len(), state = %self.store.path().display(),
                    "commit failed; the batch is undone and its callers retry: is the state's disk full? free space there");
            } else {
                tracing::error!(error = %e, commands = answers.len(), "commit failed; the batch is undone");
            }
            self.store.rollback_batch();
            self.workers.values_mut().for_each(|s| s.written = false);
            self.tally.undo();
        } else {
            self.tally.commit();
            if self.tally.reload {
                self.reload_tally();
            }
        }
        if !self.scrapes.is_empty() {
            let report = self.metrics();
            for reply in self.scrapes.drain(..) {
                let _ = reply.send(Ok(report.clone()));
            }
        }
        for answer in answers {
            disk_failed |= answer(committed.as_ref().err());
        }
        if committed.is_ok() {
            for e in events {
                let _ = self.events.send(e);
            }
        }
        self.run_lease_clock(committed.is_err() || disk_failed, changes_before);
    }

    /// Stops the lease clock once a write of the state fails, and runs it again once a batch
    /// that wrote something has committed: while the state cannot be written no worker can
    /// renew a lease, so that time counts against none (each lease keeps the rest of its term).
    fn run_lease_clock(&mut self, failed: bool, changes_before: u64) {
        if failed {
            if !self.clock.stopped() {
                tracing::warn!("the state cannot be written: leases stand still until it can (no worker loses one to this outage)");
            }
            self.clock.stop();
        } else if self.clock.stopped()
            && self.store.total_changes() > changes_before
            && let Some(d) = self.clock.resume()
        {
            // a worker may be waiting out its backoff after the outage (at most the retry
            // policy's longest wait): time to call again
            let grace = i64::try_from((self.opts.heartbeat + cbsweep_common::retry::MAX).as_millis()).unwrap_or(i64::MAX);
            let extended = self.store.extend_leases_to(self.clock.now_ms().saturating_add(grace));
            tracing::info!(stood_still_ms = d.as_millis() as u64, extended = ?extended.ok(),
                "the state is written again; leases run on from where they stood");
        }
    }

    /// Reads the counts again from the store (every trial row), once a commit has succeeded
    /// after one that failed.
    fn reload_tally(&mut self) {
        match Tally::load(&self.store) {
            Ok(t) => {
                self.counters.trial_rows_read += t.trials();
                tracing::info!(trials = t.trials(), "trial counts read again after a failed commit");
                self.tally = t;
            }
            Err(e) => tracing::error!(error = %e, "cannot read the trial counts again; trying after the next commit"),
        }
    }

    /// A /metrics request: answered after the commit, from the committed counts, so that a
    /// failed commit neither fails a scrape nor shows it a change that was undone.
    pub(super) fn scrape(&mut self, reply: Reply<MetricsReport>) -> Answer {
        self.scrapes.push(reply);
        Box::new(|_: Option<&StoreError>| false)
    }
}
