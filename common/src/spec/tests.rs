//! Tests of spec loading and validation: expansion, refusals naming key and value, bounds, the
//! resolved form and overrides.

use super::checks::Num;
use super::*;
use crate::ids::{Seed, SweepId};
use crate::model_size;
use crate::trial::{Arch, ComparePair, Curriculum, ModuleStart, Regime, StatsPlan, Task};
use std::collections::BTreeSet;

const MINIMAL: &str = r#"
[sweep]
name = "t"
[grid]
task = ["dms", "parity"]
arch = ["cbrnn", "rnn"]
seed = [0, 1]
"#;

fn parse(text: &str) -> Result<SweepSpec, SpecError> {
    parse_spec(text, Path::new("sweeps/test.toml"))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_spec_expands_to_the_cross_product_with_study_defaults() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.trials.len(), 8);
    let counts: BTreeSet<u64> = s.trials.iter().map(|t| t.param_count()).collect();
    assert_eq!(counts, BTreeSet::from([41_816, 41_922]));
    let t = &s.trials[0];
    assert_eq!(t.budget.epochs, 1000);
    assert_eq!(t.budget.steps_per_epoch, 100);
    assert_eq!((t.lr_core, t.lr_cb, t.lr_readout), (0.01, 0.01, 0.01));
    assert_eq!(t.regime, Regime::Simult);
    let ids: BTreeSet<_> = s.trials.iter().map(|t| t.id()).collect();
    assert_eq!(ids.len(), 8, "trial ids are unique");
}

#[test]
fn unknown_key_is_refused_naming_key_and_file() {
    let e = err(&format!("{MINIMAL}[train]\nepocs = 3\n"));
    assert!(e.contains("sweeps/test.toml"), "{e}");
    assert!(e.contains("train.epocs"), "{e}");
}

#[test]
fn unknown_section_is_refused() {
    let e = err(&format!("{MINIMAL}[trian]\nepochs = 3\n"));
    assert!(e.contains("trian"), "{e}");
}

#[test]
fn missing_field_is_refused_naming_the_key() {
    let e = err("[sweep]\nname = \"t\"\n[grid]\ntask = [\"dms\"]\nseed = [0]\n");
    assert!(e.contains("grid.arch"), "{e}");
    assert!(e.contains("sweeps/test.toml"), "{e}");
}

#[test]
fn negative_epochs_are_refused_naming_field_and_value() {
    let e = err(&format!("{MINIMAL}[train]\nepochs = -3\n"));
    assert!(e.contains("train.epochs = -3"), "{e}");
    assert!(e.contains("positive"), "{e}");
}

#[test]
fn unknown_task_is_refused_naming_the_value() {
    let e = err(&MINIMAL.replace("\"parity\"", "\"parrity\""));
    assert!(e.contains("grid.task = \"parrity\""), "{e}");
    assert!(e.contains("dms, parity, oddball"), "{e}");
}

#[test]
fn bad_freeze_point_and_regime_are_refused() {
    let e = err(&format!("{MINIMAL}regime = [\"reservoir\"]\nfreeze = [\"level:x\"]\n").replace("[grid]\n", "[grid]\n"));
    assert!(e.contains("grid.freeze"), "{e}");
    let e = err(&format!("{MINIMAL}regime = [\"frozen\"]\n"));
    assert!(e.contains("grid.regime = \"frozen\""), "{e}");
}

#[test]
fn syntax_error_names_the_file() {
    let e = err("[sweep\nname = 1");
    assert!(e.starts_with("sweeps/test.toml: not valid TOML"), "{e}");
}

#[test]
fn regimes_cross_freeze_points_and_simult_is_not_duplicated() {
    let text = format!(
        "{MINIMAL}regime = [\"simult\", \"reservoir\", \"interleaved\"]\nfreeze = [\"level:2\", \"never\"]\nrefresh_every = [5, 10]\n"
    );
    let s = parse(&text).unwrap();
    // per task x arch x seed: 1 simult + 2 reservoir + 2x2 interleaved = 7
    assert_eq!(s.trials.len(), 8 * 7);
}

#[test]
fn trial_ids_are_stable_for_the_same_cell() {
    let a = parse(MINIMAL).unwrap();
    let b = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1, 2]")).unwrap();
    let ids_a: BTreeSet<_> = a.trials.iter().map(|t| t.id()).collect();
    let ids_b: BTreeSet<_> = b.trials.iter().map(|t| t.id()).collect();
    assert!(ids_a.is_subset(&ids_b));
    assert_eq!(ids_b.len() - ids_a.len(), 4);
}

