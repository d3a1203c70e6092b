//! The worker's loop: register, lease a pack, train it on a blocking thread while heartbeats
//! and progress flow to the coordinator, report each trial's result, repeat. Survives a
//! coordinator that goes away for a while (retries with backoff) and hands its leases back
//! when told to stop.

use cbsweep_common::retry::Backoff;
use cbsweep_common::{Attempt, EpochRecord, TrialId, TrialOutcome, TrialResult, TrialSpec};
use cbsweep_proto::chunks::{self, Assembly};
use cbsweep_proto::client::{self, ClientError, WorkerClient};
use cbsweep_proto::errors::ErrorKind;
use cbsweep_proto::{PROTOCOL_VERSION, v1};
use cbsweep_train::trainer::{Cadence, Control, PackEvents, PackTrial, Saved, Trainer, TrialEnd};
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};

/// What the worker has been told to do about its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Keep working.
    No,
    /// Stop at the current step: each unfinished trial goes back with its checkpoint of the
    /// latest epoch boundary (SIGTERM, SIGINT, SIGUSR1).
    Checkpoint,
    /// Hand every lease back now, with no checkpoint (a second signal).
    Now,
}

/// Why the worker's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// No work left (`exit_when_drained`) or told to stop.
    Done,
    /// Its allocation's end came near (`WorkerConfig::deadline`): its trials went back with
    /// their checkpoints, and the sweep may still have work.
    Deadline,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("coordinator refused {what}: {}", status.message())]
    Refused { what: &'static str, status: Status },
    #[error("coordinator unreachable for {secs} s while trying to {what}; giving up")]
    GaveUp { what: &'static str, secs: u64 },
    #[error("the training thread died: {0}")]
    TrainerPanicked(String),
    #[error("stopped by a second signal; the leases went back without checkpoints")]
    Interrupted,
}

/// How a worker connects and behaves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub coordinator: String,
    pub token: String,
    /// Most trials trained together.
    pub max_pack: u32,
    /// Bytes a pack may take, sent with every lease request (`budget`); None: no budget.
    pub memory_budget: Option<NonZeroU64>,
    /// Exit once the coordinator has no running sweep left.
    pub exit_when_drained: bool,
    /// Give up when the coordinator stays unreachable this long.
    pub give_up_after: Duration,
    pub hostname: String,
    /// When to checkpoint, hand the trials back and stop (the allocation's end less a margin).
    pub deadline: Option<SystemTime>,
}

/// Codes worth retrying: the coordinator is away or restarting.
fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted)
}

struct Session {
    cfg: WorkerConfig,
    client: WorkerClient,
    worker_id: String,
    heartbeat: Duration,
    device: String,
    shutdown: watch::Receiver<Shutdown>,
    /// Whether the deadline has come (the loop then ends `Ended::Deadline`).
    deadline_hit: bool,
}

