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

use crate::ids::{Seed, SweepId};
use crate::model_size;
use crate::trial::{AnalysisPlan, Arch, FreezePoint, Regime, Task, TrainBudget, TrialSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DEFAULTS: &str = include_str!("defaults.toml");
const ENV_PREFIX: &str = "CBSWEEP_SPEC";

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

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    sweep: RawSweep,
    grid: RawGrid,
    model: RawModel,
    train: RawTrain,
    analysis: RawAnalysis,
    run: RawRun,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    every_levels: i64,
    ablation_batches: i64,
    dimensionality_batches: i64,
    timescale_steps: i64,
    timescale_trials: i64,
    timescale_burn_in: i64,
    timescale_max_lag: i64,
    timescale_fit_lags: i64,
    save_checkpoints: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: String,
    description: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    task: Vec<String>,
    arch: Vec<String>,
    seed: Vec<i64>,
    granule: Vec<i64>,
    regime: Vec<String>,
    freeze: Vec<String>,
    refresh_every: Vec<i64>,
    core_plasticity: Vec<f64>,
    lr_core: Vec<f64>,
    lr_cb: Vec<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    hidden: i64,
    purkinje: i64,
    rnn_match: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    epochs: i64,
    steps_per_epoch: i64,
    test_batches: i64,
    batch_size: i64,
    start_level: i64,
    max_level: i64,
    solve_threshold: f64,
    momentum: f64,
    clip_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_readout: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    max_attempts: i64,
    pack_size: i64,
    lease_seconds: i64,
    checkpoint_every: i64,
    checkpoint_seconds: i64,
}

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
}

/// One environment override of a spec key (`CBSWEEP_SPEC__TRAIN__EPOCHS=20` is
/// `train.epochs = "20"`), recorded with the sweep and in trials.parquet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpecOverride {
    /// The dotted key, lowercase: `train.epochs`.
    pub key: String,
    /// The value as it was given.
    pub value: String,
}

impl SweepSpec {
    /// The hash of the validated spec (`spec_hash` of `resolved`), recorded with results.
    pub fn hash(&self) -> String {
        spec_hash(&self.resolved)
    }
}

/// The overrides as one readable string, `key=value` joined by "; " (empty when none): the form
/// the store and trials.parquet keep.
pub fn overrides_text(overrides: &[SpecOverride]) -> String {
    overrides.iter().map(|o| format!("{}={}", o.key, o.value)).collect::<Vec<_>>().join("; ")
}

/// Reads `overrides_text`'s form back; the inverse of it for every override it wrote.
pub fn parse_overrides_text(text: &str) -> Vec<SpecOverride> {
    text.split("; ")
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            SpecOverride { key: key.to_string(), value: value.to_string() }
        })
        .collect()
}

/// Short content hash of a spec's text, recorded with results (which spec made them). For a
/// sweep, hash its resolved text (`SweepSpec::hash`).
pub fn spec_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// The `CBSWEEP_SPEC__*` variables of this process's environment, as overrides sorted by key.
pub fn env_overrides() -> Vec<SpecOverride> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut out: Vec<SpecOverride> = std::env::vars()
        .filter_map(|(k, value)| {
            let rest = k.strip_prefix(&prefix)?;
            Some(SpecOverride { key: rest.split("__").map(str::to_lowercase).collect::<Vec<_>>().join("."), value })
        })
        .collect();
    out.sort();
    out
}

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
    let vars = overrides
        .iter()
        .map(|o| (format!("{ENV_PREFIX}__{}", o.key.split('.').collect::<Vec<_>>().join("__")).to_uppercase(), o.value.clone()))
        .collect();
    let env = config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true).source(Some(vars));
    parse_layers(text, path, Some(env), overrides)
}

/// Parses and validates a spec's resolved text (`SweepSpec::resolved`), as a coordinator
/// receives it and `resume` reads it from the store: no environment is read, so the result is
/// the sweep that was validated where it was submitted. `overrides` are the ones it was
/// validated with, kept as the record. Text stored before specs were resolved (a user's file as
/// given) still parses: the defaults fill what it leaves out.
pub fn parse_resolved(text: &str, path: &Path, overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    parse_layers(text, path, None, overrides)
}

