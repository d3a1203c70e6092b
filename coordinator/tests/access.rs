//! Access to the coordinator over real gRPC on loopback: tokens, protocol versions, oversized
//! and malformed messages are refused with a clear status, and the coordinator keeps serving.

use bytes::{Buf, BufMut};
use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
use cbsweep_coordinator::server::{self, Token};
use cbsweep_proto::client::{sweep_client, worker_client};
use cbsweep_proto::{PROTOCOL_VERSION, v1};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

const TOKEN: &str = "s3cret-token";

async fn start() -> (tempfile::TempDir, String, server::Running) {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let running = server::serve("127.0.0.1:0".parse().unwrap(), sched, Token(TOKEN.into())).await.unwrap();
    let url = format!("http://{}", running.addr);
    (dir, url, running)
}

fn hello(version: u32) -> v1::RegisterRequest {
    v1::RegisterRequest { protocol_version: version, hostname: "h".into(), device: "cpu".into(), max_pack: 1, pid: 1 }
}

async fn still_serving(url: &str) {
    let mut c = worker_client(url, TOKEN).await.unwrap();
    let r = c.register(hello(PROTOCOL_VERSION)).await.expect("a good client is still served");
    assert!(!r.into_inner().worker_id.is_empty());
}

#[tokio::test]
async fn calls_without_a_token_or_with_a_wrong_one_are_refused() {
    let (_dir, url, _srv) = start().await;
    let mut anon = v1::worker_service_client::WorkerServiceClient::connect(url.clone()).await.unwrap();
    let e = anon.register(hello(PROTOCOL_VERSION)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("missing bearer token"), "{}", e.message());
    let mut wrong = sweep_client(&url, "not-the-token").await.unwrap();
    let e = wrong.sweep_status(v1::SweepStatusRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(e.message(), "wrong bearer token");
    still_serving(&url).await;
}

#[tokio::test]
async fn a_worker_of_another_protocol_version_is_refused_naming_both_versions() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let e = c.register(hello(PROTOCOL_VERSION + 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(&format!("v{}", PROTOCOL_VERSION + 1)) && e.message().contains(&format!("v{PROTOCOL_VERSION}")),
        "{}",
        e.message()
    );
    still_serving(&url).await;
}

#[tokio::test]
async fn invalid_fields_are_refused_with_the_field_named() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let e = c.lease(v1::LeaseRequest { worker_id: String::new(), max_trials: 1, memory_budget_bytes: 0 }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "missing field `worker_id`"));
    let bad = v1::CompleteRequest {
        worker_id: "w".into(),
        trial_id: "t".into(),
        attempt: 1,
        result: Some(v1::TrialResult { outcome: 99, ..Default::default() }),
        next: None,
    };
    let e = c.complete(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("outcome"), "{}", e.message());
    let mut s = sweep_client(&url, TOKEN).await.unwrap();
    let e = s
        .submit_sweep(v1::SubmitSweepRequest { spec_toml: "[sweep]\nname = 3".into(), spec_path: "remote.toml".into(), overrides: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("remote.toml:"), "{}", e.message());
    still_serving(&url).await;
}

#[tokio::test]
async fn an_oversized_message_is_refused() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let huge = v1::CompleteRequest { worker_id: "w".into(), trial_id: "x".repeat(5 * 1024 * 1024), attempt: 1, result: None, next: None };
    let e = c.complete(huge).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    still_serving(&url).await;
}

/// Sends raw bytes as a gRPC message, to deliver something that is not valid protobuf.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::test]
async fn a_malformed_message_is_refused_and_nothing_panics() {
    let (_dir, url, _srv) = start().await;
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]);
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/cbsweep.v1.WorkerService/Register");
    let e = grpc.unary::<Vec<u8>, Vec<u8>, RawCodec>(req, path, RawCodec).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("decode"), "{}", e.message());
    still_serving(&url).await;
}

