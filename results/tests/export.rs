//! `export` through a `ResultsSource`: every table is written from what the source hands over,
//! the spec hash is the source's (this crate computes none), and a source's error comes back
//! as it is.

use arrow_array::{Array, StringArray};
use cbsweep_common::{AnalysisRecord, EpochRecord, SweepId, TrialId, TrialState, parse_spec};
use cbsweep_results::{ResultsError, ResultsSource, SweepMeta, TrialRow, export};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::Path;

/// A sweep held in memory; `broken` makes every read fail.
struct Memory {
    rows: Vec<TrialRow>,
    curves: Vec<(TrialId, EpochRecord)>,
    broken: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the memory source is broken")]
struct Broken;

impl ResultsSource for Memory {
    type Error = Broken;

    fn sweep(&self, sweep: &SweepId) -> Result<Option<SweepMeta>, Broken> {
        if self.broken {
            Err(Broken)
        } else if sweep.as_str() != "m" {
            Ok(None)
        } else {
            Ok(Some(SweepMeta { spec_hash: "from-the-source".into(), spec_overrides: "train.epochs=6".into(), ..Default::default() }))
        }
    }

    fn trials(&self, _: &SweepId) -> Result<Vec<TrialRow>, Broken> {
        if self.broken { Err(Broken) } else { Ok(self.rows.clone()) }
    }

    fn curves(&self, _: &SweepId) -> Result<Vec<(TrialId, EpochRecord)>, Broken> {
        Ok(self.curves.clone())
    }

    fn analyses(&self, _: &SweepId) -> Result<Vec<(TrialId, AnalysisRecord)>, Broken> {
        Ok(Vec::new())
    }
}

fn memory() -> Memory {
    let text = "[sweep]\nname = \"m\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [0]\n[train]\nepochs = 4\n";
    let spec = parse_spec(text, Path::new("m.toml")).unwrap();
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (i, s) in spec.trials.into_iter().enumerate() {
        for epoch in 1..=4 {
            let e = EpochRecord {
                epoch,
                level: 2,
                train_loss: 0.5,
                test_accuracy: 0.9,
                solved: epoch == 2,
                grad_norm: 1.0,
                core_learning: true,
                cb_learning: true,
            };
            curves.push((s.id(), e));
        }
        rows.push(TrialRow {
            id: s.id(),
            sweep: s.sweep.clone(),
            cell_index: i as u32,
            condition: s.condition(),
            state: TrialState::Done,
            attempt: 1,
            worker: None,
            last_error: None,
            outcome: Some("completed".into()),
            max_level: Some(2),
            final_level: Some(2),
            epochs_run: Some(4),
            wall_time_ms: Some(10),
            device: None,
            pack_size: Some(1),
            completed_ms: None,
            resumes: 0,
            epochs_lost: 0,
            spec: s,
        });
    }
    Memory { rows, curves, broken: false }
}

#[test]
fn export_writes_every_table_with_the_sources_spec_hash_and_overrides() {
    let out = tempfile::tempdir().unwrap();
    let dir = export(&memory(), &"m".into(), out.path()).unwrap();
    assert_eq!(dir, out.path().join("m"));
    for table in ["trials", "curves", "levels", "analyses", "stats"] {
        assert!(dir.join(format!("{table}.parquet")).is_file(), "{table}.parquet missing");
    }
    let file = std::fs::File::open(dir.join("trials.parquet")).unwrap();
    let batch = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().next().unwrap().unwrap();
    let hashes = batch.column_by_name("spec_hash").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    assert_eq!(hashes.len(), 2);
    assert!(hashes.iter().all(|h| h == Some("from-the-source")), "{hashes:?}");
    let overrides = batch.column_by_name("spec_overrides").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    assert!(overrides.iter().all(|o| o == Some("train.epochs=6")), "{overrides:?}");
}

#[test]
fn a_sources_error_comes_back_as_it_is() {
    let out = tempfile::tempdir().unwrap();
    let err = export(&Memory { broken: true, ..memory() }, &"m".into(), out.path()).unwrap_err();
    assert!(matches!(err, ResultsError::Source(_)), "{err:?}");
    assert_eq!(err.to_string(), "the memory source is broken");
    assert!(!out.path().join("m").exists(), "nothing written");
}

#[test]
fn a_sweep_the_source_does_not_hold_or_a_path_for_a_name_writes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let good = export(&memory(), &"m".into(), out.path()).unwrap();
    let before = std::fs::read(good.join("trials.parquet")).unwrap();
    let e = export(&memory(), &"nosuch".into(), out.path()).unwrap_err();
    assert!(matches!(e, ResultsError::UnknownSweep(_)), "{e}");
    assert!(e.to_string().contains("sweep nosuch is not in the coordinator's state"), "{e}");
    assert!(!out.path().join("nosuch").exists(), "no empty tables were written");
    for name in ["../../x", "a/b", ".."] {
        let e = export(&memory(), &name.into(), out.path()).unwrap_err();
        assert!(matches!(e, ResultsError::BadSweepName(..)), "{name}: {e}");
    }
    assert!(!out.path().parent().unwrap().join("x").exists());
    assert_eq!(std::fs::read(good.join("trials.parquet")).unwrap(), before, "the good tables are untouched");
}
