//! Every spec in sweeps/ expands to the trials it expanded to before the grid grew new axes
//! (issue 19): the same trial ids and cell keys in the same order, and the same resolved text
//! (spec hash). The fixture `fixtures/sweep-trial-ids.tsv` was written by the code of commit
//! 6f2d248, before any of that change.

use std::path::Path;

const FIXTURE: &str = include_str!("fixtures/sweep-trial-ids.tsv");

/// The fixture's rows recomputed now, for the spec files it names (sweeps added later are not
/// in it).
fn rows() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    let mut out = Vec::new();
    for line in FIXTURE.lines().filter(|l| l.split('\t').nth(1) == Some("spec")) {
        let name = line.split('\t').next().unwrap();
        let f = dir.join(name);
        let text = std::fs::read_to_string(&f).unwrap();
        let spec = cbsweep_common::parse_spec_with_overrides(&text, &f, Vec::new()).unwrap();
        out.push(format!("{name}\tspec\t{}\t{}", spec.hash(), spec.trials.len()));
        for (i, t) in spec.trials.iter().enumerate() {
            out.push(format!("{name}\t{i}\t{}\t{}", t.id(), t.cell_key()));
        }
    }
    out
}

#[test]
fn existing_sweeps_keep_their_trial_ids_cell_keys_and_spec_hashes() {
    let now = rows();
    let then: Vec<&str> = FIXTURE.lines().collect();
    assert_eq!(then.iter().filter(|l| l.contains("\tspec\t")).count(), 8, "the fixture holds the eight sweeps of 6f2d248");
    for (a, b) in then.iter().zip(&now) {
        assert_eq!(a, b, "a trial of sweeps/ changed");
    }
    assert_eq!(then.len(), now.len(), "sweeps/ expands to as many trials as before");
}
