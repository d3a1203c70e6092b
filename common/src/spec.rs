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
use crate::trial::{
    AnalysisPlan, Arch, ComparePair, CompareSide, Curriculum, FreezePoint, GruCell, ModuleStart, Regime, RegimeKind, STUDY_SIZE, StatsPlan,
    Task, TrainBudget, TrialSpec,
};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<RawStats>,
}

/// `[stats]`: what the statistics compare. `compare = [["cbrnn", "rnn"], ["cbrnn:reservoir",
/// "rnn:simult"], ...]`: pairs (a, b) of architectures, each side optionally in one regime
/// (`CompareSide`); `freeze_vs_simult = false` drops the automatic freeze-point comparisons.
/// Absent: CB-RNN against the matched RNN and each freeze point against simult, as before (and
/// the resolved form leaves the section out, so older sweeps keep their text).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compare: Option<Vec<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    freeze_vs_simult: Option<bool>,
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
    /// The readout recovery's steps and evaluation batches; absent: the study's 500 and 50 (and
    /// the resolved form leaves them out, so older sweeps keep their text).
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_steps: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_eval_batches: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: String,
    description: String,
}

/// The grid's axes. A numeric axis is a list, or a range (`seed = { from = 0, count = 32 }`;
/// rates and factors `{ from, to, count }` linearly or `{ log_from, to, count }` log-spaced,
/// both ends included); the keys `zip` rows name vary together instead of crossing (and leave
/// the resolved form); `exclude` drops the cells each of its partial cells matches.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    task: Vec<String>,
    arch: Vec<String>,
    seed: toml::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    granule: Option<Vec<i64>>,
    regime: Vec<String>,
    freeze: Vec<String>,
    refresh_every: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    core_plasticity: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lr_core: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lr_cb: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purkinje: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zip: Option<Vec<toml::Table>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<Vec<toml::Table>>,
}

/// `hidden` and `purkinje` as the older scalar form (`[model] hidden = 64`): still read, and the
/// resolved form of a spec that gives neither form keeps them here as before (same text, same
/// hash); a spec may give each size in one form only.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purkinje: Option<i64>,
    rnn_match: String,
    /// "lab" (the default) or "near_zero"; absent from the resolved form unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recurrent_module_start: Option<String>,
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
    /// No curriculum: train and test at this level (until the first solve, or the whole budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    fixed_level: Option<i64>,
    /// With `fixed_level`: "solved" (the lab's: the first solved epoch ends the trial) or
    /// "budget" (train on for the whole budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed_until: Option<String>,
    /// The lab's fixed-schedule control: the level goes up every this many epochs, whatever the
    /// accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule_every: Option<i64>,
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

