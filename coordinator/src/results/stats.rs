//! stats.parquet: statistics across seeds (cb-rnn-spec.md, "Statistics across seeds").
//!
//! Per-trial learning measures are taken from the trial's curve, then summarised per condition
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
//! - Comparisons: CB-RNN (group a) against the matched RNN (group b) with every other grid key
//!   equal ("cbrnn_vs_rnn"); each non-simult regime and freeze point (group a) against simult
//!   (group b) with the same task, architecture and every other grid key equal
//!   ("freeze_vs_simult"). The key columns describe group a; `reference` names group b.
//! - Signs follow a - b: cohens_d > 0 and rank_biserial > 0 mean group a's values are larger
//!   (for epochs_to_half_max larger is slower). rank_biserial = 2 U / (n_a n_b) - 1 with U the
//!   Mann-Whitney U of group a (pairs where a wins, ties count one half).
//! - Holm family: every comparison row of the sweep with the same measure, for each test
//!   separately (welch_p_holm over the Welch p-values, mwu_p_holm over the Mann-Whitney ones);
//!   both comparison kinds are in one family. NaN p-values are not in the family.
//! - Degenerate groups give NaN, never a panic: n < 2 in either group gives NaN tests and effect
//!   sizes; zero variance in both groups gives NaN t, df, p and d; all values tied gives NaN
//!   Mann-Whitney p.

use super::ResultsError;
use super::trials::{SEED, TRIAL_ID, key_fields};
use crate::store::TrialRow;
use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::{Arch, EpochRecord, Regime, SweepId, TrialId, TrialSpec, varying_parts};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};
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

/// A per-trial learning measure; its name (the `measure` column) carries its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    MaxLevel,
    FinalLevel,
    AucLevelEpochs,
    EpochsToHalfMax,
}

/// Which pairs of conditions a comparison row contrasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Comparison {
    /// CB-RNN (a) against the parameter-matched RNN (b), every other grid key equal.
    CbrnnVsRnn,
    /// A non-simult regime and freeze point (a) against simult (b), every other grid key equal.
    FreezeVsSimult,
}

/// Mean, spread and t-based 95% interval of one group of per-trial values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: u32,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator).
    pub sd: f64,
    pub sem: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
}

/// Two groups compared: Welch's t-test, Mann-Whitney U (two-sided, asymptotic normal with tie
/// and continuity correction, as scipy's `mannwhitneyu(method="asymptotic")`), effect sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tests {
    pub a: Summary,
    pub b: Summary,
    pub welch_t: f64,
    pub welch_df: f64,
    pub welch_p: f64,
    /// Filled in by `compute` across the family (see the module docs).
    pub welch_p_holm: f64,
    pub mwu_u: f64,
    pub mwu_p: f64,
    pub mwu_p_holm: f64,
    pub cohens_d: f64,
    pub rank_biserial: f64,
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

/// A finished trial's curve as levels reached per epoch.
#[derive(Clone, Debug)]
pub struct TrialCurve<'a> {
    pub trial: &'a TrialRow,
    /// Index e - 1 holds the level reached by the end of epoch e, carried forward to the budget.
    pub reached: Vec<u32>,
    pub final_level: u32,
}

impl Measure {
    pub const ALL: [Measure; 4] = [Measure::MaxLevel, Measure::FinalLevel, Measure::AucLevelEpochs, Measure::EpochsToHalfMax];

    pub fn name(&self) -> &'static str {
        match self {
            Measure::MaxLevel => "max_level",
            Measure::FinalLevel => "final_level",
            Measure::AucLevelEpochs => "auc_level_epochs",
            Measure::EpochsToHalfMax => "epochs_to_half_max",
        }
    }
}

impl Comparison {
    pub const ALL: [Comparison; 2] = [Comparison::CbrnnVsRnn, Comparison::FreezeVsSimult];

    pub fn name(&self) -> &'static str {
        match self {
            Comparison::CbrnnVsRnn => "cbrnn_vs_rnn",
            Comparison::FreezeVsSimult => "freeze_vs_simult",
        }
    }

    /// The condition keys (as in `TrialSpec::condition`) on which a and b may differ.
    fn differing_keys(&self) -> &'static [&'static str] {
        match self {
            Comparison::CbrnnVsRnn => &["arch"],
            Comparison::FreezeVsSimult => &["regime", "freeze", "refresh"],
        }
    }

    fn is_a(&self, s: &TrialSpec) -> bool {
        match self {
            Comparison::CbrnnVsRnn => s.arch == Arch::Cbrnn,
            Comparison::FreezeVsSimult => s.regime != Regime::Simult,
        }
    }

    fn is_b(&self, s: &TrialSpec) -> bool {
        match self {
            Comparison::CbrnnVsRnn => s.arch == Arch::Rnn,
            Comparison::FreezeVsSimult => s.regime == Regime::Simult,
        }
    }
}

