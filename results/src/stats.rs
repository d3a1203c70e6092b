//! stats.parquet: statistics across seeds (docs/science.md#statistics).
//!
//! Per-trial learning measures are taken from the trial's curve (`crate::measures`, each defined
//! once in `cbsweep_common::measures`), then summarised per condition
//! (every grid key but the seed) and compared between conditions with Welch's t-test and the
//! Mann-Whitney U test, Holm-corrected, with effect sizes. One table holds both kinds of row
//! (column `kind`); the columns of the other kind are null.
//!
//! Definitions:
//! - Only trials with a curve count (state done: completed or diverged). A failed or pending
//!   trial has no curve and is left out, so `n` can be below the number of seeds.
//! - The level reached at epoch e is the highest level solved in epochs 1..=e (0 before the first
//!   solve). A curve that stops before the trial's epoch budget (level cap or divergence) is
//!   carried forward at its last reached level up to the budget, so every trial of a condition
//!   spans the same epochs.
//! - max_level: the highest level solved (0 if none). final_level: the level the trial was
//!   working on when it stopped (the last level, plus one when that epoch solved it).
//! - auc_level_epochs: trapezoid area under the reached level over epochs 1..=budget, in
//!   level x epochs (unit epoch spacing: sum of the levels minus half the first and last).
//! - epochs_to_half_max: the first epoch whose reached level is at least half of the highest
//!   max_level among the trials compared (for a condition row: that condition's own trials; for
//!   a comparison row: both groups; the threshold is in column half_max_level). A trial that never
//!   gets there counts as budget + 1 epochs (censored: the rank test treats it as the slowest).
//!   When no trial solved anything the threshold is 0 and the value is NaN.
//! - The lab's measures (the paper's figures' definitions, `cbsweep_common::measures`): the
//!   curve is the level trained per epoch (N, from the start level 2), carried forward to the
//!   budget; max_n the highest N (highest solved + 1); area_n the trapezoid area under N;
//!   epochs_to_half_max_n the first epoch whose N is at least half of the largest max_n among the
//!   trials compared (as for epochs_to_half_max), NaN for a trial that never gets there (not
//!   censored: it leaves the mean and the tests, as the lab's nanmean does).
//! - Comparisons: each pair of the spec's `[stats] compare` (by default the CB-RNN, group a,
//!   against the matched RNN, group b) with every other grid key equal ("cbrnn_vs_rnn": a_vs_b);
//!   a side may name a regime ("cbrnn:reservoir_vs_rnn:simult", claim 3's comparison), and then
//!   regime, freeze point and refresh may differ between the groups. Unless `[stats]
//!   freeze_vs_simult = false`, also each non-simult regime and freeze point (group a) against
//!   simult (group b) with the same task, architecture and every other grid key equal
//!   ("freeze_vs_simult"). The key columns describe group a; `reference` names group b.
//! - Signs follow a - b: cohens_d > 0 and rank_biserial > 0 mean group a's values are larger
//!   (for epochs_to_half_max larger is slower). rank_biserial = 2 U / (n_a n_b) - 1 with U the
//!   Mann-Whitney U of group a (pairs where a wins, ties count one half).
//! - Holm family: every comparison row of the sweep with the same measure, for each test
//!   separately (welch_p_holm over the Welch p-values, mwu_p_holm over the Mann-Whitney ones);
//!   both comparison kinds are in one family. NaN p-values are not in the family.
//! - Degenerate groups give NaN, never a panic: n < 2 in either group gives NaN tests and effect
//!   sizes; zero variance in both groups gives NaN t, df, p and d; all values tied gives NaN
//!   Mann-Whitney p (and a null mwu_method).
//! - Mann-Whitney p: exact when either group has at most 8 values and none is tied, asymptotic
//!   when both have more than 8 (scipy's `method="auto"`), and the exact permutation
//!   distribution when a small sample has ties (`summary::MwuMethod`; column mwu_method).

use crate::conditions::{by_condition, namer, without};
use crate::error::ResultsError;
use crate::keys::condition_key_fields;
use crate::measures::{Measure, TrialCurve, half_max, trial_curves};
use crate::source::TrialRow;
use crate::summary::{Summary, Tests, holm};
use crate::table::write_table;
use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::{ComparePair, EpochRecord, Regime, StatsPlan, SweepId, TrialId, TrialSpec};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FILE: &str = "stats.parquet";

