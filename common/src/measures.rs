//! The per-trial learning measures, one definition each, taken from a trial's curve (its
//! `EpochRecord`s in epoch order). The worker logs them, the store records `max_level` and
//! `final_level` with every result, and the results tables and statistics compute the rest:
//! all through these functions (docs/science.md#learning-measures; docs/results.md).
//!
//! - max level: the highest level solved (0 if none).
//! - final level: the level the trial was working on when it stopped (the last epoch's level,
//!   plus one when that epoch solved it; 0 for an empty curve).
//! - levels reached: index e - 1 holds the highest level solved in epochs 1..=e (0 before the
//!   first solve), carried forward to the epoch budget when the curve stops earlier.
//! - AUC: the trapezoid area under the levels reached, in level x epochs (unit epoch spacing).
//! - epochs to a level: the first epoch whose level reached is at least that level; epochs to
//!   half max takes half a highest max level (`half_level`) as that level.
//!
//!
//! The lab's measures (AlexVoce/Cortico-cerebellar_RNNs, analysis/learning_metrics.py), the ones
//! to set beside the paper's figures, read another curve:
//! - levels trained: index e - 1 holds the level trained in epoch e (it starts at the start
//!   level, 2), carried forward at its last value to the epoch budget.
//! - max N: the highest level trained, which is the highest level solved + 1 for a trial that
//!   trained on after its last solve (solved 2..33: 34); the start level when none was solved.
//! - area N: the trapezoid area under the levels trained, in level x epochs.
//! - epochs to half max N: the first epoch whose level trained is at least half of the largest
//!   max N over all groups compared; NaN (not censored) when the trial never gets there.
//!
//! Pure arithmetic on common's types: nothing here knows where a curve is stored.

use crate::outcome::{EpochRecord, TrialResult};

/// Highest level solved (0 when none was).
pub fn max_level<'a>(curve: impl IntoIterator<Item = &'a EpochRecord>) -> u32 {
    curve.into_iter().filter(|e| e.solved).map(|e| e.level).max().unwrap_or(0)
}

/// The level the trial was working on when it stopped: the last epoch's level, plus one when
/// that epoch solved it (0 for an empty curve). `curve` in epoch order.
pub fn final_level<'a>(curve: impl IntoIterator<Item = &'a EpochRecord>) -> u32 {
    curve.into_iter().last().map(|e| if e.solved { e.level + 1 } else { e.level }).unwrap_or(0)
}

/// The level reached by the end of each epoch (index e - 1 for epoch e): the highest level
/// solved in epochs 1..=e, 0 before the first solve. `curve` in epoch order with 1-based epoch
/// numbers (a gap holds the level reached); the result spans the later of `epochs` (the
/// trial's budget) and the curve's last epoch, the last level reached carried forward.
pub fn levels_reached<'a>(curve: impl IntoIterator<Item = &'a EpochRecord>, epochs: u32) -> Vec<u32> {
    let mut reached = Vec::with_capacity(epochs as usize);
    let mut best = 0;
    let mut last_epoch = None;
    for e in curve {
        let i = (e.epoch as usize).saturating_sub(1);
        if reached.len() <= i {
            reached.resize(i + 1, best);
        }
        if e.solved {
            best = best.max(e.level);
        }
        reached[i] = best;
        last_epoch = Some(e.epoch);
    }
    reached.resize(epochs.max(last_epoch.unwrap_or(0)) as usize, best);
    reached
}

/// The lab's curve: the level trained in each epoch (index e - 1 for epoch e), a gap holding the
/// level before it, carried forward at the last epoch's level to `epochs` (the budget). Empty for
/// an empty curve. `curve` in epoch order with 1-based epoch numbers.
pub fn levels_trained<'a>(curve: impl IntoIterator<Item = &'a EpochRecord>, epochs: u32) -> Vec<u32> {
    let mut trained: Vec<u32> = Vec::with_capacity(epochs as usize);
    for e in curve {
        let i = (e.epoch as usize).saturating_sub(1);
        if trained.len() < i {
            let last = trained.last().copied().unwrap_or(e.level);
            trained.resize(i, last);
        }
        trained.truncate(i);
        trained.push(e.level);
    }
    if let Some(&last) = trained.last()
        && trained.len() < epochs as usize
    {
        trained.resize(epochs as usize, last);
    }
    trained
}

