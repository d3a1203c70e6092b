//! Sweep specs: TOML files loaded with the config crate in two stages. First the raw serde
//! structs (embedded defaults, then the user's file, then `CBSWEEP_SPEC__SECTION__KEY`
//! environment overrides), then `validate()` into a typed `SweepSpec`. Only validated types
//! leave this module; every error names the file, the key and the value.
//!
//! A spec is validated once, where the user hands it in (`load_spec`, `parse_spec`): the
//! result carries its resolved form (`SweepSpec::resolved`, canonical TOML with every key, the
//! defaults and the overrides applied) and the overrides it ran with. That text is what a
//! coordinator receives, stores and resumes from (`parse_resolved`, which reads no environment),
//! and what `spec_hash` hashes, so neither the coordinator's environment nor a later shell's can
//! change what a stored sweep means.
//!
//! This file is the face: the entry points and the public names. The work is in the files
//! below, each a leaf or above the ones it uses (none uses this file): `checks.rs` (`SpecError`,
//! the `Checker`, the bounds), `overrides.rs` (the `CBSWEEP_SPEC__*` overrides), `raw.rs` (the
//! serde structs, the config layers, the resolved form), `grid.rs` (axes, ranges, zip, exclude,
//! crossing), `stats.rs` (`[stats]`), `validate.rs` (raw to typed, step by step) and `sweep.rs`
//! (`SweepSpec` and the run policy).

mod checks;
mod grid;
mod overrides;
mod raw;
mod stats;
mod sweep;
mod validate;

pub use checks::{MAX_TRIALS, SpecError, UPPER_BOUNDS};
pub use overrides::{MAX_OVERRIDES, SpecOverride, env_overrides, overrides_text, parse_overrides_text};
pub use raw::ZIPPABLE;
pub use stats::resolved_stats;
pub use sweep::{Resubmission, RunChange, RunPolicy, SweepSpec, spec_hash};

use std::path::Path;

/// Loads and validates a sweep spec file, with this process's `CBSWEEP_SPEC__*` overrides.
/// Nothing runs before this returns Ok.
pub fn load_spec(path: &Path) -> Result<SweepSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
    parse_spec(&text, path)
}

/// Parses and validates a user's spec text with this process's `CBSWEEP_SPEC__*` overrides;
/// `path` is only used in messages.
pub fn parse_spec(text: &str, path: &Path) -> Result<SweepSpec, SpecError> {
    parse_spec_with_overrides(text, path, env_overrides())
}

/// Parses and validates a user's spec text with the given overrides applied last, as
/// `CBSWEEP_SPEC__*` variables would be (a value is parsed as TOML's scalars are: `20` is an
/// integer, `0.5` a float, `true` a boolean, anything else a string).
pub fn parse_spec_with_overrides(text: &str, path: &Path, mut overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    overrides.sort();
    let (raw, resolved) = raw::load(text, path, Some(&overrides))?;
    validate::validate(raw, path, resolved, overrides)
}

/// Parses and validates a spec's resolved text (`SweepSpec::resolved`), as a coordinator
/// receives it and `resume` reads it from the store: no environment is read, so the result is
/// the sweep that was validated where it was submitted. `overrides` are the ones it was
/// validated with, kept as the record. Text stored before specs were resolved (a user's file as
/// given) still parses: the defaults fill what it leaves out.
pub fn parse_resolved(text: &str, path: &Path, overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    let (raw, resolved) = raw::load(text, path, None)?;
    validate::validate(raw, path, resolved, overrides)
}

#[cfg(test)]
mod tests;
