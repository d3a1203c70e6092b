//! Statistics across seeds and figures, on a synthetic sweep: stats.parquet is recomputed from
//! trials.parquet and curves.parquet by scipy in the project's Python and must agree within 1e-9
//! relative; every figure kind with data is written as a non-empty PNG and SVG.

use cbsweep_common::{AnalysisRecord, Arch, ComparePair, EpochRecord, Regime, StatsPlan, TrialId, TrialState, parse_spec};
use cbsweep_results::measures::Measure;
use cbsweep_results::{TrialRow, curves, plot, stats, trials};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;

const SPEC: &str = r#"
[sweep]
name = "stats-test"
[grid]
task = ["dms", "parity"]
arch = ["cbrnn", "rnn"]
seed = [0, 1, 2, 3, 4]
regime = ["simult", "reservoir"]
freeze = ["level:2"]
[train]
epochs = 40
"#;

type Sweep = (Vec<TrialRow>, Vec<(TrialId, EpochRecord)>, Vec<(TrialId, AnalysisRecord)>);

/// The synthetic sweep: 2 tasks x 2 architectures x (simult, reservoir at level 2) x 5 seeds.
/// The CB-RNN solves levels more often than the RNN; parity is harder. One trial diverges
/// (a short curve) and four of the parity RNN reservoir trials failed (no curve), leaving that
/// condition a single trial, so its comparisons are degenerate.
fn sweep() -> Sweep {
    let spec = parse_spec(SPEC, Path::new("stats-test.toml")).unwrap();
    let mut rows = Vec::new();
    let mut curve = Vec::new();
    let mut analyses = Vec::new();
    for (i, s) in spec.trials.into_iter().enumerate() {
        let failed = s.task.to_string() == "parity" && s.arch == Arch::Rnn && s.regime != Regime::Simult && s.seed.0 > 0;
        let diverged = s.task.to_string() == "dms" && s.arch == Arch::Rnn && s.regime == Regime::Simult && s.seed.0 == 3;
        let id = s.id();
        let mut rng = StdRng::seed_from_u64(1000 + i as u64);
        let mut p = match s.arch {
            Arch::Cbrnn => 0.55,
            _ => 0.35,
        };
        if s.task.to_string() == "parity" {
            p -= 0.15;
        }
        if s.regime != Regime::Simult {
            p -= 0.05;
        }
        let epochs = if diverged { 15 } else { s.budget.epochs };
        let mut level = s.budget.start_level;
        let mut max_level = 0;
        for epoch in 1..=epochs {
            if failed {
                break;
            }
            let solved = rng.random::<f64>() < p * 6.0 / (level as f64 + 4.0);
            let (acc, loss) = if solved { (0.985, 0.05) } else { (0.6 + 0.3 * rng.random::<f64>(), 0.6) };
            curve.push((
                id.clone(),
                EpochRecord {
                    epoch,
                    level,
                    train_loss: loss,
                    test_accuracy: acc,
                    solved,
                    grad_norm: 1.0,
                    core_learning: true,
                    cb_learning: s.arch == Arch::Cbrnn,
                },
            ));
            if solved {
                max_level = level;
                for (population, metric, value) in synthetic_analysis(s.arch, level, &mut rng) {
                    analyses
                        .push((id.clone(), AnalysisRecord { level, epoch, population: population.into(), metric: metric.into(), value }));
                }
                level += 1;
            }
        }
        let state = if failed { TrialState::Failed } else { TrialState::Done };
        rows.push(TrialRow {
            id,
            sweep: s.sweep.clone(),
            cell_index: i as u32,
            condition: s.condition(),
            state,
            attempt: 1,
            worker: None,
            last_error: failed.then(|| "synthetic failure".to_string()),
            outcome: (!failed).then(|| if diverged { "diverged" } else { "completed" }.to_string()),
            max_level: (!failed).then_some(max_level),
            final_level: (!failed).then_some(level),
            epochs_run: (!failed).then_some(epochs),
            wall_time_ms: Some(10),
            device: Some("synthetic".into()),
            pack_size: Some(1),
            completed_ms: None,
            resumes: 0,
            epochs_lost: 0,
            spec: s,
        });
    }
    (rows, curve, analyses)
}

