//! The gRPC services: thin adapters. Each handler unwraps the request, converts the generated
//! types into domain types, calls the scheduler and maps the domain error to a status in one
//! place (`status_of`).

use crate::scheduler::{LeaseGrant, NextLease, SchedError, SchedulerHandle, WorkerHello};
use cbsweep_common::{Attempt, SweepId, TrialId, TrialResult, TrialState, WorkerId};
use cbsweep_proto::chunks::{self, Assembly, ChunkError};
use cbsweep_proto::errors::ErrorKind;
use cbsweep_proto::{MAX_CHECKPOINT_BYTES, PROTOCOL_VERSION, v1};
use std::path::Path;
use std::pin::Pin;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Largest message the coordinator accepts (a full 1000-epoch curve is ~60 KB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

fn status_of(e: SchedError) -> Status {
    let msg = e.to_string();
    match e {
        SchedError::UnknownWorker(_) => ErrorKind::UnknownWorker.mark(Status::not_found(msg)),
        SchedError::UnknownSweep(_) | SchedError::UnknownTrial(_) => Status::not_found(msg),
        SchedError::StaleAttempt { .. } | SchedError::NotLeased { .. } | SchedError::NotOwner { .. } | SchedError::Cancelled(_) => {
            Status::failed_precondition(msg)
        }
        SchedError::Conflict { .. } => Status::already_exists(msg),
        SchedError::OutOfBudget { .. } => Status::invalid_argument(msg),
        // a full disk or an I/O error: nothing of the call took effect, and it may pass; the
        // workers retry such a status, keeping their results
        SchedError::Store(e) if e.retryable() => Status::unavailable(format!(
            "{msg} (the coordinator cannot write its state: is its disk full? it keeps serving; retry once there is space)"
        )),
        SchedError::Store(_) => Status::internal(msg),
        SchedError::Stopped => Status::unavailable(msg),
    }
}

fn required<'a>(field: &'static str, v: &'a str) -> Result<&'a str, Status> {
    if v.is_empty() { Err(Status::invalid_argument(format!("missing field `{field}`"))) } else { Ok(v) }
}

/// A name a worker gives (its host, its device): it goes into worker ids, logs and the status
/// table, so it must be short and printable (a newline would forge a log line).
fn printable(field: &'static str, v: &str) -> Result<String, Status> {
    const MAX: usize = 255;
    if v.len() > MAX || v.chars().any(char::is_control) {
        let shown: String = v.chars().take(40).flat_map(char::escape_default).collect();
        return Err(Status::invalid_argument(format!("field `{field}` = \"{shown}\" must be at most {MAX} printable characters")));
    }
    Ok(v.to_string())
}

/// A reported epoch, its numbers checked (a non-finite one is the peer's fault: INVALID_ARGUMENT).
fn c_epoch(e: v1::EpochRecord) -> Result<cbsweep_common::EpochRecord, Status> {
    e.try_into().map_err(|e: cbsweep_proto::ConvertError| Status::invalid_argument(format!("progress.epoch: {e}")))
}

fn lease_response(grant: LeaseGrant) -> v1::LeaseResponse {
    let (checkpoint_every_epochs, checkpoint_every_seconds) = grant.trials.first().map_or((0, 0), |t| t.cadence);
    let trials = grant
        .trials
        .into_iter()
        .map(|t| v1::LeasedTrial {
            spec: Some((&t.spec).into()),
            trial_id: t.id.0,
            attempt: t.attempt.0,
            lease_expires_unix_ms: t.expires_ms as u64,
            checkpoint_epochs: t.resume.map_or(0, |(epochs, _)| epochs),
            checkpoint_bytes: t.resume.map_or(0, |(_, bytes)| bytes),
        })
        .collect();
    v1::LeaseResponse { trials, drained: grant.drained, retry_after_ms: 500, checkpoint_every_epochs, checkpoint_every_seconds }
}

/// Most checkpoint uploads taken in at once; one more is refused with RESOURCE_EXHAUSTED, which
/// a worker retries (workers send their checkpoints one at a time, so this is about as many
/// workers checkpointing at the same moment).
pub const MAX_CONCURRENT_UPLOADS: usize = 64;

/// Most checkpoint bytes held in memory across uploads at once: an upload counts its declared
/// size from its first chunk until it is stored, and one that would pass this is refused with
/// RESOURCE_EXHAUSTED. Room for two checkpoints of the largest size.
pub const MAX_UPLOAD_BYTES_IN_FLIGHT: u64 = 2 * MAX_CHECKPOINT_BYTES;

// the largest checkpoint fits, and the budget counts in a semaphore's u32 permits
const _: () = assert!(MAX_CHECKPOINT_BYTES <= MAX_UPLOAD_BYTES_IN_FLIGHT && MAX_UPLOAD_BYTES_IN_FLIGHT <= u32::MAX as u64);

pub struct WorkerApi {
    sched: SchedulerHandle,
    /// One permit per upload in progress.
    uploads: Semaphore,
    /// One permit per checkpoint byte held by the uploads in progress.
    upload_bytes: Semaphore,
}

impl WorkerApi {
    pub fn new(sched: SchedulerHandle) -> Self {
        WorkerApi {
            sched,
            uploads: Semaphore::new(MAX_CONCURRENT_UPLOADS),
            upload_bytes: Semaphore::new(MAX_UPLOAD_BYTES_IN_FLIGHT as usize),
        }
    }
}

pub struct SweepApi {
    pub sched: SchedulerHandle,
}

/// A checkpoint's chunks, as `FetchCheckpoint` streams them.
type Chunks = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::CheckpointChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl v1::worker_service_server::WorkerService for WorkerApi {
    type FetchCheckpointStream = Chunks;

    async fn save_checkpoint(
        &self,
        req: Request<tonic::Streaming<v1::CheckpointChunk>>,
    ) -> Result<Response<v1::SaveCheckpointResponse>, Status> {
        let mut chunks = req.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("an empty checkpoint stream"))?;
        let h = first.header.ok_or_else(|| Status::invalid_argument("missing field `header` on the first checkpoint chunk"))?;
        let worker = WorkerId(required("header.worker_id", &h.worker_id)?.to_string());
        let trial = TrialId(required("header.trial_id", &h.trial_id)?.to_string());
        let attempt = Attempt(h.attempt);
        // Everything is decided on the first chunk, before another byte is read: the declared
        // size, a slot among the uploads, the lease (fenced as the save will be) with the epochs
        // within the trial's budget, and room in the bytes all uploads may hold at once.
        let size = match u32::try_from(h.size_bytes) {
            Ok(size) if h.size_bytes <= MAX_CHECKPOINT_BYTES => size,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "checkpoint of trial {trial}: header.size_bytes = {} exceeds the {MAX_CHECKPOINT_BYTES} bytes a coordinator takes",
                    h.size_bytes
                )));
            }
        };
        let _slot = self.uploads.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "checkpoint of trial {trial}: {MAX_CONCURRENT_UPLOADS} checkpoint uploads in progress already; retry later"
            ))
        })?;
        self.sched.check_checkpoint(worker.clone(), trial.clone(), attempt, h.epochs_done).await.map_err(status_of)?;
        let _room = self.upload_bytes.try_acquire_many(size).map_err(|_| {
            Status::resource_exhausted(format!(
                "checkpoint of trial {trial}: its {size} bytes would pass the {MAX_UPLOAD_BYTES_IN_FLIGHT} bytes of uploads a coordinator holds at once; retry later"
            ))
        })?;
        let cut = |e: ChunkError| Status::invalid_argument(format!("checkpoint of trial {trial}: {e}"));
        let mut whole = Assembly::new(&h);
        let mut next = Some(first.data);
        while let Some(chunk) = next {
            whole.push(&chunk).map_err(cut)?;
            next = chunks.next().await.transpose()?.map(|c| c.data);
        }
        let (data, sha256) = whole.finish().map_err(cut)?;
        self.sched.save_checkpoint(worker, trial, attempt, h.epochs_done, sha256, data).await.map_err(status_of)?;
        Ok(Response::new(v1::SaveCheckpointResponse {}))
    }

    async fn fetch_checkpoint(&self, req: Request<v1::FetchCheckpointRequest>) -> Result<Response<Chunks>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        let trial = TrialId(required("trial_id", &r.trial_id)?.to_string());
        let saved = self.sched.fetch_checkpoint(worker, trial.clone(), Attempt(r.attempt)).await.map_err(status_of)?;
        let saved = saved.ok_or_else(|| Status::not_found(format!("trial {trial} has no checkpoint")))?;
        let header = v1::CheckpointHeader {
            worker_id: String::new(),
            trial_id: trial.0,
            attempt: saved.attempt,
            epochs_done: saved.epochs_done,
            size_bytes: saved.data.len() as u64,
            sha256: saved.sha256,
        };
        let chunks: Vec<Result<v1::CheckpointChunk, Status>> = chunks::chunks(header, &saved.data).into_iter().map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker speaks protocol v{}, this coordinator speaks v{PROTOCOL_VERSION}: run a cbsweep-worker of the coordinator's version",
                r.protocol_version
            )));
        }
        let hello = WorkerHello {
            hostname: printable("hostname", required("hostname", &r.hostname)?)?,
            device: printable("device", &r.device)?,
            pid: r.pid,
        };
        let id = self.sched.register(hello).await.map_err(status_of)?;
        Ok(Response::new(v1::RegisterResponse {
            worker_id: id.0,
            heartbeat_interval_ms: self.sched.heartbeat_interval().as_millis() as u32,
        }))
    }

    async fn lease(&self, req: Request<v1::LeaseRequest>) -> Result<Response<v1::LeaseResponse>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        let budget = std::num::NonZeroU64::new(r.memory_budget_bytes);
        let grant = self.sched.lease(worker, r.max_trials.max(1), budget).await.map_err(status_of)?;
        Ok(Response::new(lease_response(grant)))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        let held = r.held.into_iter().map(|h| (TrialId(h.trial_id), Attempt(h.attempt))).collect();
        let revoked = self.sched.heartbeat(worker, held).await.map_err(status_of)?;
        Ok(Response::new(v1::HeartbeatResponse { revoked_trial_ids: revoked.into_iter().map(|t| t.0).collect() }))
    }

    async fn report_progress(&self, req: Request<v1::ProgressRequest>) -> Result<Response<v1::ProgressResponse>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        let mut items = Vec::with_capacity(r.progress.len());
        for p in r.progress {
            let epoch = p.epoch.ok_or_else(|| Status::invalid_argument("missing field `progress.epoch`"))?;
            let epoch = c_epoch(epoch)?;
            items.push((TrialId(required("progress.trial_id", &p.trial_id)?.to_string()), Attempt(p.attempt), epoch));
        }
        let revoked = self.sched.progress(worker, items).await.map_err(status_of)?;
        Ok(Response::new(v1::ProgressResponse { revoked_trial_ids: revoked.into_iter().map(|t| t.0).collect() }))
    }

    async fn complete(&self, req: Request<v1::CompleteRequest>) -> Result<Response<v1::CompleteResponse>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        let trial = TrialId(required("trial_id", &r.trial_id)?.to_string());
        let result: TrialResult = r
            .result
            .ok_or_else(|| Status::invalid_argument("missing field `result`"))?
            .try_into()
            .map_err(|e: cbsweep_proto::ConvertError| Status::invalid_argument(format!("result: {e}")))?;
        let next = r.next.map(|l| NextLease { max: l.max_trials.max(1), memory_budget: std::num::NonZeroU64::new(l.memory_budget_bytes) });
        let (recorded, grant) = self.sched.complete_and_lease(worker, trial, Attempt(r.attempt), result, next).await.map_err(status_of)?;
        Ok(Response::new(v1::CompleteResponse { recorded, next: grant.map(lease_response) }))
    }

    async fn release(&self, req: Request<v1::ReleaseRequest>) -> Result<Response<v1::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let worker = WorkerId(required("worker_id", &r.worker_id)?.to_string());
        self.sched.release(worker, r.trial_ids.into_iter().map(TrialId).collect()).await.map_err(status_of)?;
        Ok(Response::new(v1::ReleaseResponse {}))
    }
}

