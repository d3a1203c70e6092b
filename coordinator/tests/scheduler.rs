//! The scheduler's promises at the domain level (no gRPC, no processes): leases, fencing,
//! idempotent completion, retries, growth of a sweep, restart on the same state.

use cbsweep_common::{Attempt, EpochRecord, TrialOutcome, TrialResult, TrialState, parse_spec};
use cbsweep_coordinator::scheduler::{SchedError, SchedulerHandle, SchedulerOptions, WorkerHello};
use std::path::Path;
use std::time::Duration;

fn spec(seeds: &str, extra: &str) -> cbsweep_common::SweepSpec {
    let text = format!(
        "[sweep]\nname = \"s\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = {seeds}\n[train]\nepochs = 2\n{extra}"
    );
    parse_spec(&text, Path::new("s.toml")).unwrap()
}

fn result(outcome: TrialOutcome) -> TrialResult {
    let e = |epoch| EpochRecord {
        epoch,
        level: 2,
        train_loss: 0.5,
        test_accuracy: 0.7,
        solved: false,
        grad_norm: 1.0,
        core_learning: true,
        cb_learning: true,
    };
    TrialResult { outcome, curve: vec![e(1), e(2)], wall_time_ms: 5, device: "test".into(), pack_size: 1, analyses: Vec::new() }
}

fn opts() -> SchedulerOptions {
    SchedulerOptions { tick: Duration::from_millis(50), ..Default::default() }
}

async fn worker(s: &SchedulerHandle, name: &str) -> cbsweep_common::WorkerId {
    s.register(WorkerHello { hostname: name.into(), device: "test".into(), pid: 1 }).await.unwrap()
}

/// The leases of 30 s held now expire, as the tick would make them a minute from now (no lease in
/// these tests is short, so none can expire before it is meant to).
async fn expire_leases(s: &SchedulerHandle) {
    assert!(s.expire_leases_within(Duration::from_secs(60)).await.unwrap() > 0, "a lease expired");
}

/// Leases (up to `max` at a time) until `worker` gets trial `id` again, once its lease expired.
async fn lease_again(
    s: &SchedulerHandle,
    worker: &cbsweep_common::WorkerId,
    id: &cbsweep_common::TrialId,
    max: u32,
) -> cbsweep_coordinator::store::Leased {
    for _ in 0..20 {
        if let Some(t) = s.lease(worker.clone(), max, None).await.unwrap().trials.into_iter().find(|t| &t.id == id) {
            return t;
        }
    }
    panic!("the expired trial {id} is leased again");
}

#[tokio::test]
async fn late_completion_from_an_expired_lease_is_rejected_and_keeps_the_newer_result() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    s.submit(spec("[0]", "[run]\nlease_seconds = 30\npack_size = 1\n"), "s.toml".into()).await.unwrap();
    let (a, b) = (worker(&s, "a").await, worker(&s, "b").await);
    let first = s.lease(a.clone(), 1, None).await.unwrap().trials.remove(0);
    assert_eq!(first.attempt, Attempt(1));
    expire_leases(&s).await;
    // The lease expired: the trial goes back to the queue, and b gets it under attempt 2.
    let second = lease_again(&s, &b, &first.id, 4).await;
    assert_eq!(second.attempt, Attempt(2));
    let mut good = result(TrialOutcome::Completed);
    good.device = "b".into();
    assert!(s.complete(b.clone(), second.id.clone(), second.attempt, good.clone()).await.unwrap());
    let late = s.complete(a.clone(), first.id.clone(), first.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(late, Err(SchedError::StaleAttempt { attempt: 1, current: 2, .. })), "{late:?}");
    // Completion is idempotent for the current attempt.
    assert!(!s.complete(b.clone(), second.id.clone(), second.attempt, good).await.unwrap());
    drop(s);
    let store = cbsweep_coordinator::store::Store::open_read_only(dir.path()).unwrap();
    let row = store.trials(&"s".into()).unwrap().into_iter().find(|t| t.id == first.id).unwrap();
    assert_eq!(row.device.as_deref(), Some("b"), "the newer result stands");
}

