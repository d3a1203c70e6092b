//! `cbsweep-bench e2e`: the orchestration overhead of `cbsweep run` (coordinator, gRPC, worker
//! processes, SQLite, Parquet) on a whole sweep: its wall time against the baseline, the
//! trainers' own time (each worker's union of training intervals, from the store) spread over
//! the workers; the workers' idle time is split into orchestration (start, between trials,
//! finish) and load imbalance (the tail). Without `--spec`, a 48-trial sweep with the fake
//! trainer (50 ms epochs) isolates the orchestration.

use std::time::Instant;

/// Runs a sweep through `cbsweep run` (coordinator, gRPC, worker processes, SQLite, Parquet)
/// and compares its wall time with the ideal: the trainers' own wall time spread over the
/// workers (each pack's time counted once).
pub(crate) fn bench_e2e(spec: Option<&std::path::Path>, workers: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (spec_path, fake) = match spec {
        Some(p) => (p.to_owned(), false),
        None => {
            let seeds: Vec<String> = (0..12).map(|s| s.to_string()).collect();
            let text = format!(
                "[sweep]\nname = \"e2e\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 10\n[run]\npack_size = 1\n",
                seeds.join(",")
            );
            let p = dir.path().join("e2e.toml");
            std::fs::write(&p, text)?;
            (p, true)
        }
    };
    let sweep = cbsweep_common::load_spec(&spec_path)?.id;
    let bin = std::env::current_exe()?.with_file_name("cbsweep");
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("run").arg(&spec_path).args(["--workers", &workers.to_string(), "--out"]).arg(&out);
    if fake {
        cmd.args(["--trainer", "fake", "--worker-arg=--fake-epoch-ms=50"]);
    }
    let launched_ms = cbsweep_coordinator::store::now_ms();
    let t0 = Instant::now();
    let o = cmd.output()?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(o.status.success(), "cbsweep run failed: {}", String::from_utf8_lossy(&o.stderr));
    let state = out.join(cbsweep_coordinator::local::STATE_DIR);
    let rows = cbsweep_coordinator::store::Store::open_read_only(&state)?.trials(&sweep)?;
    // A trial's training ran within [completed - wall time, completed] on its worker (its pack
    // started then; the result is sent when the whole pack ends): a worker's trainer time is
    // the union of those intervals, so the trials of one pack count once.
    let mut spans: std::collections::BTreeMap<String, Vec<(i64, i64)>> = std::collections::BTreeMap::new();
    for r in &rows {
        if let (Some(worker), Some(done), Some(wall)) = (&r.worker, r.completed_ms, r.wall_time_ms) {
            spans.entry(worker.clone()).or_default().push((done - wall as i64, done));
        }
    }
    let mut busy_ms = 0i64;
    // where the rest of the wall time went, in ms summed over the workers
    let last_end = spans.values().flat_map(|l| l.iter().map(|s| s.1)).max().unwrap_or(launched_ms);
    let (mut startup, mut tails) = (0i64, 0i64);
    for list in spans.values_mut() {
        list.sort_unstable();
        startup += list.first().map_or(0, |s| s.0 - launched_ms);
        tails += last_end - list.iter().map(|s| s.1).max().unwrap_or(last_end);
        let mut current: Option<(i64, i64)> = None;
        for &(start, end) in list.iter() {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    busy_ms += e - s;
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        busy_ms += current.map_or(0, |(s, e)| e - s);
    }
    let ideal = busy_ms as f64 / 1000.0 / f64::from(workers);
    println!(
        "e2e: {} trials of sweep {sweep} ({} trainer), {workers} workers",
        rows.len(),
        if fake { "fake, 50 ms epochs" } else { "torch" }
    );
    println!("  wall {wall:.2} s   trainers' own time / workers (the baseline) {ideal:.2} s   ratio {:.3}x", wall / ideal);
    let per_worker = |ms: i64| ms as f64 / 1000.0 / f64::from(workers);
    let finish = wall - (last_end - launched_ms) as f64 / 1000.0;
    let (start, tail) = (per_worker(startup), per_worker(tails));
    let between = (wall - ideal) - start - tail - finish;
    let pct = |s: f64| 100.0 * s / wall;
    println!("  workers idle {:.1}% of the wall time (each figure below a mean over the workers):", pct(wall - ideal));
    println!(
        "    orchestration {:.1}%: start (launch to a worker's first trial) {start:.2} s, between trials {between:.2} s, finish (last result to exit) {finish:.2} s",
        pct(start + between + finish)
    );
    println!(
        "    load imbalance {:.1}%: tail (a worker with nothing left while another still trains) {tail:.2} s; it depends on how the trials' lengths fall, not on the machinery",
        pct(tail)
    );
    Ok(())
}