fn parse_layers(text: &str, path: &Path, env: Option<config::Environment>, overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    let parse_err = |message: String| SpecError::Parse { path: path.to_owned(), message };
    // config reports TOML syntax errors without the position; toml's own parser says where.
    toml::from_str::<toml::Table>(text).map_err(|e| parse_err(format!("not valid TOML: {e}")))?;
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if let Some(env) = env {
        builder = builder.add_source(env);
    }
    let raw: RawSpec = builder.build().and_then(|c| c.try_deserialize()).map_err(|e| parse_err(describe_config_error(&e.to_string())))?;
    let resolved = toml::to_string(&raw).map_err(|e| parse_err(format!("cannot write the resolved spec: {e}")))?;
    validate(raw, path, resolved, overrides)
}

/// config's messages put the key last ("missing field `name` for key `sweep`"); reword them so
/// the full key comes first and the user sees what to change.
fn describe_config_error(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("missing configuration field \"") {
        return format!("missing required key `{}`", rest.trim_end_matches('"'));
    }
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let section = tail.split('`').nth(1).unwrap_or("");
        let key = if section.is_empty() { field.to_string() } else { format!("{section}.{field}") };
        return format!("missing required key `{key}`");
    }
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let section = tail.rsplit_once("for key `").map(|(_, s)| s.trim_end_matches('`')).unwrap_or("");
        let expected = tail.split(" for key").next().unwrap_or("").trim_start_matches(", ");
        let key = if section.is_empty() { field.to_string() } else { format!("{section}.{field}") };
        return format!("unknown key `{key}` ({expected})");
    }
    msg.to_string()
}

/// Upper bounds on numeric keys: far above anything the study or a GPU node could use, low enough
/// that a typo (an extra digit, a unit slip) is refused here instead of being leased and killing
/// worker after worker on its allocation. A key not listed has no bound beyond its type.
pub const UPPER_BOUNDS: &[(&str, f64)] = &[
    ("grid.granule", 65_536.0),
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
    ("run.max_attempts", 100.0),
    ("run.pack_size", 4_096.0),
    ("run.lease_seconds", 86_400.0),
    ("run.checkpoint_every", 100_000.0),
    ("run.checkpoint_seconds", 86_400.0),
];

/// The most trials one sweep may expand to.
pub const MAX_TRIALS: usize = 1_000_000;

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: &str, value: impl std::fmt::Display, reason: &str) -> SpecError {
        SpecError::Invalid { path: self.path.to_owned(), field: field.into(), value: value.to_string(), reason: reason.into() }
    }

    fn positive(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).ok().filter(|&x| x > 0).ok_or_else(|| self.invalid(field, v, "must be a positive integer"))?;
        self.bounded(field, f64::from(x), v).map(|()| x)
    }

    fn nonneg(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).map_err(|_| self.invalid(field, v, "must be an integer >= 0"))?;
        self.bounded(field, f64::from(x), v).map(|()| x)
    }

    fn rate(&self, field: &str, v: f64) -> Result<f64, SpecError> {
        if !(v.is_finite() && v >= 0.0) {
            return Err(self.invalid(field, v, "must be a finite number >= 0"));
        }
        self.bounded(field, v, v).map(|()| v)
    }

    /// Refuses `v` above the field's entry in `UPPER_BOUNDS`, naming the bound.
    fn bounded(&self, field: &str, v: f64, shown: impl std::fmt::Display) -> Result<(), SpecError> {
        match UPPER_BOUNDS.iter().find(|(f, _)| *f == field) {
            Some(&(_, max)) if v > max => Err(self.invalid(field, shown, &format!("must be at most {max} (a bound against typos)"))),
            _ => Ok(()),
        }
    }

    fn nonempty<T>(&self, field: &str, v: &[T]) -> Result<(), SpecError> {
        if v.is_empty() { Err(self.invalid(field, "[]", "needs at least one value")) } else { Ok(()) }
    }

    fn parse_each<T: std::str::FromStr<Err = String>>(&self, field: &str, vs: &[String]) -> Result<Vec<T>, SpecError> {
        self.nonempty(field, vs)?;
        vs.iter().map(|v| v.parse::<T>().map_err(|why| self.invalid(field, format!("{v:?}"), &why))).collect()
    }
}

