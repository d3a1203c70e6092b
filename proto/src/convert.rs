//! proto <-> domain conversions.

use crate::v1;
use cbsweep_common as c;

/// A message that cannot become a domain value; names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` has an invalid value {value}")]
    Invalid { field: &'static str, value: String },
}

impl From<c::Task> for v1::Task {
    fn from(t: c::Task) -> Self {
        match t {
            c::Task::Dms => v1::Task::Dms,
            c::Task::Parity => v1::Task::Parity,
            c::Task::Oddball => v1::Task::Oddball,
        }
    }
}

impl From<c::TrainBudget> for v1::TrainBudget {
    fn from(b: c::TrainBudget) -> Self {
        v1::TrainBudget {
            epochs: b.epochs,
            steps_per_epoch: b.steps_per_epoch,
            test_batches: b.test_batches,
            batch_size: b.batch_size,
            start_level: b.start_level,
            max_level: b.max_level,
            solve_threshold: b.solve_threshold,
            momentum: b.momentum,
            clip_norm: b.clip_norm,
            fixed_level: b.curriculum == c::Curriculum::Fixed,
            curriculum: match b.curriculum {
                c::Curriculum::Climb => v1::Curriculum::Climb,
                c::Curriculum::Fixed => v1::Curriculum::Fixed,
                c::Curriculum::FixedUntilSolved => v1::Curriculum::FixedUntilSolved,
                c::Curriculum::Schedule { .. } => v1::Curriculum::Schedule,
            } as i32,
            schedule_every: match b.curriculum {
                c::Curriculum::Schedule { every } => every,
                _ => 0,
            },
        }
    }
}

impl TryFrom<v1::TrainBudget> for c::TrainBudget {
    type Error = ConvertError;
    fn try_from(b: v1::TrainBudget) -> Result<Self, ConvertError> {
        let positive = |field: &'static str, v: u32| {
            if v == 0 { Err(ConvertError::Invalid { field, value: "0".into() }) } else { Ok(v) }
        };
        Ok(c::TrainBudget {
            epochs: positive("budget.epochs", b.epochs)?,
            steps_per_epoch: positive("budget.steps_per_epoch", b.steps_per_epoch)?,
            test_batches: positive("budget.test_batches", b.test_batches)?,
            batch_size: positive("budget.batch_size", b.batch_size)?,
            start_level: positive("budget.start_level", b.start_level)?,
            max_level: positive("budget.max_level", b.max_level)?,
            solve_threshold: b.solve_threshold,
            momentum: b.momentum,
            clip_norm: b.clip_norm,
            curriculum: match v1::Curriculum::try_from(b.curriculum) {
                Ok(v1::Curriculum::Unspecified) if b.fixed_level => c::Curriculum::Fixed,
                Ok(v1::Curriculum::Unspecified | v1::Curriculum::Climb) => c::Curriculum::Climb,
                Ok(v1::Curriculum::Fixed) => c::Curriculum::Fixed,
                Ok(v1::Curriculum::FixedUntilSolved) => c::Curriculum::FixedUntilSolved,
                Ok(v1::Curriculum::Schedule) => c::Curriculum::Schedule { every: positive("budget.schedule_every", b.schedule_every)? },
                Err(_) => return Err(ConvertError::Invalid { field: "budget.curriculum", value: b.curriculum.to_string() }),
            },
        })
    }
}

impl From<c::AnalysisPlan> for v1::AnalysisPlan {
    fn from(a: c::AnalysisPlan) -> Self {
        v1::AnalysisPlan {
            every_levels: a.every_levels,
            ablation_batches: a.ablation_batches,
            dimensionality_batches: a.dimensionality_batches,
            timescale_steps: a.timescale_steps,
            timescale_trials: a.timescale_trials,
            timescale_burn_in: a.timescale_burn_in,
            timescale_max_lag: a.timescale_max_lag,
            timescale_fit_lags: a.timescale_fit_lags,
            save_checkpoints: a.save_checkpoints,
            recovery_steps: a.recovery_steps,
            recovery_eval_batches: a.recovery_eval_batches,
        }
    }
}