#[tokio::test]
async fn a_non_finite_number_in_a_curve_is_refused_as_invalid_naming_the_field() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let worker_id = c.register(hello(PROTOCOL_VERSION)).await.unwrap().into_inner().worker_id;
    let epoch = v1::EpochRecord { epoch: 1, level: 2, train_loss: f64::NAN, test_accuracy: 0.5, grad_norm: 1.0, ..Default::default() };
    let progress = v1::TrialProgress { trial_id: "t".into(), attempt: 1, epoch: Some(epoch) };
    let e = c.report_progress(v1::ProgressRequest { worker_id: worker_id.clone(), progress: vec![progress] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("train_loss"), "{}", e.message());
    let result = v1::TrialResult { outcome: v1::OutcomeKind::Diverged.into(), curve: vec![epoch], ..Default::default() };
    let e = c
        .complete(v1::CompleteRequest { worker_id, trial_id: "t".into(), attempt: 1, result: Some(result), next: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("train_loss"), "{}", e.message());
    still_serving(&url).await;
}

#[tokio::test]
async fn a_hostname_that_would_forge_a_log_line_is_refused() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let forged = v1::RegisterRequest { hostname: "node1\nERROR forged line".into(), ..hello(PROTOCOL_VERSION) };
    let e = c.register(forged).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("hostname") && e.message().contains("node1\\nERROR"), "{}", e.message());
    let long = v1::RegisterRequest { hostname: "h".repeat(300), ..hello(PROTOCOL_VERSION) };
    assert_eq!(c.register(long).await.unwrap_err().code(), Code::InvalidArgument);
    still_serving(&url).await;
}

/// The `Bearer` scheme's name is matched without regard to case (RFC 7235): `bearer TOKEN` is
/// served, a token without the scheme is not (hostile round three, item 12).
#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let (_dir, url, _srv) = start().await;
    let mut raw = v1::worker_service_client::WorkerServiceClient::connect(url.clone()).await.unwrap();
    for (header, served) in [(format!("bearer {TOKEN}"), true), (format!("BEARER {TOKEN}"), true), (TOKEN.to_string(), false)] {
        let mut req = tonic::Request::new(hello(PROTOCOL_VERSION));
        req.metadata_mut().insert("authorization", header.parse().unwrap());
        let r = raw.register(req).await;
        assert_eq!(r.is_ok(), served, "{header}: {r:?}");
    }
    // and a coordinator address without a scheme, as the coordinator prints it, is a plain one
    let bare = url.trim_start_matches("http://").to_string();
    let mut c = worker_client(&bare, TOKEN).await.expect("an address without http:// connects");
    assert!(c.register(hello(PROTOCOL_VERSION)).await.is_ok());
}

#[tokio::test]
async fn reports_outside_the_trials_budget_are_refused_naming_the_field_and_the_bound() {
    use sha2::Digest;
    let (_dir, url, _srv) = start().await;
    let spec =
        "[sweep]\nname = \"budget\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [0]\n[train]\nepochs = 10\nmax_level = 150\n";
    let submit = v1::SubmitSweepRequest { spec_toml: spec.into(), spec_path: "budget.toml".into(), ..Default::default() };
    sweep_client(&url, TOKEN).await.unwrap().submit_sweep(submit).await.unwrap();
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let worker_id = c.register(hello(PROTOCOL_VERSION)).await.unwrap().into_inner().worker_id;
    let lease =
        c.lease(v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: 1, memory_budget_bytes: 0 }).await.unwrap().into_inner();
    let (trial, attempt) = (lease.trials[0].trial_id.clone(), lease.trials[0].attempt);
    let rec = |epoch: u32, level: u32| v1::EpochRecord {
        epoch,
        level,
        train_loss: 0.5,
        test_accuracy: 0.5,
        grad_norm: 1.0,
        ..Default::default()
    };
    let progress = |r: v1::EpochRecord| v1::ProgressRequest {
        worker_id: worker_id.clone(),
        progress: vec![v1::TrialProgress { trial_id: trial.clone(), attempt, epoch: Some(r) }],
    };
    for (r, said) in [
        (rec(4_000_000_000, 1), "progress.epoch = 4000000000 is outside the trial's budget: epochs are numbered 1 to 10"),
        (rec(11, 1), "progress.epoch = 11"),
        (rec(0, 1), "progress.epoch = 0"),
        (rec(3, 1_000_000), "progress.level = 1000000 is outside the trial's budget: the level cap is 150"),
    ] {
        let e = c.report_progress(progress(r)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(said) && e.message().contains(&trial), "{}", e.message());
    }
    c.report_progress(progress(rec(1, 1))).await.expect("a report within the budget is taken");

    let complete = |curve: Vec<v1::EpochRecord>| v1::CompleteRequest {
        worker_id: worker_id.clone(),
        trial_id: trial.clone(),
        attempt,
        result: Some(v1::TrialResult {
            outcome: v1::OutcomeKind::Completed.into(),
            curve,
            device: "cpu".into(),
            pack_size: 1,
            ..Default::default()
        }),
        next: None,
    };
    let e = c.complete(complete((1..=20).map(|e| rec(e, 1)).collect())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("result.curve[10].epoch = 11"), "{}", e.message());
    let e = c.complete(complete((0..3).map(|e| rec(e, 1)).collect())).await.unwrap_err();
    assert!(e.message().contains("result.curve[0].epoch = 0"), "{}", e.message());

    let data = vec![1u8; 64];
    let header = v1::CheckpointHeader {
        worker_id: worker_id.clone(),
        trial_id: trial.clone(),
        attempt,
        epochs_done: 1_000_000,
        size_bytes: data.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&data)),
    };
    let chunk = v1::CheckpointChunk { header: Some(header), data };
    let e = c.save_checkpoint(tokio_stream::iter(vec![chunk])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("checkpoint.epochs_done = 1000000 is outside the trial's budget: the budget is 10 epochs"),
        "{}",
        e.message()
    );

    // nothing refused took the lease away: the trial's good result is recorded
    let done = c.complete(complete((1..=10).map(|e| rec(e, 1)).collect())).await.expect("a result within the budget is recorded");
    assert!(done.into_inner().recorded);
}