fn validate(raw: RawSpec, path: &Path, resolved: String, overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    let c = Checker { path };
    let name = raw.sweep.name.trim();
    SweepId::check(name).map_err(|why| c.invalid("sweep.name", format!("{:?}", raw.sweep.name), &why))?;
    let g = &raw.grid;
    let tasks: Vec<Task> = c.parse_each("grid.task", &g.task)?;
    let archs: Vec<Arch> = c.parse_each("grid.arch", &g.arch)?;
    let freezes: Vec<FreezePoint> = c.parse_each("grid.freeze", &g.freeze)?;
    c.nonempty("grid.seed", &g.seed)?;
    let seeds = g
        .seed
        .iter()
        .map(|&s| u64::try_from(s).map(Seed).map_err(|_| c.invalid("grid.seed", s, "seeds must be integers >= 0")))
        .collect::<Result<Vec<_>, _>>()?;
    c.nonempty("grid.granule", &g.granule)?;
    let granules = g.granule.iter().map(|&v| c.positive("grid.granule", v)).collect::<Result<Vec<_>, _>>()?;
    c.nonempty("grid.refresh_every", &g.refresh_every)?;
    let refreshes = g.refresh_every.iter().map(|&v| c.positive("grid.refresh_every", v)).collect::<Result<Vec<_>, _>>()?;
    c.nonempty("grid.regime", &g.regime)?;
    for r in &g.regime {
        if !matches!(r.as_str(), "simult" | "reservoir" | "interleaved") {
            return Err(c.invalid("grid.regime", format!("{r:?}"), "unknown regime (expected one of: simult, reservoir, interleaved)"));
        }
    }
    let mut factors = Vec::new();
    c.nonempty("grid.core_plasticity", &g.core_plasticity)?;
    for &f in &g.core_plasticity {
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(c.invalid("grid.core_plasticity", f, "must be in (0, 1]"));
        }
        factors.push(f);
    }
    c.nonempty("grid.lr_core", &g.lr_core)?;
    c.nonempty("grid.lr_cb", &g.lr_cb)?;
    let lr_cores = g.lr_core.iter().map(|&v| c.rate("grid.lr_core", v)).collect::<Result<Vec<_>, _>>()?;
    let lr_cbs = g.lr_cb.iter().map(|&v| c.rate("grid.lr_cb", v)).collect::<Result<Vec<_>, _>>()?;

    let hidden = c.positive("model.hidden", raw.model.hidden)?;
    let purkinje = c.positive("model.purkinje", raw.model.purkinje)?;
    let published = match raw.model.rnn_match.as_str() {
        "published" => true,
        "closest" => false,
        other => return Err(c.invalid("model.rnn_match", format!("{other:?}"), "expected \"published\" or \"closest\"")),
    };

    let t = &raw.train;
    let start_level = c.positive("train.start_level", t.start_level)?;
    let max_level = c.positive("train.max_level", t.max_level)?;
    if start_level < 2 {
        return Err(c.invalid("train.start_level", start_level, "must be at least 2 (the oddball context needs two bits)"));
    }
    if max_level < start_level {
        return Err(c.invalid("train.max_level", max_level, "must be at least train.start_level"));
    }
    if !(t.solve_threshold > 0.0 && t.solve_threshold <= 1.0) {
        return Err(c.invalid("train.solve_threshold", t.solve_threshold, "must be in (0, 1]"));
    }
    if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
        return Err(c.invalid("train.momentum", t.momentum, "must be in [0, 1)"));
    }
    if !(t.clip_norm.is_finite() && t.clip_norm > 0.0) {
        return Err(c.invalid("train.clip_norm", t.clip_norm, "must be a positive number"));
    }
    let budget = TrainBudget {
        epochs: c.positive("train.epochs", t.epochs)?,
        steps_per_epoch: c.positive("train.steps_per_epoch", t.steps_per_epoch)?,
        test_batches: c.positive("train.test_batches", t.test_batches)?,
        batch_size: c.positive("train.batch_size", t.batch_size)?,
        start_level,
        max_level,
        solve_threshold: t.solve_threshold,
        momentum: t.momentum,
        clip_norm: t.clip_norm,
    };
    let a = &raw.analysis;
    let nonneg = |field: &str, v: i64| c.nonneg(field, v);
    let analysis = AnalysisPlan {
        every_levels: nonneg("analysis.every_levels", a.every_levels)?,
        ablation_batches: c.positive("analysis.ablation_batches", a.ablation_batches)?,
        dimensionality_batches: c.positive("analysis.dimensionality_batches", a.dimensionality_batches)?,
        timescale_steps: nonneg("analysis.timescale_steps", a.timescale_steps)?,
        timescale_trials: c.positive("analysis.timescale_trials", a.timescale_trials)?,
        timescale_burn_in: nonneg("analysis.timescale_burn_in", a.timescale_burn_in)?,
        timescale_max_lag: c.positive("analysis.timescale_max_lag", a.timescale_max_lag)?,
        timescale_fit_lags: c.positive("analysis.timescale_fit_lags", a.timescale_fit_lags)?,
        save_checkpoints: a.save_checkpoints,
    };
    if analysis.timescale_steps > 0 && analysis.timescale_steps <= analysis.timescale_burn_in + analysis.timescale_max_lag {
        return Err(c.invalid(
            "analysis.timescale_steps",
            analysis.timescale_steps,
            "must exceed timescale_burn_in + timescale_max_lag (or be 0 to skip timescales)",
        ));
    }
    if analysis.timescale_fit_lags > analysis.timescale_max_lag {
        return Err(c.invalid("analysis.timescale_fit_lags", analysis.timescale_fit_lags, "must be at most timescale_max_lag"));
    }
    let lr_readout = t.lr_readout.map(|v| c.rate("train.lr_readout", v)).transpose()?;
    let run = RunPolicy {
        max_attempts: c.positive("run.max_attempts", raw.run.max_attempts)?,
        pack_size: c.positive("run.pack_size", raw.run.pack_size)?,
        lease_seconds: c.positive("run.lease_seconds", raw.run.lease_seconds)?,
        checkpoint_every: c.nonneg("run.checkpoint_every", raw.run.checkpoint_every)?,
        checkpoint_seconds: c.nonneg("run.checkpoint_seconds", raw.run.checkpoint_seconds)?,
    };

    let id = SweepId(name.to_string());
    let mut regimes = BTreeSet::new();
    for r in &g.regime {
        match r.as_str() {
            "simult" => {
                regimes.insert(Regime::Simult);
            }
            "reservoir" => regimes.extend(freezes.iter().map(|&freeze| Regime::Reservoir { freeze })),
            _ => {
                for &freeze in &freezes {
                    regimes.extend(refreshes.iter().map(|&every| Regime::Interleaved { freeze, every }));
                }
            }
        }
    }

    let cells = [tasks.len(), archs.len(), granules.len(), regimes.len(), factors.len(), lr_cores.len(), lr_cbs.len(), seeds.len()]
        .iter()
        .try_fold(1usize, |n, &k| n.checked_mul(k))
        .unwrap_or(usize::MAX);
    if cells > MAX_TRIALS {
        return Err(c.invalid("grid", format!("{cells} cells"), &format!("a sweep may expand to at most {MAX_TRIALS} trials; split it")));
    }
    let mut trials = Vec::new();
    let mut seen = BTreeSet::new();
    for &task in &tasks {
        for &arch in &archs {
            for &granule in &granules {
                let h = match arch {
                    Arch::Cbrnn | Arch::Rmrnn | Arch::Cbgru => hidden,
                    Arch::Rnn if published => model_size::matched_rnn_hidden(hidden, granule, purkinje),
                    Arch::Rnn => model_size::closest_rnn_hidden(model_size::cbrnn_params(hidden, granule, purkinje)),
                    Arch::Gru => model_size::matched_gru_hidden(hidden, granule, purkinje),
                };
                for &regime in &regimes {
                    for &core_plasticity in &factors {
                        for &lr_core in &lr_cores {
                            for &lr_cb in &lr_cbs {
                                for &seed in &seeds {
                                    let trial = TrialSpec {
                                        sweep: id.clone(),
                                        task,
                                        arch,
                                        hidden: h,
                                        granule,
                                        purkinje,
                                        seed,
                                        regime,
                                        lr_core,
                                        lr_cb,
                                        lr_readout: lr_readout.unwrap_or(lr_core),
                                        core_plasticity,
                                        budget,
                                        analysis,
                                    };
                                    if seen.insert(trial.cell_key()) {
                                        trials.push(trial);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(SweepSpec { id, description: raw.sweep.description, run, trials, resolved, overrides })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
