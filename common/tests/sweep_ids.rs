//! Every spec in sweeps/ keeps the trials it expanded to before the grid grew new axes (issue 19)
//! and before the study was set against the lab's code (issue 26): every cell of
//! `fixtures/sweep-trial-ids.tsv` (written by the code of commit 6f2d248) that a spec still has
//! keeps its trial id, unless its computation changed on purpose; the specs issue 26 restated are
//! the only ones whose text (spec hash) and cells changed. A CB-RNN or RNN trial at full
//! plasticity therefore keeps its id (and, since its id is a hash of what it computes, its
//! numbers: worker tests hold the engines to those).

use std::collections::HashMap;
use std::path::Path;

const FIXTURE: &str = include_str!("fixtures/sweep-trial-ids.tsv");

/// The specs issue 26 restated so that claim 3 compares against the lab's baselines: their
/// frozen-core RNN cells left, simult cells came in, and `[stats]` names the comparisons.
const RESTATED: [&str; 4] = ["freeze-grid.toml", "interleaved.toml", "paper.toml", "reservoir.toml"];

struct Expanded {
    hash: String,
    count: usize,
    /// cell key -> trial id
    ids: HashMap<String, String>,
}

fn expand(name: &str) -> Expanded {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps").join(name);
    let text = std::fs::read_to_string(&f).unwrap();
    let spec = cbsweep_common::parse_spec_with_overrides(&text, &f, Vec::new()).unwrap();
    let ids = spec.trials.iter().map(|t| (t.cell_key(), t.id().0)).collect();
    Expanded { hash: spec.hash(), count: spec.trials.len(), ids }
}

/// Whether the cell's computation changed on purpose in issue 26: reduced plasticity (the
/// readout now learns at the core's reduced rate).
fn recomputed(cell: &str) -> bool {
    !cell.contains(" core_plasticity=1 ")
}

#[test]
fn existing_sweeps_keep_their_trial_ids_cell_keys_and_spec_hashes() {
    let mut specs: HashMap<&str, Expanded> = HashMap::new();
    let (mut kept, mut changed, mut dropped) = (0, 0, 0);
    for line in FIXTURE.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let name = cols[0];
        let now = specs.entry(name).or_insert_with(|| expand(name));
        let restated = RESTATED.contains(&name);
        if cols[1] == "spec" {
            if !restated {
                assert_eq!(
                    (cols[2], cols[3]),
                    (now.hash.as_str(), now.count.to_string().as_str()),
                    "{name}: the spec's text or size changed"
                );
            }
            continue;
        }
        let (id, cell) = (cols[2], cols[3]);
        match now.ids.get(cell) {
            Some(now_id) if recomputed(cell) => {
                assert_ne!(now_id, id, "{name}: {cell} computes another way and must not reuse its old id");
                changed += 1;
            }
            Some(now_id) => {
                assert_eq!(now_id, id, "{name}: {cell} changed its id");
                kept += 1;
            }
            None => {
                assert!(restated, "{name}: {cell} left the sweep");
                assert!(
                    cell.contains(" arch=rnn ") && !cell.contains(" regime=simult "),
                    "{name}: only frozen-core RNN cells leave: {cell}"
                );
                dropped += 1;
            }
        }
    }
    assert_eq!(specs.len(), 8, "the fixture holds the eight sweeps of 6f2d248");
    // figures as of issue 26: every full-plasticity cell kept, the reduced-plasticity ones
    // recomputed, the restated specs' frozen-core RNN cells dropped
    assert_eq!((kept, changed, dropped), (548, 96, 72), "kept, recomputed, dropped");
}