impl Session {
    /// Calls `f` until it succeeds, fails for good, or the coordinator stays away too long.
    async fn retry<T, F, Fut>(&mut self, what: &'static str, mut f: F) -> Result<T, WorkerError>
    where
        F: FnMut(WorkerClient, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::default();
        loop {
            match f(self.client.clone(), self.worker_id.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if ErrorKind::of(&s) == Some(ErrorKind::UnknownWorker) => {
                    tracing::warn!("coordinator forgot this worker; registering again");
                    self.register().await?;
                }
                Err(s) if transient(&s) => {
                    if start.elapsed() > self.cfg.give_up_after {
                        return Err(WorkerError::GaveUp { what, secs: self.cfg.give_up_after.as_secs() });
                    }
                    let wait = backoff.wait();
                    tracing::warn!(error = %s.message(), retry_in_ms = wait.as_millis() as u64, "coordinator unavailable; retrying {what}");
                    tokio::time::sleep(wait).await;
                }
                Err(status) => return Err(WorkerError::Refused { what, status }),
            }
        }
    }

    /// What this worker asks for in a lease (its worker id filled in per call).
    fn lease_request(&self) -> v1::LeaseRequest {
        v1::LeaseRequest {
            worker_id: String::new(),
            max_trials: self.cfg.max_pack,
            memory_budget_bytes: self.cfg.memory_budget.map_or(0, NonZeroU64::get),
        }
    }

    async fn register(&mut self) -> Result<(), WorkerError> {
        let req = v1::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            hostname: self.cfg.hostname.clone(),
            device: self.device.clone(),
            max_pack: self.cfg.max_pack,
            pid: std::process::id(),
        };
        // a coordinator that is away or cannot write its state (a full disk) is waited for, as
        // for every other call; a refusal (token, protocol version) is final
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::default();
        let r = loop {
            match self.client.register(req.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s) if transient(&s) => {
                    // a wrong port, scheme or CA: no retry mends it
                    if let Some(why) = client::misdirected(&self.cfg.coordinator, &s).await {
                        return Err(ClientError::Misdirected { url: client::coordinator_url(&self.cfg.coordinator), why }.into());
                    }
                    if start.elapsed() > self.cfg.give_up_after {
                        return Err(WorkerError::GaveUp { what: "registration", secs: self.cfg.give_up_after.as_secs() });
                    }
                    let wait = backoff.wait();
                    tracing::warn!(error = %s.message(), retry_in_ms = wait.as_millis() as u64, "coordinator unavailable; retrying registration");
                    tokio::time::sleep(wait).await;
                }
                Err(status) => {
                    return Err(match client::misdirected(&self.cfg.coordinator, &status).await {
                        Some(why) => ClientError::Misdirected { url: client::coordinator_url(&self.cfg.coordinator), why }.into(),
                        None => WorkerError::Refused { what: "registration", status },
                    });
                }
            }
        };
        self.worker_id = r.worker_id;
        self.heartbeat = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(200)));
        tracing::info!(worker_id = %self.worker_id, "registered");
        Ok(())
    }
}

/// One trial of the pack in hand, with the checkpoint it resumes from.
struct Held {
    id: TrialId,
    attempt: Attempt,
    spec: TrialSpec,
    resume: Option<Vec<u8>>,
}

