//! The study's claims as the lab compares them, end to end through `cbsweep run` and
//! `cbsweep stats` (real processes, gRPC, training): a short reservoir sweep whose statistics set
//! the reservoir CB-RNN against the simult RNN and the simult CB-RNN (claim 3) in the lab's
//! measures, and reduced plasticity whose readout learns at the core's reduced rate (claim 2),
//! read back by DuckDB.

use cbsweep_tests::{cbsweep, duckdb, text, write_spec};

const RESERVOIR: &str = r#"
[sweep]
name = "claims"
[grid]
task = ["dms"]
arch = ["cbrnn", "rnn"]
seed = [0, 1]
regime = ["simult", "reservoir"]
freeze = ["level:2"]
core_plasticity = [1.0, 0.01]
exclude = [{ arch = "rnn", regime = "reservoir" }]
[stats]
compare = [["cbrnn:reservoir", "rnn:simult"], ["cbrnn:reservoir", "cbrnn:simult"], ["cbrnn:simult", "rnn:simult"]]
freeze_vs_simult = false
[train]
epochs = 4
steps_per_epoch = 10
test_batches = 2
batch_size = 16
solve_threshold = 0.6
[analysis]
every_levels = 0
[run]
pack_size = 4
"#;

#[test]
fn a_short_reservoir_sweep_compares_across_regimes_in_the_labs_measures() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "claims.toml", RESERVOIR);
    let out = dir.path().join("out");
    let o = cbsweep(&["run", spec.to_str().unwrap(), "--workers", "2", "--threads", "1", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cbsweep(&["stats", "claims", "--out", out.to_str().unwrap()]);
    let printed = text(&o);
    assert!(o.status.success(), "{printed}");
    println!("{printed}");
    let (_, comparisons) = printed.split_once("comparisons (").expect("a comparisons table");
    for pair in ["cbrnn:reservoir_vs_rnn:simult", "cbrnn:reservoir_vs_cbrnn:simult", "cbrnn:simult_vs_rnn:simult"] {
        for m in ["max_n", "area_n", "epochs_to_half_max_n"] {
            // one line per plasticity factor
            let lines = comparisons.lines().filter(|l| l.contains(&format!(" {pair} ")) && l.contains(&format!(" {m} "))).count();
            assert_eq!(lines, 2, "{pair} {m}:\n{printed}");
        }
    }
    assert!(!comparisons.contains("freeze_vs_simult"), "the spec dropped them:\n{printed}");

    let results = out.join("claims");
    let rows = duckdb(&format!(
        "SELECT comparison, count(*) AS n, count(DISTINCT reference) AS refs FROM '{}' WHERE kind = 'comparison' AND measure = 'max_n' \
         GROUP BY comparison ORDER BY comparison",
        results.join("stats.parquet").display()
    ));
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r["comparison"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap())).collect();
    let want = ["cbrnn:reservoir_vs_cbrnn:simult", "cbrnn:reservoir_vs_rnn:simult", "cbrnn:simult_vs_rnn:simult"];
    assert_eq!(got, want.map(|w| (w.to_string(), 2)), "{rows:?}");

    // the lab's measures beside cbsweep's in trials.parquet: N starts at 2, max_n is the
    // highest level trained (highest solved + 1 once something was solved and training went on)
    let trials = duckdb(&format!(
        "SELECT arch, core_plasticity, lr_core, lr_readout, max_level, max_n, area_n, epochs_run FROM '{}' ORDER BY ALL",
        results.join("trials.parquet").display()
    ));
    assert_eq!(trials.len(), 12, "{trials:?}");
    for t in &trials {
        let (max_level, max_n) = (t["max_level"].as_i64().unwrap(), t["max_n"].as_i64().unwrap());
        // (max_n = max_level when the last solve came in the budget's last epoch: nothing trained after it)
        assert!(if max_level == 0 { max_n == 2 } else { max_n == max_level + 1 || max_n == max_level }, "{t}");
        assert!(t["area_n"].as_f64().unwrap() >= 2.0 * 3.0, "N >= 2 over 4 epochs: {t}");
        // the readout learns in the core's group: at plasticity 0.01 its rate is 1e-4
        let plasticity = t["core_plasticity"].as_f64().unwrap();
        assert_eq!(t["lr_readout"].as_f64().unwrap(), t["lr_core"].as_f64().unwrap() * plasticity, "{t}");
    }
}