/// The lab's max N: the highest level trained (0 for an empty curve).
pub fn max_n(trained: &[u32]) -> u32 {
    trained.iter().copied().max().unwrap_or(0)
}

/// The lab's epochs to a level: the first epoch whose level trained is at least `level`; NaN when
/// none is, or when `level` is not positive.
pub fn epochs_to_trained(trained: &[u32], level: f64) -> f64 {
    if level.is_nan() || level <= 0.0 {
        return f64::NAN;
    }
    trained.iter().position(|&n| n as f64 >= level).map_or(f64::NAN, |i| (i + 1) as f64)
}

/// Trapezoid area under `reached` (from `levels_reached`) over its epochs, in level x epochs.
pub fn auc_level_epochs(reached: &[u32]) -> f64 {
    reached.windows(2).map(|w| (w[0] as f64 + w[1] as f64) / 2.0).sum()
}

/// First epoch whose level reached is at least `level`; the last epoch + 1 when none is
/// (censored); NaN when `level` is not positive (nothing was solved among the trials compared).
pub fn epochs_to(reached: &[u32], level: f64) -> f64 {
    if level.is_nan() || level <= 0.0 {
        return f64::NAN;
    }
    let first = reached.iter().position(|&r| r as f64 >= level).unwrap_or(reached.len());
    (first + 1) as f64
}

/// The threshold of epochs to half max: half of `max_level` (a trial's own, or the highest of
/// the trials compared).
pub fn half_level(max_level: u32) -> f64 {
    max_level as f64 / 2.0
}

impl TrialResult {
    /// Highest level solved (0 when none was): `max_level` of the curve.
    pub fn max_level(&self) -> u32 {
        max_level(&self.curve)
    }

    /// The level the trial was working on when it stopped: `final_level` of the curve.
    pub fn final_level(&self) -> u32 {
        final_level(&self.curve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: u32, level: u32, solved: bool) -> EpochRecord {
        EpochRecord { epoch, level, train_loss: 0.0, test_accuracy: 0.0, solved, grad_norm: 0.0, core_learning: true, cb_learning: true }
    }

    #[test]
    fn measures_of_a_curve_that_stops_before_its_budget() {
        let curve = [epoch(1, 2, false), epoch(2, 2, true), epoch(3, 3, false), epoch(4, 3, true)];
        assert_eq!((max_level(&curve), final_level(&curve)), (3, 4));
        let reached = levels_reached(&curve, 6);
        assert_eq!(reached, [0, 2, 2, 3, 3, 3]);
        assert_eq!(auc_level_epochs(&reached), 1.0 + 2.0 + 2.5 + 3.0 + 3.0);
        assert_eq!(epochs_to(&reached, half_level(3)), 2.0);
        assert_eq!(epochs_to(&reached, 4.0), 7.0, "never reached: budget + 1");
        assert!(epochs_to(&reached, half_level(0)).is_nan());
    }

    #[test]
    fn the_labs_measures_read_the_level_trained() {
        // solved 2 in epoch 2 and 3 in epoch 4, then trained at 4 to the end of a 6-epoch budget
        let curve = [epoch(1, 2, false), epoch(2, 2, true), epoch(3, 3, false), epoch(4, 3, true), epoch(5, 4, false)];
        let trained = levels_trained(&curve, 6);
        assert_eq!(trained, [2, 2, 3, 3, 4, 4]);
        assert_eq!(max_n(&trained), max_level(&curve) + 1, "highest solved + 1");
        assert_eq!(auc_level_epochs(&trained), 2.0 + 2.5 + 3.0 + 3.5 + 4.0);
        assert_eq!(epochs_to_trained(&trained, 3.0), 3.0);
        assert!(epochs_to_trained(&trained, 5.0).is_nan(), "never reached: NaN, not censored");
        // a trial that solved nothing trained at the start level throughout
        let none = levels_trained(&[epoch(1, 2, false), epoch(2, 2, false)], 3);
        assert_eq!((none.as_slice(), max_n(&none)), ([2, 2, 2].as_slice(), 2));
        assert!(levels_trained(&[], 3).is_empty());
    }

    #[test]
    fn an_empty_curve_solved_nothing() {
        let none: [EpochRecord; 0] = [];
        assert_eq!((max_level(&none), final_level(&none)), (0, 0));
        assert_eq!(levels_reached(&none, 3), [0, 0, 0]);
    }
}