/// `SweepSpec::stats` of a stored sweep, from its resolved text alone (the `[stats]` section,
/// validated when the sweep was; no grid expansion): what a coordinator's export needs. A text
/// without the section, or one this code cannot read, gives `StatsPlan::default()`.
pub fn resolved_stats(resolved: &str) -> StatsPlan {
    let Some(stats) = toml::from_str::<toml::Table>(resolved).ok().and_then(|t| t.get("stats").cloned()) else {
        return StatsPlan::default();
    };
    let default = StatsPlan::default();
    let pairs = match stats.get("compare").and_then(|v| v.as_array()) {
        None => Some(default.pairs),
        Some(pairs) => pairs
            .iter()
            .map(|p| {
                let p = p.as_array()?;
                Some(ComparePair { a: p.first()?.as_str()?.parse().ok()?, b: p.get(1)?.as_str()?.parse().ok()? })
            })
            .collect::<Option<Vec<_>>>(),
    };
    let freeze_vs_simult = stats.get("freeze_vs_simult").and_then(|v| v.as_bool()).unwrap_or(default.freeze_vs_simult);
    match pairs {
        Some(pairs) => StatsPlan { pairs, freeze_vs_simult },
        None => StatsPlan::default(),
    }
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

/// The most overrides a sweep may record, and the longest key and value of one.
pub const MAX_OVERRIDES: usize = 64;
const MAX_OVERRIDE_KEY: usize = 64;
const MAX_OVERRIDE_VALUE: usize = 256;

impl SweepSpec {
    /// Checks the overrides this spec records against its resolved text, as a coordinator must
    /// for a submitted spec (the client applied them and sends the record beside the text): at
    /// most `MAX_OVERRIDES`, each a dotted key of lowercase letters, digits and `_` that names a
    /// key of the spec, a short printable value that `overrides_text` can keep, and, for a
    /// scalar key, the value the resolved spec holds (a record saying `train.epochs=999` beside a
    /// budget of 2 is refused).
    pub fn check_overrides(&self, path: &Path) -> Result<(), SpecError> {
        let c = Checker { path };
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(c.invalid("overrides", format!("{} entries", self.overrides.len()), &format!("at most {MAX_OVERRIDES}")));
        }
        let resolved: toml::Table =
            toml::from_str(&self.resolved).map_err(|e| c.invalid("overrides", "(the resolved spec)", &e.to_string()))?;
        for o in &self.overrides {
            let field = format!("overrides[{}]", o.key.escape_debug());
            let well_formed = o.key.len() <= MAX_OVERRIDE_KEY
                && o.key.split('.').count() >= 2
                && o.key
                    .split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'));
            if !well_formed {
                return Err(c.invalid(&field, "(its key)", "must be a dotted spec key such as train.epochs"));
            }
            if o.value.chars().count() > MAX_OVERRIDE_VALUE || o.value.chars().any(char::is_control) || o.value.contains("; ") {
                let shown: String = o.value.chars().take(40).collect();
                return Err(c.invalid(
                    &field,
                    format!("{:?}...", shown.escape_debug().to_string()),
                    &format!("must be at most {MAX_OVERRIDE_VALUE} printable characters without \"; \""),
                ));
            }
            let mut at: Option<&toml::Value> = None;
            for (i, part) in o.key.split('.').enumerate() {
                at = if i == 0 { resolved.get(part) } else { at.and_then(|v| v.get(part)) };
            }
            let Some(held) = at else {
                return Err(c.invalid(&field, &o.value, &format!("{} is no key of the spec", o.key)));
            };
            let given = o.value.trim();
            let agrees = match held {
                toml::Value::Integer(i) => given.parse::<f64>().is_ok_and(|g| g == *i as f64),
                toml::Value::Float(f) => given.parse::<f64>().is_ok_and(|g| g == *f),
                toml::Value::Boolean(b) => given.parse::<bool>().is_ok_and(|g| g == *b),
                toml::Value::String(t) => given == t,
                _ => true, // lists and tables: config parses them its own way; the text is what counts
            };
            if !agrees {
                return Err(c.invalid(&field, &o.value, &format!("does not match the submitted spec's {} = {held}", o.key)));
            }
        }
        Ok(())
    }
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
    let given = toml::from_str::<toml::Table>(text).map_err(|e| parse_err(format!("not valid TOML: {e}")))?;
    let given_override: Vec<&str> = if env.is_some() { overrides.iter().map(|o| o.key.as_str()).collect() } else { Vec::new() };
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if let Some(env) = env {
        builder = builder.add_source(env);
    }
    let mut raw: RawSpec =
        builder.build().and_then(|c| c.try_deserialize()).map_err(|e| parse_err(describe_config_error(&e.to_string())))?;
    let is_given = |section: &str, key: &str| {
        given.get(section).and_then(|t| t.get(key)).is_some() || given_override.contains(&format!("{section}.{key}").as_str())
    };
    canonicalize(&mut raw, &Checker { path }, is_given)?;
    let resolved = toml::to_string(&raw).map_err(|e| parse_err(format!("cannot write the resolved spec: {e}")))?;
    validate(raw, path, resolved, overrides)
}

/// Brings the merged layers to the one form the resolved text keeps: the keys `grid.zip` names
/// leave the axes (where the defaults filled them; a spec giving one both ways is refused), the
/// sizes sit where the spec gave them (neither form: `[model]`, at the study's 64, as before),
/// and a rate axis listed as integers reads as floats. `is_given(section, key)`: the spec's own
/// text or an override set it.
fn canonicalize(raw: &mut RawSpec, c: &Checker, is_given: impl Fn(&str, &str) -> bool) -> Result<(), SpecError> {
    let g = &mut raw.grid;
    let zipped: BTreeSet<String> = g.zip.iter().flatten().flat_map(|row| row.keys().cloned()).collect();
    for key in &zipped {
        if !ZIPPABLE.contains(&key.as_str()) {
            continue; // refused with its row in validate
        }
        if is_given("grid", key) {
            return Err(c.invalid(&format!("grid.{key}"), "(an axis)", "is also in grid.zip; give it in one place"));
        }
        match key.as_str() {
            "granule" => g.granule = None,
            "core_plasticity" => g.core_plasticity = None,
            "lr_core" => g.lr_core = None,
            "lr_cb" => g.lr_cb = None,
            _ => {}
        }
    }
    for (key, in_grid, in_model) in
        [("hidden", g.hidden.is_some(), &mut raw.model.hidden), ("purkinje", g.purkinje.is_some(), &mut raw.model.purkinje)]
    {
        let in_grid = in_grid || zipped.contains(key);
        match in_model {
            Some(v) if in_grid => {
                return Err(c.invalid(
                    &format!("model.{key}"),
                    *v,
                    &format!("the size is also in the grid (grid.{key} or grid.zip); give it once, as grid.{key} = [...]"),
                ));
            }
            None if !in_grid => *in_model = Some(i64::from(STUDY_SIZE)),
            _ => {}
        }
    }
    for axis in [&mut g.core_plasticity, &mut g.lr_core, &mut g.lr_cb].into_iter().flatten() {
        if let toml::Value::Array(vs) = axis {
            for v in vs {
                if let toml::Value::Integer(i) = *v {
                    *v = toml::Value::Float(i as f64);
                }
            }
        }
    }
    Ok(())
}

