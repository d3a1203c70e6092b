//! `CBSWEEP_SPEC__SECTION__KEY` overrides of a spec's keys: reading them from the environment,
//! handing them to the config crate as the last layer, their one-line text form (the store's and
//! trials.parquet's), and the checks a coordinator makes of the overrides a client says it
//! applied to a submitted spec.

use super::checks::{Checker, SpecError};
use serde::{Deserialize, Serialize};
use std::path::Path;

const ENV_PREFIX: &str = "CBSWEEP_SPEC";

/// One environment override of a spec key (`CBSWEEP_SPEC__TRAIN__EPOCHS=20` is
/// `train.epochs = "20"`), recorded with the sweep and in trials.parquet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpecOverride {
    /// The dotted key, lowercase: `train.epochs`.
    pub key: String,
    /// The value as it was given.
    pub value: String,
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

/// `SweepSpec::check_overrides`: `overrides`, the record, against `resolved`, the text they were
/// applied to.
pub(super) fn check(overrides: &[SpecOverride], resolved: &str, path: &Path) -> Result<(), SpecError> {
    let c = Checker { path };
    if overrides.len() > MAX_OVERRIDES {
        return Err(c.invalid("overrides", format!("{} entries", overrides.len()), &format!("at most {MAX_OVERRIDES}")));
    }
    let resolved: toml::Table = toml::from_str(resolved).map_err(|e| c.invalid("overrides", "(the resolved spec)", &e.to_string()))?;
    for o in overrides {
        let field = format!("overrides[{}]", o.key.escape_debug());
        let well_formed = o.key.len() <= MAX_OVERRIDE_KEY
            && o.key.split('.').count() >= 2
            && o.key.split('.').all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'));
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

/// `overrides` as the config crate's environment layer, the form `CBSWEEP_SPEC__*` variables
/// take (a value is parsed as TOML's scalars are).
pub(super) fn environment(overrides: &[SpecOverride]) -> config::Environment {
    let vars = overrides
        .iter()
        .map(|o| (format!("{ENV_PREFIX}__{}", o.key.split('.').collect::<Vec<_>>().join("__")).to_uppercase(), o.value.clone()))
        .collect();
    config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true).source(Some(vars))
}
