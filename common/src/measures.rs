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
    fn an_empty_curve_solved_nothing() {
        let none: [EpochRecord; 0] = [];
        assert_eq!((max_level(&none), final_level(&none)), (0, 0));
        assert_eq!(levels_reached(&none, 3), [0, 0, 0]);
    }
}