/// The grid keys `grid.zip` rows may name: the model sizes, the plasticity factor and the rates.
/// The others (task, arch, regime, freeze, refresh_every, seed) always cross; `grid.exclude`
/// drops the cells of theirs that make no sense.
pub const ZIPPABLE: &[&str] = &["hidden", "granule", "purkinje", "core_plasticity", "lr_core", "lr_cb"];

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
struct Num(f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = self.0.to_string();
        let sci = format!("{:e}", self.0);
        f.write_str(if plain.len() <= 12 || plain.len() <= sci.len() { &plain } else { &sci })
    }
}

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: &str, value: impl std::fmt::Display, reason: &str) -> SpecError {
        SpecError::Invalid { path: self.path.to_owned(), field: field.into(), value: value.to_string(), reason: reason.into() }
    }

    fn positive(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        self.positive_as(field, field, v)
    }

    /// `positive` of a value shown as `field` and bounded as `bound` (a zip row's
    /// `grid.zip[1].granule` is bounded as `grid.granule`).
    fn positive_as(&self, field: &str, bound: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).ok().filter(|&x| x > 0).ok_or_else(|| self.invalid(field, v, "must be a positive integer"))?;
        self.bounded_as(field, bound, f64::from(x), v).map(|()| x)
    }

    fn nonneg(&self, field: &str, v: i64) -> Result<u32, SpecError> {
        let x = u32::try_from(v).map_err(|_| self.invalid(field, v, "must be an integer >= 0"))?;
        self.bounded(field, f64::from(x), v).map(|()| x)
    }

    fn rate(&self, field: &str, v: f64) -> Result<f64, SpecError> {
        self.rate_as(field, field, v)
    }

    fn rate_as(&self, field: &str, bound: &str, v: f64) -> Result<f64, SpecError> {
        if !(v.is_finite() && v >= 0.0) {
            return Err(self.invalid(field, Num(v), "must be a finite number >= 0"));
        }
        self.bounded_as(field, bound, v, Num(v)).map(|()| v)
    }

    fn bounded(&self, field: &str, v: f64, shown: impl std::fmt::Display) -> Result<(), SpecError> {
        self.bounded_as(field, field, v, shown)
    }

    /// Refuses `v` above `bound`'s entry in `UPPER_BOUNDS`, naming `field` and the bound.
    fn bounded_as(&self, field: &str, bound: &str, v: f64, shown: impl std::fmt::Display) -> Result<(), SpecError> {
        match UPPER_BOUNDS.iter().find(|(f, _)| *f == bound) {
            Some(&(_, max)) if v > max => Err(self.invalid(field, shown, &format!("must be at most {} (a bound against typos)", Num(max)))),
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
    SweepId::check_new(name).map_err(|why| c.invalid("sweep.name", format!("{:?}", raw.sweep.name), &why))?;
    let g = &raw.grid;
    let tasks: Vec<Task> = c.parse_each("grid.task", &g.task)?;
    let archs: Vec<Arch> = c.parse_each("grid.arch", &g.arch)?;
    let freezes: Vec<FreezePoint> = c.parse_each("grid.freeze", &g.freeze)?;
    c.nonempty("grid.refresh_every", &g.refresh_every)?;
    let refreshes = g.refresh_every.iter().map(|&v| c.positive("grid.refresh_every", v)).collect::<Result<Vec<_>, _>>()?;
    c.nonempty("grid.regime", &g.regime)?;
    for r in &g.regime {
        regime_name(r).ok_or_else(|| c.invalid("grid.regime", format!("{r:?}"), REGIME_HINT))?;
    }
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
    let zip = zip_groups(&c, g.zip.as_deref())?;
    let mut factors: Vec<Vec<Vec<Coord>>> = Vec::new();
    for key in GRID_ORDER {
        if let Some(group) = zip.iter().find(|(keys, _)| keys.contains(key)) {
            // A zipped group stands where the first of its keys would.
            if GRID_ORDER.iter().find(|k| group.0.contains(**k)) == Some(&key) {
                factors.push(group.1.clone());
            }
            continue;
        }
        let one = |v: Vec<Coord>| v.into_iter().map(|x| vec![x]).collect::<Vec<_>>();
        factors.push(match key {
            "task" => one(tasks.iter().map(|&t| Coord::Task(t)).collect()),
            "arch" => one(archs.iter().map(|&a| Coord::Arch(a)).collect()),
            "hidden" => one(sizes(&c, "hidden", g.hidden.as_deref(), raw.model.hidden)?.into_iter().map(Coord::Hidden).collect()),
            "granule" => one(sizes(&c, "granule", g.granule.as_deref(), None)?.into_iter().map(Coord::Granule).collect()),
            "purkinje" => one(sizes(&c, "purkinje", g.purkinje.as_deref(), raw.model.purkinje)?.into_iter().map(Coord::Purkinje).collect()),
            "regime" => one(regimes.iter().map(|&r| Coord::Regime(r)).collect()),
            "core_plasticity" => one(c
                .float_axis("grid.core_plasticity", g.core_plasticity.as_ref(), |f, v| c.factor(f, v))?
                .into_iter()
                .map(Coord::CorePlasticity)
                .collect()),
            "lr_core" => one(c
                .float_axis("grid.lr_core", g.lr_core.as_ref(), |f, v| c.rate_as(f, "grid.lr_core", v))?
                .into_iter()
                .map(Coord::LrCore)
                .collect()),
            "lr_cb" => one(c
                .float_axis("grid.lr_cb", g.lr_cb.as_ref(), |f, v| c.rate_as(f, "grid.lr_cb", v))?
                .into_iter()
                .map(Coord::LrCb)
                .collect()),
            _ => one(c.seeds(&g.seed)?.into_iter().map(Coord::Seed).collect()),
        });
    }
    let excludes = g.exclude.iter().flatten().enumerate().map(|(i, entry)| exclude_entry(&c, i, entry)).collect::<Result<Vec<_>, _>>()?;
    let published = match raw.model.rnn_match.as_str() {
        "published" => true,
        "closest" => false,
        other => return Err(c.invalid("model.rnn_match", format!("{other:?}"), "expected \"published\" or \"closest\"")),
    };
    let module_start = match raw.model.recurrent_module_start.as_deref() {
        None => ModuleStart::Lab,
        Some(name) => name.parse().map_err(|why: String| c.invalid("model.recurrent_module_start", format!("{name:?}"), &why))?,
    };

    let t = &raw.train;
    let (start_level, max_level, curriculum) = match (t.fixed_level, t.schedule_every) {
        (Some(_), Some(k)) => {
            return Err(c.invalid("train.schedule_every", k, "cannot be combined with train.fixed_level (the level never moves there)"));
        }
        // one level: it starts and tops the curriculum
        (Some(n), None) => {
            let n = c.positive("train.fixed_level", n)?;
            if n < 2 {
                return Err(c.invalid("train.fixed_level", n, "must be at least 2 (the oddball context needs two bits)"));
            }
            let until = match t.fixed_until.as_deref() {
                None | Some("solved") => Curriculum::FixedUntilSolved,
                Some("budget") => Curriculum::Fixed,
                Some(other) => {
                    return Err(c.invalid(
                        "train.fixed_until",
                        format!("{other:?}"),
                        "expected \"solved\" (the lab's: stop at the first solve) or \"budget\"",
                    ));
                }
            };
            (n, n, until)
        }
        (None, schedule) => {
            if let Some(until) = &t.fixed_until {
                return Err(c.invalid("train.fixed_until", format!("{until:?}"), "applies only with train.fixed_level"));
            }
            let curriculum = match schedule {
                Some(k) => Curriculum::Schedule { every: c.positive("train.schedule_every", k)? },
                None => Curriculum::Climb,
            };
            (c.positive("train.start_level", t.start_level)?, c.positive("train.max_level", t.max_level)?, curriculum)
        }
    };
    if start_level < 2 {
        return Err(c.invalid("train.start_level", start_level, "must be at least 2 (the oddball context needs two bits)"));
    }
    if max_level < start_level {
        return Err(c.invalid("train.max_level", max_level, "must be at least train.start_level"));
    }
    if !(t.solve_threshold > 0.0 && t.solve_threshold <= 1.0) {
        return Err(c.invalid("train.solve_threshold", Num(t.solve_threshold), "must be in (0, 1]"));
    }
    if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
        return Err(c.invalid("train.momentum", Num(t.momentum), "must be in [0, 1)"));
    }
    if !(t.clip_norm.is_finite() && t.clip_norm > 0.0) {
        return Err(c.invalid("train.clip_norm", Num(t.clip_norm), "must be a positive number"));
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
        curriculum,
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
        recovery_steps: a.recovery_steps.map_or(Ok(crate::trial::STUDY_RECOVERY_STEPS), |v| nonneg("analysis.recovery_steps", v))?,
        recovery_eval_batches: a
            .recovery_eval_batches
            .map_or(Ok(crate::trial::STUDY_RECOVERY_EVAL_BATCHES), |v| c.positive("analysis.recovery_eval_batches", v))?,
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
    let cells = factors.iter().try_fold(1usize, |n, f| n.checked_mul(f.len())).unwrap_or(usize::MAX);
    if cells > MAX_TRIALS {
        return Err(c.invalid("grid", format!("{cells} cells"), &format!("a sweep may expand to at most {MAX_TRIALS} trials; split it")));
    }
    let mut excluded = vec![0usize; excludes.len()];
    let mut trials = Vec::new();
    let mut seen = BTreeSet::new();
    for cell in product(&factors) {
        let mut kept = true;
        for (hits, entry) in excluded.iter_mut().zip(&excludes) {
            if entry.iter().all(|x| x.matches(&cell)) {
                *hits += 1;
                kept = false;
            }
        }
        if !kept {
            continue;
        }
        let (hidden, granule, purkinje) = (cell.hidden, cell.granule, cell.purkinje);
        let h = match cell.arch {
            Arch::Cbrnn | Arch::Rmrnn | Arch::Cbgru => hidden,
            Arch::Rnn if published => model_size::matched_rnn_hidden(hidden, granule, purkinje),
            Arch::Rnn => model_size::closest_rnn_hidden(model_size::cbrnn_params(hidden, granule, purkinje)),
            Arch::Gru => model_size::matched_gru_hidden(hidden, granule, purkinje),
        };
        let trial = TrialSpec {
            sweep: id.clone(),
            task: cell.task,
            arch: cell.arch,
            hidden: h,
            granule,
            purkinje,
            seed: cell.seed,
            regime: cell.regime,
            lr_core: cell.lr_core,
            lr_cb: cell.lr_cb,
            // the readout learns in the core's group (the lab's optimiser), so a plasticity
            // factor scales it too, unless the spec names a rate of its own
            lr_readout: lr_readout.unwrap_or(cell.lr_core * cell.core_plasticity),
            core_plasticity: cell.core_plasticity,
            budget,
            analysis,
            grid_hidden: hidden,
            gru_cell: GruCell::of(cell.arch),
            module_start: module_start.of(cell.arch),
        };
        if seen.insert(trial.cell_key()) {
            trials.push(trial);
        }
    }
    if let Some(i) = excluded.iter().position(|&hits| hits == 0) {
        let entry = toml::Value::Table(g.exclude.as_ref().expect("an exclude entry")[i].clone());
        return Err(c.invalid(&format!("grid.exclude[{i}]"), entry, "matches no cell of the grid (check its keys and values)"));
    }
    if trials.is_empty() {
        return Err(c.invalid("grid.exclude", "(every cell)", "leaves no cell to run"));
    }
    if budget.curriculum.is_fixed()
        && let Some(t) = trials.iter().find(|t| t.regime != Regime::Simult && matches!(t.regime.freeze(), FreezePoint::Level(_)))
    {
        return Err(c.invalid(
            "grid.freeze",
            t.regime.freeze(),
            "freezes once a level is solved, which never comes with train.fixed_level (the level never moves): freeze at epoch:N or step:N",
        ));
    }
    let stats = match &raw.stats {
        None => StatsPlan::default(),
        Some(st) => {
            let kinds: BTreeSet<RegimeKind> = trials.iter().map(|t| t.regime.kind()).collect();
            StatsPlan {
                pairs: match &st.compare {
                    Some(pairs) => compare_pairs(&c, pairs, &archs, &kinds)?,
                    None => StatsPlan::default().pairs,
                },
                freeze_vs_simult: st.freeze_vs_simult.unwrap_or(true),
            }
        }
    };
    Ok(SweepSpec { id, description: raw.sweep.description, run, trials, resolved, overrides, stats })
}

/// `stats.compare`'s pairs: each side an architecture of the grid, optionally in one of its
/// regimes (`"cbrnn:reservoir"`), the two sides distinct.
fn compare_pairs(c: &Checker, pairs: &[Vec<String>], archs: &[Arch], kinds: &BTreeSet<RegimeKind>) -> Result<Vec<ComparePair>, SpecError> {
    c.nonempty("stats.compare", pairs)?;
    let grid = archs.iter().map(|a| format!("{:?}", a.to_string())).collect::<Vec<_>>().join(", ");
    let regimes = kinds.iter().map(|r| format!("{:?}", r.name())).collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let field = format!("stats.compare[{i}]");
        if pair.len() != 2 {
            return Err(c.invalid(
                &field,
                format!("{pair:?}"),
                "a comparison names two sides, each an architecture or architecture:regime: [\"a\", \"b\"] or [\"cbrnn:reservoir\", \"rnn:simult\"]",
            ));
        }
        let mut two = Vec::new();
        for (j, name) in pair.iter().enumerate() {
            let f = format!("{field}[{j}]");
            let side: CompareSide = name.parse().map_err(|why: String| c.invalid(&f, format!("{name:?}"), &why))?;
            if !archs.contains(&side.arch) {
                return Err(c.invalid(&f, format!("{name:?}"), &format!("not an architecture of the grid (grid.arch = [{grid}])")));
            }
            if let Some(r) = side.regime
                && !kinds.contains(&r)
            {
                return Err(c.invalid(&f, format!("{name:?}"), &format!("not a regime of the grid (its regimes: [{regimes}])")));
            }
            two.push(side);
        }
        let p = ComparePair { a: two[0], b: two[1] };
        if p.a == p.b || (p.a.arch == p.b.arch && (p.a.regime.is_none() || p.b.regime.is_none())) {
            return Err(c.invalid(&field, format!("{pair:?}"), "compares a group with itself (the same architecture needs two regimes)"));
        }
        if out.contains(&p) {
            return Err(c.invalid(&field, format!("{pair:?}"), "is listed twice"));
        }
        out.push(p);
    }
    Ok(out)
}