impl From<v1::AnalysisPlan> for c::AnalysisPlan {
    fn from(a: v1::AnalysisPlan) -> Self {
        c::AnalysisPlan {
            every_levels: a.every_levels,
            ablation_batches: a.ablation_batches.max(1),
            dimensionality_batches: a.dimensionality_batches.max(1),
            timescale_steps: a.timescale_steps,
            timescale_trials: a.timescale_trials.max(1),
            timescale_burn_in: a.timescale_burn_in,
            timescale_max_lag: a.timescale_max_lag.max(1),
            timescale_fit_lags: a.timescale_fit_lags.max(1),
            save_checkpoints: a.save_checkpoints,
            recovery_steps: a.recovery_steps,
            recovery_eval_batches: a.recovery_eval_batches.max(1),
        }
    }
}

impl From<&c::AnalysisRecord> for v1::AnalysisRecord {
    fn from(a: &c::AnalysisRecord) -> Self {
        v1::AnalysisRecord { level: a.level, epoch: a.epoch, population: a.population.clone(), metric: a.metric.clone(), value: a.value }
    }
}

impl From<v1::AnalysisRecord> for c::AnalysisRecord {
    fn from(a: v1::AnalysisRecord) -> Self {
        c::AnalysisRecord { level: a.level, epoch: a.epoch, population: a.population, metric: a.metric, value: a.value }
    }
}

fn freeze_to_wire(f: c::FreezePoint) -> (v1::FreezeKind, u64) {
    match f {
        c::FreezePoint::Never => (v1::FreezeKind::Never, 0),
        c::FreezePoint::Level(n) => (v1::FreezeKind::Level, n.into()),
        c::FreezePoint::Epoch(n) => (v1::FreezeKind::Epoch, n.into()),
        c::FreezePoint::Step(n) => (v1::FreezeKind::Step, n),
    }
}

fn freeze_from_wire(kind: i32, value: u64) -> Result<c::FreezePoint, ConvertError> {
    let small = || u32::try_from(value).map_err(|_| ConvertError::Invalid { field: "freeze_value", value: value.to_string() });
    match v1::FreezeKind::try_from(kind) {
        Ok(v1::FreezeKind::Never) => Ok(c::FreezePoint::Never),
        Ok(v1::FreezeKind::Level) => Ok(c::FreezePoint::Level(small()?)),
        Ok(v1::FreezeKind::Epoch) => Ok(c::FreezePoint::Epoch(small()?)),
        Ok(v1::FreezeKind::Step) => Ok(c::FreezePoint::Step(value)),
        _ => Err(ConvertError::Invalid { field: "freeze_kind", value: kind.to_string() }),
    }
}

impl From<&c::TrialSpec> for v1::TrialSpec {
    fn from(t: &c::TrialSpec) -> Self {
        let (regime, freeze, refresh_every) = match t.regime {
            c::Regime::Simult => (v1::RegimeKind::Simult, c::FreezePoint::Never, 0),
            c::Regime::Reservoir { freeze } => (v1::RegimeKind::Reservoir, freeze, 0),
            c::Regime::Interleaved { freeze, every } => (v1::RegimeKind::Interleaved, freeze, every),
        };
        let (freeze_kind, freeze_value) = freeze_to_wire(freeze);
        v1::TrialSpec {
            sweep_id: t.sweep.0.clone(),
            task: v1::Task::from(t.task).into(),
            arch: match t.arch {
                c::Arch::Rnn => v1::Arch::Rnn,
                c::Arch::Cbrnn => v1::Arch::Cbrnn,
                c::Arch::Rmrnn => v1::Arch::Rmrnn,
                c::Arch::Cbgru => v1::Arch::Cbgru,
                c::Arch::Gru => v1::Arch::Gru,
            }
            .into(),
            hidden: t.hidden,
            granule: t.granule,
            purkinje: t.purkinje,
            seed: t.seed.0,
            regime: regime.into(),
            freeze_kind: freeze_kind.into(),
            freeze_value,
            refresh_every,
            lr_core: t.lr_core,
            lr_cb: t.lr_cb,
            lr_readout: t.lr_readout,
            core_plasticity: t.core_plasticity,
            budget: Some(t.budget.into()),
            analysis: Some(t.analysis.into()),
            grid_hidden: t.grid_hidden,
            gru_cell: match t.gru_cell {
                c::GruCell::Original => v1::GruCell::Original,
                c::GruCell::Lab => v1::GruCell::Lab,
            }
            .into(),
            module_start: match t.module_start {
                c::ModuleStart::Original => v1::ModuleStart::Original,
                c::ModuleStart::NearZero => v1::ModuleStart::NearZero,
                c::ModuleStart::Lab => v1::ModuleStart::Lab,
            }
            .into(),
        }
    }
}