async fn connect(cfg: &WorkerConfig) -> Result<WorkerClient, WorkerError> {
    let start = tokio::time::Instant::now();
    let mut backoff = Backoff::default();
    loop {
        match client::worker_client(&cfg.coordinator, &cfg.token).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Connect { .. }) if start.elapsed() < cfg.give_up_after => {
                tracing::warn!(coordinator = %cfg.coordinator, "coordinator not reachable yet; retrying");
                tokio::time::sleep(backoff.wait()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs several slots in one process: each its own registration with the coordinator and its
/// own loop (`run`), leasing and training its packs beside the others on the same device, all
/// told to stop by the same `shutdown`. Waits for every slot, so that none is cut off while it
/// hands its leases back. Ends `Deadline` if any slot's deadline came; the first error of a
/// slot, if any, after every slot has ended (a second signal's at once).
pub async fn run_slots(slots: Vec<(WorkerConfig, Box<dyn Trainer>)>, shutdown: watch::Receiver<Shutdown>) -> Result<Ended, WorkerError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (cfg, trainer)) in slots.into_iter().enumerate() {
        let shutdown = shutdown.clone();
        tasks.spawn(tracing::Instrument::instrument(run(cfg, trainer, shutdown), tracing::info_span!("slot", slot = i)));
    }
    let (mut ended, mut failed) = (Ended::Done, None);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap_or_else(|e| Err(WorkerError::TrainerPanicked(format!("a slot's task ended: {e}")))) {
            Ok(Ended::Deadline) => ended = Ended::Deadline,
            Ok(Ended::Done) => {}
            Err(WorkerError::Interrupted) => return Err(WorkerError::Interrupted),
            Err(e) => {
                tracing::error!(error = %e, "a slot stopped; the others go on until they end");
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(ended), Err)
}

/// Runs the worker until drained (with `exit_when_drained`), until `shutdown` says stop, or
/// until its deadline.
pub async fn run(cfg: WorkerConfig, mut trainer: Box<dyn Trainer>, shutdown: watch::Receiver<Shutdown>) -> Result<Ended, WorkerError> {
    let client = connect(&cfg).await?;
    let device = trainer.device();
    let mut s = Session { cfg, client, worker_id: String::new(), heartbeat: Duration::from_secs(5), device, shutdown, deadline_hit: false };
    s.register().await?;
    // the next pack, when it came with the last result
    let mut next: Option<v1::LeaseResponse> = None;
    loop {
        if past(s.cfg.deadline) && !s.deadline_hit {
            tracing::info!("the allocation's end is near: leasing no more work");
            s.deadline_hit = true;
        }
        if *s.shutdown.borrow() != Shutdown::No || s.deadline_hit {
            if let Some(lease) = next.take() {
                let trial_ids: Vec<String> = lease.trials.into_iter().map(|t| t.trial_id).collect();
                if !trial_ids.is_empty() {
                    release(&mut s, trial_ids).await?;
                }
            }
            return Ok(if s.deadline_hit { Ended::Deadline } else { Ended::Done });
        }
        let lease = match next.take() {
            Some(lease) => lease,
            None => {
                let req = s.lease_request();
                s.retry("lease trials", |mut c, worker_id| {
                    let req = v1::LeaseRequest { worker_id, ..req };
                    async move { c.lease(req).await.map(|r| r.into_inner()) }
                })
                .await?
            }
        };
        if lease.trials.is_empty() {
            if lease.drained && s.cfg.exit_when_drained {
                tracing::info!("no work left; exiting");
                return Ok(Ended::Done);
            }
            let mut sd = s.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(u64::from(lease.retry_after_ms.clamp(50, 5000)))) => {}
                _ = sd.changed() => {}
            }
            continue;
        }
        let cadence = Cadence {
            epochs: lease.checkpoint_every_epochs,
            time: (lease.checkpoint_every_seconds > 0).then(|| Duration::from_secs(u64::from(lease.checkpoint_every_seconds))),
        };
        let mut pack = Vec::new();
        for t in lease.trials {
            let (id, attempt) = (TrialId(t.trial_id), Attempt(t.attempt));
            match t.spec.ok_or(cbsweep_proto::ConvertError::Missing("spec")).and_then(TrialSpec::try_from) {
                Ok(spec) => {
                    // A trial the memory model says this worker's budget cannot hold would die on
                    // its allocations (and take the worker with it): it fails as data instead,
                    // so a worker with more memory may take it, or it ends failed with the reason.
                    let needs = cbsweep_common::memory::trial_memory_bytes(&spec);
                    if let Some(budget) = s.cfg.memory_budget.filter(|b| needs > b.get()) {
                        use cbsweep_common::memory::format_bytes;
                        let reason = format!(
                            "the trial needs {} by the memory model, more than this worker's budget of {}: give workers a larger --memory-budget, or make the model or batch smaller",
                            format_bytes(needs),
                            format_bytes(budget.get())
                        );
                        tracing::warn!(trial_id = %id, reason = %reason, "trial refused");
                        let result = failed(reason, &s.device, 1);
                        complete(&mut s, &id, attempt, &result, false).await?;
                        continue;
                    }
                    let resume = if t.checkpoint_epochs > 0 { fetch_checkpoint(&mut s, &id, attempt).await? } else { None };
                    pack.push(Held { id, attempt, spec, resume });
                }
                Err(e) => {
                    let result = failed(format!("unusable trial spec from the coordinator: {e}"), &s.device, 1);
                    complete(&mut s, &id, attempt, &result, false).await?;
                }
            }
        }
        if pack.is_empty() {
            continue;
        }
        (trainer, next) = train(&mut s, trainer, pack, cadence).await?;
    }
}

/// Whether `deadline` has passed.
fn past(deadline: Option<SystemTime>) -> bool {
    deadline.is_some_and(|d| SystemTime::now() >= d)
}