const REGIME_HINT: &str = "unknown regime (expected one of: simult, reservoir, interleaved)";

/// The grid's keys in the order it crosses them (the last varies fastest); the order of every
/// sweep's trials before zip and ranges existed, with hidden and purkinje beside granule.
const GRID_ORDER: [&str; 10] = ["task", "arch", "hidden", "granule", "purkinje", "regime", "core_plasticity", "lr_core", "lr_cb", "seed"];

fn regime_name(r: &str) -> Option<&'static str> {
    ["simult", "reservoir", "interleaved"].into_iter().find(|n| *n == r)
}

/// One grid coordinate: what a trial's cell key shows. `hidden` is the grid shape's (the
/// CB-RNN's); the matched architectures' own sizes follow from it.
#[derive(Clone, Copy, Debug)]
struct Cell {
    task: Task,
    arch: Arch,
    hidden: u32,
    granule: u32,
    purkinje: u32,
    regime: Regime,
    core_plasticity: f64,
    lr_core: f64,
    lr_cb: f64,
    seed: Seed,
}

/// One value of one grid key: what axes, zip rows and exclude entries are made of. The regime's
/// parts (`RegimeName`, `Freeze`, `Refresh`) only match, in an exclude entry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    Task(Task),
    Arch(Arch),
    Hidden(u32),
    Granule(u32),
    Purkinje(u32),
    Regime(Regime),
    CorePlasticity(f64),
    LrCore(f64),
    LrCb(f64),
    Seed(Seed),
    RegimeName(&'static str),
    Freeze(FreezePoint),
    Refresh(u32),
}

