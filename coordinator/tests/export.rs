//! The coordinator's store read as a `ResultsSource`: the sweep metadata it supplies (the spec
//! hash of the stored spec text), the rows the results crate reads, every table exported from a
//! real state directory, and the per-condition tally of the status view.

use cbsweep_common::{EpochRecord, SweepId, TrialOutcome, TrialResult, parse_spec, spec_hash};
use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions, WorkerHello};
use cbsweep_coordinator::store::Store;
use cbsweep_results::ResultsSource;
use std::path::Path;

const SPEC: &str = "[sweep]\nname = \"x\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0, 1]\n[train]\nepochs = 3\n";

fn result(solved: bool) -> TrialResult {
    let e = |epoch, level, solved| EpochRecord {
        epoch,
        level,
        train_loss: 0.5,
        test_accuracy: 0.9,
        solved,
        grad_norm: 1.0,
        core_learning: true,
        cb_learning: true,
    };
    TrialResult {
        outcome: TrialOutcome::Completed,
        curve: vec![e(1, 2, solved), e(2, if solved { 3 } else { 2 }, false), e(3, if solved { 3 } else { 2 }, false)],
        wall_time_ms: 2000,
        device: "test".into(),
        pack_size: 1,
        analyses: Vec::new(),
    }
}

#[tokio::test]
async fn the_store_supplies_the_spec_hash_and_every_table_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerHandle::start(dir.path(), SchedulerOptions::default()).unwrap();
    s.submit(parse_spec(SPEC, Path::new("x.toml")).unwrap(), "x.toml".into()).await.unwrap();
    let w = s.register(WorkerHello { hostname: "h".into(), device: "test".into(), pid: 1 }).await.unwrap();
    let mut finished = 0;
    loop {
        // one pack key per lease: the CB-RNN's trials, then the RNN's
        let leased = s.lease(w.clone(), 4, None).await.unwrap().trials;
        if leased.is_empty() {
            break;
        }
        for t in leased {
            let solved = t.spec.arch == cbsweep_common::Arch::Cbrnn;
            assert!(s.complete(w.clone(), t.id, t.attempt, result(solved)).await.unwrap());
            finished += 1;
        }
    }
    assert_eq!(finished, 4);
    let status = s.status(None).await.unwrap();
    let conditions = &status.sweeps[0].conditions;
    let levels: Vec<(u32, u32, f64)> = conditions.iter().map(|c| (c.total, c.done, c.mean_max_level)).collect();
    assert_eq!(levels, [(2, 2, 2.0), (2, 2, 0.0)], "cbrnn solved level 2, rnn nothing: {conditions:?}");
    drop(s);

    let sweep = SweepId::from("x");
    let store = Store::open_read_only(dir.path()).unwrap();
    let meta = ResultsSource::sweep(&store, &sweep).unwrap().expect("the sweep is stored");
    let validated = parse_spec(SPEC, Path::new("x.toml")).unwrap();
    assert_eq!(meta.spec_hash, validated.hash(), "the hash of the validated spec the store keeps");
    assert_ne!(meta.spec_hash, spec_hash(SPEC), "not of the text as the user wrote it");
    assert_eq!(meta.spec_overrides, cbsweep_common::overrides_text(&validated.overrides));
    assert!(ResultsSource::sweep(&store, &"other".into()).unwrap().is_none());
    assert_eq!(ResultsSource::trials(&store, &sweep).unwrap().len(), 4);
    assert_eq!(ResultsSource::curves(&store, &sweep).unwrap().len(), 4 * 3);

    let out = tempfile::tempdir().unwrap();
    let written = cbsweep_coordinator::export::export(dir.path(), &sweep, out.path()).unwrap();
    assert_eq!(written, out.path().join("x"));
    for table in ["trials", "curves", "levels", "analyses", "stats"] {
        let meta = std::fs::metadata(written.join(format!("{table}.parquet"))).unwrap();
        assert!(meta.len() > 0, "{table}.parquet is empty");
    }
}

#[test]
fn an_export_without_state_names_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let err = cbsweep_coordinator::export::export(&dir.path().join("none"), &"x".into(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("cbsweep.sqlite"), "{err}");
}
