//! The raw stage of a spec: the serde structs of its TOML (unknown keys refused by name), the
//! layers the config crate merges (the embedded `defaults.toml`, the user's text, the
//! `CBSWEEP_SPEC__*` overrides), and the one canonical form those layers are brought to, whose
//! TOML is the sweep's resolved text. Nothing here is checked beyond its type and the
//! placement of the grid's keys; `validate` turns these structs into typed values.

use super::checks::{Checker, SpecError};
use super::overrides::{SpecOverride, environment};
use crate::trial::STUDY_SIZE;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub(super) sweep: RawSweep,
    pub(super) grid: RawGrid,
    pub(super) model: RawModel,
    pub(super) train: RawTrain,
    pub(super) analysis: RawAnalysis,
    pub(super) run: RawRun,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) stats: Option<RawStats>,
}

/// `[stats]`: what the statistics compare. `compare = [["cbrnn", "rnn"], ["cbrnn:reservoir",
/// "rnn:simult"], ...]`: pairs (a, b) of architectures, each side optionally in one regime
/// (`CompareSide`); `freeze_vs_simult = false` drops the automatic freeze-point comparisons.
/// Absent: CB-RNN against the matched RNN and each freeze point against simult, as before (and
/// the resolved form leaves the section out, so older sweeps keep their text).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) compare: Option<Vec<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) freeze_vs_simult: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    pub(super) every_levels: i64,
    pub(super) ablation_batches: i64,
    pub(super) dimensionality_batches: i64,
    pub(super) timescale_steps: i64,
    pub(super) timescale_trials: i64,
    pub(super) timescale_burn_in: i64,
    pub(super) timescale_max_lag: i64,
    pub(super) timescale_fit_lags: i64,
    pub(super) save_checkpoints: bool,
    /// The readout recovery's steps and evaluation batches; absent: the study's 500 and 50 (and
    /// the resolved form leaves them out, so older sweeps keep their text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) recovery_steps: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) recovery_eval_batches: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSweep {
    pub(super) name: String,
    pub(super) description: String,
}

/// The grid's axes. A numeric axis is a list, or a range (`seed = { from = 0, count = 32 }`;
/// rates and factors `{ from, to, count }` linearly or `{ log_from, to, count }` log-spaced,
/// both ends included); the keys `zip` rows name vary together instead of crossing (and leave
/// the resolved form); `exclude` drops the cells each of its partial cells matches.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrid {
    pub(super) task: Vec<String>,
    pub(super) arch: Vec<String>,
    pub(super) seed: toml::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) granule: Option<Vec<i64>>,
    pub(super) regime: Vec<String>,
    pub(super) freeze: Vec<String>,
    pub(super) refresh_every: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) core_plasticity: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lr_core: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lr_cb: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hidden: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) purkinje: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) zip: Option<Vec<toml::Table>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exclude: Option<Vec<toml::Table>>,
}

/// `hidden` and `purkinje` as the older scalar form (`[model] hidden = 64`): still read, and the
/// resolved form of a spec that gives neither form keeps them here as before (same text, same
/// hash); a spec may give each size in one form only.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hidden: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) purkinje: Option<i64>,
    pub(super) rnn_match: String,
    /// "lab" (the default) or "near_zero"; absent from the resolved form unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) recurrent_module_start: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrain {
    pub(super) epochs: i64,
    pub(super) steps_per_epoch: i64,
    pub(super) test_batches: i64,
    pub(super) batch_size: i64,
    pub(super) start_level: i64,
    pub(super) max_level: i64,
    pub(super) solve_threshold: f64,
    pub(super) momentum: f64,
    pub(super) clip_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lr_readout: Option<f64>,
    /// No curriculum: train and test at this level (until the first solve, or the whole budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fixed_level: Option<i64>,
    /// With `fixed_level`: "solved" (the lab's: the first solved epoch ends the trial) or
    /// "budget" (train on for the whole budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fixed_until: Option<String>,
    /// The lab's fixed-schedule control: the level goes up every this many epochs, whatever the
    /// accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) schedule_every: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    pub(super) max_attempts: i64,
    pub(super) pack_size: i64,
    pub(super) lease_seconds: i64,
    pub(super) checkpoint_every: i64,
    pub(super) checkpoint_seconds: i64,
}

/// Merges the layers of a spec's text (the defaults, the text, and the overrides where there are
/// some: `None` reads no environment at all, as for a resolved text) and brings them to their
/// canonical form; returns it with its TOML, the sweep's resolved text.
pub(super) fn load(text: &str, path: &Path, overrides: Option<&[SpecOverride]>) -> Result<(RawSpec, String), SpecError> {
    let parse_err = |message: String| SpecError::Parse { path: path.to_owned(), message };
    // config reports TOML syntax errors without the position; toml's own parser says where.
    let given = toml::from_str::<toml::Table>(text).map_err(|e| parse_err(format!("not valid TOML: {e}")))?;
    let given_override: Vec<&str> = overrides.into_iter().flatten().map(|o| o.key.as_str()).collect();
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if let Some(overrides) = overrides {
        builder = builder.add_source(environment(overrides));
    }
    let mut raw: RawSpec =
        builder.build().and_then(|c| c.try_deserialize()).map_err(|e| parse_err(describe_config_error(&e.to_string())))?;
    let is_given = |section: &str, key: &str| {
        given.get(section).and_then(|t| t.get(key)).is_some() || given_override.contains(&format!("{section}.{key}").as_str())
    };
    canonicalize(&mut raw, &Checker { path }, is_given)?;
    let resolved = toml::to_string(&raw).map_err(|e| parse_err(format!("cannot write the resolved spec: {e}")))?;
    Ok((raw, resolved))
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
            continue; // refused with its row in grid.rs
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