fn with(overrides: &[(&str, &str)]) -> Vec<SpecOverride> {
    overrides.iter().map(|(k, v)| SpecOverride { key: k.to_string(), value: v.to_string() }).collect()
}

#[test]
fn resolved_text_parses_back_to_the_same_sweep_without_the_environment() {
    let a = parse_spec_with_overrides(MINIMAL, Path::new("t.toml"), with(&[("train.epochs", "20"), ("run.pack_size", "3")])).unwrap();
    assert_eq!(a.trials[0].budget.epochs, 20);
    assert_eq!(a.run.pack_size, 3);
    assert_eq!(overrides_text(&a.overrides), "run.pack_size=3; train.epochs=20");
    let b = parse_resolved(&a.resolved, Path::new("stored"), a.overrides.clone()).unwrap();
    assert_eq!(a, b, "the resolved text is the whole sweep");
    assert_eq!(b.trials[0].budget.epochs, 20);
    let plain = parse(MINIMAL).unwrap();
    assert_ne!(a.hash(), plain.hash(), "the hash covers the overrides");
    assert_eq!(parse_resolved(&plain.resolved, Path::new("stored"), vec![]).unwrap().hash(), plain.hash());
}

#[test]
fn the_hash_is_of_the_validated_spec_not_of_its_spelling() {
    let spelled = format!("# a comment\n{MINIMAL}[train]\nepochs = 1000\n");
    assert_eq!(parse(&spelled).unwrap().hash(), parse(MINIMAL).unwrap().hash(), "a default spelled out is the same spec");
    assert_ne!(parse(&format!("{MINIMAL}[train]\nepochs = 999\n")).unwrap().hash(), parse(MINIMAL).unwrap().hash());
}

#[test]
fn a_bad_override_is_refused_naming_its_key() {
    let e = parse_spec_with_overrides(MINIMAL, Path::new("t.toml"), with(&[("train.epochz", "3")])).unwrap_err().to_string();
    assert!(e.contains("train.epochz"), "{e}");
    let e = parse_spec_with_overrides(MINIMAL, Path::new("t.toml"), with(&[("train.epochs", "-3")])).unwrap_err().to_string();
    assert!(e.contains("train.epochs = -3"), "{e}");
}

#[test]
fn overrides_text_reads_back() {
    let o = with(&[("run.pack_size", "3"), ("train.lr_readout", "0.001")]);
    assert_eq!(parse_overrides_text(&overrides_text(&o)), o);
    assert!(parse_overrides_text("").is_empty());
}