#[tokio::test]
async fn failing_trial_is_retried_then_recorded_as_failed_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    s.submit(spec("[0]", "[run]\nmax_attempts = 2\npack_size = 1\n"), "s.toml".into()).await.unwrap();
    let w = worker(&s, "w").await;
    let mut failures = 0;
    let mut done = 0;
    for _ in 0..10 {
        let g = s.lease(w.clone(), 1, None).await.unwrap();
        let Some(t) = g.trials.into_iter().next() else { break };
        if t.spec.arch == cbsweep_common::Arch::Rnn {
            failures += 1;
            s.complete(w.clone(), t.id, t.attempt, result(TrialOutcome::Failed("boom".into()))).await.unwrap();
        } else {
            done += 1;
            s.complete(w.clone(), t.id, t.attempt, result(TrialOutcome::Diverged)).await.unwrap();
        }
    }
    assert_eq!((failures, done), (2, 1), "two attempts at the failing trial, one at the other");
    let status = s.status(None).await.unwrap();
    let sweep = &status.sweeps[0];
    assert_eq!(sweep.state, cbsweep_common::SweepState::Done);
    let count = |st| sweep.counts.iter().find(|(s, _)| *s == st).map(|(_, n)| *n).unwrap();
    assert_eq!((count(TrialState::Done), count(TrialState::Failed)), (1, 1));
    let store = cbsweep_coordinator::store::Store::open_read_only(dir.path()).unwrap();
    let rows = store.trials(&"s".into()).unwrap();
    let failed = rows.iter().find(|r| r.state == TrialState::Failed).unwrap();
    assert_eq!(failed.last_error.as_deref(), Some("boom"));
    assert_eq!(failed.attempt, 2);
    let diverged = rows.iter().find(|r| r.state == TrialState::Done).unwrap();
    assert_eq!(diverged.outcome.as_deref(), Some("diverged"));
}

#[tokio::test]
async fn growing_a_finished_sweep_by_two_seeds_adds_only_the_new_cells() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    let first = s.submit(spec("[0, 1]", ""), "s.toml".into()).await.unwrap();
    assert_eq!((first.total, first.new), (4, 4));
    let w = worker(&s, "w").await;
    let mut ran = Vec::new();
    loop {
        let g = s.lease(w.clone(), 8, None).await.unwrap();
        if g.trials.is_empty() {
            break;
        }
        for t in g.trials {
            ran.push(t.id.clone());
            s.complete(w.clone(), t.id, t.attempt, result(TrialOutcome::Completed)).await.unwrap();
        }
    }
    assert_eq!(ran.len(), 4);
    let grown = s.submit(spec("[0, 1, 2, 3]", ""), "s.toml".into()).await.unwrap();
    assert_eq!((grown.total, grown.new), (8, 4));
    let mut leased = Vec::new();
    loop {
        let g = s.lease(w.clone(), 8, None).await.unwrap();
        if g.trials.is_empty() {
            break;
        }
        leased.extend(g.trials);
    }
    assert_eq!(leased.len(), 4);
    assert!(leased.iter().all(|t| !ran.contains(&t.id) && t.spec.seed.0 >= 2), "only the new seeds run");
    // Resubmitting the same spec adds nothing.
    assert_eq!(s.submit(spec("[0, 1, 2, 3]", ""), "s.toml".into()).await.unwrap().new, 0);
}