pub const KIND: &str = "kind";
pub const COMPARISON: &str = "comparison";
pub const MEASURE: &str = "measure";
pub const CONDITION: &str = "condition";
pub const REFERENCE: &str = "reference";
pub const HALF_MAX_LEVEL: &str = "half_max_level";
pub const N: &str = "n";
pub const MEAN: &str = "mean";
pub const SD: &str = "sd";
pub const SEM: &str = "sem";
pub const CI95_LOW: &str = "ci95_low";
pub const CI95_HIGH: &str = "ci95_high";
pub const N_A: &str = "n_a";
pub const N_B: &str = "n_b";
pub const MEAN_A: &str = "mean_a";
pub const MEAN_B: &str = "mean_b";
pub const SD_A: &str = "sd_a";
pub const SD_B: &str = "sd_b";
pub const WELCH_T: &str = "welch_t";
pub const WELCH_DF: &str = "welch_df";
pub const WELCH_P: &str = "welch_p";
pub const WELCH_P_HOLM: &str = "welch_p_holm";
pub const MWU_U: &str = "mwu_u";
pub const MWU_P: &str = "mwu_p";
pub const MWU_P_HOLM: &str = "mwu_p_holm";
pub const COHENS_D: &str = "cohens_d";
pub const RANK_BISERIAL: &str = "rank_biserial";
/// How mwu_p was computed: "exact", "asymptotic" or "permutation" (`summary::MwuMethod`).
pub const MWU_METHOD: &str = "mwu_method";

/// Which pairs of conditions a comparison row contrasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Comparison {
    /// A pair of the spec's `[stats] compare` (by default the CB-RNN against the
    /// parameter-matched RNN): architecture a against b, each side optionally in one regime,
    /// every other grid key equal (`ComparePair`).
    Pair(ComparePair),
    /// A non-simult regime and freeze point (a) against simult (b), every other grid key equal.
    FreezeVsSimult,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StatValues {
    Condition(Summary),
    Comparison { comparison: Comparison, reference: String, tests: Tests },
}

/// One row of stats.parquet.
#[derive(Clone, Debug, PartialEq)]
pub struct StatRow {
    pub sweep: SweepId,
    pub measure: Measure,
    /// The condition (for a comparison: group a's).
    pub condition: String,
    /// A trial spec of that condition, for the grid-key columns (its seed means nothing).
    pub spec: TrialSpec,
    /// The level threshold of epochs_to_half_max (None for the other measures).
    pub half_max_level: Option<f64>,
    pub values: StatValues,
}

impl Comparison {
    /// The comparison column's value: "cbrnn_vs_rnn" (a_vs_b, the sides as the spec names
    /// them: "cbrnn:reservoir_vs_rnn:simult") or "freeze_vs_simult".
    pub fn name(&self) -> String {
        match self {
            Comparison::Pair(p) => p.to_string(),
            Comparison::FreezeVsSimult => "freeze_vs_simult".to_string(),
        }
    }

    /// The condition keys (as in `TrialSpec::condition`) on which a and b may differ.
    fn differing_keys(&self) -> &'static [&'static str] {
        match self {
            Comparison::Pair(p) => p.differing_keys(),
            Comparison::FreezeVsSimult => &["regime", "freeze", "refresh"],
        }
    }

    fn is_a(&self, s: &TrialSpec) -> bool {
        match self {
            Comparison::Pair(p) => p.a.selects(s),
            Comparison::FreezeVsSimult => s.regime != Regime::Simult,
        }
    }

    fn is_b(&self, s: &TrialSpec) -> bool {
        match self {
            Comparison::Pair(p) => p.b.selects(s),
            Comparison::FreezeVsSimult => s.regime == Regime::Simult,
        }
    }
}

