//! What the sweep page shows beyond the status, read through a read-only store connection (as
//! `crate::export` reads; WAL lets it read while the scheduler writes) and computed with the
//! results crate only: the per-condition tally and grouping, the levels reached per epoch, mean
//! ± sem (`summary::Summary`) and the statistics (`stats::compute`), the figures' analysis
//! metrics. Nothing here computes a statistic of its own. Also the trials each worker holds,
//! for the overview. Blocking (SQLite): called on a blocking thread.

use crate::store::{Store, StoreError};
use cbsweep_common::{AnalysisRecord, SweepId, TrialState};
use cbsweep_results::measures::{Measure, trial_curves};
use cbsweep_results::plot::{ABLATION_METRIC, DIMENSIONALITY_METRICS, TIMESCALE_METRICS};
use cbsweep_results::stats::{self, StatValues};
use cbsweep_results::summary::Summary;
use cbsweep_results::{TrialRow, by_condition, tally};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// GET /api/sweeps/SWEEP (docs/dashboard.md).
#[derive(Debug, Serialize)]
pub(crate) struct SweepDetail {
    pub(crate) sweep: String,
    pub(crate) conditions: Vec<ConditionRow>,
    pub(crate) curves: Vec<ConditionCurve>,
    pub(crate) analyses: Vec<AnalysisLine>,
    pub(crate) failed: Vec<TrialLine>,
    pub(crate) running: Vec<TrialLine>,
    pub(crate) comparisons: Vec<ComparisonRow>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConditionRow {
    condition: String,
    /// The grid values that differ between the sweep's conditions.
    short: String,
    total: u32,
    done: u32,
    failed: u32,
    /// `cbsweep_results::tally`'s mean max_level (the number `status` shows).
    mean_max_level: Option<f64>,
    /// The sem of max_level across seeds (stats.parquet's condition row).
    sem_max_level: Option<f64>,
}

/// The level reached per epoch of a condition's finished trials.
#[derive(Debug, Serialize)]
pub(crate) struct ConditionCurve {
    condition: String,
    short: String,
    /// Epochs 1..=budget.
    epochs: Vec<u32>,
    mean: Vec<Option<f64>>,
    sem: Vec<Option<f64>>,
    seeds: Vec<SeedCurve>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SeedCurve {
    seed: u64,
    levels: Vec<u32>,
}

/// One analysis metric of one condition and population against the checkpoint level.
#[derive(Debug, Serialize)]
pub(crate) struct AnalysisLine {
    /// ablation, dimensionality or timescales (the figure it belongs to).
    figure: &'static str,
    metric: String,
    population: String,
    condition: String,
    short: String,
    levels: Vec<u32>,
    mean: Vec<Option<f64>>,
    sem: Vec<Option<f64>>,
    n: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TrialLine {
    trial: String,
    short: String,
    seed: u64,
    state: String,
    attempt: u32,
    worker: Option<String>,
    error: Option<String>,
}

/// A comparison row of stats.parquet.
#[derive(Debug, Serialize)]
pub(crate) struct ComparisonRow {
    comparison: String,
    measure: &'static str,
    a: String,
    b: String,
    n_a: u32,
    n_b: u32,
    mean_a: Option<f64>,
    mean_b: Option<f64>,
    cohens_d: Option<f64>,
    rank_biserial: Option<f64>,
    welch_p: Option<f64>,
    welch_p_holm: Option<f64>,
    mwu_p: Option<f64>,
    mwu_p_holm: Option<f64>,
}

/// A trial a worker holds a lease on (the overview's "training" column).
#[derive(Debug, Serialize)]
pub(crate) struct Training {
    worker: String,
    sweep: String,
    cell: String,
    attempt: u32,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The sweep page's data; None when the store holds no such sweep.
pub(crate) fn sweep_detail(state_dir: &Path, sweep: &SweepId) -> Result<Option<SweepDetail>, StoreError> {
    let store = Store::open_read_only(state_dir)?;
    let rows = store.trials(sweep)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let curves = store.curves(sweep)?;
    let analyses = store.analyses(sweep)?;
    let mut names: Vec<&str> = rows.iter().map(|r| r.condition.as_str()).collect();
    names.sort();
    names.dedup();
    let short = cbsweep_common::varying_parts(names.iter().copied());
    // the spec's comparisons, as the export makes them
    let plan = store.sweep(sweep)?.map(|s| cbsweep_common::spec::resolved_stats(&s.spec_toml)).unwrap_or_default();
    let stat_rows = stats::compute(&rows, &curves, &plan);
    let sem: HashMap<&str, f64> = stat_rows
        .iter()
        .filter(|r| r.measure == Measure::MaxLevel)
        .filter_map(|r| Some((r.condition.as_str(), r.summary()?.sem)))
        .collect();
    let conditions = tally(&rows)
        .into_iter()
        .map(|c| ConditionRow {
            short: short(&c.condition),
            sem_max_level: sem.get(c.condition.as_str()).copied().and_then(finite),
            total: c.total,
            done: c.done,
            failed: c.failed,
            mean_max_level: finite(c.mean_max_level),
            condition: c.condition,
        })
        .collect();
    let tc = trial_curves(&rows, &curves);
    let curves = by_condition(&tc, |t| t.trial.condition.as_str())
        .into_iter()
        .map(|(condition, group)| {
            let epochs = group.iter().map(|t| t.reached.len()).max().unwrap_or(0);
            let at = |e: usize| Summary::of(&group.iter().filter_map(|t| t.reached.get(e)).map(|&l| f64::from(l)).collect::<Vec<_>>());
            let summaries: Vec<Summary> = (0..epochs).map(at).collect();
            ConditionCurve {
                condition: condition.to_string(),
                short: short(condition),
                epochs: (1..=epochs as u32).collect(),
                mean: summaries.iter().map(|s| finite(s.mean)).collect(),
                sem: summaries.iter().map(|s| finite(s.sem)).collect(),
                seeds: group.iter().map(|t| SeedCurve { seed: t.trial.spec.seed.0, levels: t.reached.clone() }).collect(),
            }
        })
        .collect();
    let comparisons = stat_rows
        .iter()
        .filter_map(|r| match &r.values {
            StatValues::Comparison { comparison, reference, tests: t } => Some(ComparisonRow {
                comparison: comparison.name(),
                measure: r.measure.name(),
                a: short(&r.condition),
                b: short(reference),
                n_a: t.a.n,
                n_b: t.b.n,
                mean_a: finite(t.a.mean),
                mean_b: finite(t.b.mean),
                cohens_d: finite(t.cohens_d),
                rank_biserial: finite(t.rank_biserial),
                welch_p: finite(t.welch_p),
                welch_p_holm: finite(t.welch_p_holm),
                mwu_p: finite(t.mwu_p),
                mwu_p_holm: finite(t.mwu_p_holm),
            }),
            StatValues::Condition(_) => None,
        })
        .collect();
    let line = |r: &TrialRow| TrialLine {
        trial: r.id.0.clone(),
        short: short(&r.condition),
        seed: r.spec.seed.0,
        state: r.state.to_string(),
        attempt: r.attempt,
        worker: r.worker.clone(),
        error: r.last_error.clone(),
    };
    let failed =
        rows.iter().filter(|r| r.state == TrialState::Failed || (r.last_error.is_some() && !r.state.is_terminal())).map(line).collect();
    let running = rows.iter().filter(|r| r.state == TrialState::Leased).map(line).collect();
    Ok(Some(SweepDetail {
        sweep: sweep.0.clone(),
        analyses: analysis_lines(&rows, &analyses, &short),
        conditions,
        curves,
        failed,
        running,
        comparisons,
    }))
}

/// The figures' analysis metrics per condition and population, mean ± sem across seeds per
/// checkpoint level.
fn analysis_lines(
    rows: &[TrialRow],
    analyses: &[(cbsweep_common::TrialId, AnalysisRecord)],
    short: &dyn Fn(&str) -> String,
) -> Vec<AnalysisLine> {
    let figure = |metric: &str| {
        if metric == ABLATION_METRIC {
            Some("ablation")
        } else if DIMENSIONALITY_METRICS.contains(&metric) {
            Some("dimensionality")
        } else if TIMESCALE_METRICS.contains(&metric) {
            Some("timescales")
        } else {
            None
        }
    };
    let by_id: HashMap<&cbsweep_common::TrialId, &TrialRow> = rows.iter().map(|r| (&r.id, r)).collect();
    let mut series: BTreeMap<(&str, &str, &str), BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for (id, a) in analyses {
        let (Some(t), Some(_)) = (by_id.get(id), figure(&a.metric)) else { continue };
        if a.value.is_finite() {
            series
                .entry((a.metric.as_str(), t.condition.as_str(), a.population.as_str()))
                .or_default()
                .entry(a.level)
                .or_default()
                .push(a.value);
        }
    }
    series
        .into_iter()
        .map(|((metric, condition, population), levels)| {
            let summaries: Vec<(u32, Summary)> = levels.iter().map(|(&l, v)| (l, Summary::of(v))).collect();
            AnalysisLine {
                figure: figure(metric).unwrap_or("other"),
                metric: metric.to_string(),
                population: population.to_string(),
                condition: condition.to_string(),
                short: short(condition),
                levels: summaries.iter().map(|(l, _)| *l).collect(),
                mean: summaries.iter().map(|(_, s)| finite(s.mean)).collect(),
                sem: summaries.iter().map(|(_, s)| finite(s.sem)).collect(),
                n: summaries.iter().map(|(_, s)| s.n).collect(),
            }
        })
        .collect()
}

/// The trials the workers hold leases on, in every sweep of the store.
pub(crate) fn training(state_dir: &Path) -> Result<Vec<Training>, StoreError> {
    let store = Store::open_read_only(state_dir)?;
    let mut out = Vec::new();
    for sweep in store.sweeps()? {
        if sweep.state != cbsweep_common::SweepState::Running {
            continue;
        }
        for r in store.trials(&sweep.id)? {
            if r.state == TrialState::Leased {
                out.push(Training {
                    worker: r.worker.clone().unwrap_or_default(),
                    sweep: sweep.id.0.clone(),
                    cell: r.spec.cell_key(),
                    attempt: r.attempt,
                });
            }
        }
    }
    Ok(out)
}