#[tonic::async_trait]
impl v1::sweep_service_server::SweepService for SweepApi {
    async fn submit_sweep(&self, req: Request<v1::SubmitSweepRequest>) -> Result<Response<v1::SubmitSweepResponse>, Status> {
        let r = req.into_inner();
        let path = if r.spec_path.is_empty() { "<submitted spec>".to_string() } else { r.spec_path };
        let overrides = r.overrides.into_iter().map(Into::into).collect();
        let spec = cbsweep_common::parse_resolved(&r.spec_toml, Path::new(&path), overrides)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        spec.check_overrides(Path::new(&path)).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self.sched.submit(spec, path).await.map_err(status_of)?;
        Ok(Response::new(v1::SubmitSweepResponse {
            sweep_id: out.sweep.0,
            total_trials: out.total,
            new_trials: out.new,
            kept_trials: out.resubmission.kept,
            run_changes: out.resubmission.run_changes.iter().map(Into::into).collect(),
        }))
    }

    async fn sweep_status(&self, req: Request<v1::SweepStatusRequest>) -> Result<Response<v1::SweepStatusResponse>, Status> {
        let r = req.into_inner();
        let only = (!r.sweep_id.is_empty()).then_some(SweepId(r.sweep_id));
        let report = self.sched.status(only).await.map_err(status_of)?;
        Ok(Response::new(status_response(report)))
    }