fn synthetic_analysis(arch: Arch, level: u32, rng: &mut StdRng) -> Vec<(&'static str, &'static str, f64)> {
    let mut out = Vec::new();
    let populations: &[&str] = match arch {
        Arch::Cbrnn => &["hidden", "granule", "purkinje", "cb_output"],
        _ => &["hidden"],
    };
    if arch == Arch::Cbrnn {
        let drop = 0.1 + 0.02 * level as f64 + 0.05 * rng.random::<f64>();
        // the readout recovery wins back most of the drop (no draw: the other values stay)
        out.extend([
            ("network", "accuracy_cb_on", 0.99),
            ("network", "accuracy_cb_off", 0.99 - drop),
            ("network", "ablation_drop", drop),
            ("network", "recovery_accuracy", 0.99 - drop / 4.0),
            ("network", "recovery_gap", drop / 4.0),
        ]);
    } else {
        out.push(("network", "accuracy_cb_on", 0.98));
    }
    for (k, p) in populations.iter().enumerate() {
        out.push((*p, "participation_ratio", 2.0 + k as f64 + 0.1 * level as f64 + rng.random::<f64>()));
        out.push((*p, "d95_fraction", 0.1 + 0.05 * k as f64 + 0.1 * rng.random::<f64>()));
        out.push((*p, "timescale_median_steps", 1.5 + 0.3 * level as f64 + k as f64 + rng.random::<f64>()));
        out.push((*p, "population_lag_1e_steps", (2 + level / 2 + k as u32) as f64));
    }
    out
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.is_file(), "{} is missing: run `bash scripts/setup.sh` (make test does)", p.display());
    p
}

/// Writes the sweep's tables and `plan` (as plan.json) to a folder and has scipy recompute
/// stats.parquet from trials.parquet and curves.parquet; returns scipy's report.
fn check_with_scipy(rows: &[TrialRow], curve: &[(TrialId, EpochRecord)], stat_rows: &[stats::StatRow], plan: &StatsPlan) -> String {
    let dir = tempfile::tempdir().unwrap();
    let meta = cbsweep_results::SweepMeta { spec_hash: "test".into(), spec_overrides: "train.epochs=20".into(), ..Default::default() };
    trials::write(&dir.path().join(trials::FILE), rows, curve, &meta).unwrap();
    curves::write(&dir.path().join(curves::FILE), rows, curve).unwrap();
    stats::write(&dir.path().join(stats::FILE), stat_rows).unwrap();
    let pairs: Vec<String> = plan.pairs.iter().map(|p| format!("[\"{}\", \"{}\"]", p.a, p.b)).collect();
    let json = format!("{{\"pairs\": [{}], \"freeze_vs_simult\": {}}}", pairs.join(", "), plan.freeze_vs_simult);
    std::fs::write(dir.path().join("plan.json"), json).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stats_check.py");
    let out = Command::new(python()).arg(&script).arg(dir.path()).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scipy disagrees:\n{text}");
    assert!(text.contains(&format!("checked {} rows", stat_rows.len())), "{text}");
    text
}

#[test]
fn stats_parquet_matches_scipy_recomputed_from_the_curves() {
    let (rows, curve, _) = sweep();
    let stat_rows = stats::compute(&rows, &curve, &StatsPlan::default());
    let conditions = stat_rows.iter().filter(|r| r.summary().is_some()).count();
    let comparisons = stat_rows.iter().filter(|r| r.tests().is_some()).count();
    // 8 conditions; 4 CB-RNN vs RNN and 4 freeze vs simult pairs; 7 measures each.
    assert_eq!((conditions, comparisons), (8 * 7, 8 * 7));
    let degenerate = stat_rows.iter().filter_map(|r| r.tests()).filter(|t| t.a.n < 2 || t.b.n < 2).count();
    assert_eq!(degenerate, 2 * 7, "the single-trial condition is in two comparisons");
    println!("{}", check_with_scipy(&rows, &curve, &stat_rows, &StatsPlan::default()));
}

/// Claim 3 as the lab compares it: the reservoir CB-RNN against the simult RNN and the simult
/// CB-RNN, across regimes, in the lab's measures; scipy recomputes every row.
#[test]
fn comparisons_across_regimes_match_scipy() {
    let (rows, curve, _) = sweep();
    let pair = |a: &str, b: &str| ComparePair { a: a.parse().unwrap(), b: b.parse().unwrap() };
    let plan =
        StatsPlan { pairs: vec![pair("cbrnn:reservoir", "rnn:simult"), pair("cbrnn:reservoir", "cbrnn:simult")], freeze_vs_simult: false };
    let stat_rows = stats::compute(&rows, &curve, &plan);
    let compared: Vec<&stats::StatRow> = stat_rows.iter().filter(|r| r.tests().is_some() && r.measure == Measure::MaxN).collect();
    // one row per task and pair: group a the reservoir CB-RNN, b the simult RNN or CB-RNN
    assert_eq!(compared.len(), 2 * 2, "{compared:?}");
    for r in &compared {
        let stats::StatValues::Comparison { reference, comparison, .. } = &r.values else { unreachable!() };
        assert_eq!((r.spec.arch, r.spec.regime.name()), (Arch::Cbrnn, "reservoir"));
        let b_arch =
            if comparison.name().ends_with("rnn:simult") && !comparison.name().ends_with("cbrnn:simult") { "rnn" } else { "cbrnn" };
        assert!(reference.contains(&format!("arch={b_arch} ")) && reference.contains("regime=simult"), "{reference}");
        assert!(reference.contains(&format!("task={} ", r.spec.task)), "the same task: {reference}");
    }
    let text = stats::print(&stat_rows);
    assert!(text.contains("max_n") && text.contains("area_n") && text.contains("epochs_to_half_max_n"), "{text}");
    println!("{}", check_with_scipy(&rows, &curve, &stat_rows, &plan));
}

