//! Load: 64 simulated workers over real gRPC against one coordinator, 20,000 sub-second trials.
//! Nothing is lost and nothing is recorded twice.

use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
use cbsweep_coordinator::server::{self, Token};
use cbsweep_coordinator::store::Store;
use cbsweep_proto::client::worker_client;
use cbsweep_proto::{PROTOCOL_VERSION, v1};
use std::collections::HashSet;
use std::path::Path;

const WORKERS: usize = 64;
const SEEDS: usize = 5_000; // x 2 tasks x 2 archs = 20,000 trials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_workers_run_twenty_thousand_trials_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    let seeds: Vec<String> = (0..SEEDS).map(|s| s.to_string()).collect();
    let text = format!(
        "[sweep]\nname = \"load\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 1\n[run]\npack_size = 4\n",
        seeds.join(",")
    );
    let spec = cbsweep_common::parse_spec(&text, Path::new("load.toml")).unwrap();
    assert_eq!(spec.trials.len(), 20_000);
    sched.submit(spec, "load.toml".into()).await.unwrap();
    let running = server::serve("127.0.0.1:0".parse().unwrap(), sched.clone(), Token("t".into())).await.unwrap();
    let url = format!("http://{}", running.addr);
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = worker_client(&url, "t").await.unwrap();
            let hello = v1::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                hostname: format!("sim{i}"),
                device: "sim".into(),
                max_pack: 4,
                pid: i as u32,
            };
            let worker_id = c.register(hello).await.unwrap().into_inner().worker_id;
            let mut done = Vec::new();
            // half the workers ask for the next pack with their pack's last result, as
            // cbsweep-worker does; the others in a call of its own
            let piggyback = i % 2 == 0;
            let request = v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: 4, memory_budget_bytes: 0 };
            let mut next: Option<v1::LeaseResponse> = None;
            loop {
                let lease = match next.take() {
                    Some(lease) => lease,
                    None => c.lease(request.clone()).await.unwrap().into_inner(),
                };
                if lease.trials.is_empty() {
                    if lease.drained {
                        return done;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                let n = lease.trials.len();
                for (k, t) in lease.trials.into_iter().enumerate() {
                    let epoch = v1::EpochRecord {
                        epoch: 1,
                        level: 2,
                        train_loss: 0.6,
                        test_accuracy: 0.6,
                        solved: false,
                        grad_norm: 1.0,
                        core_learning: true,
                        cb_learning: true,
                    };
                    let result = v1::TrialResult {
                        outcome: v1::OutcomeKind::Completed as i32,
                        curve: vec![epoch],
                        wall_time_ms: 1,
                        device: "sim".into(),
                        pack_size: 4,
                        ..Default::default()
                    };
                    let ask = (piggyback && k + 1 == n).then(|| request.clone());
                    let asked = ask.is_some();
                    let r = c
                        .complete(v1::CompleteRequest {
                            worker_id: worker_id.clone(),
                            trial_id: t.trial_id.clone(),
                            attempt: t.attempt,
                            result: Some(result),
                            next: ask,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(r.recorded);
                    assert_eq!(r.next.is_some(), asked, "a lease comes back exactly when one is asked for");
                    next = r.next;
                    done.push(t.trial_id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 20_000, "every trial ran once");
    assert_eq!(unique.len(), 20_000, "no trial ran twice");
    let store = Store::open_read_only(dir.path()).unwrap();
    let rows = store.trials(&"load".into()).unwrap();
    assert_eq!(rows.len(), 20_000);
    assert!(rows.iter().all(|r| r.state == cbsweep_common::TrialState::Done && r.attempt == 1));
    assert_eq!(store.curves(&"load".into()).unwrap().len(), 20_000);
}
