//! What validation yields: `SweepSpec` (the sweep's name, its trials in grid order, its
//! resolved text and the overrides it ran with), the `[run]` policy that is no part of any
//! trial's identity, what a resubmission of a stored sweep changed, and the spec hash recorded
//! with results.

use super::checks::SpecError;
use super::overrides::{self, SpecOverride};
use crate::ids::SweepId;
use crate::trial::{StatsPlan, TrialSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the sweep is run; not part of any trial's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPolicy {
    pub max_attempts: u32,
    pub pack_size: u32,
    pub lease_seconds: u32,
    /// Save each running trial's whole training state every this many epochs (0: never) ...
    pub checkpoint_every: u32,
    /// ... or once this many seconds have passed since its last save (0: no time limit),
    /// whichever comes first.
    pub checkpoint_seconds: u32,
}

impl RunPolicy {
    /// The settings that differ from `before`, in the order of `[run]`, as spec keys
    /// (`run.lease_seconds`).
    pub fn changes_from(&self, before: &RunPolicy) -> Vec<RunChange> {
        [
            ("run.max_attempts", before.max_attempts, self.max_attempts),
            ("run.pack_size", before.pack_size, self.pack_size),
            ("run.lease_seconds", before.lease_seconds, self.lease_seconds),
            ("run.checkpoint_every", before.checkpoint_every, self.checkpoint_every),
            ("run.checkpoint_seconds", before.checkpoint_seconds, self.checkpoint_seconds),
        ]
        .into_iter()
        .filter(|(_, b, a)| b != a)
        .map(|(key, before, after)| RunChange { key: key.to_string(), before, after })
        .collect()
    }
}

/// One `[run]` setting a resubmission changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunChange {
    /// The dotted spec key: `run.lease_seconds`.
    pub key: String,
    pub before: u32,
    pub after: u32,
}

/// What a submission of a sweep already stored (the same name) did besides adding cells: a
/// resubmission only adds cells, so the stored cells its spec no longer has stay; its `[run]`
/// settings replace the stored ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resubmission {
    /// Cells of the stored sweep that the submitted spec does not have.
    pub kept: u32,
    /// The `[run]` settings it changed, applied from then on.
    pub run_changes: Vec<RunChange>,
}

impl Resubmission {
    /// What to tell the user, one line each (none when there is nothing to say).
    pub fn notes(&self, sweep: &SweepId) -> Vec<String> {
        let mut out = Vec::new();
        if !self.run_changes.is_empty() {
            let changes: Vec<String> = self.run_changes.iter().map(|c| format!("{} {} -> {}", c.key, c.before, c.after)).collect();
            out.push(format!(
                "sweep {sweep}: {} changed: applied to its leases from now on (a trial leased already keeps its checkpoint cadence)",
                changes.join(", ")
            ));
        }
        if self.kept > 0 {
            let n = if self.kept == 1 {
                "1 cell of the stored sweep is".to_string()
            } else {
                format!("{} cells of the stored sweep are", self.kept)
            };
            out.push(format!("sweep {sweep}: {n} not in this spec; they stay (cancel the sweep or use a new name to drop them)"));
        }
        out
    }
}

/// A validated sweep: its name, its policy and the trials of its grid, in grid order.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    pub id: SweepId,
    pub description: String,
    pub run: RunPolicy,
    pub trials: Vec<TrialSpec>,
    /// The validated spec as canonical TOML: every key, with the defaults and the overrides
    /// applied. The coordinator stores it, `resume` reads it back with `parse_resolved`, and
    /// `hash()` hashes it.
    pub resolved: String,
    /// The `CBSWEEP_SPEC__*` overrides the spec was validated with, sorted by key.
    pub overrides: Vec<SpecOverride>,
    /// What the statistics compare (`[stats]`; default `StatsPlan::default()`), each side of
    /// the grid's architectures and regimes.
    pub stats: StatsPlan,
}

impl SweepSpec {
    /// The hash of the validated spec (`spec_hash` of `resolved`), recorded with results.
    pub fn hash(&self) -> String {
        spec_hash(&self.resolved)
    }

    /// Checks the overrides this spec records against its resolved text, as a coordinator must
    /// for a submitted spec (the client applied them and sends the record beside the text): at
    /// most `MAX_OVERRIDES`, each a dotted key of lowercase letters, digits and `_` that names a
    /// key of the spec, a short printable value that `overrides_text` can keep, and, for a
    /// scalar key, the value the resolved spec holds (a record saying `train.epochs=999` beside a
    /// budget of 2 is refused).
    pub fn check_overrides(&self, path: &Path) -> Result<(), SpecError> {
        overrides::check(&self.overrides, &self.resolved, path)
    }
}

/// Short content hash of a spec's text, recorded with results (which spec made them). For a
/// sweep, hash its resolved text (`SweepSpec::hash`).
pub fn spec_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}