impl Coord {
    fn set(self, c: &mut Cell) {
        match self {
            Coord::Task(v) => c.task = v,
            Coord::Arch(v) => c.arch = v,
            Coord::Hidden(v) => c.hidden = v,
            Coord::Granule(v) => c.granule = v,
            Coord::Purkinje(v) => c.purkinje = v,
            Coord::Regime(v) => c.regime = v,
            Coord::CorePlasticity(v) => c.core_plasticity = v,
            Coord::LrCore(v) => c.lr_core = v,
            Coord::LrCb(v) => c.lr_cb = v,
            Coord::Seed(v) => c.seed = v,
            Coord::RegimeName(_) | Coord::Freeze(_) | Coord::Refresh(_) => {}
        }
    }

    fn matches(self, c: &Cell) -> bool {
        match self {
            Coord::Task(v) => c.task == v,
            Coord::Arch(v) => c.arch == v,
            Coord::Hidden(v) => c.hidden == v,
            Coord::Granule(v) => c.granule == v,
            Coord::Purkinje(v) => c.purkinje == v,
            Coord::Regime(v) => c.regime == v,
            Coord::CorePlasticity(v) => c.core_plasticity == v,
            Coord::LrCore(v) => c.lr_core == v,
            Coord::LrCb(v) => c.lr_cb == v,
            Coord::Seed(v) => c.seed == v,
            Coord::RegimeName(v) => c.regime.name() == v,
            Coord::Freeze(v) => c.regime != Regime::Simult && c.regime.freeze() == v,
            Coord::Refresh(v) => c.regime.refresh_every() == Some(v),
        }
    }
}

