//! Conditions: every grid key of a trial but the seed (`TrialSpec::condition`, a string of
//! `key=value` parts). Grouping trials by condition (one definition, for the statistics, the
//! figures and the per-condition tally), the keys two conditions must share to be compared
//! (`without`), short names for people (`namer`), and the per-condition tally of a sweep's
//! trial rows that the status view and `cbsweep run`'s summary show (`tally`).

use crate::source::TrialRow;
use crate::summary::mean_sd;
use cbsweep_common::{TrialState, varying_parts};
use std::collections::HashMap;

/// The trials of one condition as the status view and the run summary count them.
#[derive(Clone, Debug)]
pub struct ConditionTally {
    pub condition: String,
    pub total: u32,
    pub done: u32,
    pub failed: u32,
    /// Over the done trials' recorded max_level: the mean (NaN when none is done) and the
    /// sample standard deviation (NaN when fewer than two are).
    pub mean_max_level: f64,
    pub sd_max_level: f64,
    /// Mean wall time per trial in seconds, over the trials that recorded one (NaN if none did).
    pub mean_wall_s: f64,
}

/// `items` grouped by their condition, the groups in the order of their first item (also the
/// dashboard's grouping, so its curves and tables group as the figures and statistics do).
pub fn by_condition<'a, T>(items: impl IntoIterator<Item = T>, condition: impl Fn(&T) -> &'a str) -> Vec<(&'a str, Vec<T>)> {
    let mut groups: Vec<(&str, Vec<T>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for t in items {
        let c = condition(&t);
        let i = *index.entry(c).or_insert_with(|| {
            groups.push((c, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(t);
    }
    groups
}

/// One tally per condition of `rows`, in the order of the condition strings. Reads only what
/// the store records per trial (state, max_level, wall time), no curves, so the status of a
/// large sweep stays cheap.
pub fn tally(rows: &[TrialRow]) -> Vec<ConditionTally> {
    let mut groups = by_condition(rows, |r| r.condition.as_str());
    groups.sort_by(|a, b| a.0.cmp(b.0));
    groups
        .into_iter()
        .map(|(condition, rs)| {
            let count = |state: TrialState| rs.iter().filter(|r| r.state == state).count() as u32;
            let done: Vec<f64> = rs.iter().filter(|r| r.state == TrialState::Done).map(|r| f64::from(r.max_level.unwrap_or(0))).collect();
            let walls: Vec<f64> = rs.iter().filter_map(|r| r.wall_time_ms).map(|w| w as f64 / 1000.0).collect();
            let (mean, sd) = mean_sd(&done);
            ConditionTally {
                condition: condition.to_string(),
                total: rs.len() as u32,
                done: done.len() as u32,
                failed: count(TrialState::Failed),
                mean_max_level: mean,
                sd_max_level: sd,
                mean_wall_s: mean_sd(&walls).0,
            }
        })
        .collect()
}

/// Short names of conditions for people: the grid values that differ between `conditions` once
/// the `drop` keys are removed; task, arch, regime and freeze values without their key, numeric
/// ones as key=value, and no "freeze=never" or "refresh=0" (they say nothing).
pub(crate) fn namer<'a>(conditions: impl Iterator<Item = &'a str>, drop: &[&str]) -> impl Fn(&str) -> Vec<String> + 'static {
    let conditions: Vec<&str> = conditions.collect();
    let stripped: Vec<String> = conditions.iter().map(|c| without(c, drop)).collect();
    let varying = varying_parts(stripped.iter().map(String::as_str));
    let names: HashMap<String, Vec<String>> = conditions
        .iter()
        .zip(&stripped)
        .map(|(c, s)| {
            let parts = varying(s)
                .split(' ')
                .filter(|p| !matches!(*p, "freeze=never" | "refresh=0"))
                .map(|p| match p.split_once('=') {
                    Some(("task" | "arch" | "regime" | "freeze", v)) => v.to_string(),
                    _ => p.to_string(),
                })
                .collect();
            (c.to_string(), parts)
        })
        .collect();
    move |c: &str| names.get(c).cloned().unwrap_or_else(|| vec![c.to_string()])
}

/// The condition without the `key=value` parts named in `keys`: what must match for a pair.
pub(crate) fn without(condition: &str, keys: &[&str]) -> String {
    condition
        .split(' ')
        .filter(|kv| !keys.iter().any(|k| kv.split_once('=').is_some_and(|(key, _)| key == *k)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_drop_only_whole_keys() {
        let c = "task=dms arch=cbrnn granule=256 regime=reservoir freeze=level:2 refresh=0 core_plasticity=1";
        assert_eq!(without(c, &["arch"]), "task=dms granule=256 regime=reservoir freeze=level:2 refresh=0 core_plasticity=1");
        assert_eq!(without(c, &["regime", "freeze", "refresh"]), "task=dms arch=cbrnn granule=256 core_plasticity=1");
    }
}