impl TryFrom<v1::TrialSpec> for c::TrialSpec {
    type Error = ConvertError;
    fn try_from(t: v1::TrialSpec) -> Result<Self, ConvertError> {
        if t.sweep_id.is_empty() {
            return Err(ConvertError::Missing("sweep_id"));
        }
        let task = match v1::Task::try_from(t.task) {
            Ok(v1::Task::Dms) => c::Task::Dms,
            Ok(v1::Task::Parity) => c::Task::Parity,
            Ok(v1::Task::Oddball) => c::Task::Oddball,
            _ => return Err(ConvertError::Invalid { field: "task", value: t.task.to_string() }),
        };
        let arch = match v1::Arch::try_from(t.arch) {
            Ok(v1::Arch::Rnn) => c::Arch::Rnn,
            Ok(v1::Arch::Cbrnn) => c::Arch::Cbrnn,
            Ok(v1::Arch::Rmrnn) => c::Arch::Rmrnn,
            Ok(v1::Arch::Cbgru) => c::Arch::Cbgru,
            Ok(v1::Arch::Gru) => c::Arch::Gru,
            _ => return Err(ConvertError::Invalid { field: "arch", value: t.arch.to_string() }),
        };
        let freeze = freeze_from_wire(t.freeze_kind, t.freeze_value)?;
        let regime = match v1::RegimeKind::try_from(t.regime) {
            Ok(v1::RegimeKind::Simult) => c::Regime::Simult,
            Ok(v1::RegimeKind::Reservoir) => c::Regime::Reservoir { freeze },
            Ok(v1::RegimeKind::Interleaved) if t.refresh_every > 0 => c::Regime::Interleaved { freeze, every: t.refresh_every },
            Ok(v1::RegimeKind::Interleaved) => return Err(ConvertError::Invalid { field: "refresh_every", value: "0".into() }),
            _ => return Err(ConvertError::Invalid { field: "regime", value: t.regime.to_string() }),
        };
        let gru_cell = match v1::GruCell::try_from(t.gru_cell) {
            Ok(v1::GruCell::Original) => c::GruCell::Original,
            Ok(v1::GruCell::Lab) => c::GruCell::Lab,
            Err(_) => return Err(ConvertError::Invalid { field: "gru_cell", value: t.gru_cell.to_string() }),
        };
        let module_start = match v1::ModuleStart::try_from(t.module_start) {
            Ok(v1::ModuleStart::Original) => c::ModuleStart::Original,
            Ok(v1::ModuleStart::NearZero) => c::ModuleStart::NearZero,
            Ok(v1::ModuleStart::Lab) => c::ModuleStart::Lab,
            Err(_) => return Err(ConvertError::Invalid { field: "module_start", value: t.module_start.to_string() }),
        };
        for (field, v) in [("hidden", t.hidden), ("granule", t.granule), ("purkinje", t.purkinje)] {
            if v == 0 {
                return Err(ConvertError::Invalid { field, value: "0".into() });
            }
        }
        Ok(c::TrialSpec {
            sweep: c::SweepId(t.sweep_id),
            task,
            arch,
            hidden: t.hidden,
            granule: t.granule,
            purkinje: t.purkinje,
            seed: c::Seed(t.seed),
            regime,
            lr_core: t.lr_core,
            lr_cb: t.lr_cb,
            lr_readout: t.lr_readout,
            core_plasticity: t.core_plasticity,
            budget: t.budget.ok_or(ConvertError::Missing("budget"))?.try_into()?,
            analysis: t.analysis.ok_or(ConvertError::Missing("analysis"))?.into(),
            grid_hidden: if t.grid_hidden == 0 { c::trial::STUDY_SIZE } else { t.grid_hidden },
            gru_cell,
            module_start,
        })
    }
}

impl From<&c::SpecOverride> for v1::SpecOverride {
    fn from(o: &c::SpecOverride) -> Self {
        v1::SpecOverride { key: o.key.clone(), value: o.value.clone() }
    }
}

