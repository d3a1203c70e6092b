//! The scheduler thread: it owns the store, handles the commands of a batch in one
//! transaction, answers them and sends their events once that transaction is committed, and on
//! every tick expires leases and writes the workers' last-seen times.

use super::api::{
    Command, Counters, Event, LeaseGrant, Reply, SchedError, SchedulerOptions, StatusReport, SubmitOutcome, SweepStatus, WorkerHello,
    WorkerStatus,
};
use crate::store::{self, Store, StoreError, SweepRow, TrialLease};
use cbsweep_common::{Attempt, EpochRecord, SweepId, SweepSpec, SweepState, TrialId, TrialOutcome, TrialResult, TrialState, WorkerId};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Sends a command's reply once its batch is committed; given the commit's error if it failed.
type Answer = Box<dyn FnOnce(Option<&str>)>;

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

fn answer<T: 'static>(reply: Reply<T>, result: Result<T, SchedError>) -> Answer {
    Box::new(move |failed: Option<&str>| {
        let result = match failed {
            Some(e) if result.is_ok() => Err(SchedError::Store(StoreError::Commit(e.to_string()))),
            _ => result,
        };
        let _ = reply.send(result);
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
    let (tx, rx) = mpsc::channel();
    let (events, _) = broadcast::channel(4096);
    let workers = store.workers()?.into_iter().map(|(id, last_seen_ms)| (id, Seen { last_seen_ms, written: true })).collect();
    let checkpointer = store.checkpoint_in_background(CHECKPOINT_EVERY)?;
    let mut sched = Scheduler {
        store,
        events: events.clone(),
        opts: opts.clone(),
        live: HashMap::new(),
        finished_at: BTreeMap::new(),
        counters: Counters::default(),
        workers,
        outbox: Vec::new(),
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
    /// In-memory view of live progress: (trial -> latest epoch), not durable.
    live: HashMap<TrialId, EpochRecord>,
    /// Completion times per sweep, for throughput (not durable: a restart restarts the clock).
    finished_at: BTreeMap<SweepId, Vec<i64>>,
    counters: Counters,
    /// Registered workers and when each was last seen: kept here and written to the store on
    /// each tick, not on every call (not durable beyond that; it only feeds the status view).
    workers: HashMap<WorkerId, Seen>,
    /// Events of the batch being handled, sent once it is committed.
    outbox: Vec<Event>,
    /// Checkpoints the store off this thread while the scheduler lives.
    _checkpointer: store::checkpoint::Checkpointer,
}

/// When a worker was last seen, and whether the store has that time.
struct Seen {
    last_seen_ms: i64,
    written: bool,
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
        if tick {
            if let Err(e) = self.expire_leases() {
                tracing::error!(error = %e, "lease expiry check failed");
            }
            if let Err(e) = self.write_last_seen() {
                tracing::error!(error = %e, "writing workers' last-seen times failed");
            }
        }
        let committed = if grouped { self.store.commit_batch().map_err(|e| e.to_string()) } else { Ok(()) };
        let events = std::mem::take(&mut self.outbox);
        if let Err(e) = &committed {
            tracing::error!(error = %e, commands = answers.len(), "commit failed; the batch is undone");
            self.store.rollback_batch();
            self.workers.values_mut().for_each(|s| s.written = false);
        }
        for answer in answers {
            answer(committed.as_ref().err().map(String::as_str));
        }
        if committed.is_ok() {
            for e in events {
                let _ = self.events.send(e);
            }
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
                answer(reply, self.known(&worker).and_then(|()| Ok(self.store.renew(&worker, &held)?)))
            }
            Command::Progress { worker, items, reply } => answer(reply, self.progress(&worker, items)),
            Command::Complete { worker, trial, attempt, result, next, reply } => {
                let done = self.complete(&worker, &trial, attempt, result);
                answer(
                    reply,
                    done.and_then(|recorded| Ok((recorded, next.map(|n| self.lease(&worker, n.max, n.memory_budget)).transpose()?))),
                )
            }
            Command::Release { worker, trials, reply } => {
                answer(reply, self.known(&worker).and_then(|()| Ok(self.store.release(&worker, &trials)?)))
            }
            Command::SaveCheckpoint { worker, trial, attempt, epochs_done, sha256, data, reply } => {
                answer(reply, self.save_checkpoint(&worker, &trial, attempt, epochs_done, &sha256, &data))
            }
            Command::FetchCheckpoint { worker, trial, attempt, reply } => {
                answer(reply, self.holds(&worker, &trial, attempt).and_then(|_| Ok(self.store.checkpoint(&trial)?)))
            }
            Command::Status { sweep, reply } => answer(reply, self.status(sweep)),
            Command::Cancel { sweep, reply } => answer(reply, self.cancel(&sweep)),
            Command::RetryFailed { sweep, reply } => answer(reply, self.retry_failed(&sweep)),
            Command::Counters { reply } => answer(reply, Ok(self.counters)),
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
        let created_ms = self.store.sweep(&spec.id)?.map(|s| s.created_ms).unwrap_or_else(store::now_ms);
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
        tracing::info!(sweep = %spec.id, total = existing.len() + new.len(), new = new.len(), "sweep submitted");
        let out = SubmitOutcome { sweep: spec.id.clone(), total: (existing.len() + new.len()) as u32, new: new.len() as u32 };
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
        let trials = self.store.lease(worker, max, memory_budget)?;
        self.counters.trials_leased += trials.len() as u64;
        for t in &trials {
            tracing::debug!(trial_id = %t.id, attempt = t.attempt.0, worker_id = %worker, "leased");
            self.emit(Event::TrialLeased { sweep: t.spec.sweep.clone(), trial: t.id.clone(), worker: worker.clone() });
        }
        let drained = trials.is_empty() && !self.store.has_running_sweeps()?;
        Ok(LeaseGrant { trials, drained })
    }

    fn progress(&mut self, worker: &WorkerId, items: Vec<(TrialId, Attempt, EpochRecord)>) -> Result<Vec<TrialId>, SchedError> {
        self.known(worker)?;
        let held: Vec<(TrialId, Attempt)> = items.iter().map(|(t, a, _)| (t.clone(), *a)).collect();
        let revoked = self.store.renew(worker, &held)?;
        for (trial, _, record) in items {
            if revoked.contains(&trial) {
                continue;
            }
            if let Some(lease) = self.store.trial_lease(&trial)? {
                self.emit(Event::Epoch { sweep: lease.sweep, trial: trial.clone(), record });
            }
            let attempt = held.iter().find(|(t, _)| *t == trial).map_or(Attempt(0), |(_, a)| *a);
            self.store.note_progress(&trial, attempt, record.epoch)?;
            self.live.insert(trial, record);
        }
        Ok(revoked)
    }

    /// The lease of `trial` when `worker` (registered) holds its attempt `attempt` now; else
    /// the refusal that says why.
    fn holds(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt) -> Result<TrialLease, SchedError> {
        self.known(worker)?;
        let lease = self.store.trial_lease(trial)?.ok_or_else(|| SchedError::UnknownTrial(trial.clone()))?;
        if attempt.0 == 0 || attempt.0 != lease.attempt {
            return Err(SchedError::StaleAttempt { trial: trial.clone(), attempt: attempt.0, current: lease.attempt });
        }
        match lease.state {
            TrialState::Leased if lease.worker.as_deref() == Some(worker.as_str()) => Ok(lease),
            TrialState::Leased => Err(SchedError::NotOwner { trial: trial.clone(), worker: worker.clone() }),
            TrialState::Cancelled => Err(SchedError::Cancelled(trial.clone())),
            TrialState::Pending | TrialState::Done | TrialState::Failed => {
                Err(SchedError::NotLeased { trial: trial.clone(), attempt: attempt.0 })
            }
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
        let stored = self.store.save_checkpoint(trial, attempt, epochs_done, sha256, data)?;
        self.store.renew(worker, &[(trial.clone(), attempt)])?;
        self.store.note_progress(trial, attempt, epochs_done)?;
        self.counters.checkpoints_saved += u64::from(stored);
        self.counters.checkpoint_bytes_saved += if stored { data.len() as u64 } else { 0 };
        tracing::debug!(trial_id = %trial, attempt = attempt.0, epochs_done, bytes = data.len(), stored, "checkpoint");
        Ok(stored)
    }

    fn complete(&mut self, worker: &WorkerId, trial: &TrialId, attempt: Attempt, result: TrialResult) -> Result<bool, SchedError> {
        // Fencing: a result counts only from the registered worker that holds this attempt's
        // lease now. A repeat of a recorded attempt is acknowledged without change.
        self.known(worker)?;
        let lease = self.store.trial_lease(trial)?.ok_or_else(|| SchedError::UnknownTrial(trial.clone()))?;
        if attempt.0 == 0 || attempt.0 != lease.attempt {
            return Err(SchedError::StaleAttempt { trial: trial.clone(), attempt: attempt.0, current: lease.attempt });
        }
        match lease.state {
            TrialState::Done | TrialState::Failed => return Ok(false),
            TrialState::Cancelled => return Err(SchedError::Cancelled(trial.clone())),
            TrialState::Pending => return Err(SchedError::NotLeased { trial: trial.clone(), attempt: attempt.0 }),
            TrialState::Leased if lease.worker.as_deref() != Some(worker.as_str()) => {
                return Err(SchedError::NotOwner { trial: trial.clone(), worker: worker.clone() });
            }
            TrialState::Leased => {}
        }
        self.live.remove(trial);
        match &result.outcome {
            TrialOutcome::Completed | TrialOutcome::Diverged => {
                self.store.record_done(trial, &result)?;
                tracing::info!(trial_id = %trial, worker_id = %worker, outcome = result.outcome.status(), max_level = result.max_level(), "trial done");
                self.finished(trial, lease, TrialState::Done, result.outcome.status(), result.max_level(), None)?;
            }
            TrialOutcome::Failed(error) => {
                let terminal = lease.counted >= lease.max_attempts;
                self.counters.attempts_failed += 1;
                self.store.record_failure(trial, error, terminal)?;
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
        self.finished_at.entry(sweep.clone()).or_default().push(store::now_ms());
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

    fn expire_leases(&mut self) -> Result<(), SchedError> {
        let now = store::now_ms();
        for (trial, attempt, counted, max_attempts) in self.store.expired(now)? {
            let terminal = counted >= max_attempts;
            let error = format!("lease of attempt {attempt} expired (worker lost or too slow to heartbeat)");
            self.store.record_failure(&trial, &error, terminal)?;
            self.live.remove(&trial);
            tracing::warn!(trial_id = %trial, attempt, terminal, "lease expired");
            let Some(lease) = self.store.trial_lease(&trial)? else { continue };
            if terminal {
                self.finished(&trial, lease, TrialState::Failed, "failed", 0, Some(error))?;
            } else {
                self.emit(Event::TrialRetry { sweep: lease.sweep, trial, error });
            }
        }
        Ok(())
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
            let mut counts: BTreeMap<TrialState, u32> = BTreeMap::new();
            for t in &trials {
                *counts.entry(t.state).or_default() += 1;
            }
            let conditions = cbsweep_results::tally(&trials);
            let open = counts.iter().filter(|(s, _)| !s.is_terminal()).map(|(_, n)| *n).sum::<u32>();
            let (per_min, eta) = match self.finished_at.get(&row.id) {
                Some(times) if times.len() >= 2 && open > 0 => {
                    let span = (times[times.len() - 1] - times[0]).max(1) as f64 / 60_000.0;
                    let rate = (times.len() - 1) as f64 / span;
                    (rate, f64::from(open) / rate * 60.0)
                }
                _ => (f64::NAN, f64::NAN),
            };
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
            .live_workers(60_000)?
            .into_iter()
            .map(|(id, hostname, device, leased, ago)| WorkerStatus { id, hostname, device, leased, last_seen_ms_ago: ago })
            .collect();
        Ok(StatusReport { sweeps, workers })
    }

    fn cancel(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.store.sweep(sweep)?.ok_or_else(|| SchedError::UnknownSweep(sweep.clone()))?;
        let n = self.store.cancel(sweep)?;
        self.store.set_sweep_state(sweep, SweepState::Cancelled, Some(store::now_ms()))?;
        tracing::info!(sweep = %sweep, trials = n, "sweep cancelled");
        self.emit(Event::SweepFinished { sweep: sweep.clone() });
        Ok(n)
    }

    fn retry_failed(&mut self, sweep: &SweepId) -> Result<u32, SchedError> {
        self.store.sweep(sweep)?.ok_or_else(|| SchedError::UnknownSweep(sweep.clone()))?;
        let n = self.store.requeue_failed(sweep)?;
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
