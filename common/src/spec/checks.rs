//! Refusals and the limits they enforce: `SpecError` (every variant names the file), the
//! `Checker` that makes each refusal name the file, the key and the value, the common checks of
//! a value (positive, at least zero, a rate, at least one entry, a name that parses), and the
//! table of upper bounds (`UPPER_BOUNDS`, `MAX_TRIALS`) that refuses a typo before it is leased.
//! A leaf: it knows no other file of the spec module.

use std::path::{Path, PathBuf};

/// Why a spec was refused. Each variant names the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read sweep spec {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {field} = {value}: {reason}", path.display())]
    Invalid { path: PathBuf, field: String, value: String, reason: String },
}

/// Upper bounds on numeric keys: far above anything the study or a GPU node could use, low enough
/// that a typo (an extra digit, a unit slip) is refused here instead of being leased and killing
/// worker after worker on its allocation. A key not listed has no bound beyond its type.
pub const UPPER_BOUNDS: &[(&str, f64)] = &[
    ("grid.hidden", 4_096.0),
    ("grid.granule", 65_536.0),
    ("grid.purkinje", 4_096.0),
    ("grid.seed", 1e12),
    ("grid.count", 10_000.0),
    ("grid.refresh_every", 1_000.0),
    ("grid.lr_core", 10.0),
    ("grid.lr_cb", 10.0),
    ("model.hidden", 4_096.0),
    ("model.purkinje", 4_096.0),
    ("train.epochs", 100_000.0),
    ("train.steps_per_epoch", 100_000.0),
    ("train.test_batches", 10_000.0),
    ("train.batch_size", 4_096.0),
    ("train.start_level", 1_000.0),
    ("train.max_level", 1_000.0),
    ("train.fixed_level", 1_000.0),
    ("train.schedule_every", 100_000.0),
    ("train.clip_norm", 1e6),
    ("train.lr_readout", 10.0),
    ("analysis.every_levels", 1_000.0),
    ("analysis.ablation_batches", 10_000.0),
    ("analysis.dimensionality_batches", 10_000.0),
    ("analysis.timescale_steps", 10_000_000.0),
    ("analysis.timescale_trials", 1_024.0),
    ("analysis.timescale_burn_in", 1_000_000.0),
    ("analysis.timescale_max_lag", 100_000.0),
    ("analysis.timescale_fit_lags", 100_000.0),
    ("analysis.recovery_steps", 1_000_000.0),
    ("analysis.recovery_eval_batches", 10_000.0),
    ("run.max_attempts", 100.0),
    ("run.pack_size", 4_096.0),
    ("run.lease_seconds", 86_400.0),
    ("run.checkpoint_every", 100_000.0),
    ("run.checkpoint_seconds", 86_400.0),
];

/// The most trials one sweep may expand to.
pub const MAX_TRIALS: usize = 1_000_000;

/// A number in a message as a person reads it: as written when short (0.01, 4096), otherwise
/// the shorter of that and scientific notation (1e300, not 301 digits).
pub(super) struct Num(pub(super) f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = self.0.to_string();
        let sci = format!("{:e}", self.0);
        f.write_str(if plain.len() <= 12 || plain.len() <= sci.len() { &plain } else { &sci })
    }
}

/// Makes the refusals of the spec read from `path`, and the checks every section shares.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
}

impl Checker<'_> {
    pub(super) fn invalid(&self, field: &str, value: impl std::fmt::Display, reason: &str) -> SpecError {
        SpecError::Invalid { path: self.path.to_owned(), field: field.into(), value: value.to_string(), reason: reason.into() }
    }

    pub(super) fn positive(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        self.positive_as(field, field, v)
    }

    /// `positive` of a value shown as `field` and bounded as `bound` (a zip row's
    /// `grid.zip[1].granule` is bounded as `grid.granule`).
    pub(super) fn positive_as(&self, field: &str, bound: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).ok().filter(|&x| x > 0).ok_or_else(|| self.invalid(field, v, "must be a positive integer"))?;
        self.bounded_as(field, bound, f64::from(x), v).map(|()| x)
    }

    pub(super) fn nonneg(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).map_err(|_| self.invalid(field, v, "must be an integer >= 0"))?;
        self.bounded(field, f64::from(x), v).map(|()| x)
    }

    pub(super) fn rate(&self, field: &str, v: f64) -> Result<f64, SpecError> {
        self.rate_as(field, field, v)
    }

    pub(super) fn rate_as(&self, field: &str, bound: &str, v: f64) -> Result<f64, SpecError> {
        if !(v.is_finite() && v >= 0.0) {
            return Err(self.invalid(field, Num(v), "must be a finite number >= 0"));
        }
        self.bounded_as(field, bound, v, Num(v)).map(|()| v)
    }

    pub(super) fn bounded(&self, field: &str, v: f64, shown: impl std::fmt::Display) -> Result<(), SpecError> {
        self.bounded_as(field, field, v, shown)
    }

    /// Refuses `v` above `bound`'s entry in `UPPER_BOUNDS`, naming `field` and the bound.
    pub(super) fn bounded_as(&self, field: &str, bound: &str, v: f64, shown: impl std::fmt::Display) -> Result<(), SpecError> {
        match UPPER_BOUNDS.iter().find(|(f, _)| *f == bound) {
            Some(&(_, max)) if v > max => Err(self.invalid(field, shown, &format!("must be at most {} (a bound against typos)", Num(max)))),
            _ => Ok(()),
        }
    }

    pub(super) fn nonempty<T>(&self, field: &str, v: &[T]) -> Result<(), SpecError> {
        if v.is_empty() { Err(self.invalid(field, "[]", "needs at least one value")) } else { Ok(()) }
    }

    pub(super) fn parse_each<T: std::str::FromStr<Err = String>>(&self, field: &str, vs: &[String]) -> Result<Vec<T>, SpecError> {
        self.nonempty(field, vs)?;
        vs.iter().map(|v| v.parse::<T>().map_err(|why| self.invalid(field, format!("{v:?}"), &why))).collect()
    }
}