#[test]
fn absurd_values_are_refused_naming_the_bound() {
    for (key, value, bound) in [
        ("[model]\nhidden = 100000", "model.hidden = 100000", "at most 4096"),
        ("[train]\nbatch_size = 1000000000", "train.batch_size = 1000000000", "at most 4096"),
        ("[train]\nstart_level = 1000000000\nmax_level = 1000000000", "train.start_level = 1000000000", "at most 1000"),
        ("[run]\nlease_seconds = 2147483648", "run.lease_seconds = 2147483648", "at most 86400"),
        ("[run]\nlease_seconds = 9999999999", "run.lease_seconds = 9999999999", "positive integer"),
        ("[train]\nlr_readout = 1e300", "train.lr_readout = 1e300:", "at most 10 "),
    ] {
        let e = err(&format!("{MINIMAL}{key}\n"));
        assert!(e.contains(value) && e.contains(bound), "{key}: {e}");
    }
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\ngranule = [4000000000]"));
    assert!(e.contains("grid.granule = 4000000000"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nlr_core = [1e300]"));
    assert!(e.contains("grid.lr_core = 1e300:") && e.contains("at most 10 "), "{e}");
}

#[test]
fn numbers_in_messages_are_short() {
    // as written when short, scientific when that is shorter: never 300 digits
    for (x, shown) in [(1e300, "1e300"), (10.0, "10"), (0.01, "0.01"), (4096.0, "4096"), (1e12, "1e12"), (-2.5e-20, "-2.5e-20")] {
        assert_eq!(Num(x).to_string(), shown);
    }
    for (key, shown) in [
        ("[train]\nlr_readout = 1e300", "train.lr_readout = 1e300: must be at most 10 (a bound against typos)"),
        ("[train]\nclip_norm = -1e300", "train.clip_norm = -1e300: must be a positive number"),
        ("[train]\nmomentum = 1e200", "train.momentum = 1e200: must be in [0, 1)"),
        ("[train]\nsolve_threshold = 1e-300", ""),
    ] {
        let e = parse(&format!("{MINIMAL}{key}\n")).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(e.contains(shown) && e.len() < 120, "{key}: {e}");
    }
    for (axis, shown) in [
        ("lr_core = [1e300]", "grid.lr_core = 1e300:"),
        ("lr_cb = { from = 0.1, to = 1e300, count = 3 }", "grid.lr_cb = 5e299:"),
        ("core_plasticity = [1e300]", "grid.core_plasticity = 1e300:"),
    ] {
        let e = err(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0, 1]\n{axis}")));
        assert!(e.contains(shown) && e.len() < 120, "{axis}: {e}");
    }
}

#[test]
fn a_sweep_name_that_reads_as_an_option_is_refused() {
    for (name, hint) in [("-rf", "e.g. \"rf\""), ("--help", "e.g. \"help\""), ("-", "rename it")] {
        let e = err(&MINIMAL.replace("name = \"t\"", &format!("name = \"{name}\"")));
        assert!(
            e.contains(&format!("sweep.name = \"{name}\"")) && e.contains("must not start with '-'") && e.contains(hint),
            "{name}: {e}"
        );
    }
    // what else a name must not hold: it names a folder and is typed on command lines
    for name in ["a/b", "..", "a b", "a;rm", "$(x)", "é"] {
        let e = err(&MINIMAL.replace("name = \"t\"", &format!("name = \"{name}\"")));
        assert!(e.contains("sweep.name") && e.contains("only letters, digits"), "{name}: {e}");
    }
    for name in ["rf-", "_rf", "0rf", "r-f_2"] {
        parse(&MINIMAL.replace("name = \"t\"", &format!("name = \"{name}\""))).unwrap();
    }
}

#[test]
fn a_grid_too_large_or_a_name_too_long_is_refused() {
    let seeds: Vec<String> = (0..1000).map(|s| s.to_string()).collect();
    let lrs: Vec<String> = (1..=300).map(|i| format!("{}", f64::from(i) * 1e-4)).collect();
    let text = MINIMAL
        .replace("seed = [0, 1]", &format!("seed = [{}]\nlr_core = [{}]\nlr_cb = [{}]", seeds.join(","), lrs.join(","), lrs.join(",")));
    let e = err(&text);
    assert!(e.contains("grid = 360000000 cells") && e.contains("at most 1000000 trials"), "{e}");
    let e = err(&MINIMAL.replace("name = \"t\"", &format!("name = \"{}\"", "x".repeat(300))));
    assert!(e.contains("sweep.name") && e.contains("at most 64 characters"), "{e}");
    parse(&MINIMAL.replace("name = \"t\"", &format!("name = \"{}\"", "x".repeat(64)))).unwrap();
}

fn cells(s: &SweepSpec) -> Vec<String> {
    s.trials.iter().map(|t| t.cell_key()).collect()
}

#[test]
fn sizes_as_grid_lists_cross_and_the_matched_rnn_follows_each_shape() {
    let s = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\nhidden = [64, 32]\npurkinje = [64]\ngranule = [256]")).unwrap();
    assert_eq!(s.trials.len(), 2 * 2 * 2);
    let rnn32 = s.trials.iter().find(|t| t.arch == Arch::Rnn && t.grid_hidden == 32).unwrap();
    assert_eq!(rnn32.hidden, model_size::closest_rnn_hidden(model_size::cbrnn_params(32, 256, 64)));
    assert!(rnn32.cell_key().contains("arch=rnn hidden=32 granule=256 purkinje=64"), "{}", rnn32.cell_key());
    let rnn64 = s.trials.iter().find(|t| t.arch == Arch::Rnn && t.grid_hidden == 64).unwrap();
    assert_eq!(rnn64.hidden, 202, "the published pair");
    assert!(rnn64.cell_key().contains("arch=rnn granule=256 seed"), "the study's sizes stay out of the key: {}", rnn64.cell_key());
}

#[test]
fn the_older_scalar_sizes_give_the_same_trials_as_one_element_lists() {
    let old = parse(&format!("{MINIMAL}[model]\nhidden = 32\npurkinje = 16\n")).unwrap();
    let new = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nhidden = [32]\npurkinje = [16]")).unwrap();
    assert_eq!(old.trials, new.trials);
    assert_eq!(old.trials[0].purkinje, 16);
    let e = err(&format!("{}[model]\nhidden = 32\n", MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nhidden = [32]")));
    assert!(e.contains("model.hidden = 32") && e.contains("grid.hidden = [...]"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\npurkinje = [0]"));
    assert!(e.contains("grid.purkinje = 0") && e.contains("positive"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nhidden = [5000]"));
    assert!(e.contains("grid.hidden = 5000") && e.contains("at most 4096"), "{e}");
}

const SIZES_ZIP: &str = "zip = [\n  { hidden = 64, granule = 256, purkinje = 64 },\n  { hidden = 29, granule = 256, purkinje = 29 },\n  { hidden = 114, granule = 64, purkinje = 64 },\n]\n";

#[test]
fn zipped_sizes_vary_together_and_stand_where_the_sizes_would() {
    let s = parse(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{SIZES_ZIP}"))).unwrap();
    // task x arch x 3 shapes x 1 seed
    assert_eq!(s.trials.len(), 2 * 2 * 3);
    let shapes: Vec<(u32, u32, u32)> = s.trials.iter().take(3).map(|t| (t.grid_hidden, t.granule, t.purkinje)).collect();
    assert_eq!(shapes, [(64, 256, 64), (29, 256, 29), (114, 64, 64)], "in row order, inside task and arch");
    let rnn = s.trials.iter().find(|t| t.arch == Arch::Rnn && t.grid_hidden == 114).unwrap();
    assert_eq!(rnn.hidden, model_size::matched_rnn_hidden(114, 64, 64));
    assert!(!s.resolved.contains("granule = [256]"), "a zipped key leaves the axes: {}", s.resolved);
    assert_eq!(parse_resolved(&s.resolved, Path::new("stored"), vec![]).unwrap(), s, "the resolved form is the sweep");
    let ids: BTreeSet<_> = s.trials.iter().map(|t| t.id()).collect();
    assert_eq!(ids.len(), s.trials.len());
}

#[test]
fn zip_groups_with_other_keys_cross_each_other() {
    let zip = "zip = [\n { lr_core = 0.01, lr_cb = 0.02 },\n { lr_core = 0.001, lr_cb = 0.002 },\n { granule = 64 },\n { granule = 128 },\n { granule = 512 },\n]\n";
    let s = parse(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{zip}"))).unwrap();
    assert_eq!(s.trials.len(), 2 * 2 * 2 * 3);
    let pairs: BTreeSet<(u64, u64)> = s.trials.iter().map(|t| (t.lr_core.to_bits(), t.lr_cb.to_bits())).collect();
    assert_eq!(pairs, BTreeSet::from([(0.01f64.to_bits(), 0.02f64.to_bits()), (0.001f64.to_bits(), 0.002f64.to_bits())]));
}

#[test]
fn bad_zips_are_refused_naming_row_key_and_value() {
    let with_zip = |zip: &str| err(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{zip}")));
    let e = with_zip("zip = [{ hidden = 64, granule = -1, purkinje = 64 }]");
    assert!(e.contains("sweeps/test.toml") && e.contains("grid.zip[0].granule = -1"), "{e}");
    let e = with_zip("zip = [{ task = \"dms\" }]");
    assert!(e.contains("grid.zip[0].task = \"dms\"") && e.contains("cannot be zipped"), "{e}");
    let e = with_zip("zip = [{ hidden = 64, granule = 256 }, { hidden = 32 }]");
    assert!(e.contains("grid.zip[1]") && e.contains("must name the same keys"), "{e}");
    let e = with_zip("granule = [64]\nzip = [{ granule = 256 }]");
    assert!(e.contains("grid.granule") && e.contains("also in grid.zip"), "{e}");
    let e = with_zip("zip = [{ lr_core = \"fast\" }]");
    assert!(e.contains("grid.zip[0].lr_core = \"fast\"") && e.contains("number"), "{e}");
    let e = with_zip("zip = []");
    assert!(e.contains("grid.zip = []"), "{e}");
    let e = err(&format!("{}[model]\nhidden = 32\n", MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{SIZES_ZIP}"))));
    assert!(e.contains("model.hidden = 32"), "{e}");
}

#[test]
fn seed_ranges_equal_their_lists() {
    let range = parse(&MINIMAL.replace("seed = [0, 1]", "seed = { from = 3, count = 4 }")).unwrap();
    let list = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [3, 4, 5, 6]")).unwrap();
    assert_eq!(range.trials, list.trials);
    for (bad, shown) in [
        ("seed = { from = -1, count = 4 }", "grid.seed.from = -1"),
        ("seed = { from = 0, count = 0 }", "grid.seed.count = 0"),
        ("seed = { from = 0 }", "grid.seed.count"),
        ("seed = { start = 0, count = 2 }", "grid.seed.start = 0"),
        ("seed = { from = 0, count = 20000 }", "grid.seed.count = 20000"),
        ("seed = \"all\"", "grid.seed = \"all\""),
        ("seed = [0, -2]", "grid.seed = -2"),
    ] {
        let e = err(&MINIMAL.replace("seed = [0, 1]", bad));
        assert!(e.contains(shown) && e.contains("sweeps/test.toml"), "{bad}: {e}");
    }
}

#[test]
fn rate_ranges_are_linear_or_log_spaced_with_both_ends() {
    let s = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\nlr_core = { log_from = 0.001, to = 0.1, count = 5 }")).unwrap();
    let lrs: Vec<f64> = s.trials.iter().take(5).map(|t| t.lr_core).collect();
    assert_eq!(lrs, [0.001, 0.00316227766017, 0.01, 0.0316227766017, 0.1]);
    assert!(s.trials[2].cell_key().contains("lr_core=0.01 "), "{}", s.trials[2].cell_key());
    let s = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\ncore_plasticity = { from = 0.25, to = 1.0, count = 4 }")).unwrap();
    let fs: Vec<f64> = s.trials.iter().take(4).map(|t| t.core_plasticity).collect();
    assert_eq!(fs, [0.25, 0.5, 0.75, 1.0]);
    assert_eq!(parse_resolved(&s.resolved, Path::new("stored"), vec![]).unwrap(), s);
    let ints = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\ncore_plasticity = [1]")).unwrap();
    assert_eq!(ints.hash(), parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\ncore_plasticity = [1.0]")).unwrap().hash());
    for (bad, shown) in [
        ("lr_core = { log_from = 0.0, to = 0.1, count = 3 }", "grid.lr_core = { count = 3, log_from = 0.0, to = 0.1 }: a log-spaced"),
        ("lr_core = { from = 0.1, to = 20.0, count = 3 }", "grid.lr_core = 10.05"),
        ("lr_cb = { from = 0.1, to = 0.2 }", "grid.lr_cb.count"),
        ("lr_cb = { from = 0.1, to = 0.2, count = 1 }", "grid.lr_cb.count = 1"),
        ("lr_cb = { from = 0.1, upto = 0.2, count = 2 }", "grid.lr_cb.upto = 0.2"),
        ("core_plasticity = { from = 0.5, to = 2.0, count = 2 }", "grid.core_plasticity = 2"),
        ("lr_core = 0.01", "grid.lr_core = 0.01"),
    ] {
        let e = err(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{bad}")));
        assert!(e.contains(shown), "{bad}: {e}");
    }
}

#[test]
fn exclude_drops_the_cells_each_entry_matches() {
    let text = MINIMAL.replace(
        "seed = [0, 1]",
        "seed = [0, 1]\nregime = [\"simult\", \"reservoir\"]\nfreeze = [\"level:2\"]\nexclude = [{ arch = \"rnn\", regime = \"reservoir\" }, { task = \"parity\", seed = 1 }]",
    );
    let s = parse(&text).unwrap();
    // 2 tasks x 2 archs x 2 regimes x 2 seeds = 16; rnn reservoir drops 4, parity seed 1 drops 3 more
    assert_eq!(s.trials.len(), 16 - 4 - 3, "{:#?}", cells(&s));
    assert!(!s.trials.iter().any(|t| t.arch == Arch::Rnn && t.regime.name() == "reservoir"));
    assert!(!s.trials.iter().any(|t| t.task == Task::Parity && t.seed == Seed(1)));
    let sized = parse(&MINIMAL.replace("seed = [0, 1]", &format!("seed = [0]\n{SIZES_ZIP}exclude = [{{ hidden = 29 }}]"))).unwrap();
    assert_eq!(sized.trials.len(), 2 * 2 * 2, "hidden matches the grid's shape, the matched RNN's too");
}

#[test]
fn an_exclude_matching_nothing_or_naming_a_bad_value_is_refused() {
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nexclude = [{ task = \"dms\", seed = 7 }]"));
    assert!(e.contains("grid.exclude[0] = ") && e.contains("seed = 7") && e.contains("matches no cell"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nexclude = [{ task = \"dns\" }]"));
    assert!(e.contains("grid.exclude[0].task = \"dns\"") && e.contains("unknown task"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nexclude = [{ colour = \"red\" }]"));
    assert!(e.contains("grid.exclude[0].colour") && e.contains("not a grid key"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nexclude = [{}]"));
    assert!(e.contains("grid.exclude[0]"), "{e}");
    let e = err(&MINIMAL
        .replace("seed = [0, 1]", "seed = [0]\narch = [\"rnn\"]\nexclude = [{ arch = \"rnn\" }]")
        .replace("arch = [\"cbrnn\", \"rnn\"]\n", ""));
    assert!(e.contains("leaves no cell"), "{e}");
}

#[test]
fn stats_compare_defaults_to_cbrnn_against_rnn_and_names_grid_architectures() {
    let pair = |a: &str, b: &str| ComparePair { a: a.parse().unwrap(), b: b.parse().unwrap() };
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.stats, StatsPlan { pairs: vec![pair("cbrnn", "rnn")], freeze_vs_simult: true });
    assert!(!s.resolved.contains("[stats]"), "the default leaves the resolved text as it was");
    let s = parse(&format!("{MINIMAL}[stats]\ncompare = [[\"rnn\", \"cbrnn\"]]\n")).unwrap();
    assert_eq!(s.stats.pairs, vec![pair("rnn", "cbrnn")]);
    assert_eq!(parse_resolved(&s.resolved, Path::new("stored"), vec![]).unwrap().stats, s.stats);
    assert_eq!(resolved_stats(&s.resolved), s.stats, "a stored sweep's pairs read back without expanding it");
    assert_eq!(resolved_stats(&parse(MINIMAL).unwrap().resolved), StatsPlan::default());
    for (compare, shown) in [
        ("[[\"cbrnn\", \"lstm\"]]", "stats.compare[0][1] = \"lstm\""),
        ("[[\"cbrnn\"]]", "stats.compare[0] = [\"cbrnn\"]"),
        ("[[\"rnn\", \"rnn\"]]", "stats.compare[0] = [\"rnn\", \"rnn\"]"),
        ("[[\"cbrnn:reservoir\", \"rnn\"]]", "not a regime of the grid"),
        ("[[\"cbrnn:frozen\", \"rnn\"]]", "unknown regime"),
        ("[[\"cbrnn\", \"cbrnn:simult\"]]", "compares a group with itself"),
        ("[]", "stats.compare = []"),
    ] {
        let e = err(&format!("{MINIMAL}[stats]\ncompare = {compare}\n"));
        assert!(e.contains(shown) && e.contains("sweeps/test.toml"), "{compare}: {e}");
    }
    let e = err(&format!("{}[stats]\ncompare = [[\"cbrnn\", \"rnn\"]]\n", MINIMAL.replace("[\"cbrnn\", \"rnn\"]", "[\"cbrnn\"]")));
    assert!(e.contains("stats.compare[0][1] = \"rnn\"") && e.contains("not an architecture of the grid"), "{e}");
}

/// Claim 3's comparisons cross regimes: the reservoir CB-RNN against the simult RNN and the
/// simult CB-RNN, named in `[stats]` and read back from a stored sweep's text.
#[test]
fn stats_compare_names_sides_across_regimes() {
    let grid = MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nregime = [\"simult\", \"reservoir\"]\nfreeze = [\"level:2\"]");
    let text = format!(
        "{grid}[stats]\ncompare = [[\"cbrnn:reservoir\", \"rnn:simult\"], [\"cbrnn:reservoir\", \"cbrnn:simult\"]]\nfreeze_vs_simult = false\n"
    );
    let s = parse(&text).unwrap();
    let names: Vec<String> = s.stats.pairs.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["cbrnn:reservoir_vs_rnn:simult", "cbrnn:reservoir_vs_cbrnn:simult"]);
    assert!(!s.stats.freeze_vs_simult);
    assert_eq!(s.stats.pairs[0].differing_keys(), ["arch", "regime", "freeze", "refresh"]);
    assert_eq!(resolved_stats(&s.resolved), s.stats);
}

#[test]
fn fixed_level_trains_at_one_level_and_is_refused_where_it_cannot_work() {
    let s = parse(&format!("{MINIMAL}[train]\nfixed_level = 5\n")).unwrap();
    for t in &s.trials {
        assert_eq!((t.budget.start_level, t.budget.max_level, t.budget.curriculum), (5, 5, Curriculum::FixedUntilSolved));
    }
    // training on past the first solve is today's named option, with ids of its own
    let budget = parse(&format!("{MINIMAL}[train]\nfixed_level = 5\nfixed_until = \"budget\"\n")).unwrap();
    assert!(budget.trials.iter().all(|t| t.budget.curriculum == Curriculum::Fixed));
    assert!(budget.trials.iter().zip(&s.trials).all(|(b, f)| b.id() != f.id()));
    let e = err(&format!("{MINIMAL}[train]\nfixed_level = 5\nfixed_until = \"forever\"\n"));
    assert!(e.contains("train.fixed_until = \"forever\"") && e.contains("\"solved\""), "{e}");
    let e = err(&format!("{MINIMAL}[train]\nfixed_until = \"budget\"\n"));
    assert!(e.contains("train.fixed_until") && e.contains("only with train.fixed_level"), "{e}");
    // the same cells with the curriculum are other trials
    let climb = parse(MINIMAL).unwrap();
    assert!(s.trials.iter().zip(&climb.trials).all(|(f, c)| f.id() != c.id() && f.cell_key() == c.cell_key()));
    assert!(climb.trials.iter().all(|t| t.budget.curriculum == Curriculum::Climb));
    let e = err(&format!("{MINIMAL}[train]\nfixed_level = 1\n"));
    assert!(e.contains("train.fixed_level") && e.contains("at least 2"), "{e}");
    let e = err(&format!("{MINIMAL}[train]\nfixed_level = 5000\n"));
    assert!(e.contains("train.fixed_level") && e.contains("5000"), "{e}");
    let e =
        err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nregime = [\"reservoir\"]\nfreeze = [\"level:3\"]\n[train]\nfixed_level = 5"));
    assert!(e.contains("grid.freeze") && e.contains("epoch:N"), "{e}");
    // a freeze by epochs works at a fixed level
    parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nregime = [\"reservoir\"]\nfreeze = [\"epoch:3\"]\n[train]\nfixed_level = 5"))
        .unwrap();
}

#[test]
fn a_fixed_schedule_is_a_curriculum_of_its_own() {
    let s = parse(&format!("{MINIMAL}[train]\nschedule_every = 5\n")).unwrap();
    assert!(s.trials.iter().all(|t| t.budget.curriculum == Curriculum::Schedule { every: 5 } && t.budget.start_level == 2));
    let climb = parse(MINIMAL).unwrap();
    assert!(s.trials.iter().zip(&climb.trials).all(|(f, c)| f.id() != c.id() && f.cell_key() == c.cell_key()));
    for (train, shown) in [
        ("schedule_every = 0", "train.schedule_every = 0"),
        ("schedule_every = 5\nfixed_level = 3", "cannot be combined with train.fixed_level"),
    ] {
        let e = err(&format!("{MINIMAL}[train]\n{train}\n"));
        assert!(e.contains(shown), "{train}: {e}");
    }
}

/// The readout learns in the core's group (the lab's optimiser): a plasticity factor scales its
/// rate too, unless the spec names a readout rate; at full plasticity nothing changes.
#[test]
fn the_readout_rate_follows_the_core_unless_named() {
    let s = parse(&MINIMAL.replace("seed = [0, 1]", "seed = [0]\ncore_plasticity = [1.0, 0.1, 0.01]")).unwrap();
    let rates: BTreeSet<(u64, u64)> = s.trials.iter().map(|t| (t.core_plasticity.to_bits(), t.lr_readout.to_bits())).collect();
    let expected = [(1.0, 0.01), (0.1, 0.001), (0.01, 0.0001)].map(|(f, r): (f64, f64)| (f.to_bits(), r.to_bits()));
    assert_eq!(rates, BTreeSet::from(expected));
    let named = parse(&format!("{}[train]\nlr_readout = 0.01\n", MINIMAL.replace("seed = [0, 1]", "seed = [0]\ncore_plasticity = [0.01]")))
        .unwrap();
    assert!(named.trials.iter().all(|t| t.lr_readout == 0.01));
}

#[test]
fn readout_recovery_defaults_to_the_study_and_only_a_change_moves_the_trials() {
    let study = parse(MINIMAL).unwrap();
    assert!(study.trials.iter().all(|t| (t.analysis.recovery_steps, t.analysis.recovery_eval_batches) == (500, 50)));
    assert!(!study.resolved.contains("recovery"), "the study's values leave the resolved text as it was");
    let same = parse(&format!("{MINIMAL}[analysis]\nrecovery_steps = 500\nrecovery_eval_batches = 50\n")).unwrap();
    assert!(same.trials.iter().zip(&study.trials).all(|(a, b)| a.id() == b.id()), "the study's values given keep the ids");
    let off = parse(&format!("{MINIMAL}[analysis]\nrecovery_steps = 0\nrecovery_eval_batches = 7\n")).unwrap();
    assert!(off.trials.iter().all(|t| (t.analysis.recovery_steps, t.analysis.recovery_eval_batches) == (0, 7)));
    assert!(off.trials.iter().zip(&study.trials).all(|(a, b)| a.id() != b.id()));
    let back = parse_resolved(&off.resolved, Path::new("stored"), Vec::new()).unwrap();
    assert_eq!(back.trials, off.trials);
    let e = err(&format!("{MINIMAL}[analysis]\nrecovery_eval_batches = 0\n"));
    assert!(e.contains("analysis.recovery_eval_batches"), "{e}");
    let e = err(&format!("{MINIMAL}[analysis]\nrecovery_steps = -1\n"));
    assert!(e.contains("analysis.recovery_steps"), "{e}");
}

#[test]
fn the_recurrent_module_start_is_the_labs_unless_named_and_a_wrong_name_is_refused() {
    let control = MINIMAL.replace(r#"["cbrnn", "rnn"]"#, r#"["cbrnn", "rmrnn", "cbgru"]"#);
    let start_of = |text: &str, arch| parse(text).unwrap().trials.iter().find(|t| t.arch == arch).map(|t| t.module_start);
    assert_eq!(start_of(&control, Arch::Rmrnn), Some(ModuleStart::Lab));
    let near_zero = format!("{control}[model]\nrecurrent_module_start = \"near_zero\"\n");
    assert_eq!(start_of(&near_zero, Arch::Rmrnn), Some(ModuleStart::NearZero));
    // the other architectures have no such module: their specs stay as they were
    for text in [&control, &near_zero] {
        assert_eq!(start_of(text, Arch::Cbrnn), Some(ModuleStart::Original));
        assert_eq!(start_of(text, Arch::Cbgru), Some(ModuleStart::Original));
    }
    let e = err(&format!("{control}[model]\nrecurrent_module_start = \"zero\"\n"));
    assert!(e.ends_with("model.recurrent_module_start = \"zero\": expected one of: \"near_zero\", \"lab\""), "{e}");
}

/// Hostile round three, item 10: a submitted spec's record of its overrides must agree with the
/// resolved text it comes with, and be short, printable and few.
#[test]
fn recorded_overrides_must_agree_with_the_resolved_spec_and_be_bounded() {
    let ov = |k: &str, v: &str| SpecOverride { key: k.into(), value: v.into() };
    let spec = parse_spec_with_overrides(MINIMAL, Path::new("sweeps/test.toml"), vec![ov("train.epochs", "2")]).unwrap();
    spec.check_overrides(Path::new("sweeps/test.toml")).unwrap();
    let submitted = |overrides: Vec<SpecOverride>| {
        let s = parse_resolved(&spec.resolved, Path::new("remote.toml"), overrides).unwrap();
        s.check_overrides(Path::new("remote.toml")).map_err(|e| e.to_string())
    };
    assert!(submitted(vec![ov("train.epochs", "2")]).is_ok());
    assert!(submitted(vec![ov("train.solve_threshold", "0.98"), ov("model.rnn_match", "published")]).is_ok());
    let e = submitted(vec![ov("train.epochs", "999")]).unwrap_err();
    assert!(e.contains("train.epochs") && e.contains("999") && e.contains("does not match") && e.contains("= 2"), "{e}");
    let e = submitted(vec![ov("train.epocs", "2")]).unwrap_err();
    assert!(e.contains("no key of the spec"), "{e}");
    let e = submitted(vec![ov("train.epochs\nforged", "2")]).unwrap_err();
    assert!(e.contains("dotted spec key"), "{e}");
    let e = submitted(vec![ov("sweep.description", &"x".repeat(100_000))]).unwrap_err();
    assert!(e.contains("at most 256"), "{}", &e[..e.len().min(300)]);
    let many: Vec<SpecOverride> = (0..10_000).map(|i| ov(&format!("train.k{i}"), "1")).collect();
    let e = submitted(many).unwrap_err();
    assert!(e.contains("10000 entries") && e.contains("at most 64"), "{e}");
}

#[test]
fn a_resubmission_names_the_run_settings_it_changed_and_the_cells_it_keeps() {
    let before = parse(MINIMAL).unwrap().run;
    let after = parse(&format!("{MINIMAL}[run]\nlease_seconds = 600\nmax_attempts = {}\n", before.max_attempts)).unwrap().run;
    let changes = after.changes_from(&before);
    assert_eq!(changes, [RunChange { key: "run.lease_seconds".into(), before: before.lease_seconds, after: 600 }]);
    assert!(before.changes_from(&before).is_empty());
    let sweep = SweepId("t".into());
    assert!(Resubmission::default().notes(&sweep).is_empty(), "nothing to say of a plain resubmission");
    let notes = Resubmission { kept: 4, run_changes: changes }.notes(&sweep);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains(&format!("run.lease_seconds {} -> 600", before.lease_seconds)) && notes[0].contains("applied"), "{notes:?}");
    assert_eq!(
        notes[1],
        "sweep t: 4 cells of the stored sweep are not in this spec; they stay (cancel the sweep or use a new name to drop them)"
    );
    assert!(Resubmission { kept: 1, run_changes: vec![] }.notes(&sweep)[0].contains("1 cell of the stored sweep is not"));
}
