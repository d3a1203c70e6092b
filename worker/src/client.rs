//! The worker's loop: register, lease a pack, train it on a blocking thread while heartbeats
//! and progress flow to the coordinator, report each trial's result, repeat. Survives a
//! coordinator that goes away for a while (retries with backoff) and hands its leases back
//! when told to stop.

use crate::trainer::{Control, Trainer, TrialEnd};
use cbsweep_common::{Attempt, EpochRecord, TrialId, TrialOutcome, TrialResult, TrialSpec};
use cbsweep_proto::client::{self, ClientError, WorkerClient};
use cbsweep_proto::{PROTOCOL_VERSION, v1};
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Code, Status};

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
    shutdown: watch::Receiver<bool>,
}

impl Session {
    /// Calls `f` until it succeeds, fails for good, or the coordinator stays away too long.
    async fn retry<T, F, Fut>(&mut self, what: &'static str, mut f: F) -> Result<T, WorkerError>
    where
        F: FnMut(WorkerClient, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            match f(self.client.clone(), self.worker_id.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::NotFound && s.message().starts_with("unknown worker") => {
                    tracing::warn!("coordinator forgot this worker; registering again");
                    self.register().await?;
                }
                Err(s) if transient(&s) => {
                    if start.elapsed() > self.cfg.give_up_after {
                        return Err(WorkerError::GaveUp { what, secs: self.cfg.give_up_after.as_secs() });
                    }
                    tracing::warn!(error = %s.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator unavailable; retrying {what}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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
        let r = self.client.register(req).await.map_err(|status| WorkerError::Refused { what: "registration", status })?.into_inner();
        self.worker_id = r.worker_id;
        self.heartbeat = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(200)));
        tracing::info!(worker_id = %self.worker_id, "registered");
        Ok(())
    }
}

/// One trial of the pack in hand.
struct Held {
    id: TrialId,
    attempt: Attempt,
    spec: TrialSpec,
}

async fn connect(cfg: &WorkerConfig) -> Result<WorkerClient, WorkerError> {
    let start = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match client::worker_client(&cfg.coordinator, &cfg.token).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Connect { .. }) if start.elapsed() < cfg.give_up_after => {
                tracing::warn!(coordinator = %cfg.coordinator, "coordinator not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the worker until drained (with `exit_when_drained`) or until `shutdown` turns true.
pub async fn run(cfg: WorkerConfig, mut trainer: Box<dyn Trainer>, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let client = connect(&cfg).await?;
    let device = trainer.device();
    let mut s = Session { cfg, client, worker_id: String::new(), heartbeat: Duration::from_secs(5), device, shutdown };
    s.register().await?;
    // the next pack, when it came with the last result
    let mut next: Option<v1::LeaseResponse> = None;
    loop {
        if *s.shutdown.borrow() {
            if let Some(lease) = next.take() {
                let trial_ids: Vec<String> = lease.trials.into_iter().map(|t| t.trial_id).collect();
                if !trial_ids.is_empty() {
                    release(&mut s, trial_ids).await?;
                }
            }
            return Ok(());
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
                return Ok(());
            }
            let mut sd = s.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(u64::from(lease.retry_after_ms.clamp(50, 5000)))) => {}
                _ = sd.changed() => {}
            }
            continue;
        }
        let mut pack = Vec::new();
        for t in lease.trials {
            let (id, attempt) = (TrialId(t.trial_id), Attempt(t.attempt));
            match t.spec.ok_or(cbsweep_proto::ConvertError::Missing("spec")).and_then(TrialSpec::try_from) {
                Ok(spec) => pack.push(Held { id, attempt, spec }),
                Err(e) => {
                    let result = failed(format!("unusable trial spec from the coordinator: {e}"), &s.device, 1);
                    complete(&mut s, &id, attempt, &result, false).await?;
                }
            }
        }
        (trainer, next) = train(&mut s, trainer, pack).await?;
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
        Ok(r) => Ok(r.next),
        // A newer attempt owns the trial (our lease expired): the result is not ours to record.
        Err(WorkerError::Refused { status, .. }) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(trial_id = %id, reason = %status.message(), "result refused");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Trains `pack` on a blocking thread (meanwhile heartbeats, progress and revocations), reports
/// its results and hands back what a stop left unfinished; returns the trainer and the next
/// pack when it came with the last result.
async fn train(
    s: &mut Session,
    mut trainer: Box<dyn Trainer>,
    pack: Vec<Held>,
) -> Result<(Box<dyn Trainer>, Option<v1::LeaseResponse>), WorkerError> {
    let n = pack.len();
    let revoked: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let stop_all = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, EpochRecord)>();
    let specs: Vec<TrialSpec> = pack.iter().map(|h| h.spec.clone()).collect();
    let (rv, sa) = (revoked.clone(), stop_all.clone());
    for h in &pack {
        tracing::info!(trial_id = %h.id, attempt = h.attempt.0, cell = %h.spec.cell_key(), "training");
    }
    let mut task = tokio::task::spawn_blocking(move || {
        let mut on_epoch = |i: usize, rec: &EpochRecord| {
            let _ = tx.send((i, *rec));
            if sa.load(Ordering::Relaxed) {
                Control::StopAll
            } else if rv[i].load(Ordering::Relaxed) {
                Control::StopTrial
            } else {
                Control::Continue
            }
        };
        let ends = trainer.train_pack(&specs, &mut on_epoch);
        (trainer, ends)
    });
    let mut pending: Vec<(usize, EpochRecord)> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut beat = tokio::time::interval(s.heartbeat);
    let mut sd = s.shutdown.clone();
    let (trainer, ends) = loop {
        tokio::select! {
            joined = &mut task => break joined.map_err(|e| WorkerError::TrainerPanicked(e.to_string()))?,
            Some(p) = rx.recv() => pending.push(p),
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
            _ = sd.changed() => {
                if *sd.borrow() {
                    tracing::info!("stopping: the pack's unfinished trials go back to the coordinator");
                    stop_all.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let stopping = stop_all.load(Ordering::Relaxed);
    let mut hand_back = Vec::new();
    let mut report = Vec::new();
    for (i, (h, end)) in pack.iter().zip(ends).enumerate() {
        match end {
            TrialEnd::Finished(result) => report.push((h, result)),
            TrialEnd::Stopped { .. } if revoked[i].load(Ordering::Relaxed) => {
                tracing::info!(trial_id = %h.id, "lease revoked; result dropped");
            }
            // stopped unfinished (the worker is stopping): the coordinator leases it again
            TrialEnd::Stopped { .. } => hand_back.push(h.id.0.clone()),
        }
    }
    let mut next = None;
    let last = report.len();
    for (k, (h, result)) in report.into_iter().enumerate() {
        tracing::info!(trial_id = %h.id, outcome = result.outcome.status(), max_level = result.max_level(), "finished");
        // the last result asks for the next pack, unless this worker is stopping
        let lease_next = k + 1 == last && !stopping && !*s.shutdown.borrow();
        next = complete(s, &h.id, h.attempt, &result, lease_next).await?;
    }
    if !hand_back.is_empty() {
        release(s, hand_back).await?;
    }
    Ok((trainer, next))
}

fn mark_revoked(pack: &[Held], flags: &[AtomicBool], gone: &[String]) {
    for (i, h) in pack.iter().enumerate() {
        if gone.contains(&h.id.0) {
            tracing::warn!(trial_id = %h.id, "lease revoked by the coordinator; stopping that trial");
            flags[i].store(true, Ordering::Relaxed);
        }
    }
}
