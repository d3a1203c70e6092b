//! The scheduler thread: it owns the store, handles the commands of a batch in one
//! transaction, answers them and sends their events once that transaction is committed, and on
//! every tick expires leases and writes the workers' last-seen times. It keeps the trials'
//! number per sweep and state in memory (`Tally`), so that /metrics reads no trial row.

use super::api::{
    Command, Counters, Event, LeaseGrant, MetricsReport, Reply, SchedError, SchedulerOptions, StatusReport, SubmitOutcome, SweepMetrics,
    SweepStatus, WorkerHello, WorkerStatus,
};
use super::clock::LeaseClock;
use crate::store::{self, Store, StoreError, SweepRow, TrialLease};
use cbsweep_common::{
    Attempt, EpochRecord, SweepId, SweepSpec, SweepState, TrainBudget, TrialId, TrialOutcome, TrialResult, TrialState, WorkerId,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Sends a command's reply once its batch is committed; given the commit's error if it failed.
/// True: the command failed on the state's disk (full, or an I/O error), which stops the lease
/// clock.
type Answer = Box<dyn FnOnce(Option<&StoreError>) -> bool>;

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
const CHECKPOINT_EVERY: Duration = Duration::from_millis(5);

/// The longest a worker waits between two tries of a call (its retry backoff's cap): after an
/// outage of the state, each held lease has at least this and a heartbeat interval left.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Most budgets `Scheduler::budgets` keeps (then it starts over: a cache).
const BUDGETS_KEPT: usize = 100_000;

/// A worker seen within this long counts as live (status, /metrics).
const LIVE_WITHIN_MS: i64 = 60_000;

fn answer<T: 'static>(reply: Reply<T>, result: Result<T, SchedError>) -> Answer {
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
    let checkpointer = store.checkpoint_in_background(CHECKPOINT_EVERY)?;
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
        _checkpointer: checkpointer,
    };
    std::thread::Builder::new()
        .name("cbsweep-scheduler".into())
        .spawn(move || sched.run(rx))
        .map_err(|e| SchedError::Store(StoreError::Corrupt { what: "scheduler thread", detail: e.to_string() }))?;
    Ok((tx, events))
}

struct Scheduler {
    store: Store,
    events: broadcast::Sender<Event>,
    opts: SchedulerOptions,
    /// Completion times per sweep (`LeaseClock::elapsed_ms`), for throughput (not durable: a
    /// restart restarts the clock).
    finished_at: BTreeMap<SweepId, Vec<i64>>,
    counters: Counters,
    /// The trials' number per sweep and state and each sweep's epochs lost, kept as commands
    /// change them (what /metrics reports).
    tally: Tally,
    /// /metrics requests of the batch being handled, answered once it is committed or undone.
    scrapes: Vec<Reply<MetricsReport>>,
    /// Registered workers and when each was last seen: kept here and written to the store on
    /// each tick, not on every call (not durable beyond that; it only feeds the status view).
    workers: HashMap<WorkerId, Seen>,
    /// Events of the batch being handled, sent once it is committed.
    outbox: Vec<Event>,
    /// The clock leases expire by: monotonic, stopped while the state cannot be written.
    clock: LeaseClock,
    /// Budgets of trials leased lately, to check their reports by (a cache of the store's).
    budgets: HashMap<TrialId, TrainBudget>,
    /// Checkpoints the store off this thread while the scheduler lives.
    _checkpointer: store::checkpoint::Checkpointer,
}

/// What the fencing rule (`Scheduler::fence`) says of a call that it does not refuse.
enum Fence {
    /// The caller holds the attempt's lease now.
    Holds(TrialLease),
    /// The attempt has ended: its trial is done or failed.
    Ended,
}

/// When a worker was last seen, and whether the store has that time.
struct Seen {
    last_seen_ms: i64,
    written: bool,
}

/// The trials' number per sweep and state, and each sweep's epochs lost, as the store has them,
/// kept up to date by the commands that change them, so that /metrics never reads trial rows
/// (tallying every row, as status does, took this thread about 0.5 s per scrape at 10^5
/// trials; four scrapers pushed heartbeats from 15 ms to 2 s). Read from the store at start.
/// A batch's changes are logged and undone when its commit fails, so the counts always match
/// what is committed.
#[derive(Default)]
struct Tally {
    sweeps: BTreeMap<SweepId, SweepTally>,
    /// Epochs lost per trial, of the trials that lost any: a lease tells the trial's new total,
    /// and its sweep's sum moves by the difference.
    lost: HashMap<TrialId, u64>,
    /// The batch's changes, oldest first.
    changes: Vec<Change>,
    /// Counts to read again from the store after the next commit: a commit failed (SQLite rolls
    /// back a transaction itself on a full disk, and the batch's later statements then commit
    /// one by one, so undoing the log may not match the store), or a change did not add up.
    reload: bool,
}

