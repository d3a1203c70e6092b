//! What a worker may report of a trial, by the trial's budget: epochs numbered from 1 up to the
//! budget, levels up to its cap, a result's curve holding each epoch once and in order from 1,
//! a checkpoint no later than the last epoch. The coordinator refuses a report outside these
//! before it stores anything (a progress at epoch 4e9 of a 10-epoch trial once showed in status
//! as four billion epochs trained again).

use crate::{EpochRecord, TrainBudget, TrialResult};

/// A reported value outside the trial's budget: the field, its value and the bound it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is outside the trial's budget: {bound}")]
pub struct OutOfBudget {
    pub field: String,
    pub value: u64,
    pub bound: String,
}

fn out(field: impl Into<String>, value: u32, bound: String) -> OutOfBudget {
    OutOfBudget { field: field.into(), value: u64::from(value), bound }
}

impl TrainBudget {
    /// An epoch as a progress report or a curve carries it (`field` names it in the refusal).
    pub fn check_epoch(&self, field: &str, r: &EpochRecord) -> Result<(), OutOfBudget> {
        if r.epoch == 0 || r.epoch > self.epochs {
            return Err(out(format!("{field}.epoch"), r.epoch, format!("epochs are numbered 1 to {}", self.epochs)));
        }
        if r.level > self.max_level {
            return Err(out(format!("{field}.level"), r.level, format!("the level cap is {}", self.max_level)));
        }
        Ok(())
    }

    /// A finished attempt's result: its curve is epochs 1, 2, ... in order, each within the
    /// budget, and its analyses name an epoch and a level within it.
    pub fn check_result(&self, r: &TrialResult) -> Result<(), OutOfBudget> {
        for (i, e) in r.curve.iter().enumerate() {
            let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if e.epoch != expected {
                return Err(out(
                    format!("result.curve[{i}].epoch"),
                    e.epoch,
                    format!("a curve holds epochs 1, 2, ... in order: {expected} here"),
                ));
            }
            self.check_epoch(&format!("result.curve[{i}]"), e)?;
        }
        for (i, a) in r.analyses.iter().enumerate() {
            if a.epoch == 0 || a.epoch > self.epochs {
                return Err(out(format!("result.analyses[{i}].epoch"), a.epoch, format!("epochs are numbered 1 to {}", self.epochs)));
            }
            if a.level > self.max_level {
                return Err(out(format!("result.analyses[{i}].level"), a.level, format!("the level cap is {}", self.max_level)));
            }
        }
        Ok(())
    }

    /// A checkpoint's epochs done.
    pub fn check_checkpoint(&self, epochs_done: u32) -> Result<(), OutOfBudget> {
        if epochs_done > self.epochs {
            return Err(out("checkpoint.epochs_done", epochs_done, format!("the budget is {} epochs", self.epochs)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{AnalysisRecord, EpochRecord, TrialOutcome, TrialResult, parse_spec};

    fn epoch(epoch: u32, level: u32) -> EpochRecord {
        EpochRecord {
            epoch,
            level,
            train_loss: 0.5,
            test_accuracy: 0.9,
            solved: false,
            grad_norm: 1.0,
            core_learning: true,
            cb_learning: false,
        }
    }

    #[test]
    fn reports_outside_the_budget_are_refused_naming_the_field_and_the_bound() {
        let spec = parse_spec(
            "[sweep]\nname = \"b\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [0]\n[train]\nepochs = 10\nmax_level = 150\n",
            std::path::Path::new("b.toml"),
        )
        .unwrap();
        let b = spec.trials[0].budget;
        assert!(b.check_epoch("progress", &epoch(1, 1)).is_ok());
        assert!(b.check_epoch("progress", &epoch(10, 150)).is_ok());
        let e = b.check_epoch("progress", &epoch(4_000_000_000, 1)).unwrap_err();
        assert_eq!(e.to_string(), "progress.epoch = 4000000000 is outside the trial's budget: epochs are numbered 1 to 10");
        assert_eq!(b.check_epoch("progress", &epoch(0, 1)).unwrap_err().field, "progress.epoch");
        assert_eq!(
            b.check_epoch("progress", &epoch(3, 1_000_000)).unwrap_err().to_string(),
            "progress.level = 1000000 is outside the trial's budget: the level cap is 150"
        );

        let result = |curve: Vec<EpochRecord>| TrialResult {
            outcome: TrialOutcome::Completed,
            curve,
            wall_time_ms: 1,
            device: "cpu".into(),
            pack_size: 1,
            analyses: Vec::new(),
        };
        assert!(b.check_result(&result((1..=10).map(|e| epoch(e, 1)).collect())).is_ok());
        assert!(b.check_result(&result(Vec::new())).is_ok(), "a trial that diverged at once has no curve");
        let twenty = b.check_result(&result((1..=20).map(|e| epoch(e, 1)).collect())).unwrap_err();
        assert_eq!(twenty.field, "result.curve[10].epoch");
        let from_zero = b.check_result(&result((0..5).map(|e| epoch(e, 1)).collect())).unwrap_err();
        assert_eq!(
            from_zero.to_string(),
            "result.curve[0].epoch = 0 is outside the trial's budget: a curve holds epochs 1, 2, ... in order: 1 here"
        );
        let twice = b.check_result(&result(vec![epoch(1, 1), epoch(1, 1)])).unwrap_err();
        assert_eq!(twice.field, "result.curve[1].epoch");
        let mut analysed = result(vec![epoch(1, 1)]);
        analysed.analyses.push(AnalysisRecord { level: 151, epoch: 1, population: "core".into(), metric: "m".into(), value: 1.0 });
        assert_eq!(b.check_result(&analysed).unwrap_err().field, "result.analyses[0].level");

        assert!(b.check_checkpoint(10).is_ok());
        assert_eq!(
            b.check_checkpoint(1_000_000).unwrap_err().to_string(),
            "checkpoint.epochs_done = 1000000 is outside the trial's budget: the budget is 10 epochs"
        );
    }
}