impl From<v1::SpecOverride> for c::SpecOverride {
    fn from(o: v1::SpecOverride) -> Self {
        c::SpecOverride { key: o.key, value: o.value }
    }
}

impl From<&c::RunChange> for v1::RunChange {
    fn from(r: &c::RunChange) -> Self {
        v1::RunChange { key: r.key.clone(), before: r.before, after: r.after }
    }
}

impl From<v1::RunChange> for c::RunChange {
    fn from(r: v1::RunChange) -> Self {
        c::RunChange { key: r.key, before: r.before, after: r.after }
    }
}

impl From<&c::EpochRecord> for v1::EpochRecord {
    fn from(e: &c::EpochRecord) -> Self {
        v1::EpochRecord {
            epoch: e.epoch,
            level: e.level,
            train_loss: e.train_loss,
            test_accuracy: e.test_accuracy,
            solved: e.solved,
            grad_norm: e.grad_norm,
            core_learning: e.core_learning,
            cb_learning: e.cb_learning,
        }
    }
}

/// A curve's numbers must be finite: a trial whose loss turns NaN ends `Diverged` with the curve
/// up to then, so a non-finite value on the wire is a peer's fault, refused naming the field.
impl TryFrom<v1::EpochRecord> for c::EpochRecord {
    type Error = ConvertError;
    fn try_from(e: v1::EpochRecord) -> Result<Self, ConvertError> {
        for (field, v) in [("train_loss", e.train_loss), ("test_accuracy", e.test_accuracy), ("grad_norm", e.grad_norm)] {
            if !v.is_finite() {
                return Err(ConvertError::Invalid { field, value: format!("{v} at epoch {}", e.epoch) });
            }
        }
        Ok(c::EpochRecord {
            epoch: e.epoch,
            level: e.level,
            train_loss: e.train_loss,
            test_accuracy: e.test_accuracy,
            solved: e.solved,
            grad_norm: e.grad_norm,
            core_learning: e.core_learning,
            cb_learning: e.cb_learning,
        })
    }
}