#[tokio::test]
async fn a_resubmission_says_which_cells_it_keeps_and_applies_its_run_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    let first = s.submit(spec("[0, 1, 2]", "[run]\nlease_seconds = 30\npack_size = 8\n"), "s.toml".into()).await.unwrap();
    assert_eq!(first.resubmission, cbsweep_common::Resubmission::default(), "a first submission has nothing to say");
    // seeds 1 and 2 dropped, a longer lease and packs of one
    let again = s.submit(spec("[0]", "[run]\nlease_seconds = 600\npack_size = 1\n"), "s.toml".into()).await.unwrap();
    assert_eq!((again.total, again.new, again.resubmission.kept), (6, 0, 4), "{again:?}");
    let changed: Vec<_> = again.resubmission.run_changes.iter().map(|c| (c.key.as_str(), c.before, c.after)).collect();
    assert_eq!(changed, [("run.pack_size", 8, 1), ("run.lease_seconds", 30, 600)]);
    // applied: packs of one, and the stored row holds the new lease
    let w = worker(&s, "w").await;
    assert_eq!(s.lease(w.clone(), 8, None).await.unwrap().trials.len(), 1, "packs of one now");
    drop(s);
    let row = cbsweep_coordinator::store::Store::open_read_only(dir.path()).unwrap().sweep(&"s".into()).unwrap().unwrap();
    assert_eq!((row.lease_seconds, row.pack_size), (600, 1));
}

#[tokio::test]
async fn spec_that_changes_an_existing_cell_is_refused_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    s.submit(spec("[0]", ""), "s.toml".into()).await.unwrap();
    let changed = spec("[0]", "steps_per_epoch = 7\n");
    let e = s.submit(changed, "s.toml".into()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SchedError::Conflict { .. }), "{msg}");
    assert!(msg.contains("budget.steps_per_epoch: 100 -> 7"), "{msg}");
}

#[tokio::test]
async fn restart_on_the_same_state_keeps_finished_trials_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (done_id, held) = {
        let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
        s.submit(spec("[0, 1]", "[run]\npack_size = 1\n"), "s.toml".into()).await.unwrap();
        let w = worker(&s, "w").await;
        let t = s.lease(w.clone(), 1, None).await.unwrap().trials.remove(0);
        s.complete(w.clone(), t.id.clone(), t.attempt, result(TrialOutcome::Completed)).await.unwrap();
        let h = s.lease(w.clone(), 1, None).await.unwrap().trials.remove(0);
        (t.id, (w, h))
    };
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    // The worker that held a lease before the restart finishes under it.
    let (w, h) = held;
    assert!(s.heartbeat(w.clone(), vec![(h.id.clone(), h.attempt)]).await.unwrap().is_empty(), "lease survives the restart");
    assert!(s.complete(w.clone(), h.id.clone(), h.attempt, result(TrialOutcome::Completed)).await.unwrap());
    let mut rest = Vec::new();
    loop {
        let g = s.lease(w.clone(), 8, None).await.unwrap();
        if g.trials.is_empty() {
            break;
        }
        for t in g.trials {
            assert_ne!(t.id, done_id, "a finished trial never runs again");
            rest.push(t.id.clone());
            s.complete(w.clone(), t.id, t.attempt, result(TrialOutcome::Completed)).await.unwrap();
        }
    }
    assert_eq!(rest.len(), 2);
    assert_eq!(s.status(None).await.unwrap().sweeps[0].state, cbsweep_common::SweepState::Done);
}

#[tokio::test]
async fn a_memory_budget_caps_the_pack_and_never_starves_a_trial() {
    use cbsweep_common::memory::trial_memory_bytes;
    use std::num::NonZeroU64;
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    let sweep = spec("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]", "[run]\npack_size = 16\n");
    let one = trial_memory_bytes(&sweep.trials[0]);
    s.submit(sweep, "s.toml".into()).await.unwrap();
    let w = worker(&s, "w").await;
    // room for three and a bit: three, although the worker and the sweep allow eight and 16
    let g = s.lease(w.clone(), 8, NonZeroU64::new(4 * one - 1)).await.unwrap();
    assert_eq!(g.trials.len(), 3);
    assert!(g.trials.iter().all(|t| t.spec.pack_key() == g.trials[0].spec.pack_key()));
    // a budget below one trial still leases one, alone
    assert_eq!(s.lease(w.clone(), 8, NonZeroU64::new(1)).await.unwrap().trials.len(), 1);
    // no budget: the worker's max
    assert_eq!(s.lease(w.clone(), 8, None).await.unwrap().trials.len(), 8);
}