impl TrialCurve<'_> {
    pub fn max_level(&self) -> u32 {
        self.reached.last().copied().unwrap_or(0)
    }

    /// Trapezoid area under the reached level over epochs 1..=budget, in level x epochs.
    pub fn auc_level_epochs(&self) -> f64 {
        self.reached.windows(2).map(|w| (w[0] as f64 + w[1] as f64) / 2.0).sum()
    }

    /// First epoch whose reached level is at least `level`; budget + 1 when none is; NaN when
    /// `level` is not positive (nothing was solved in the comparison).
    pub fn epochs_to(&self, level: f64) -> f64 {
        if level.is_nan() || level <= 0.0 {
            return f64::NAN;
        }
        let first = self.reached.iter().position(|&r| r as f64 >= level).unwrap_or(self.reached.len());
        (first + 1) as f64
    }

    /// The value of `m` for this trial; `half_max_level` is only used by EpochsToHalfMax.
    pub fn value(&self, m: Measure, half_max_level: f64) -> f64 {
        match m {
            Measure::MaxLevel => self.max_level() as f64,
            Measure::FinalLevel => self.final_level as f64,
            Measure::AucLevelEpochs => self.auc_level_epochs(),
            Measure::EpochsToHalfMax => self.epochs_to(half_max_level),
        }
    }
}

/// The curves of the trials that have one, in the order of `trials`.
pub fn trial_curves<'a>(trials: &'a [TrialRow], curves: &[(TrialId, EpochRecord)]) -> Vec<TrialCurve<'a>> {
    let mut by_id: HashMap<&TrialId, Vec<&EpochRecord>> = HashMap::new();
    for (id, e) in curves {
        by_id.entry(id).or_default().push(e);
    }
    trials
        .iter()
        .filter_map(|trial| {
            let mut epochs = by_id.remove(&trial.id)?;
            epochs.sort_by_key(|e| e.epoch);
            let last = *epochs.last()?;
            let budget = trial.spec.budget.epochs.max(last.epoch) as usize;
            let mut reached = Vec::with_capacity(budget);
            let mut best = 0;
            for e in &epochs {
                // Epoch numbers are 1-based and consecutive; a gap would hold the level reached.
                let i = (e.epoch as usize).saturating_sub(1);
                if reached.len() <= i {
                    reached.resize(i + 1, best);
                }
                if e.solved {
                    best = best.max(e.level);
                }
                reached[i] = best;
            }
            reached.resize(budget, best);
            let final_level = if last.solved { last.level + 1 } else { last.level };
            Some(TrialCurve { trial, reached, final_level })
        })
        .collect()
}