impl From<&c::TrialResult> for v1::TrialResult {
    fn from(r: &c::TrialResult) -> Self {
        let (outcome, error) = match &r.outcome {
            c::TrialOutcome::Completed => (v1::OutcomeKind::Completed, String::new()),
            c::TrialOutcome::Diverged => (v1::OutcomeKind::Diverged, String::new()),
            c::TrialOutcome::Failed(e) => (v1::OutcomeKind::Failed, e.clone()),
        };
        v1::TrialResult {
            outcome: outcome.into(),
            error,
            curve: r.curve.iter().map(Into::into).collect(),
            wall_time_ms: r.wall_time_ms,
            device: r.device.clone(),
            pack_size: r.pack_size,
            analyses: r.analyses.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::TrialResult> for c::TrialResult {
    type Error = ConvertError;
    fn try_from(r: v1::TrialResult) -> Result<Self, ConvertError> {
        let outcome = match v1::OutcomeKind::try_from(r.outcome) {
            Ok(v1::OutcomeKind::Completed) => c::TrialOutcome::Completed,
            Ok(v1::OutcomeKind::Diverged) => c::TrialOutcome::Diverged,
            Ok(v1::OutcomeKind::Failed) => c::TrialOutcome::Failed(c::outcome::printable_error(&r.error)),
            _ => return Err(ConvertError::Invalid { field: "outcome", value: r.outcome.to_string() }),
        };
        let curve = r.curve.into_iter().map(c::EpochRecord::try_from).collect::<Result<Vec<_>, _>>()?;
        if curve.windows(2).any(|w| w[1].epoch != w[0].epoch + 1) {
            return Err(ConvertError::Invalid { field: "curve", value: "epochs not consecutive".into() });
        }
        let analyses: Vec<c::AnalysisRecord> = r.analyses.into_iter().map(Into::into).collect();
        if let Some(a) = analyses.iter().find(|a| !a.value.is_finite()) {
            return Err(ConvertError::Invalid {
                field: "analyses.value",
                value: format!(
                    "{} (level {}, population {:?}, metric {:?}): must be a finite number",
                    a.value, a.level, a.population, a.metric
                ),
            });
        }
        Ok(c::TrialResult { outcome, curve, wall_time_ms: r.wall_time_ms, device: r.device, pack_size: r.pack_size, analyses })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Hostile round three, item 9: a NaN analysis value is refused naming the field (it gave
    /// INTERNAL, a NOT NULL constraint, in the store), and a failed trial's error text is kept
    /// printable and bounded (a newline forged a log line; 3 MB were stored whole).
    #[test]
    fn a_result_with_a_nan_analysis_is_refused_and_an_error_text_is_escaped_and_bounded() {
        let analysis = |value: f64| v1::AnalysisRecord { level: 3, epoch: 4, population: "hidden".into(), metric: "d90".into(), value };
        let result = |analyses, error: &str| v1::TrialResult {
            outcome: v1::OutcomeKind::Failed as i32,
            error: error.into(),
            analyses,
            ..Default::default()
        };
        assert!(c::TrialResult::try_from(result(vec![analysis(2.0)], "")).is_ok());
        let e = c::TrialResult::try_from(result(vec![analysis(2.0), analysis(f64::NAN)], "")).unwrap_err().to_string();
        assert!(e.contains("analyses.value") && e.contains("NaN") && e.contains("d90") && e.contains("finite"), "{e}");
        let forged = "boom\n2026-12-07T00:00:00Z  INFO cbsweep: all good\x1b[31m";
        let Ok(c::TrialResult { outcome: c::TrialOutcome::Failed(kept), .. }) = c::TrialResult::try_from(result(vec![], forged)) else {
            panic!("a failed result")
        };
        assert!(!kept.contains('\n') && !kept.contains('\x1b'), "{kept:?}");
        assert!(kept.contains("boom\\n2026") && kept.contains("\\u{1b}[31m"), "escaped, not dropped: {kept:?}");
        let huge = "x".repeat(3 << 20);
        let Ok(c::TrialResult { outcome: c::TrialOutcome::Failed(kept), .. }) = c::TrialResult::try_from(result(vec![], &huge)) else {
            panic!("a failed result")
        };
        assert!(kept.len() < 5000 && kept.contains("bytes left out"), "{} bytes", kept.len());
    }

    #[test]
    fn a_curve_with_a_non_finite_number_is_refused_naming_the_field() {
        let rec =
            |loss: f64| v1::EpochRecord { epoch: 1, level: 2, train_loss: loss, test_accuracy: 0.5, grad_norm: 1.0, ..Default::default() };
        assert!(c::EpochRecord::try_from(rec(0.7)).is_ok());
        let e = c::EpochRecord::try_from(rec(f64::NAN)).unwrap_err().to_string();
        assert!(e.contains("train_loss") && e.contains("NaN"), "{e}");
        let result = v1::TrialResult { outcome: v1::OutcomeKind::Diverged.into(), curve: vec![rec(f64::INFINITY)], ..Default::default() };
        let e = c::TrialResult::try_from(result).unwrap_err().to_string();
        assert!(e.contains("train_loss") && e.contains("inf"), "{e}");
    }

    #[test]
    fn trial_specs_round_trip_through_the_wire() {
        let text = "[sweep]\nname = \"w\"\n[grid]\ntask = [\"dms\", \"oddball\"]\narch = [\"cbrnn\", \"rnn\", \"rmrnn\", \"cbgru\", \"gru\"]\nseed = [3]\nregime = [\"simult\", \"reservoir\", \"interleaved\"]\nfreeze = [\"level:2\", \"step:70\", \"never\"]\n";
        let spec = c::parse_spec(text, Path::new("w.toml")).unwrap();
        for t in &spec.trials {
            let back = c::TrialSpec::try_from(v1::TrialSpec::from(t)).unwrap();
            assert_eq!(&back, t);
            assert_eq!(back.id(), t.id());
        }
    }

    #[test]
    fn a_spec_without_budget_names_the_missing_field() {
        let text = "[sweep]\nname = \"w\"\n[grid]\ntask = [\"dms\"]\narch = [\"rnn\"]\nseed = [3]\n";
        let spec = c::parse_spec(text, Path::new("w.toml")).unwrap();
        let mut wire = v1::TrialSpec::from(&spec.trials[0]);
        wire.budget = None;
        let e = c::TrialSpec::try_from(wire).unwrap_err();
        assert_eq!(e.to_string(), "missing field `budget`");
    }
}