#[tokio::test]
async fn a_result_can_carry_the_next_lease_and_a_refused_one_leases_nothing() {
    use cbsweep_coordinator::scheduler::NextLease;
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    // 2 seeds x 2 archs = 4 trials, leased one at a time
    s.submit(spec("[0, 1]", "[run]\npack_size = 1\n"), "s.toml".into()).await.unwrap();
    let a = worker(&s, "a").await;
    let one = NextLease { max: 1, memory_budget: None };
    let first = s.lease(a.clone(), 1, None).await.unwrap().trials.remove(0);
    let (recorded, grant) =
        s.complete_and_lease(a.clone(), first.id.clone(), first.attempt, result(TrialOutcome::Completed), Some(one)).await.unwrap();
    assert!(recorded);
    let second = grant.expect("a lease was asked for").trials.remove(0);
    assert_ne!(second.id, first.id);
    assert_eq!(second.attempt, Attempt(1));
    // A result that is refused (an attempt that is not the current one) takes no lease.
    let stale = s.complete_and_lease(a.clone(), second.id.clone(), Attempt(7), result(TrialOutcome::Completed), Some(one)).await;
    assert!(matches!(stale, Err(SchedError::StaleAttempt { attempt: 7, current: 1, .. })), "{stale:?}");
    let status = s.status(None).await.unwrap();
    let count = |state| status.sweeps[0].counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
    assert_eq!((count(TrialState::Done), count(TrialState::Leased), count(TrialState::Pending)), (1, 1, 2));
    // Without a request for one, no lease comes back; the last result of a sweep gets an empty,
    // drained grant.
    let (_, none) =
        s.complete_and_lease(a.clone(), second.id.clone(), second.attempt, result(TrialOutcome::Completed), None).await.unwrap();
    assert!(none.is_none());
    let mut held = s.lease(a.clone(), 2, None).await.unwrap().trials;
    assert_eq!(held.len(), 1, "pack_size caps the lease");
    let third = held.remove(0);
    let (_, grant) = s.complete_and_lease(a.clone(), third.id, third.attempt, result(TrialOutcome::Completed), Some(one)).await.unwrap();
    let last = grant.unwrap().trials.remove(0);
    let (_, grant) = s.complete_and_lease(a, last.id, last.attempt, result(TrialOutcome::Completed), Some(one)).await.unwrap();
    let grant = grant.unwrap();
    assert!(grant.trials.is_empty() && grant.drained, "{grant:?}");
}