/// A served coordinator with one sweep submitted and one trial leased to a registered worker:
/// (state dir, url, server, worker id, trial id, attempt).
async fn start_with_a_lease() -> (tempfile::TempDir, String, server::Running, String, String, u32) {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let spec = cbsweep_common::parse_spec(
        "[sweep]\nname = \"u\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [0, 1]\n",
        std::path::Path::new("u.toml"),
    )
    .unwrap();
    sched.submit(spec, "u.toml".into()).await.unwrap();
    let hello = cbsweep_coordinator::scheduler::WorkerHello { hostname: "h".into(), device: "cpu".into(), pid: 1 };
    let worker = sched.register(hello).await.unwrap();
    let leased = sched.lease(worker.clone(), 1, None).await.unwrap().trials.remove(0);
    let running = server::serve("127.0.0.1:0".parse().unwrap(), sched, Token(TOKEN.into())).await.unwrap();
    let url = format!("http://{}", running.addr);
    (dir, url, running, worker.0, leased.id.0, leased.attempt.0)
}

fn chunk(worker: &str, trial: &str, attempt: u32, size_bytes: u64, sha256: &str, data: Vec<u8>) -> v1::CheckpointChunk {
    let header = v1::CheckpointHeader {
        worker_id: worker.into(),
        trial_id: trial.into(),
        attempt,
        epochs_done: 1,
        size_bytes,
        sha256: sha256.into(),
    };
    v1::CheckpointChunk { header: Some(header), data }
}

type Stalled = (tokio::sync::mpsc::Sender<v1::CheckpointChunk>, tokio::task::JoinHandle<Result<(), tonic::Status>>);

/// Starts an upload that sends `first` and then nothing: its sender, kept open, and the task
/// that awaits the coordinator's answer.
fn stalled_upload(c: &cbsweep_proto::client::WorkerClient, first: v1::CheckpointChunk) -> Stalled {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(first).unwrap();
    let mut c = c.clone();
    let answer = tokio::spawn(async move { c.save_checkpoint(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|_| ()) });
    (tx, answer)
}

/// A whole small checkpoint, sent in one chunk.
async fn upload(c: &mut cbsweep_proto::client::WorkerClient, worker: &str, trial: &str, attempt: u32) -> Result<(), tonic::Status> {
    use sha2::Digest;
    let data = vec![7u8; 1000];
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    c.save_checkpoint(tokio_stream::iter([chunk(worker, trial, attempt, data.len() as u64, &sha256, data)])).await.map(|_| ())
}

/// An upload is refused on its first chunk, before the client sends the rest, when its trial
/// does not exist, is another worker's, names a stale attempt or declares more than a
/// coordinator takes: six uploads of 255 MiB naming no trial used to be read whole first
/// (hostile round three, item 5).
#[tokio::test]
async fn a_checkpoint_upload_without_the_lease_is_refused_on_its_first_chunk() {
    let (_dir, url, _srv, worker, trial, attempt) = start_with_a_lease().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let other = c.register(hello(PROTOCOL_VERSION)).await.unwrap().into_inner().worker_id;
    let declared = 200 << 20;
    let cases = [
        (chunk(&worker, "no-such-trial", 1, declared, "", vec![0; 1 << 20]), Code::NotFound, "no-such-trial"),
        (chunk(&other, &trial, attempt, declared, "", vec![0; 1 << 20]), Code::FailedPrecondition, trial.as_str()),
        (chunk(&worker, &trial, attempt + 1, declared, "", vec![0; 1 << 20]), Code::FailedPrecondition, trial.as_str()),
        (chunk(&worker, &trial, attempt, cbsweep_proto::MAX_CHECKPOINT_BYTES + 1, "", vec![0; 1 << 20]), Code::InvalidArgument, "exceeds"),
    ];
    for (first, code, named) in cases {
        // the stream stays open with 199 MiB unsent: only an answer on the first chunk arrives
        let (_more, answer) = stalled_upload(&c, first);
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
            .await
            .expect("answered on the first chunk, without waiting for the rest")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(named), "{}", e.message());
    }
    upload(&mut c, &worker, &trial, attempt).await.expect("the lease's holder still saves its checkpoint");
}