/// Every cell of the crossed factors (each a list of options, an option a list of values set
/// together), the last factor varying fastest.
fn product(factors: &[Vec<Vec<Coord>>]) -> Vec<Cell> {
    let start = Cell {
        task: Task::Dms,
        arch: Arch::Cbrnn,
        hidden: STUDY_SIZE,
        granule: 0,
        purkinje: STUDY_SIZE,
        regime: Regime::Simult,
        core_plasticity: 1.0,
        lr_core: 0.0,
        lr_cb: 0.0,
        seed: Seed(0),
    };
    factors.iter().fold(vec![start], |cells, factor| {
        cells
            .iter()
            .flat_map(|cell| {
                factor.iter().map(move |option| {
                    let mut c = *cell;
                    option.iter().for_each(|x| x.set(&mut c));
                    c
                })
            })
            .collect()
    })
}

/// A size axis: `grid.KEY`'s list, or the older `model.KEY` scalar (canonicalize leaves one).
fn sizes(c: &Checker, key: &str, list: Option<&[i64]>, scalar: Option<i64>) -> Result<Vec<u32>, SpecError> {
    let field = format!("grid.{key}");
    match (list, scalar) {
        (Some(vs), _) => {
            c.nonempty(&field, vs)?;
            vs.iter().map(|&v| c.positive(&field, v)).collect()
        }
        (None, Some(v)) => Ok(vec![c.positive(&format!("model.{key}"), v)?]),
        (None, None) => Err(c.invalid(&field, "(none)", "missing")),
    }
}