#[tokio::test]
async fn attempt_numbers_only_grow_so_a_handed_back_attempts_late_result_stays_stale() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    // One trial, so that every lease below is of it.
    let text = "[sweep]\nname = \"s\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [0]\n[train]\nepochs = 2\n\
                [run]\nlease_seconds = 30\npack_size = 1\nmax_attempts = 2\n";
    s.submit(parse_spec(text, Path::new("s.toml")).unwrap(), "s.toml".into()).await.unwrap();
    let (a, b) = (worker(&s, "a").await, worker(&s, "b").await);
    let first = s.lease(a.clone(), 1, None).await.unwrap().trials.remove(0);
    assert_eq!(first.attempt, Attempt(1));
    expire_leases(&s).await;
    // Expired; b leases it as attempt 2 and hands it back (a preempted job).
    let second = lease_again(&s, &b, &first.id, 1).await;
    assert_eq!(second.attempt, Attempt(2));
    assert_eq!(s.release(b.clone(), vec![second.id.clone()]).await.unwrap(), 1);
    // The late result of attempt 1 must not become current again.
    let late = s.complete(a.clone(), first.id.clone(), first.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(late, Err(SchedError::StaleAttempt { attempt: 1, current: 2, .. })), "{late:?}");
    // Handed-back attempts do not use up max_attempts: many releases, then a real failure
    // still leaves attempts to run.
    let mut last = second;
    for _ in 0..4 {
        last = s.lease(b.clone(), 1, None).await.unwrap().trials.remove(0);
        s.release(b.clone(), vec![last.id.clone()]).await.unwrap();
    }
    assert_eq!(last.attempt, Attempt(6), "every lease a new attempt number");
    let t = s.lease(b.clone(), 1, None).await.unwrap().trials.remove(0);
    assert_eq!(t.attempt, Attempt(7));
    assert!(s.complete(b.clone(), t.id.clone(), t.attempt, result(TrialOutcome::Failed("boom".into()))).await.unwrap());
    // Attempt 1 expired and attempt 7 failed: 2 of 2 counted, so the trial has failed for good.
    let status = s.status(None).await.unwrap();
    assert_eq!(
        status.sweeps[0].counts.iter().find(|(st, _)| *st == TrialState::Failed).map(|c| c.1),
        Some(1),
        "{:?}",
        status.sweeps[0].counts
    );
    // retry-failed queues it again with a fresh count, and the attempt number still grows.
    assert_eq!(s.retry_failed("s".into()).await.unwrap(), 1);
    let again = s.lease(b.clone(), 1, None).await.unwrap().trials.remove(0);
    assert_eq!(again.attempt, Attempt(8));
    let stale = s.complete(b.clone(), t.id.clone(), t.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(stale, Err(SchedError::StaleAttempt { attempt: 7, current: 8, .. })), "{stale:?}");
    assert!(s.complete(b.clone(), again.id.clone(), again.attempt, result(TrialOutcome::Completed)).await.unwrap());
}

#[tokio::test]
async fn a_result_counts_only_from_the_registered_worker_holding_that_attempts_lease() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), opts()).unwrap();
    s.submit(spec("[0]", "[run]\nlease_seconds = 30\npack_size = 1\n"), "s.toml".into()).await.unwrap();
    let (owner, intruder) = (worker(&s, "owner").await, worker(&s, "intruder").await);
    let t = s.lease(owner.clone(), 1, None).await.unwrap().trials.remove(0);
    let other = s.lease(owner.clone(), 1, None).await.unwrap().trials.remove(0);
    // Another registered worker, an unregistered one, and attempt 0 are all refused.
    let r = s.complete(intruder.clone(), t.id.clone(), t.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(r, Err(SchedError::NotOwner { .. })), "{r:?}");
    let r = s.complete("ghost-1-0000".into(), t.id.clone(), t.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(r, Err(SchedError::UnknownWorker(_))), "{r:?}");
    let r = s.complete(owner.clone(), t.id.clone(), Attempt(0), result(TrialOutcome::Completed)).await;
    assert!(matches!(r, Err(SchedError::StaleAttempt { attempt: 0, .. })), "{r:?}");
    // The owner's result counts.
    assert!(s.complete(owner.clone(), t.id.clone(), t.attempt, result(TrialOutcome::Completed)).await.unwrap());
    // After its lease expired, even the owner's late result is refused (the trial runs again).
    expire_leases(&s).await;
    let r = s.complete(owner.clone(), other.id.clone(), other.attempt, result(TrialOutcome::Completed)).await;
    assert!(matches!(r, Err(SchedError::NotLeased { attempt: 1, .. })), "{r:?}");
    let again = s.lease(intruder.clone(), 1, None).await.unwrap().trials.remove(0);
    assert_eq!((again.id.clone(), again.attempt), (other.id.clone(), Attempt(2)));
    assert!(s.complete(intruder.clone(), again.id, again.attempt, result(TrialOutcome::Completed)).await.unwrap());
}