/// The trial's latest checkpoint from the coordinator, checked against its header's size and
/// SHA-256; None (start afresh, with a warning) when it has none after all or it arrived
/// damaged.
async fn fetch_checkpoint(s: &mut Session, id: &TrialId, attempt: Attempt) -> Result<Option<Vec<u8>>, WorkerError> {
    let fetched = s
        .retry("fetch a checkpoint", |mut c, worker_id| {
            let req = v1::FetchCheckpointRequest { worker_id, trial_id: id.0.clone(), attempt: attempt.0 };
            async move {
                let mut stream = c.fetch_checkpoint(req).await?.into_inner();
                let mut header = None;
                let mut data = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    header = header.or(chunk.header);
                    data.push(chunk.data);
                }
                Ok((header, data))
            }
        })
        .await;
    let (header, data) = match fetched {
        Ok(v) => v,
        Err(WorkerError::Refused { status, .. }) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
            tracing::warn!(trial_id = %id, reason = %status.message(), "no checkpoint to resume from; starting afresh");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let checked = match &header {
        None => Err("no header".to_string()),
        Some(h) => {
            let mut whole = Assembly::new(h);
            data.iter().try_for_each(|d| whole.push(d)).and_then(|()| whole.finish()).map_err(|e| e.to_string())
        }
    };
    match checked {
        Ok((data, _)) => {
            let epochs_done = header.map_or(0, |h| h.epochs_done);
            tracing::info!(trial_id = %id, epochs_done, bytes = data.len(), "checkpoint fetched");
            Ok(Some(data))
        }
        Err(why) => {
            tracing::warn!(trial_id = %id, reason = %why, "the checkpoint arrived damaged; starting afresh");
            Ok(None)
        }
    }
}

