//! `cbsweep-bench results`: Parquet write throughput, in rows per second, of curves.parquet
//! (22 columns) written by the coordinator's own writer for one trial's N epoch rows. The
//! baseline, measured in the same run: the same rows written as CSV text through a buffered
//! writer.

use cbsweep_common::EpochRecord;
use std::time::Instant;

pub(crate) fn bench_results(rows: usize) -> anyhow::Result<()> {
    use cbsweep_common::TrialId;
    let dir = tempfile::tempdir()?;
    let text = "[sweep]\nname = \"bench\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\"]\nseed = [0]\n";
    let spec = cbsweep_common::parse_spec(text, std::path::Path::new("bench.toml"))?.trials.remove(0);
    let row = cbsweep_results::TrialRow {
        id: spec.id(),
        sweep: spec.sweep.clone(),
        cell_index: 0,
        condition: spec.condition(),
        spec: spec.clone(),
        state: cbsweep_common::TrialState::Done,
        attempt: 1,
        worker: None,
        last_error: None,
        outcome: None,
        max_level: None,
        final_level: None,
        epochs_run: None,
        wall_time_ms: None,
        device: None,
        pack_size: None,
        completed_ms: None,
        resumes: 0,
        epochs_lost: 0,
    };
    let curves: Vec<(TrialId, EpochRecord)> = (0..rows)
        .map(|i| {
            let e = EpochRecord {
                epoch: i as u32 + 1,
                level: 2 + (i % 30) as u32,
                train_loss: 0.5,
                test_accuracy: 0.9,
                solved: i % 7 == 0,
                grad_norm: 1.5,
                core_learning: true,
                cb_learning: true,
            };
            (spec.id(), e)
        })
        .collect();
    let t0 = Instant::now();
    cbsweep_results::curves::write(&dir.path().join("c.parquet"), std::slice::from_ref(&row), &curves)?;
    let pq = rows as f64 / t0.elapsed().as_secs_f64();
    // Baseline: the same rows as CSV text through a buffered writer.
    let t0 = Instant::now();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(dir.path().join("c.csv"))?);
        for (id, e) in &curves {
            writeln!(
                w,
                "bench,{id},dms,cbrnn,64,256,64,0,simult,never,,1,0.01,0.01,{},{},{},{},{},{},{},{}",
                e.epoch, e.level, e.train_loss, e.test_accuracy, e.solved, e.grad_norm, e.core_learning, e.cb_learning
            )?;
        }
        w.flush()?;
    }
    let csv = rows as f64 / t0.elapsed().as_secs_f64();
    println!("results: {rows} curve rows (22 columns)");
    println!("  parquet: {pq:>12.0} rows/s   baseline csv: {csv:>12.0} rows/s   ratio {:.2}x", pq / csv);
    Ok(())
}