    async fn cancel_sweep(&self, req: Request<v1::CancelSweepRequest>) -> Result<Response<v1::CancelSweepResponse>, Status> {
        let r = req.into_inner();
        let n = self.sched.cancel(SweepId(required("sweep_id", &r.sweep_id)?.to_string())).await.map_err(status_of)?;
        Ok(Response::new(v1::CancelSweepResponse { cancelled_trials: n }))
    }

    async fn retry_failed(&self, req: Request<v1::RetryFailedRequest>) -> Result<Response<v1::RetryFailedResponse>, Status> {
        let r = req.into_inner();
        let n = self.sched.retry_failed(SweepId(required("sweep_id", &r.sweep_id)?.to_string())).await.map_err(status_of)?;
        Ok(Response::new(v1::RetryFailedResponse { requeued_trials: n }))
    }
}

/// The scheduler's status report as the gRPC answer (`cbsweep status`) and, through
/// `crate::status_json`, as JSON (`status --json`, the dashboard): one conversion for all.
pub fn status_response(report: crate::scheduler::StatusReport) -> v1::SweepStatusResponse {
    v1::SweepStatusResponse {
        sweeps: report
            .sweeps
            .into_iter()
            .map(|s| (crate::export::failure(&s.sweep).unwrap_or_default(), s))
            .map(|(export_error, s)| v1::SweepSummary {
                sweep_id: s.sweep.0,
                state: s.state.to_string(),
                total: s.total,
                counts: s.counts.into_iter().map(|(st, n): (TrialState, u32)| v1::StateCount { state: st.to_string(), count: n }).collect(),
                conditions: s
                    .conditions
                    .into_iter()
                    .map(|c| v1::ConditionProgress {
                        condition: c.condition,
                        total: c.total,
                        done: c.done,
                        failed: c.failed,
                        mean_max_level: c.mean_max_level,
                    })
                    .collect(),
                trials_per_minute: s.trials_per_minute,
                eta_seconds: s.eta_seconds,
                results_dir: String::new(),
                epochs_lost: s.resumes.epochs_lost,
                resumes: s.resumes.resumes,
                oldest_checkpoint_age_s: s
                    .resumes
                    .oldest_checkpoint_ms
                    .map_or(f64::NAN, |ms| (crate::store::now_ms() - ms).max(0) as f64 / 1000.0),
                running_without_checkpoint: s.resumes.running_without_checkpoint,
                export_error,
            })
            .collect(),
        workers: report
            .workers
            .into_iter()
            .map(|w| v1::WorkerInfo {
                worker_id: w.id,
                hostname: w.hostname,
                device: w.device,
                leased: w.leased,
                last_seen_ms_ago: w.last_seen_ms_ago.max(0) as u64,
            })
            .collect(),
    }
}
