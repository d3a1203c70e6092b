//! The lab's controls and variants end to end: a short sweep of the CB-RNN against the
//! recurrent-module control and the matched RNN through `cbsweep run` (real processes, gRPC,
//! libtorch), its tables read back by DuckDB, its statistics and figures; and the repository's
//! sweeps of the control and of the GRU variant validate into the cells they promise.

use cbsweep_tests::{cbsweep, duckdb, text, write_spec};

const CONTROL: &str = r#"
[sweep]
name = "control"
[grid]
task = ["dms"]
arch = ["cbrnn", "rmrnn", "rnn"]
seed = [0, 1, 2]
regime = ["simult", "reservoir"]
freeze = ["level:2"]
[train]
epochs = 4
steps_per_epoch = 10
test_batches = 2
batch_size = 16
# every epoch passes (any accuracy above 0), so every trial has checkpoints to analyse (levels 2 and 3) whatever its
# numbers on this host: what is checked is that each architecture is analysed as it should be
solve_threshold = 0.000001
max_level = 3
[analysis]
timescale_steps = 400
timescale_burn_in = 50
timescale_max_lag = 40
timescale_fit_lags = 10
recovery_steps = 100
recovery_eval_batches = 10
[run]
pack_size = 3
"#;

#[test]
fn a_sweep_of_the_cbrnn_the_recurrent_module_control_and_the_matched_rnn_runs_with_stats_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "control.toml", CONTROL);
    let out = dir.path().join("out");
    let o = cbsweep(&["run", spec.to_str().unwrap(), "--workers", "2", "--threads", "1", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    println!("{}", text(&o));
    let results = out.join("control");
    let rows = duckdb(&format!(
        "SELECT arch, hidden, granule, module_units, param_count, status, outcome, epochs_run FROM '{}' ORDER BY arch, seed",
        results.join("trials.parquet").display()
    ));
    assert_eq!(rows.len(), 18, "one row per cell: {rows:?}");
    for r in &rows {
        assert_eq!((r["status"].as_str(), r["outcome"].as_str()), (Some("done"), Some("completed")), "{r}");
        let (params, units) = match r["arch"].as_str() {
            Some("cbrnn") => (41_922, serde_json::Value::Null),
            Some("rmrnn") => (64 * 64 + 5 * 64 + 2 + 37_594, 139.into()),
            _ => (41_816, serde_json::Value::Null),
        };
        assert_eq!((&r["param_count"], &r["module_units"]), (&params.into(), &units), "{r}");
    }
    // the control's module is ablated and analysed as a module: its state and output
    let analysed = duckdb(&format!(
        "SELECT DISTINCT population FROM '{}' WHERE trial_id IN (SELECT trial_id FROM '{}' WHERE arch = 'rmrnn') ORDER BY 1",
        results.join("analyses.parquet").display(),
        results.join("trials.parquet").display()
    ));
    let populations: Vec<&str> = analysed.iter().filter_map(|r| r["population"].as_str()).collect();
    assert_eq!(populations, ["cb_output", "hidden", "network", "recurrent_module"], "{analysed:?}");
    // every analysed checkpoint of a model with a module has the readout recovery, the RNN none
    let checkpoints = duckdb(&format!(
        "SELECT t.arch, a.trial_id, a.level, count(*) FILTER (WHERE a.metric LIKE 'recovery_%') AS recovery_rows,
                any_value(a.value) FILTER (WHERE a.metric = 'recovery_intact_accuracy') AS intact,
                any_value(a.value) FILTER (WHERE a.metric = 'recovery_zero_shot_accuracy') AS zero_shot,
                any_value(a.value) FILTER (WHERE a.metric = 'recovery_accuracy') AS recovered,
                any_value(a.value) FILTER (WHERE a.metric = 'recovery_gap') AS gap
         FROM '{}' a JOIN '{}' t USING (trial_id) WHERE a.population = 'network' GROUP BY ALL ORDER BY ALL",
        results.join("analyses.parquet").display(),
        results.join("trials.parquet").display()
    ));
    for arch in ["cbrnn", "rmrnn"] {
        assert!(checkpoints.iter().any(|r| r["arch"] == arch), "{arch} has analysed checkpoints: {checkpoints:?}");
    }
    for r in &checkpoints {
        let module = r["arch"] != "rnn";
        assert_eq!(r["recovery_rows"], if module { 4 } else { 0 }, "{r}");
        if module {
            let [intact, zero_shot, recovered, gap] = ["intact", "zero_shot", "recovered", "gap"].map(|k| r[k].as_f64().unwrap());
            assert!([intact, zero_shot, recovered].iter().all(|a| (0.0..=1.0).contains(a)), "{r}");
            assert!((gap - (intact - recovered)).abs() < 1e-12, "{r}"); // through DuckDB's JSON: the last bits may round
        }
    }
    let conditions =
        duckdb(&format!("SELECT DISTINCT arch FROM '{}' WHERE kind = 'condition' ORDER BY 1", results.join("stats.parquet").display()));
    let archs: Vec<&str> = conditions.iter().filter_map(|r| r["arch"].as_str()).collect();
    assert_eq!(archs, ["cbrnn", "rmrnn", "rnn"], "a condition row per architecture");

    let o = cbsweep(&["stats", "control", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rmrnn"), "{}", text(&o));
    let o = cbsweep(&["plot", "control", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(results.join("figures/learning_curves.png").is_file());
}

#[test]
fn the_control_and_gru_sweeps_validate_into_their_cells() {
    for (file, cells, archs) in
        [("sweeps/recurrent-module-control.toml", 144, &["cbrnn", "rmrnn", "rnn"][..]), ("sweeps/gru.toml", 48, &["cbgru", "gru"][..])]
    {
        let o = cbsweep(&["validate", cbsweep_tests::root().join(file).to_str().unwrap()]);
        assert!(o.status.success(), "{file}: {}", text(&o));
        let said = text(&o);
        assert!(said.contains(&format!("{cells} trials")), "{file}: {said}");
        for arch in archs {
            assert!(said.contains(arch), "{file} names {arch}: {said}");
        }
    }
}