/// Condition summaries and comparisons of a sweep's trials (see the module docs); `plan`: what
/// to compare (`SweepMeta::stats`).
pub fn compute(trials: &[TrialRow], curves: &[(TrialId, EpochRecord)], plan: &StatsPlan) -> Vec<StatRow> {
    let tc = trial_curves(trials, curves);
    let groups = by_condition(&tc, |t| t.trial.condition.as_str());
    let mut rows = Vec::new();
    for (condition, group) in &groups {
        for m in Measure::ALL {
            let half = threshold(m, group.iter().copied());
            let values = values(group, m, half.unwrap_or(0.0));
            rows.push(StatRow {
                sweep: group[0].trial.sweep.clone(),
                measure: m,
                condition: condition.to_string(),
                spec: group[0].trial.spec.clone(),
                half_max_level: half,
                values: StatValues::Condition(Summary::of(&values)),
            });
        }
    }
    for (comparison, a, b) in pairs(&groups, plan) {
        let (ga, gb) = (&groups[a].1, &groups[b].1);
        for m in Measure::ALL {
            let half = threshold(m, ga.iter().chain(gb).copied());
            let (va, vb) = (values(ga, m, half.unwrap_or(0.0)), values(gb, m, half.unwrap_or(0.0)));
            rows.push(StatRow {
                sweep: ga[0].trial.sweep.clone(),
                measure: m,
                condition: groups[a].0.to_string(),
                spec: ga[0].trial.spec.clone(),
                half_max_level: half,
                values: StatValues::Comparison { comparison, reference: groups[b].0.to_string(), tests: Tests::of(&va, &vb) },
            });
        }
    }
    for m in Measure::ALL {
        adjust_family(&mut rows, m, |t| &mut t.welch_p, |t| &mut t.welch_p_holm);
        adjust_family(&mut rows, m, |t| &mut t.mwu_p, |t| &mut t.mwu_p_holm);
    }
    rows
}

