//! Tests of spec loading and validation: expansion, refusals naming key and value, bounds, the
//! resolved form and overrides.

use super::*;

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
        ("[train]\nlr_readout = 1e300", "train.lr_readout = 1000000000000000", "at most 10"),
    ] {
        let e = err(&format!("{MINIMAL}{key}\n"));
        assert!(e.contains(value) && e.contains(bound), "{key}: {e}");
    }
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\ngranule = [4000000000]"));
    assert!(e.contains("grid.granule = 4000000000"), "{e}");
    let e = err(&MINIMAL.replace("seed = [0, 1]", "seed = [0, 1]\nlr_core = [1e300]"));
    assert!(e.contains("grid.lr_core") && e.contains("at most 10"), "{e}");
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