/// Sends a trial's checkpoint to the coordinator in chunks; false when the coordinator refused
/// it (the lease is no longer this worker's).
async fn save_checkpoint(s: &mut Session, id: &TrialId, attempt: Attempt, saved: &Saved) -> Result<bool, WorkerError> {
    let sha256 = chunks::sha256_hex(&saved.bytes);
    let r = s
        .retry("save a checkpoint", |mut c, worker_id| {
            let header = v1::CheckpointHeader {
                worker_id,
                trial_id: id.0.clone(),
                attempt: attempt.0,
                epochs_done: saved.epochs_done,
                size_bytes: saved.bytes.len() as u64,
                sha256: sha256.clone(),
            };
            let parts = chunks::chunks(header, &saved.bytes);
            async move { c.save_checkpoint(tokio_stream::iter(parts)).await.map(|_| ()) }
        })
        .await;
    match r {
        Ok(()) => {
            tracing::debug!(trial_id = %id, epochs_done = saved.epochs_done, bytes = saved.bytes.len(), "checkpoint saved");
            Ok(true)
        }
        Err(WorkerError::Refused { status, .. }) if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) => {
            tracing::warn!(trial_id = %id, reason = %status.message(), "checkpoint refused");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn release(s: &mut Session, trial_ids: Vec<String>) -> Result<(), WorkerError> {
    let n = trial_ids.len();
    s.retry("hand leases back", |mut c, worker_id| {
        let trial_ids = trial_ids.clone();
        async move { c.release(v1::ReleaseRequest { worker_id, trial_ids }).await.map(|_| ()) }
    })
    .await?;
    tracing::info!(trials = n, "handed leases back");
    Ok(())
}

fn failed(reason: String, device: &str, pack_size: u32) -> TrialResult {
    TrialResult {
        outcome: TrialOutcome::Failed(reason),
        curve: Vec::new(),
        wall_time_ms: 0,
        device: device.into(),
        pack_size,
        analyses: Vec::new(),
    }
}

/// Reports a result; with `lease_next`, asks in the same call for the next pack, which it
/// returns (None when the result was refused: the caller then leases on its own).
async fn complete(
    s: &mut Session,
    id: &TrialId,
    attempt: Attempt,
    result: &TrialResult,
    lease_next: bool,
) -> Result<Option<v1::LeaseResponse>, WorkerError> {
    let next = lease_next.then(|| s.lease_request());
    let req =
        v1::CompleteRequest { worker_id: String::new(), trial_id: id.0.clone(), attempt: attempt.0, result: Some(result.into()), next };
    let r = s
        .retry("report a result", |mut c, worker_id| {
            let req = v1::CompleteRequest { worker_id, ..req.clone() };
            async move { c.complete(req).await.map(|r| r.into_inner()) }
        })
        .await;
    match r {
        Ok(r) => {
            tracing::info!(trial_id = %id, attempt = attempt.0, new = r.recorded, "result recorded");
            Ok(r.next)
        }
        // A newer attempt owns the trial (our lease expired): the result is not ours to record.
        Err(WorkerError::Refused { status, .. }) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(trial_id = %id, reason = %status.message(), "result refused");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the training thread tells the loop.
enum FromTrainer {
    Epoch(usize, EpochRecord),
    Checkpoint(usize, Saved),
}

/// The loop's side of a pack in training, as the trainer sees it (`PackEvents`).
struct Events {
    tx: mpsc::UnboundedSender<FromTrainer>,
    revoked: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    /// The pack's trials, by index.
    ids: Vec<TrialId>,
}

impl PackEvents for Events {
    fn epoch(&mut self, index: usize, record: &EpochRecord) -> Control {
        // the epoch is over: a stop from now on hands back at least this epoch's boundary
        tracing::debug!(trial_id = %self.ids[index], epoch = record.epoch, "epoch trained");
        let _ = self.tx.send(FromTrainer::Epoch(index, *record));
        if self.revoked[index].load(Ordering::Relaxed) { Control::StopTrial } else { Control::Continue }
    }

    fn checkpoint(&mut self, index: usize, saved: Saved) {
        let _ = self.tx.send(FromTrainer::Checkpoint(index, saved));
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn stops(&self) -> bool {
        true
    }
}

/// Trains `pack` on a blocking thread (meanwhile heartbeats, progress, checkpoints and
/// revocations), reports its results and hands back what a stop left unfinished, each trial
/// with its checkpoint; returns the trainer and the next pack when it came with the last
/// result.
async fn train(
    s: &mut Session,
    mut trainer: Box<dyn Trainer>,
    pack: Vec<Held>,
    cadence: Cadence,
) -> Result<(Box<dyn Trainer>, Option<v1::LeaseResponse>), WorkerError> {
    let n = pack.len();
    let revoked: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<FromTrainer>();
    let trials: Vec<PackTrial> = pack.iter().map(|h| PackTrial { spec: h.spec.clone(), resume: h.resume.clone() }).collect();
    for h in &pack {
        tracing::info!(trial_id = %h.id, attempt = h.attempt.0, cell = %h.spec.cell_key(), resumed = h.resume.is_some(), "training");
    }
    let mut events = Events { tx, revoked: revoked.clone(), stop: stop.clone(), ids: pack.iter().map(|h| h.id.clone()).collect() };
    let mut task = tokio::task::spawn_blocking(move || {
        let ends = trainer.train(&trials, cadence, &mut events);
        (trainer, ends)
    });
    let mut pending: Vec<(usize, EpochRecord)> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut beat = tokio::time::interval(s.heartbeat);
    let mut sd = s.shutdown.clone();
    let deadline = s.cfg.deadline;
    let until_deadline = async move {
        match deadline {
            Some(d) => tokio::time::sleep(d.duration_since(SystemTime::now()).unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let (trainer, ends) = loop {
        tokio::select! {
            joined = &mut task => break joined.map_err(|e| WorkerError::TrainerPanicked(e.to_string()))?,
            Some(msg) = rx.recv() => match msg {
                FromTrainer::Epoch(i, e) => pending.push((i, e)),
                FromTrainer::Checkpoint(i, saved) => save_periodic(s, &pack, &revoked, i, &saved).await?,
            },
            _ = flush.tick() => {
                if pending.is_empty() { continue; }
                let progress: Vec<v1::TrialProgress> = pending
                    .drain(..)
                    .map(|(i, e)| v1::TrialProgress { trial_id: pack[i].id.0.clone(), attempt: pack[i].attempt.0, epoch: Some((&e).into()) })
                    .collect();
                let gone = s
                    .retry("report progress", |mut c, worker_id| {
                        let progress = progress.clone();
                        async move { c.report_progress(v1::ProgressRequest { worker_id, progress }).await.map(|r| r.into_inner().revoked_trial_ids) }
                    })
                    .await?;
                mark_revoked(&pack, &revoked, &gone);
            }
            _ = beat.tick() => {
                let held: Vec<v1::TrialRef> = pack
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !revoked[*i].load(Ordering::Relaxed))
                    .map(|(_, h)| v1::TrialRef { trial_id: h.id.0.clone(), attempt: h.attempt.0 })
                    .collect();
                let gone = s
                    .retry("heartbeat", |mut c, worker_id| {
                        let held = held.clone();
                        async move { c.heartbeat(v1::HeartbeatRequest { worker_id, held }).await.map(|r| r.into_inner().revoked_trial_ids) }
                    })
                    .await?;
                mark_revoked(&pack, &revoked, &gone);
            }
            () = &mut until_deadline, if !stop.load(Ordering::Relaxed) => {
                tracing::info!("the allocation's end is near: the pack's trials go back to the coordinator with their checkpoints");
                s.deadline_hit = true;
                stop.store(true, Ordering::Relaxed);
            }
            _ = sd.changed() => {
                let now = *sd.borrow();
                if now == Shutdown::Now {
                    // a second signal: hand back at once, without waiting for the trainer
                    let ids: Vec<String> = pack.iter().enumerate().filter(|(i, _)| !revoked[*i].load(Ordering::Relaxed)).map(|(_, h)| h.id.0.clone()).collect();
                    tracing::warn!(trials = ids.len(), "stopping now: the pack's trials go back without checkpoints");
                    release(s, ids).await?;
                    return Err(WorkerError::Interrupted);
                }
                if now == Shutdown::Checkpoint {
                    tracing::info!("stopping: the pack's unfinished trials go back to the coordinator with their checkpoints");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    // what the trainer sent last: progress and checkpoints before the results
    while let Ok(msg) = rx.try_recv() {
        match msg {
            FromTrainer::Epoch(i, e) => pending.push((i, e)),
            FromTrainer::Checkpoint(i, saved) => save_periodic(s, &pack, &revoked, i, &saved).await?,
        }
    }
    let stopping = stop.load(Ordering::Relaxed);
    let mut hand_back = Vec::new();
    let mut report = Vec::new();
    for (i, (h, end)) in pack.iter().zip(ends).enumerate() {
        match end {
            TrialEnd::Finished(result) => report.push((h, result)),
            TrialEnd::Stopped { .. } if revoked[i].load(Ordering::Relaxed) => {
                tracing::info!(trial_id = %h.id, "lease revoked; result dropped");
            }
            // stopped unfinished (the worker is stopping): it goes back with its checkpoint,
            // and the coordinator leases it again
            TrialEnd::Stopped { checkpoint, .. } => {
                if let Some(saved) = &checkpoint
                    && !save_checkpoint(s, &h.id, h.attempt, saved).await?
                {
                    continue;
                }
                hand_back.push(h.id.0.clone());
            }
        }
    }
    let mut next = None;
    let last = report.len();
    for (k, (h, result)) in report.into_iter().enumerate() {
        tracing::info!(trial_id = %h.id, outcome = result.outcome.status(), max_level = result.max_level(), "finished");
        // the last result asks for the next pack, unless this worker is stopping
        let lease_next = k + 1 == last && !stopping && *s.shutdown.borrow() == Shutdown::No && !past(s.cfg.deadline);
        next = complete(s, &h.id, h.attempt, &result, lease_next).await?;
    }
    if !hand_back.is_empty() {
        release(s, hand_back).await?;
    }
    Ok((trainer, next))
}

/// Sends the cadence's checkpoint of trial `i` of the pack, unless its lease is gone; a refusal
/// (the lease is no longer this worker's) marks it revoked, so the trainer stops it.
async fn save_periodic(s: &mut Session, pack: &[Held], revoked: &[AtomicBool], i: usize, saved: &Saved) -> Result<(), WorkerError> {
    if !revoked[i].load(Ordering::Relaxed) && !save_checkpoint(s, &pack[i].id, pack[i].attempt, saved).await? {
        revoked[i].store(true, Ordering::Relaxed);
    }
    Ok(())
}

fn mark_revoked(pack: &[Held], flags: &[AtomicBool], gone: &[String]) {
    for (i, h) in pack.iter().enumerate() {
        if gone.contains(&h.id.0) {
            tracing::warn!(trial_id = %h.id, "lease revoked by the coordinator; stopping that trial");
            flags[i].store(true, Ordering::Relaxed);
        }
    }
}