/// Condition summaries and comparisons of a sweep's trials (see the module docs).
pub fn compute(trials: &[TrialRow], curves: &[(TrialId, EpochRecord)]) -> Vec<StatRow> {
    let tc = trial_curves(trials, curves);
    let groups = conditions(&tc);
    let mut rows = Vec::new();
    for (condition, group) in &groups {
        for m in Measure::ALL {
            let half = half_max(m, group.iter().copied());
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
    for (comparison, a, b) in pairs(&groups) {
        let (ga, gb) = (&groups[a].1, &groups[b].1);
        for m in Measure::ALL {
            let half = half_max(m, ga.iter().chain(gb).copied());
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

/// Holm-Bonferroni adjusted p-values, in the order given. NaN stays NaN and is not counted.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running = 0.0_f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

impl Summary {
    /// Summary of finite values (the caller drops NaN).
    pub fn of(values: &[f64]) -> Summary {
        let n = values.len();
        let mean = if n == 0 { f64::NAN } else { values.iter().sum::<f64>() / n as f64 };
        let sd = if n < 2 { f64::NAN } else { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        let sem = sd / (n as f64).sqrt();
        let half_width = t_quantile(0.975, n as f64 - 1.0) * sem;
        Summary { n: n as u32, mean, sd, sem, ci95_low: mean - half_width, ci95_high: mean + half_width }
    }
}

impl Tests {
    /// Group a against group b (finite values; the caller drops NaN).
    pub fn of(a: &[f64], b: &[f64]) -> Tests {
        let (sa, sb) = (Summary::of(a), Summary::of(b));
        let nan = f64::NAN;
        let mut t = Tests {
            a: sa,
            b: sb,
            welch_t: nan,
            welch_df: nan,
            welch_p: nan,
            welch_p_holm: nan,
            mwu_u: nan,
            mwu_p: nan,
            mwu_p_holm: nan,
            cohens_d: nan,
            rank_biserial: nan,
        };
        if a.len() < 2 || b.len() < 2 {
            return t;
        }
        let (na, nb) = (a.len() as f64, b.len() as f64);
        let (qa, qb) = (sa.sd.powi(2) / na, sb.sd.powi(2) / nb);
        if qa + qb > 0.0 {
            t.welch_t = (sa.mean - sb.mean) / (qa + qb).sqrt();
            t.welch_df = (qa + qb).powi(2) / (qa.powi(2) / (na - 1.0) + qb.powi(2) / (nb - 1.0));
            t.welch_p = StudentsT::new(0.0, 1.0, t.welch_df).map(|d| 2.0 * d.sf(t.welch_t.abs())).unwrap_or(nan);
            let pooled = ((na - 1.0) * sa.sd.powi(2) + (nb - 1.0) * sb.sd.powi(2)) / (na + nb - 2.0);
            t.cohens_d = (sa.mean - sb.mean) / pooled.sqrt();
        }
        if let Ok((u, p)) = mannwhitneyu(a, b, MannWhitneyUMethod::AsymptoticInclContinuityCorrection, Alternative::TwoSided) {
            t.mwu_u = u;
            t.rank_biserial = 2.0 * u / (na * nb) - 1.0;
            let all_tied = a.iter().chain(b).all(|v| *v == a[0]);
            t.mwu_p = if all_tied { nan } else { p };
        }
        t
    }
}

/// The grid keys of trials.parquet less trial_id and seed (a condition's keys), then the
/// statistics; the columns of the other kind of row are null.
pub fn schema() -> SchemaRef {
    let f64_col = |name: &str| Field::new(name, DataType::Float64, true);
    let mut fields: Vec<Field> = key_fields().into_iter().filter(|f| f.name() != TRIAL_ID && f.name() != SEED).collect();
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
    Arc::new(Schema::new(fields))
}

pub fn write(path: &Path, rows: &[StatRow]) -> Result<(), ResultsError> {
    let s = |f: &dyn Fn(&StatRow) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let os = |f: &dyn Fn(&StatRow) -> Option<String>| -> ArrayRef { Arc::new(StringArray::from_iter(rows.iter().map(f))) };
    let u = |f: &dyn Fn(&StatRow) -> Option<u32>| -> ArrayRef { Arc::new(UInt32Array::from_iter(rows.iter().map(f))) };
    let x = |f: &dyn Fn(&StatRow) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter(rows.iter().map(f))) };
    let cond = |f: fn(&Summary) -> f64| x(&move |r| r.summary().map(f));
    let test = |f: fn(&Tests) -> f64| x(&move |r| r.tests().map(f));
    // In the order of key_fields() less trial_id and seed.
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
        os(&|r| r.comparison().map(|c| c.name().to_string())),
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
    ];
    super::write_table(path, schema(), cols, "stats")
}

/// The comparisons as text tables for people: per condition the mean ± sem of each measure, then
/// one line per comparison and measure with effect sizes and Holm-adjusted p-values. A comparison
/// is named by the grid values its groups share ("within") and those that differ ("a vs b").
pub fn print(rows: &[StatRow]) -> String {
    let name = namer(rows.iter().map(|r| r.condition.as_str()), &[]);
    let mut conditions = Table::new();
    let mut header = vec!["condition".to_string(), "n".to_string()];
    header.extend(Measure::ALL.iter().map(|m| format!("{} (mean ± sem)", m.name())));
    conditions.load_preset(UTF8_BORDERS_ONLY).set_header(header);
    let summaries: HashMap<(&str, Measure), &Summary> =
        rows.iter().filter_map(|r| Some(((r.condition.as_str(), r.measure), r.summary()?))).collect();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in rows.iter().filter(|r| r.summary().is_some()) {
        if !seen.insert(&r.condition) {
            continue;
        }
        let of = |m: Measure| summaries.get(&(r.condition.as_str(), m)).copied();
        let mut line = vec![name(&r.condition).join(" "), of(Measure::MaxLevel).map(|s| s.n.to_string()).unwrap_or_default()];
        line.extend(Measure::ALL.map(|m| of(m).map(|s| format!("{} ± {}", num(s.mean), num(s.sem))).unwrap_or_default()));
        conditions.add_row(line);
    }
    let mut comparisons = Table::new();
    comparisons.load_preset(UTF8_BORDERS_ONLY).set_header([
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
    for r in rows {
        if let StatValues::Comparison { reference, tests: t, .. } = &r.values {
            any = true;
            let (a, b) = (name(&r.condition), name(reference));
            let only = |x: &[String], y: &[String]| x.iter().filter(|p| !y.contains(p)).cloned().collect::<Vec<_>>().join(" ");
            let within: Vec<String> = a.iter().filter(|p| b.contains(p)).cloned().collect();
            comparisons.add_row([
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
    let mut out =
        format!("conditions (across seeds; epochs_to_half_max here counts to half the condition's own highest level)\n{conditions}\n");
    if any {
        out += &format!(
            "\ncomparisons (two-sided; Holm across all comparisons of a measure, per test; d and rank-biserial > 0: a larger; \
             epochs_to_half_max counts to half the pair's highest level)\n{comparisons}\n"
        );
    }
    out
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

/// Trials grouped by condition, in the order of their first trial.
pub(crate) fn conditions<'a, 'b>(tc: &'b [TrialCurve<'a>]) -> Vec<(&'a str, Vec<&'b TrialCurve<'a>>)> {
    let mut groups: Vec<(&str, Vec<&TrialCurve>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for t in tc {
        let i = *index.entry(&t.trial.condition).or_insert_with(|| {
            groups.push((&t.trial.condition, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(t);
    }
    groups
}

/// The condition without the `key=value` parts named in `keys`: what must match for a pair.
pub(crate) fn without(condition: &str, keys: &[&str]) -> String {
    condition
        .split(' ')
        .filter(|kv| !keys.iter().any(|k| kv.split_once('=').is_some_and(|(key, _)| key == *k)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// (comparison, index of group a, index of group b) for every matched pair of conditions.
fn pairs(groups: &[(&str, Vec<&TrialCurve>)]) -> Vec<(Comparison, usize, usize)> {
    let spec = |i: usize| &groups[i].1[0].trial.spec;
    let mut out = Vec::new();
    for comparison in Comparison::ALL {
        let keys = comparison.differing_keys();
        let references: HashMap<String, usize> =
            (0..groups.len()).filter(|&b| comparison.is_b(spec(b))).map(|b| (without(groups[b].0, keys), b)).collect();
        for a in (0..groups.len()).filter(|&a| comparison.is_a(spec(a))) {
            if let Some(&b) = references.get(&without(groups[a].0, keys)) {
                out.push((comparison, a, b));
            }
        }
    }
    out
}

/// The epochs_to_half_max threshold over `group`: half its highest max_level.
fn half_max<'a>(m: Measure, group: impl Iterator<Item = &'a TrialCurve<'a>>) -> Option<f64> {
    (m == Measure::EpochsToHalfMax).then(|| group.map(|t| t.max_level()).max().unwrap_or(0) as f64 / 2.0)
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

/// The `q` quantile of Student's t with `df` degrees of freedom (NaN when df is not positive).
fn t_quantile(q: f64, df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df).map(|d| d.inverse_cdf(q)).unwrap_or(f64::NAN)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_groups_give_nan_not_a_panic() {
        let t = Tests::of(&[3.0], &[1.0, 2.0]);
        assert!(t.welch_t.is_nan() && t.welch_p.is_nan() && t.mwu_p.is_nan() && t.cohens_d.is_nan() && t.rank_biserial.is_nan());
        assert_eq!((t.a.n, t.b.n, t.a.mean), (1, 2, 3.0));
        let t = Tests::of(&[2.0, 2.0, 2.0], &[5.0, 5.0]);
        assert!(t.welch_t.is_nan() && t.welch_df.is_nan() && t.welch_p.is_nan() && t.cohens_d.is_nan());
        assert!(t.mwu_p.is_finite(), "the ranks still separate the groups");
        let t = Tests::of(&[4.0, 4.0], &[4.0, 4.0, 4.0]);
        assert!(t.mwu_p.is_nan() && t.welch_p.is_nan());
        assert_eq!(t.rank_biserial, 0.0);
        let t = Tests::of(&[], &[]);
        assert!(t.a.mean.is_nan() && t.welch_p.is_nan());
        let s = Summary::of(&[7.0]);
        assert!(s.sd.is_nan() && s.ci95_low.is_nan());
    }

    #[test]
    fn holm_keeps_order_is_monotone_and_skips_nan() {
        let h = holm(&[0.01, f64::NAN, 0.04, 0.03, 0.5]);
        assert!(h[1].is_nan());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(h[0], 0.04) && close(h[3], 0.09) && close(h[2], 0.09) && close(h[4], 0.5), "{h:?}");
    }

    #[test]
    fn pair_keys_drop_only_whole_keys() {
        let c = "task=dms arch=cbrnn granule=256 regime=reservoir freeze=level:2 refresh=0 core_plasticity=1";
        assert_eq!(without(c, &["arch"]), "task=dms granule=256 regime=reservoir freeze=level:2 refresh=0 core_plasticity=1");
        assert_eq!(without(c, &["regime", "freeze", "refresh"]), "task=dms arch=cbrnn granule=256 core_plasticity=1");
    }
}
