//! A sweep's finished trials as curves of the level reached per epoch, and the per-trial
//! learning measures taken from them. Each measure is defined once, in
//! `cbsweep_common::measures`; this module only joins a sweep's trial rows with their curve
//! rows and names the measures (the `measure` column of stats.parquet).

use crate::source::TrialRow;
use cbsweep_common::measures;
use cbsweep_common::{EpochRecord, TrialId};
use std::collections::HashMap;

/// A per-trial learning measure; its name (the `measure` column) carries its unit. The first
/// three are the lab's (the paper's figures'), read from the level trained; the rest cbsweep's,
/// read from the level reached (docs/results.md says which column is which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// The lab's max_N: the highest level trained (highest solved + 1).
    MaxN,
    /// The lab's area under the level-trained curve.
    AreaN,
    /// The lab's epochs to half the largest max_N of the comparison; NaN when never reached.
    EpochsToHalfMaxN,
    MaxLevel,
    FinalLevel,
    AucLevelEpochs,
    EpochsToHalfMax,
}

/// A finished trial's curve as levels reached per epoch.
#[derive(Clone, Debug)]
pub struct TrialCurve<'a> {
    pub trial: &'a TrialRow,
    /// Index e - 1 holds the level reached by the end of epoch e, carried forward to the budget
    /// (`cbsweep_common::measures::levels_reached`).
    pub reached: Vec<u32>,
    pub max_level: u32,
    pub final_level: u32,
    /// Index e - 1 holds the level trained in epoch e, carried forward to the budget (the lab's
    /// curve, `cbsweep_common::measures::levels_trained`).
    pub trained: Vec<u32>,
    /// The lab's max_N: the highest level trained.
    pub max_n: u32,
}

impl Measure {
    pub const ALL: [Measure; 7] = [
        Measure::MaxN,
        Measure::AreaN,
        Measure::EpochsToHalfMaxN,
        Measure::MaxLevel,
        Measure::FinalLevel,
        Measure::AucLevelEpochs,
        Measure::EpochsToHalfMax,
    ];

    /// The lab's measures, the ones set beside the paper's figures.
    pub const LAB: [Measure; 3] = [Measure::MaxN, Measure::AreaN, Measure::EpochsToHalfMaxN];

    /// Whether its threshold is half a highest level of the trials compared.
    pub fn is_half_max(&self) -> bool {
        matches!(self, Measure::EpochsToHalfMax | Measure::EpochsToHalfMaxN)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Measure::MaxN => "max_n",
            Measure::AreaN => "area_n",
            Measure::EpochsToHalfMaxN => "epochs_to_half_max_n",
            Measure::MaxLevel => "max_level",
            Measure::FinalLevel => "final_level",
            Measure::AucLevelEpochs => "auc_level_epochs",
            Measure::EpochsToHalfMax => "epochs_to_half_max",
        }
    }
}

impl TrialCurve<'_> {
    /// Trapezoid area under the reached level over epochs 1..=budget, in level x epochs.
    pub fn auc_level_epochs(&self) -> f64 {
        measures::auc_level_epochs(&self.reached)
    }

    /// First epoch whose reached level is at least `level`; budget + 1 when none is; NaN when
    /// `level` is not positive (nothing was solved in the comparison).
    pub fn epochs_to(&self, level: f64) -> f64 {
        measures::epochs_to(&self.reached, level)
    }

    /// The value of `m` for this trial; `half_max_level` is only used by the half-max measures
    /// (`half_max` gives it).
    pub fn value(&self, m: Measure, half_max_level: f64) -> f64 {
        match m {
            Measure::MaxN => self.max_n as f64,
            Measure::AreaN => measures::auc_level_epochs(&self.trained),
            Measure::EpochsToHalfMaxN => measures::epochs_to_trained(&self.trained, half_max_level),
            Measure::MaxLevel => self.max_level as f64,
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
            Some(TrialCurve {
                trial,
                reached: measures::levels_reached(epochs.iter().copied(), trial.spec.budget.epochs),
                max_level: measures::max_level(epochs.iter().copied()),
                final_level: measures::final_level(epochs.iter().copied()),
                trained: measures::levels_trained(epochs.iter().copied(), trial.spec.budget.epochs),
                max_n: 0,
            })
            .map(|mut t| {
                t.max_n = measures::max_n(&t.trained);
                t
            })
        })
        .collect()
}

/// The threshold of a half-max measure over `group`: half its highest max_level
/// (EpochsToHalfMax) or half its largest max_N (the lab's EpochsToHalfMaxN); NaN for the others.
pub fn half_max<'a, 'b: 'a>(m: Measure, group: impl Iterator<Item = &'a TrialCurve<'b>>) -> f64 {
    match m {
        Measure::EpochsToHalfMax => measures::half_level(group.map(|t| t.max_level).max().unwrap_or(0)),
        Measure::EpochsToHalfMaxN => measures::half_level(group.map(|t| t.max_n).max().unwrap_or(0)),
        _ => f64::NAN,
    }
}
