//! A trial's id follows what it computes: the CB-RNN's and the RNN's trials keep the ids they
//! had before the lab's GRU cell and the lab's start of the recurrent-module control; the GRU's
//! and the control's get new ones, the control's at either start (at the near-zero start its
//! timescale drive no longer restarts the module's state at every chunk). The ids below were
//! computed by the code of commit 7c3084f, before that change.

use cbsweep_common::{Arch, GruCell, ModuleStart, SpecOverride, parse_spec_with_overrides};
use std::path::Path;

const SPEC: &str = r#"
[sweep]
name = "identity"

[grid]
task = ["parity"]
arch = ["cbrnn", "rnn", "rmrnn", "cbgru", "gru"]
seed = [0, 1]
lr_core = [0.01, 0.001]
"#;

/// (arch, id at 7c3084f) of the spec's trials, in grid order.
const BEFORE: [(Arch, &str); 20] = [
    (Arch::Cbrnn, "8cfad9a81297c238b268"),
    (Arch::Cbrnn, "27077d61f1ee8487fb08"),
    (Arch::Cbrnn, "73cf4c7297d2da429513"),
    (Arch::Cbrnn, "cfdb403d55885dcf98a0"),
    (Arch::Rnn, "10af494792cc7db5f3a2"),
    (Arch::Rnn, "3fc8f1421ba1b541586e"),
    (Arch::Rnn, "5785111e3666fc068ff2"),
    (Arch::Rnn, "ef5fa91965ac042a9a9e"),
    (Arch::Rmrnn, "bf718d5f14d90c7ff215"),
    (Arch::Rmrnn, "e051b88afb7c6ebf27d6"),
    (Arch::Rmrnn, "334f5f0e251cdfca899d"),
    (Arch::Rmrnn, "dfe47cff8cbbcb6ed46f"),
    (Arch::Cbgru, "2dca6bac95ce4274e656"),
    (Arch::Cbgru, "8b55a70ca4cfc02bf835"),
    (Arch::Cbgru, "ad71304a804ea86867c5"),
    (Arch::Cbgru, "88f4984c138ef4375a82"),
    (Arch::Gru, "e399cfa67ac080d3ba33"),
    (Arch::Gru, "e1d33405dbd8ad144f07"),
    (Arch::Gru, "4ff8e31ecc13b54a813d"),
    (Arch::Gru, "ff8f927599b7b7555969"),
];

/// The spec hash at 7c3084f: the new key, left out, leaves the resolved text as it was.
const HASH_BEFORE: &str = "a0736c03c5005e28";

fn ids(overrides: Vec<SpecOverride>) -> Vec<(Arch, String)> {
    let spec = parse_spec_with_overrides(SPEC, Path::new("identity.toml"), overrides).unwrap();
    spec.trials.iter().map(|t| (t.arch, t.id().0)).collect()
}

#[test]
fn only_trials_whose_computation_changed_get_new_ids() {
    let now = ids(Vec::new());
    assert_eq!(now.len(), BEFORE.len());
    for ((arch, id), (then_arch, then)) in now.iter().zip(BEFORE) {
        assert_eq!(*arch, then_arch, "grid order");
        match arch {
            Arch::Cbrnn | Arch::Rnn => assert_eq!(id, then, "a {arch} trial keeps its id"),
            Arch::Rmrnn | Arch::Cbgru | Arch::Gru => assert_ne!(id, then, "a {arch} trial computes anew: a new id"),
        }
    }
    let spec = parse_spec_with_overrides(SPEC, Path::new("identity.toml"), Vec::new()).unwrap();
    assert_eq!(spec.hash(), HASH_BEFORE);
    for t in &spec.trials {
        assert_eq!(t.gru_cell, GruCell::of(t.arch), "{}", t.arch);
        let start = if t.arch == Arch::Rmrnn { ModuleStart::Lab } else { ModuleStart::Original };
        assert_eq!(t.module_start, start, "{}", t.arch);
    }
}

#[test]
fn the_near_zero_start_gives_the_control_ids_of_its_own() {
    let near_zero = SpecOverride { key: "model.recurrent_module_start".into(), value: "near_zero".into() };
    let lab = ids(Vec::new());
    for (((arch, id), (_, then)), (_, at_lab)) in ids(vec![near_zero]).iter().zip(BEFORE).zip(&lab) {
        match arch {
            Arch::Cbrnn | Arch::Rnn => assert_eq!(id, then, "{arch}"),
            Arch::Cbgru | Arch::Gru => assert_eq!(id, at_lab, "{arch}: the start is the control's alone"),
            Arch::Rmrnn => assert!(id != then && id != at_lab, "{arch}: neither the earlier computation nor the lab's start"),
        }
    }
}