/// The grid keys of trials.parquet less trial_id and seed (a condition's keys), then the
/// statistics; the columns of the other kind of row are null.
pub fn schema() -> SchemaRef {
    let f64_col = |name: &str| Field::new(name, DataType::Float64, true);
    let mut fields = condition_key_fields();
    fields.extend([
        Field::new(KIND, DataType::Utf8, false),
        Field::new(COMPARISON, DataType::Utf8, true),
        Field::new(MEASURE, DataType::Utf8, false),
        Field::new(CONDITION, DataType::Utf8, false),
        Field::new(REFERENCE, DataType::Utf8, true),
        f64_col(HALF_MAX_LEVEL),
        Field::new(N, DataType::UInt32, true),
    ]);
    fields.extend([MEAN, SD, SEM, CI95_LOW, CI95_HIGH].map(f64_col));
    fields.extend([Field::new(N_A, DataType::UInt32, true), Field::new(N_B, DataType::UInt32, true)]);
    fields.extend(
        [MEAN_A, MEAN_B, SD_A, SD_B, WELCH_T, WELCH_DF, WELCH_P, WELCH_P_HOLM, MWU_U, MWU_P, MWU_P_HOLM, COHENS_D, RANK_BISERIAL]
            .map(f64_col),
    );
    fields.push(Field::new(MWU_METHOD, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

pub fn write(path: &Path, rows: &[StatRow]) -> Result<(), ResultsError> {
    let s = |f: &dyn Fn(&StatRow) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let os = |f: &dyn Fn(&StatRow) -> Option<String>| -> ArrayRef { Arc::new(StringArray::from_iter(rows.iter().map(f))) };
    let u = |f: &dyn Fn(&StatRow) -> Option<u32>| -> ArrayRef { Arc::new(UInt32Array::from_iter(rows.iter().map(f))) };
    let x = |f: &dyn Fn(&StatRow) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter(rows.iter().map(f))) };
    let cond = |f: fn(&Summary) -> f64| x(&move |r| r.summary().map(f));
    let test = |f: fn(&Tests) -> f64| x(&move |r| r.tests().map(f));
    // In the order of condition_key_fields().
    let cols = vec![
        s(&|r| r.sweep.0.clone()),
        s(&|r| r.spec.task.to_string()),
        s(&|r| r.spec.arch.to_string()),
        u(&|r| Some(r.spec.hidden)),
        u(&|r| Some(r.spec.granule)),
        u(&|r| Some(r.spec.purkinje)),
        s(&|r| r.spec.regime.name().to_string()),
        s(&|r| r.spec.regime.freeze_label()),
        u(&|r| r.spec.regime.refresh_every()),
        x(&|r| Some(r.spec.core_plasticity)),
        x(&|r| Some(r.spec.lr_core)),
        x(&|r| Some(r.spec.lr_cb)),
        s(&|r| r.kind().to_string()),
        os(&|r| r.comparison().map(|c| c.name())),
        s(&|r| r.measure.name().to_string()),
        s(&|r| r.condition.clone()),
        os(&|r| match &r.values {
            StatValues::Comparison { reference, .. } => Some(reference.clone()),
            StatValues::Condition(_) => None,
        }),
        x(&|r| r.half_max_level),
        u(&|r| r.summary().map(|s| s.n)),
        cond(|s| s.mean),
        cond(|s| s.sd),
        cond(|s| s.sem),
        cond(|s| s.ci95_low),
        cond(|s| s.ci95_high),
        u(&|r| r.tests().map(|t| t.a.n)),
        u(&|r| r.tests().map(|t| t.b.n)),
        test(|t| t.a.mean),
        test(|t| t.b.mean),
        test(|t| t.a.sd),
        test(|t| t.b.sd),
        test(|t| t.welch_t),
        test(|t| t.welch_df),
        test(|t| t.welch_p),
        test(|t| t.welch_p_holm),
        test(|t| t.mwu_u),
        test(|t| t.mwu_p),
        test(|t| t.mwu_p_holm),
        test(|t| t.cohens_d),
        test(|t| t.rank_biserial),
        os(&|r| r.tests().and_then(|t| t.mwu_method).map(|m| m.name().to_string())),
    ];
    write_table(path, schema(), cols, "stats")
}

/// The comparisons as text tables for people, in the lab's measures (`Measure::LAB`, the ones set
/// beside the paper's figures; cbsweep's own are in stats.parquet): per condition the mean ± sem
/// of each, then one line per comparison and measure with effect sizes and Holm-adjusted
/// p-values. A comparison is named by the grid values its groups share ("within") and those that
/// differ ("a vs b").
pub fn print(rows: &[StatRow]) -> String {
    let name = namer(rows.iter().map(|r| r.condition.as_str()), &[]);
    let mut conditions = Table::new();
    let mut header = vec!["condition".to_string(), "n".to_string()];
    header.extend(Measure::LAB.iter().map(|m| format!("{} (mean ± sem)", m.name())));
    conditions.load_preset(UTF8_BORDERS_ONLY).set_header(header);
    let summaries: HashMap<(&str, Measure), &Summary> =
        rows.iter().filter_map(|r| Some(((r.condition.as_str(), r.measure), r.summary()?))).collect();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in rows.iter().filter(|r| r.summary().is_some()) {
        if !seen.insert(&r.condition) {
            continue;
        }
        let of = |m: Measure| summaries.get(&(r.condition.as_str(), m)).copied();
        let mut line = vec![name(&r.condition).join(" "), of(Measure::MaxN).map(|s| s.n.to_string()).unwrap_or_default()];
        line.extend(Measure::LAB.map(|m| of(m).map(|s| format!("{} ± {}", num(s.mean), num(s.sem))).unwrap_or_default()));
        conditions.add_row(line);
    }
    let mut comparisons = Table::new();
    comparisons.load_preset(UTF8_BORDERS_ONLY).set_header([
        "comparison",
        "within",
        "a vs b",
        "measure",
        "mean a",
        "mean b",
        "cohen d",
        "rank-biserial",
        "Welch p (Holm)",
        "MWU p (Holm)",
    ]);
    let mut any = false;
    for r in rows.iter().filter(|r| Measure::LAB.contains(&r.measure)) {
        if let StatValues::Comparison { reference, tests: t, .. } = &r.values {
            any = true;
            let (a, b) = (name(&r.condition), name(reference));
            let only = |x: &[String], y: &[String]| x.iter().filter(|p| !y.contains(p)).cloned().collect::<Vec<_>>().join(" ");
            let within: Vec<String> = a.iter().filter(|p| b.contains(p)).cloned().collect();
            comparisons.add_row([
                r.comparison().map(|c| c.name()).unwrap_or_default(),
                within.join(" "),
                format!("{} vs {}", only(&a, &b), only(&b, &a)),
                r.measure.name().to_string(),
                num(t.a.mean),
                num(t.b.mean),
                num(t.cohens_d),
                num(t.rank_biserial),
                format!("{} ({})", num(t.welch_p), num(t.welch_p_holm)),
                format!("{} ({})", num(t.mwu_p), num(t.mwu_p_holm)),
            ]);
        }
    }
    let mut out = format!(
        "conditions (across seeds; the lab's measures: N is the level trained, max_n the highest (highest solved + 1), \
         area_n the area under N; epochs_to_half_max_n here counts to half the condition's own largest max_n, \
         trials that never get there left out)\n{conditions}\n"
    );
    if any {
        out += &format!(
            "\ncomparisons (two-sided; Holm across all comparisons of a measure, per test; d and rank-biserial > 0: a larger; \
             epochs_to_half_max_n counts to half the pair's largest max_n)\n{comparisons}\n"
        );
    }
    out += "cbsweep's own measures (max_level, final_level, auc_level_epochs, epochs_to_half_max: the level reached) are in stats.parquet too\n";
    out
}

impl StatRow {
    pub fn kind(&self) -> &'static str {
        match self.values {
            StatValues::Condition(_) => "condition",
            StatValues::Comparison { .. } => "comparison",
        }
    }

    pub fn comparison(&self) -> Option<Comparison> {
        match self.values {
            StatValues::Comparison { comparison, .. } => Some(comparison),
            StatValues::Condition(_) => None,
        }
    }

    pub fn summary(&self) -> Option<&Summary> {
        match &self.values {
            StatValues::Condition(s) => Some(s),
            StatValues::Comparison { .. } => None,
        }
    }

    pub fn tests(&self) -> Option<&Tests> {
        match &self.values {
            StatValues::Comparison { tests, .. } => Some(tests),
            StatValues::Condition(_) => None,
        }
    }
}