#[test]
fn printed_stats_show_each_comparison_and_measure() {
    let (rows, curve, _) = sweep();
    let text = stats::print(&stats::compute(&rows, &curve, &StatsPlan::default()));
    println!("{text}");
    let (conditions, comparisons) = text.split_once("comparisons (").expect("a comparisons table");
    assert_eq!(conditions.lines().filter(|l| l.contains(" dms ") || l.contains(" parity ")).count(), 8, "{text}");
    for m in Measure::ALL {
        let lines = comparisons.lines().filter(|l| l.starts_with('│') && l.contains(&format!(" {} ", m.name()))).count();
        let shown = if Measure::LAB.contains(&m) { 8 } else { 0 };
        assert_eq!(lines, shown, "one line per comparison for each of the lab's measures, {}:\n{text}", m.name());
    }
    let line =
        |within: &str, pair: &str| comparisons.lines().any(|l| l.contains(&format!(" {within} ")) && l.contains(&format!(" {pair} ")));
    assert!(line("dms simult", "cbrnn vs rnn"), "{text}");
    assert!(line("parity cbrnn", "reservoir level:2 vs simult"), "{text}");
}

#[test]
fn plot_writes_a_png_and_an_svg_for_every_figure_with_data() {
    let (rows, curve, analyses) = sweep();
    let dir = tempfile::tempdir().unwrap();
    let written = plot::plot(&rows, &curve, &analyses, dir.path()).unwrap();
    if let Some(keep) = std::env::var_os("CBSWEEP_FIGURES_DIR") {
        // To look at the figures: CBSWEEP_FIGURES_DIR=/tmp/figures cargo nextest run -p cbsweep-results -E 'binary(stats)'
        plot::plot(&rows, &curve, &analyses, Path::new(&keep)).unwrap();
    }
    let names =
        [plot::LEARNING_CURVES, plot::LEARNING_MEASURES, plot::FREEZE_POINTS, plot::ABLATION, plot::DIMENSIONALITY, plot::TIMESCALES];
    assert_eq!(written.len(), 2 * names.len(), "{written:?}");
    for name in names {
        let png = std::fs::read(dir.path().join(format!("{name}.png"))).unwrap();
        assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}.png is not a PNG");
        let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>") && svg.contains("<text"), "{name}.svg has no drawing");
    }
    // the ablation figure draws the recovered accuracy beside the module on and off, and the gap
    // left beside the drop
    let ablation = std::fs::read_to_string(dir.path().join(format!("{}.svg", plot::ABLATION))).unwrap();
    for text in ["accuracy_cb_on", "accuracy_cb_off", "recovery_accuracy", "ablation_drop", "recovery_gap", "accuracy lost"] {
        assert!(ablation.contains(text), "the ablation figure names {text}");
    }
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn figures_without_data_are_skipped() {
    let (rows, curve, _) = sweep();
    let dir = tempfile::tempdir().unwrap();
    assert!(plot::plot(&rows, &[], &[], dir.path()).unwrap().is_empty());
    assert!(stats::compute(&rows, &[], &StatsPlan::default()).is_empty());
    // One regime only: no freeze-point figure; no analyses: no analysis figures.
    let simult: Vec<TrialRow> = rows.into_iter().filter(|r| r.spec.regime == Regime::Simult).collect();
    let written = plot::plot(&simult, &curve, &[], dir.path()).unwrap();
    let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["learning_curves.png", "learning_curves.svg", "learning_measures.png", "learning_measures.svg"]);
}