/// `grid.zip`'s rows grouped by the keys they name (rows naming the same keys vary together;
/// groups cross each other), each group with its keys and its options.
fn zip_groups(c: &Checker, rows: Option<&[toml::Table]>) -> Result<Vec<(BTreeSet<String>, Vec<Vec<Coord>>)>, SpecError> {
    let Some(rows) = rows else { return Ok(Vec::new()) };
    if rows.is_empty() {
        return Err(c.invalid("grid.zip", "[]", "needs at least one row (or leave it out)"));
    }
    let mut groups: Vec<(BTreeSet<String>, Vec<Vec<Coord>>)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let field = format!("grid.zip[{i}]");
        if row.is_empty() {
            return Err(c.invalid(&field, "{}", "a row names at least one key"));
        }
        let keys: BTreeSet<String> = row.keys().cloned().collect();
        let mut option = Vec::new();
        for (key, v) in row {
            if !ZIPPABLE.contains(&key.as_str()) {
                return Err(c.invalid(
                    &format!("{field}.{key}"),
                    v,
                    &format!("cannot be zipped (zip takes {}; the other keys cross, and grid.exclude drops cells)", ZIPPABLE.join(", ")),
                ));
            }
            option.push(c.coord(&format!("{field}.{key}"), key, v)?);
        }
        match groups.iter_mut().find(|(k, _)| *k == keys) {
            Some((_, options)) => options.push(option),
            None => {
                if let Some((other, _)) = groups.iter().find(|(k, _)| !k.is_disjoint(&keys)) {
                    return Err(c.invalid(
                        &field,
                        toml::Value::Table(row.clone()),
                        &format!(
                            "names {} as other rows do, but with other keys ({}); rows that zip a key must name the same keys",
                            keys.intersection(other).cloned().collect::<Vec<_>>().join(", "),
                            other.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                groups.push((keys, vec![option]));
            }
        }
    }
    Ok(groups)
}

/// One `grid.exclude` entry: a partial cell, every one of its values matching.
fn exclude_entry(c: &Checker, i: usize, entry: &toml::Table) -> Result<Vec<Coord>, SpecError> {
    let field = format!("grid.exclude[{i}]");
    if entry.is_empty() {
        return Err(c.invalid(&field, "{}", "an entry names at least one key (it would exclude every cell)"));
    }
    entry.iter().map(|(key, v)| c.coord(&format!("{field}.{key}"), key, v)).collect()
}

impl Checker<'_> {
    /// One value of grid key `key`, shown as `field`, checked as the axis checks it.
    fn coord(&self, field: &str, key: &str, v: &toml::Value) -> Result<Coord, SpecError> {
        let int = || v.as_integer().ok_or_else(|| self.invalid(field, v, "must be an integer"));
        let num = || v.as_float().or(v.as_integer().map(|i| i as f64)).ok_or_else(|| self.invalid(field, v, "must be a number"));
        let text = || v.as_str().ok_or_else(|| self.invalid(field, v, "must be a string"));
        let bound = format!("grid.{key}");
        let parsed = |why: String| self.invalid(field, v, &why);
        Ok(match key {
            "task" => Coord::Task(text()?.parse().map_err(parsed)?),
            "arch" => Coord::Arch(text()?.parse().map_err(parsed)?),
            "hidden" => Coord::Hidden(self.positive_as(field, &bound, int()?)?),
            "granule" => Coord::Granule(self.positive_as(field, &bound, int()?)?),
            "purkinje" => Coord::Purkinje(self.positive_as(field, &bound, int()?)?),
            "core_plasticity" => Coord::CorePlasticity(self.factor(field, num()?)?),
            "lr_core" => Coord::LrCore(self.rate_as(field, &bound, num()?)?),
            "lr_cb" => Coord::LrCb(self.rate_as(field, &bound, num()?)?),
            "seed" => Coord::Seed(self.seed(field, int()?)?),
            "regime" => Coord::RegimeName(regime_name(text()?).ok_or_else(|| self.invalid(field, v, REGIME_HINT))?),
            "freeze" => Coord::Freeze(text()?.parse().map_err(parsed)?),
            "refresh_every" => Coord::Refresh(self.positive_as(field, &bound, int()?)?),
            _ => {
                return Err(self.invalid(
                    field,
                    v,
                    &format!("not a grid key (expected one of: {}, freeze, refresh_every)", GRID_ORDER.join(", ")),
                ));
            }
        })
    }

    /// The reduced-plasticity factor: in (0, 1].
    fn factor(&self, field: &str, f: f64) -> Result<f64, SpecError> {
        if f.is_finite() && f > 0.0 && f <= 1.0 { Ok(f) } else { Err(self.invalid(field, Num(f), "must be in (0, 1]")) }
    }

    fn seed(&self, field: &str, s: i64) -> Result<Seed, SpecError> {
        let v = u64::try_from(s).map_err(|_| self.invalid(field, s, "seeds must be integers >= 0"))?;
        self.bounded_as(field, "grid.seed", v as f64, s).map(|()| Seed(v))
    }

    /// A range's `count`: a positive integer under the bound on every range.
    fn count(&self, field: &str, v: Option<&toml::Value>) -> Result<u32, SpecError> {
        let field = format!("{field}.count");
        let v = v.ok_or_else(|| self.invalid(&field, "(none)", "missing: a range needs a count"))?;
        let n = v.as_integer().ok_or_else(|| self.invalid(&field, v, "must be a positive integer"))?;
        self.positive_as(&field, "grid.count", n)
    }

    /// `grid.seed`: a list, or `{ from = S, count = N }` (S, S+1, ..., S+N-1).
    fn seeds(&self, v: &toml::Value) -> Result<Vec<Seed>, SpecError> {
        const FIELD: &str = "grid.seed";
        match v {
            toml::Value::Array(vs) => {
                self.nonempty(FIELD, vs)?;
                vs.iter()
                    .map(|s| self.seed(FIELD, s.as_integer().ok_or_else(|| self.invalid(FIELD, s, "seeds must be integers >= 0"))?))
                    .collect()
            }
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "from" | "count")) {
                    return Err(self.invalid(&format!("{FIELD}.{k}"), &t[k], "unknown key of a seed range (expected from, count)"));
                }
                let from =
                    t.get("from").ok_or_else(|| self.invalid(&format!("{FIELD}.from"), "(none)", "missing: a seed range needs a start"))?;
                let from = self.seed(
                    &format!("{FIELD}.from"),
                    from.as_integer().ok_or_else(|| self.invalid(&format!("{FIELD}.from"), from, "must be an integer >= 0"))?,
                )?;
                let count = self.count(FIELD, t.get("count"))?;
                (0..u64::from(count)).map(|k| self.seed(FIELD, (from.0 + k) as i64)).collect()
            }
            other => Err(self.invalid(FIELD, other, "expected a list of seeds or a range { from = 0, count = 32 }")),
        }
    }

    /// A rate or factor axis: a list, `{ from = A, to = B, count = N }` (N evenly spaced values,
    /// both ends included) or `{ log_from = A, to = B, count = N }` (N log-spaced, both > 0).
    /// Values between the ends are kept to 12 significant digits (0.01, not 0.010000000000000002),
    /// so they read as written in cell keys. Each value is checked by `check`.
    fn float_axis(
        &self,
        field: &str,
        v: Option<&toml::Value>,
        check: impl Fn(&str, f64) -> Result<f64, SpecError>,
    ) -> Result<Vec<f64>, SpecError> {
        let v = v.ok_or_else(|| self.invalid(field, "(none)", "missing"))?;
        let number = |f: &str, x: &toml::Value| {
            x.as_float().or(x.as_integer().map(|i| i as f64)).ok_or_else(|| self.invalid(f, x, "must be a number"))
        };
        let values = match v {
            toml::Value::Array(vs) => {
                self.nonempty(field, vs)?;
                vs.iter().map(|x| number(field, x)).collect::<Result<Vec<_>, _>>()?
            }
            toml::Value::Table(t) => {
                let log = t.contains_key("log_from");
                let start = if log { "log_from" } else { "from" };
                if let Some(k) = t.keys().find(|k| ![start, "to", "count"].contains(&k.as_str())) {
                    return Err(self.invalid(
                        &format!("{field}.{k}"),
                        &t[k],
                        "unknown key of a range (expected from, to, count or log_from, to, count)",
                    ));
                }
                let get = |k: &str| {
                    let f = format!("{field}.{k}");
                    t.get(k)
                        .ok_or_else(|| self.invalid(&f, "(none)", "missing: a range needs from (or log_from), to and count"))
                        .and_then(|x| number(&f, x))
                };
                let (a, b, n) = (get(start)?, get("to")?, self.count(field, t.get("count"))?);
                if log && !(a > 0.0 && b > 0.0) {
                    return Err(self.invalid(field, v, "a log-spaced range needs log_from > 0 and to > 0"));
                }
                if n == 1 && a != b {
                    return Err(self.invalid(&format!("{field}.count"), 1, "a range of one value needs from = to (or write a list)"));
                }
                let at = |k: u32| {
                    if k == 0 {
                        return a;
                    }
                    if k + 1 == n {
                        return b;
                    }
                    let t = f64::from(k) / f64::from(n - 1);
                    let x = if log { (a.ln() + t * (b.ln() - a.ln())).exp() } else { a + t * (b - a) };
                    format!("{x:.11e}").parse().expect("a formatted float parses")
                };
                (0..n).map(at).collect()
            }
            other => Err(self.invalid(field, other, "expected a list, { from, to, count } or { log_from, to, count }"))?,
        };
        values.into_iter().map(|x| check(field, x)).collect()
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