/// (comparison, index of group a, index of group b) for every matched pair of conditions: each
/// a condition with every b condition that shares the keys the comparison holds equal.
fn pairs(groups: &[(&str, Vec<&TrialCurve>)], plan: &StatsPlan) -> Vec<(Comparison, usize, usize)> {
    let spec = |i: usize| &groups[i].1[0].trial.spec;
    let mut out = Vec::new();
    let freeze = plan.freeze_vs_simult.then_some(Comparison::FreezeVsSimult);
    for comparison in plan.pairs.iter().map(|&p| Comparison::Pair(p)).chain(freeze) {
        let keys = comparison.differing_keys();
        let mut references: HashMap<String, Vec<usize>> = HashMap::new();
        for b in (0..groups.len()).filter(|&b| comparison.is_b(spec(b))) {
            references.entry(without(groups[b].0, keys)).or_default().push(b);
        }
        for a in (0..groups.len()).filter(|&a| comparison.is_a(spec(a))) {
            for &b in references.get(&without(groups[a].0, keys)).into_iter().flatten() {
                out.push((comparison, a, b));
            }
        }
    }
    out
}

/// The level threshold of `m` over `group`: for the half-max measures half its highest level
/// (`half_max`); None for the other measures.
fn threshold<'a, 'b: 'a>(m: Measure, group: impl Iterator<Item = &'a TrialCurve<'b>>) -> Option<f64> {
    m.is_half_max().then(|| half_max(m, group))
}

/// The finite values of `m` over `group`.
fn values(group: &[&TrialCurve], m: Measure, half_max_level: f64) -> Vec<f64> {
    group.iter().map(|t| t.value(m, half_max_level)).filter(|v| v.is_finite()).collect()
}

fn adjust_family(rows: &mut [StatRow], m: Measure, p: fn(&mut Tests) -> &mut f64, adjusted: fn(&mut Tests) -> &mut f64) {
    let mut family: Vec<&mut Tests> = rows
        .iter_mut()
        .filter(|r| r.measure == m)
        .filter_map(|r| match &mut r.values {
            StatValues::Comparison { tests, .. } => Some(tests),
            StatValues::Condition(_) => None,
        })
        .collect();
    let ps: Vec<f64> = family.iter_mut().map(|t| *p(t)).collect();
    for (t, h) in family.iter_mut().zip(holm(&ps)) {
        *adjusted(t) = h;
    }
}

/// Four significant digits, or "nan".
fn num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{:.4}", v).trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