/// Sample pairs of every kind the Mann-Whitney method choice tells apart: small without ties
/// (exact), small with ties (permutation), both large (asymptotic), one small against one
/// large, fully separated, all tied.
fn mwu_pairs() -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut rng = StdRng::seed_from_u64(19);
    let mut pairs = vec![(vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]), (vec![3.0, 3.0], vec![3.0, 3.0, 3.0])];
    for (na, nb, ties) in [(4, 4, false), (3, 7, false), (8, 8, false), (5, 12, false), (3, 30, false), (9, 10, false), (12, 15, false)]
        .into_iter()
        .chain([(4, 4, true), (5, 6, true), (8, 8, true), (3, 12, true), (9, 9, true), (12, 15, true)])
    {
        for _ in 0..6 {
            let draw = |rng: &mut StdRng, shift: f64| {
                if ties { f64::from(rng.random_range(0..5u32)) + shift.round() } else { rng.random::<f64>() * 10.0 + shift }
            };
            let shift = rng.random::<f64>() * 3.0;
            let a: Vec<f64> = (0..na).map(|_| draw(&mut rng, shift)).collect();
            let b: Vec<f64> = (0..nb).map(|_| draw(&mut rng, 0.0)).collect();
            pairs.push((a, b));
        }
    }
    pairs
}

#[test]
fn mann_whitney_p_values_and_methods_match_scipy() {
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",");
    let mut lines = Vec::new();
    let mut methods = std::collections::BTreeSet::new();
    for (a, b) in mwu_pairs() {
        let t = cbsweep_results::summary::Tests::of(&a, &b);
        let method = t.mwu_method.map(|m| m.name()).unwrap_or("");
        methods.insert(method);
        lines.push(format!("{};{};{:?};{method}", list(&a), list(&b), t.mwu_p));
    }
    assert_eq!(methods, ["", "asymptotic", "exact", "permutation"].into_iter().collect(), "every method is exercised");
    let separated = cbsweep_results::summary::Tests::of(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
    assert_eq!(separated.mwu_method, Some(cbsweep_results::summary::MwuMethod::Exact));
    assert!((separated.mwu_p - 2.0 / 70.0).abs() < 1e-12, "2 of the 70 splits are as extreme: {}", separated.mwu_p);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stats_check.py");
    let out = Command::new(python()).arg(&script).arg("--pairs").arg(&file).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scipy disagrees:\n{text}");
    assert!(text.contains(&format!("checked {} pairs, 0 disagree", lines.len())), "{text}");
}

#[test]
fn the_compared_architectures_are_the_specs() {
    let (rows, curve, _) = sweep();
    let default = stats::compute(&rows, &curve, &StatsPlan::default());
    let pair = |a: &str, b: &str| ComparePair { a: a.parse().unwrap(), b: b.parse().unwrap() };
    let reversed = stats::compute(&rows, &curve, &StatsPlan { pairs: vec![pair("rnn", "cbrnn")], freeze_vs_simult: true });
    let named = |rs: &[stats::StatRow], name: &str| -> Vec<stats::StatRow> {
        rs.iter().filter(|r| r.comparison().map(|c| c.name()).as_deref() == Some(name)).cloned().collect()
    };
    let (forward, backward) = (named(&default, "cbrnn_vs_rnn"), named(&reversed, "rnn_vs_cbrnn"));
    assert!(!forward.is_empty() && forward.len() == backward.len());
    assert!(named(&reversed, "cbrnn_vs_rnn").is_empty());
    for (f, b) in forward.iter().zip(&backward) {
        let (tf, tb) = (f.tests().unwrap(), b.tests().unwrap());
        assert_eq!(f.spec.arch, Arch::Cbrnn);
        assert_eq!(b.spec.arch, Arch::Rnn, "group a is the pair's first architecture");
        let same = |x: f64, y: f64| x == y || x.is_nan() && y.is_nan();
        assert_eq!((tf.a.n, tf.b.n), (tb.b.n, tb.a.n));
        assert!(same(tf.a.mean, tb.b.mean) && same(tf.b.mean, tb.a.mean), "{:?} {tf:?} {tb:?}", f.measure);
        assert!(tf.mwu_p.is_nan() && tb.mwu_p.is_nan() || (tf.mwu_p - tb.mwu_p).abs() < 1e-12);
    }
    let none = stats::compute(&rows, &curve, &StatsPlan { pairs: vec![], freeze_vs_simult: true });
    assert!(named(&none, "cbrnn_vs_rnn").is_empty());
    assert_eq!(named(&none, "freeze_vs_simult").len(), named(&default, "freeze_vs_simult").len());
    let no_freeze = stats::compute(&rows, &curve, &StatsPlan { freeze_vs_simult: false, ..StatsPlan::default() });
    assert!(named(&no_freeze, "freeze_vs_simult").is_empty() && named(&no_freeze, "cbrnn_vs_rnn").len() == forward.len());
}