/// Waits until one of `stalled` is answered: that answer, and the others (unanswered then).
async fn first_answer(mut stalled: Vec<Stalled>) -> (tonic::Status, Vec<Stalled>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(i) = stalled.iter().position(|(_, answer)| answer.is_finished()) {
            let (_, answer) = stalled.swap_remove(i);
            return (answer.await.unwrap().expect_err("an upload that sent half its data fails"), stalled);
        }
        assert!(tokio::time::Instant::now() < deadline, "no upload answered: none was refused");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Past `MAX_CONCURRENT_UPLOADS` uploads at once, or `MAX_UPLOAD_BYTES_IN_FLIGHT` declared
/// bytes, a new upload is refused with RESOURCE_EXHAUSTED (which workers retry) instead of
/// being held in memory; once the others end, a checkpoint is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_uploads_past_the_limits_are_refused_as_resource_exhausted() {
    use cbsweep_coordinator::service::{MAX_CONCURRENT_UPLOADS, MAX_UPLOAD_BYTES_IN_FLIGHT};
    use cbsweep_proto::MAX_CHECKPOINT_BYTES;
    let (_dir, url, _srv, worker, trial, attempt) = start_with_a_lease().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let cut = |e: &tonic::Status| e.code() == Code::InvalidArgument && e.message().contains("the stream was cut");

    // one more upload than the slots, each sending the first kilobyte of 1 MiB: one is refused
    let stalled: Vec<Stalled> =
        (0..=MAX_CONCURRENT_UPLOADS).map(|_| stalled_upload(&c, chunk(&worker, &trial, attempt, 1 << 20, "", vec![0; 1024]))).collect();
    let (e, held) = first_answer(stalled).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains(&format!("{MAX_CONCURRENT_UPLOADS} checkpoint uploads in progress")), "{}", e.message());
    assert_eq!(held.len(), MAX_CONCURRENT_UPLOADS);
    for (more, answer) in held {
        assert!(!answer.is_finished(), "an upload within the limit waits for its data");
        drop(more);
        let e = answer.await.unwrap().unwrap_err();
        assert!(cut(&e), "{}", e.message());
    }
    upload(&mut c, &worker, &trial, attempt).await.expect("taken once the slots are free");

    // one more upload of the largest size than the bytes budget holds, each holding its first
    // kilobyte: one is refused
    let n = (MAX_UPLOAD_BYTES_IN_FLIGHT / MAX_CHECKPOINT_BYTES) as usize;
    let stalled: Vec<Stalled> =
        (0..=n).map(|_| stalled_upload(&c, chunk(&worker, &trial, attempt, MAX_CHECKPOINT_BYTES, "", vec![0; 1024]))).collect();
    let (e, held) = first_answer(stalled).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains(&format!("{MAX_UPLOAD_BYTES_IN_FLIGHT} bytes of uploads")), "{}", e.message());
    assert_eq!(held.len(), n);
    let e = upload(&mut c, &worker, &trial, attempt).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "even a small one waits for room: {}", e.message());
    for (more, answer) in held {
        drop(more);
        assert!(cut(&answer.await.unwrap().unwrap_err()));
    }
    upload(&mut c, &worker, &trial, attempt).await.expect("taken once the bytes are free");
}

#[tokio::test]
async fn an_unknown_worker_is_refused_with_a_kind_the_worker_reads_not_a_text() {
    let (_dir, url, _srv) = start().await;
    let mut c = worker_client(&url, TOKEN).await.unwrap();
    let e = c.heartbeat(v1::HeartbeatRequest { worker_id: "nobody-1-0000".into(), held: vec![] }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert_eq!(cbsweep_proto::errors::ErrorKind::of(&e), Some(cbsweep_proto::errors::ErrorKind::UnknownWorker), "{e:?}");
    let e = c.lease(v1::LeaseRequest { worker_id: "nobody-1-0000".into(), max_trials: 1, memory_budget_bytes: 0 }).await.unwrap_err();
    assert_eq!(cbsweep_proto::errors::ErrorKind::of(&e), Some(cbsweep_proto::errors::ErrorKind::UnknownWorker), "{e:?}");
}