#[derive(Clone, Copy, Default)]
struct SweepTally {
    created_ms: i64,
    /// Indexed by `TrialState as usize`.
    counts: [u32; TrialState::ALL.len()],
    epochs_lost: u64,
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
    fn load(store: &Store) -> Result<Tally, StoreError> {
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
    fn trials(&self) -> u64 {
        self.sweeps.values().flat_map(|s| s.counts).map(u64::from).sum()
    }

    fn count(&self, sweep: &SweepId, state: TrialState) -> u32 {
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
    fn add_sweep(&mut self, sweep: &SweepId, created_ms: i64) {
        if !self.sweeps.contains_key(sweep) {
            self.sweeps.insert(sweep.clone(), SweepTally { created_ms, ..SweepTally::default() });
            self.changes.push(Change::Added(sweep.clone()));
        }
    }

    fn moved(&mut self, sweep: &SweepId, from: Option<TrialState>, to: TrialState, n: u32) {
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
    fn lost(&mut self, sweep: &SweepId, trial: &TrialId, after: u64) {
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
    fn commit(&mut self) {
        self.changes.clear();
    }

    /// The batch's commit failed: its changes are undone, newest first.
    fn undo(&mut self) {
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
            answers.push(self.handle(cmd));
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
            // a worker may be waiting out its backoff after the outage: time to call again
            let grace = i64::try_from((self.opts.heartbeat + RETRY_BACKOFF_MAX).as_millis()).unwrap_or(i64::MAX);
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

    fn write_last_seen(&mut self) -> Result<(), SchedError> {
        let changed: Vec<(&WorkerId, i64)> = self.workers.iter().filter(|(_, s)| !s.written).map(|(id, s)| (id, s.last_seen_ms)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.store.touch_workers(changed)?;
        self.workers.values_mut().for_each(|s| s.written = true);
        Ok(())
    }

    /// Queues an event; it is sent once the batch that caused it is committed.
    fn emit(&mut self, e: Event) {
        self.outbox.push(e);
    }

    /// Carries out a command; what it returns sends the reply once the batch is committed.
    fn handle(&mut self, cmd: Command) -> Answer {
        match cmd {
            Command::Submit { spec, path, reply } => answer(reply, self.submit(spec, path)),
            Command::Register { hello, reply } => answer(reply, self.register(hello)),
            Command::Lease { worker, max, memory_budget, reply } => answer(reply, self.lease(&worker, max, memory_budget)),
            Command::Heartbeat { worker, held, reply } => {
                let now = self.clock.now_ms();
                answer(reply, self.known(&worker).and_then(|()| Ok(self.store.renew(&worker, &held, now)?)))
            }
            Command::Progress { worker, items, reply } => answer(reply, self.progress(&worker, items)),
            Command::Complete { worker, trial, attempt, result, next, reply } => {
                let done = self.complete(&worker, &trial, attempt, result);
                answer(
                    reply,
                    done.and_then(|recorded| Ok((recorded, next.map(|n| self.lease(&worker, n.max, n.memory_budget)).transpose()?))),
                )
            }
            Command::Release { worker, trials, reply } => answer(reply, self.release(&worker, &trials)),
            Command::SaveCheckpoint { worker, trial, attempt, epochs_done, sha256, data, reply } => {
                answer(reply, self.save_checkpoint(&worker, &trial, attempt, epochs_done, &sha256, &data))
            }
            Command::CheckCheckpoint { worker, trial, attempt, epochs_done, reply } => answer(
                reply,
                self.holds(&worker, &trial, attempt).and_then(|_| self.within_budget(&trial, |b| b.check_checkpoint(epochs_done))),
            ),
            Command::FetchCheckpoint { worker, trial, attempt, reply } => {
                answer(reply, self.holds(&worker, &trial, attempt).and_then(|_| Ok(self.store.checkpoint(&trial)?)))
            }
            Command::Status { sweep, reply } => answer(reply, self.status(sweep)),
            Command::Cancel { sweep, reply } => answer(reply, self.cancel(&sweep)),
            Command::RetryFailed { sweep, reply } => answer(reply, self.retry_failed(&sweep)),
            // answered after the commit, from the committed counts: a failed commit neither
            // fails a scrape nor shows it a change that was undone
            Command::Metrics { reply } => {
                self.scrapes.push(reply);
                Box::new(|_: Option<&StoreError>| false)
            }
            Command::ExpireLeases { ahead, reply } => {
                let at = self.clock.now_ms().saturating_add(i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX));
                answer(reply, self.expire_leases(at))
            }
            Command::Spec { sweep, reply } => {
                answer(reply, self.store.sweep(&sweep).map_err(SchedError::from).and_then(|s| s.ok_or(SchedError::UnknownSweep(sweep))))
            }
        }
    }

    /// Refuses an unregistered worker; notes the time a registered one was seen.
    fn known(&mut self, worker: &WorkerId) -> Result<(), SchedError> {
        let seen = self.workers.get_mut(worker).ok_or_else(|| SchedError::UnknownWorker(worker.clone()))?;
        *seen = Seen { last_seen_ms: store::now_ms(), written: false };
        Ok(())
    }

    fn submit(&mut self, spec: SweepSpec, path: String) -> Result<SubmitOutcome, SchedError> {
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

    fn register(&mut self, hello: WorkerHello) -> Result<WorkerId, SchedError> {
        let id = WorkerId(format!("{}-{}-{:04x}", hello.hostname, hello.pid, rand::random::<u16>()));
        self.store.register_worker(&id, &hello.hostname, &hello.device, hello.pid)?;
        self.workers.insert(id.clone(), Seen { last_seen_ms: store::now_ms(), written: true });
        tracing::info!(worker_id = %id, device = %hello.device, "worker registered");
        Ok(id)
    }

    fn lease(&mut self, worker: &WorkerId, max: u32, memory_budget: Option<NonZeroU64>) -> Result<LeaseGrant, SchedError> {
        self.known(worker)?;
        self.counters.lease_requests += 1;
        let now = self.clock.now_ms();
        let mut trials = self.store.lease(worker, max, memory_budget, now)?;
        let wall = store::now_ms();
        for t in &mut trials {
            t.expires_ms = wall + (t.expires_ms - now);
        }
        self.counters.trials_leased += trials.len() as u64;
        for t in &trials {
            self.tally.moved(&t.spec.sweep, Some(TrialState::Pending), TrialState::Leased, 1);
            // an attempt after the first may have lost epochs: its lease wrote the trial's total
            if t.attempt.0 > 1 {
                match self.store.trial_epochs_lost(&t.id) {
                    Ok(lost) => self.tally.lost(&t.spec.sweep, &t.id, lost),
                    Err(e) => {
                        tracing::warn!(trial_id = %t.id, error = %e, "cannot read the epochs lost; the counts are read again");
                        self.tally.reload = true;
                    }
                }
            }
            self.keep_budget(&t.id, t.spec.budget);
            tracing::debug!(trial_id = %t.id, attempt = t.attempt.0, worker_id = %worker, "leased");
            self.emit(Event::TrialLeased { sweep: t.spec.sweep.clone(), trial: t.id.clone(), worker: worker.clone() });
        }
        let drained = trials.is_empty() && !self.store.has_running_sweeps()?;
        Ok(LeaseGrant { trials, drained })
    }

    fn progress(&mut self, worker: &WorkerId, items: Vec<(TrialId, Attempt, EpochRecord)>) -> Result<Vec<TrialId>, SchedError> {
        self.known(worker)?;
        for (trial, _, record) in &items {
            if let Some(budget) = self.budget(trial)? {
                budget.check_epoch("progress", record).map_err(|why| SchedError::OutOfBudget { trial: trial.clone(), why })?;
            }
        }
        let held: Vec<(TrialId, Attempt)> = items.iter().map(|(t, a, _)| (t.clone(), *a)).collect();
        let revoked = self.store.renew(worker, &held, self.clock.now_ms())?;
        for (trial, _, record) in items {
            if revoked.contains(&trial) {
                continue;
            }
            if let Some(lease) = self.store.trial_lease(&trial)? {
                self.emit(Event::Epoch { sweep: lease.sweep, trial: trial.clone(), record });
            }
            let attempt = held.iter().find(|(t, _)| *t == trial).map_or(Attempt(0), |(_, a)| *a);
            self.store.note_progress(&trial, attempt, record.epoch)?;
        }
        Ok(revoked)
    }

    /// The fencing rule, the one place it is decided: a call about attempt `attempt` of `trial`
    /// counts only from the registered worker that holds that attempt's lease now. An attempt
    /// that has ended (its trial done or failed) is `Fence::Ended`: a repeat of a recorded result
    /// is acknowledged without change, anything else is refused by the caller.
    fn fence(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt) -> Result<Fence, SchedError> {
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
    fn holds(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt) -> Result<TrialLease, SchedError> {
        match self.fence(worker, trial, attempt)? {
            Fence::Holds(lease) => Ok(lease),
            Fence::Ended => Err(SchedError::NotLeased { trial: trial.clone(), attempt: attempt.0 }),
        }
    }

    /// The budget of `trial` (None: no such trial), from the cache or the store.
    fn budget(&mut self, trial: &TrialId) -> Result<Option<TrainBudget>, SchedError> {
        if let Some(b) = self.budgets.get(trial) {
            return Ok(Some(*b));
        }
        let budget = self.store.trial_budget(trial)?;
        if let Some(b) = budget {
            self.keep_budget(trial, b);
        }
        Ok(budget)
    }

    fn keep_budget(&mut self, trial: &TrialId, budget: TrainBudget) {
        if self.budgets.len() >= BUDGETS_KEPT {
            self.budgets.clear();
        }
        self.budgets.insert(trial.clone(), budget);
    }

    /// Refuses a report of `trial` that `check` finds outside its budget.
    fn within_budget(
        &mut self,
        trial: &TrialId,
        check: impl FnOnce(&TrainBudget) -> Result<(), cbsweep_common::OutOfBudget>,
    ) -> Result<(), SchedError> {
        match self.budget(trial)? {
            Some(b) => check(&b).map_err(|why| SchedError::OutOfBudget { trial: trial.clone(), why }),
            None => Err(SchedError::UnknownTrial(trial.clone())),
        }
    }

    /// Stores a checkpoint from the lease's holder (fenced as a result is); the lease is
    /// renewed with it.
    fn save_checkpoint(
        &mut self,
        worker: &WorkerId,
        trial: &TrialId,
        attempt: Attempt,
        epochs_done: u32,
        sha256: &str,
        data: &[u8],
    ) -> Result<bool, SchedError> {
        self.holds(worker, trial, attempt)?;
        self.within_budget(trial, |b| b.check_checkpoint(epochs_done))?;
        let stored = self.store.save_checkpoint(trial, attempt, epochs_done, sha256, data)?;
        self.store.renew(worker, &[(trial.clone(), attempt)], self.clock.now_ms())?;
        self.store.note_progress(trial, attempt, epochs_done)?;
        self.counters.checkpoints_saved += u64::from(stored);
        self.counters.checkpoint_bytes_saved += if stored { data.len() as u64 } else { 0 };
        tracing::debug!(trial_id = %trial, attempt = attempt.0, epochs_done, bytes = data.len(), stored, "checkpoint");
        Ok(stored)
    }

    fn complete(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt, result: TrialResult) -> Result<bool, SchedError> {
        // a repeat of a recorded attempt is acknowledged without change
        let lease = match self.fence(worker, trial, attempt)? {
            Fence::Holds(lease) => lease,
            Fence::Ended => return Ok(false),
        };
        self.within_budget(trial, |b| b.check_result(&result))?;
        self.budgets.remove(trial);
        match &result.outcome {
            TrialOutcome::Completed | TrialOutcome::Diverged => {
                self.store.record_done(trial, &result)?;
                self.tally.moved(&lease.sweep, Some(TrialState::Leased), TrialState::Done, 1);
                tracing::info!(trial_id = %trial, worker_id = %worker, outcome = result.outcome.status(), max_level = result.max_level(), "trial done");
                self.finished(trial, lease, TrialState::Done, result.outcome.status(), result.max_level(), None)?;
            }
            TrialOutcome::Failed(error) => {
                let terminal = lease.counted >= lease.max_attempts;
                self.counters.attempts_failed += 1;
                self.store.record_failure(trial, error, terminal)?;
                self.tally.moved(&lease.sweep, Some(TrialState::Leased), after_failure(terminal), 1);
                tracing::warn!(trial_id = %trial, worker_id = %worker, attempt = lease.attempt, terminal, error = %error, "trial attempt failed");
                if terminal {
                    self.finished(trial, lease, TrialState::Failed, "failed", 0, Some(error.clone()))?;
                } else {
                    self.emit(Event::TrialRetry { sweep: lease.sweep.clone(), trial: trial.clone(), error: error.clone() });
                }
            }
        }
        Ok(true)
    }

    fn finished(
        &mut self,
        trial: &TrialId,
        lease: TrialLease,
        state: TrialState,
        outcome: &str,
        max_level: u32,
        error: Option<String>,
    ) -> Result<(), SchedError> {
        let TrialLease { sweep, cell, .. } = lease;
        self.finished_at.entry(sweep.clone()).or_default().push(self.clock.elapsed_ms());
        self.counters.trials_finished += 1;
        self.emit(Event::TrialFinished {
            sweep: sweep.clone(),
            trial: trial.clone(),
            cell,
            state,
            outcome: outcome.into(),
            max_level,
            error,
        });
        self.check_finished(&sweep)
    }

    /// Marks a running sweep done once none of its trials is pending or leased.
    fn check_finished(&mut self, sweep: &SweepId) -> Result<(), SchedError> {
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

    /// Puts back (or fails, out of attempts) every lease that has expired by `now` (the lease
    /// clock's time); how many.
    fn expire_leases(&mut self, now: i64) -> Result<u32, SchedError> {
        let expired = self.store.expired(now)?;
        let n = expired.len() as u32;
        for (trial, attempt, counted, max_attempts) in expired {
            let terminal = counted >= max_attempts;
            let error = format!("lease of attempt {attempt} expired (worker lost or too slow to heartbeat)");
            self.store.record_failure(&trial, &error, terminal)?;
            self.budgets.remove(&trial);
            tracing::warn!(trial_id = %trial, attempt, terminal, "lease expired");
            let Some(lease) = self.store.trial_lease(&trial)? else { continue };
            self.tally.moved(&lease.sweep, Some(TrialState::Leased), after_failure(terminal), 1);
            if terminal {
                self.finished(&trial, lease, TrialState::Failed, "failed", 0, Some(error))?;
            } else {
                self.emit(Event::TrialRetry { sweep: lease.sweep, trial, error });
            }
        }
        Ok(n)
    }

    fn status(&mut self, only: Option<SweepId>) -> Result<StatusReport, SchedError> {
        self.write_last_seen()?;
        let rows = match &only {
            Some(id) => vec![self.store.sweep(id)?.ok_or_else(|| SchedError::UnknownSweep(id.clone()))?],
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
    fn metrics(&self) -> MetricsReport {
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

    /// Hands leases back unfinished (the worker stops); each released trial's sweep is looked up
    /// first (key lookups), for the counts.
    fn release(&mut self, worker: &WorkerId, trials: &[TrialId]) -> Result<u32, SchedError> {
        self.known(worker)?;
        let mut seen = HashSet::new();
        let mut sweeps = Vec::new();
        for trial in trials {
            if seen.insert(trial)
                && let Some(lease) = self.store.trial_lease(trial)?
                && lease.state == TrialState::Leased
                && lease.worker.as_deref() == Some(worker.as_str())
            {
                sweeps.push(lease.sweep);
            }
        }
        let n = self.store.release(worker, trials)?;
        for sweep in &sweeps {
            self.tally.moved(sweep, Some(TrialState::Leased), TrialState::Pending, 1);
        }
        self.tally.reload |= n as usize != sweeps.len();
        Ok(n)
    }

    fn cancel(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.store.sweep(sweep)?.ok_or_else(|| SchedError::UnknownSweep(sweep.clone()))?;
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

    fn retry_failed(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.store.sweep(sweep)?.ok_or_else(|| SchedError::UnknownSweep(sweep.clone()))?;
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

/// Where a failed attempt leaves its trial: failed for good, or back in the queue.
fn after_failure(terminal: bool) -> TrialState {
    if terminal { TrialState::Failed } else { TrialState::Pending }
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

#[cfg(test)]
mod tests {
    use super::{Tally, TrialState};
    use cbsweep_common::{SweepId, TrialId};

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
