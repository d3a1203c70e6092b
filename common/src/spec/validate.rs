//! `validate`: the raw stage's structs into a typed `SweepSpec`, in named steps (the sweep's
//! name, the grid, the model's sizing, the training budget and curriculum, the analyses, the
//! run policy, then the trials of the grid's cells and the statistics' pairs). Each step refuses
//! what it cannot type, naming the key and the value; the steps run in this order, so of two
//! mistakes the same one is reported first.

use super::checks::{Checker, Num, SpecError};
use super::grid::{Cell, Grid};
use super::overrides::SpecOverride;
use super::raw::{RawAnalysis, RawModel, RawRun, RawSpec, RawSweep, RawTrain};
use super::stats;
use super::sweep::{RunPolicy, SweepSpec};
use crate::ids::SweepId;
use crate::model_size;
use crate::trial::{
    AnalysisPlan, Arch, Curriculum, FreezePoint, GruCell, ModuleStart, Regime, STUDY_RECOVERY_EVAL_BATCHES, STUDY_RECOVERY_STEPS,
    TrainBudget, TrialSpec,
};
use std::collections::BTreeSet;
use std::path::Path;

/// The typed sweep of `raw`, whose canonical TOML is `resolved`, validated with `overrides`.
pub(super) fn validate(raw: RawSpec, path: &Path, resolved: String, overrides: Vec<SpecOverride>) -> Result<SweepSpec, SpecError> {
    let c = Checker { path };
    let id = sweep_id(&c, &raw.sweep)?;
    let grid = Grid::new(&c, &raw.grid, &raw.model)?;
    let sizing = sizing(&c, &raw.model)?;
    let budget = train_budget(&c, &raw.train)?;
    let analysis = analysis_plan(&c, &raw.analysis)?;
    let lr_readout = raw.train.lr_readout.map(|v| c.rate("train.lr_readout", v)).transpose()?;
    let run = run_policy(&c, &raw.run)?;
    let common = Common { sweep: &id, sizing, budget, analysis, lr_readout };
    let mut trials = Vec::new();
    let mut seen = BTreeSet::new();
    for cell in grid.cells(&c)? {
        let trial = common.trial(cell);
        if seen.insert(trial.cell_key()) {
            trials.push(trial);
        }
    }
    fixed_level_freezes(&c, &budget, &trials)?;
    let stats = stats::plan(&c, raw.stats.as_ref(), &grid.archs, &trials)?;
    Ok(SweepSpec { id, description: raw.sweep.description, run, trials, resolved, overrides, stats })
}

/// `sweep.name`, trimmed, as a new sweep's id.
fn sweep_id(c: &Checker, sweep: &RawSweep) -> Result<SweepId, SpecError> {
    let name = sweep.name.trim();
    SweepId::check_new(name).map_err(|why| c.invalid("sweep.name", format!("{:?}", sweep.name), &why))?;
    Ok(SweepId(name.to_string()))
}

/// How `[model]` sizes and starts the architectures beside the CB-RNN.
#[derive(Clone, Copy)]
struct Sizing {
    /// `rnn_match = "published"`: the published matched RNN where there is one.
    published: bool,
    module_start: ModuleStart,
}

fn sizing(c: &Checker, model: &RawModel) -> Result<Sizing, SpecError> {
    let published = match model.rnn_match.as_str() {
        "published" => true,
        "closest" => false,
        other => return Err(c.invalid("model.rnn_match", format!("{other:?}"), "expected \"published\" or \"closest\"")),
    };
    let module_start = match model.recurrent_module_start.as_deref() {
        None => ModuleStart::Lab,
        Some(name) => name.parse().map_err(|why: String| c.invalid("model.recurrent_module_start", format!("{name:?}"), &why))?,
    };
    Ok(Sizing { published, module_start })
}

/// `[train]` but the readout's rate: the budget, the levels and the curriculum that moves them.
fn train_budget(c: &Checker, t: &RawTrain) -> Result<TrainBudget, SpecError> {
    let (start_level, max_level, curriculum) = curriculum(c, t)?;
    if start_level < 2 {
        return Err(c.invalid("train.start_level", start_level, "must be at least 2 (the oddball context needs two bits)"));
    }
    if max_level < start_level {
        return Err(c.invalid("train.max_level", max_level, "must be at least train.start_level"));
    }
    if !(t.solve_threshold > 0.0 && t.solve_threshold <= 1.0) {
        return Err(c.invalid("train.solve_threshold", Num(t.solve_threshold), "must be in (0, 1]"));
    }
    if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
        return Err(c.invalid("train.momentum", Num(t.momentum), "must be in [0, 1)"));
    }
    if !(t.clip_norm.is_finite() && t.clip_norm > 0.0) {
        return Err(c.invalid("train.clip_norm", Num(t.clip_norm), "must be a positive number"));
    }
    Ok(TrainBudget {
        epochs: c.positive("train.epochs", t.epochs)?,
        steps_per_epoch: c.positive("train.steps_per_epoch", t.steps_per_epoch)?,
        test_batches: c.positive("train.test_batches", t.test_batches)?,
        batch_size: c.positive("train.batch_size", t.batch_size)?,
        start_level,
        max_level,
        solve_threshold: t.solve_threshold,
        momentum: t.momentum,
        clip_norm: t.clip_norm,
        curriculum,
    })
}

/// The start level, the top level and the curriculum: a fixed level (until solved, or the whole
/// budget), a fixed schedule, or the climb.
fn curriculum(c: &Checker, t: &RawTrain) -> Result<(u32, u32, Curriculum), SpecError> {
    Ok(match (t.fixed_level, t.schedule_every) {
        (Some(_), Some(k)) => {
            return Err(c.invalid("train.schedule_every", k, "cannot be combined with train.fixed_level (the level never moves there)"));
        }
        // one level: it starts and tops the curriculum
        (Some(n), None) => {
            let n = c.positive("train.fixed_level", n)?;
            if n < 2 {
                return Err(c.invalid("train.fixed_level", n, "must be at least 2 (the oddball context needs two bits)"));
            }
            let until = match t.fixed_until.as_deref() {
                None | Some("solved") => Curriculum::FixedUntilSolved,
                Some("budget") => Curriculum::Fixed,
                Some(other) => {
                    return Err(c.invalid(
                        "train.fixed_until",
                        format!("{other:?}"),
                        "expected \"solved\" (the lab's: stop at the first solve) or \"budget\"",
                    ));
                }
            };
            (n, n, until)
        }
        (None, schedule) => {
            if let Some(until) = &t.fixed_until {
                return Err(c.invalid("train.fixed_until", format!("{until:?}"), "applies only with train.fixed_level"));
            }
            let curriculum = match schedule {
                Some(k) => Curriculum::Schedule { every: c.positive("train.schedule_every", k)? },
                None => Curriculum::Climb,
            };
            (c.positive("train.start_level", t.start_level)?, c.positive("train.max_level", t.max_level)?, curriculum)
        }
    })
}

/// `[analysis]`: what is measured at each analysis point, and how often.
fn analysis_plan(c: &Checker, a: &RawAnalysis) -> Result<AnalysisPlan, SpecError> {
    let nonneg = |field: &str, v: i64| c.nonneg(field, v);
    let analysis = AnalysisPlan {
        every_levels: nonneg("analysis.every_levels", a.every_levels)?,
        ablation_batches: c.positive("analysis.ablation_batches", a.ablation_batches)?,
        dimensionality_batches: c.positive("analysis.dimensionality_batches", a.dimensionality_batches)?,
        timescale_steps: nonneg("analysis.timescale_steps", a.timescale_steps)?,
        timescale_trials: c.positive("analysis.timescale_trials", a.timescale_trials)?,
        timescale_burn_in: nonneg("analysis.timescale_burn_in", a.timescale_burn_in)?,
        timescale_max_lag: c.positive("analysis.timescale_max_lag", a.timescale_max_lag)?,
        timescale_fit_lags: c.positive("analysis.timescale_fit_lags", a.timescale_fit_lags)?,
        save_checkpoints: a.save_checkpoints,
        recovery_steps: a.recovery_steps.map_or(Ok(STUDY_RECOVERY_STEPS), |v| nonneg("analysis.recovery_steps", v))?,
        recovery_eval_batches: a
            .recovery_eval_batches
            .map_or(Ok(STUDY_RECOVERY_EVAL_BATCHES), |v| c.positive("analysis.recovery_eval_batches", v))?,
    };
    if analysis.timescale_steps > 0 && analysis.timescale_steps <= analysis.timescale_burn_in + analysis.timescale_max_lag {
        return Err(c.invalid(
            "analysis.timescale_steps",
            analysis.timescale_steps,
            "must exceed timescale_burn_in + timescale_max_lag (or be 0 to skip timescales)",
        ));
    }
    if analysis.timescale_fit_lags > analysis.timescale_max_lag {
        return Err(c.invalid("analysis.timescale_fit_lags", analysis.timescale_fit_lags, "must be at most timescale_max_lag"));
    }
    Ok(analysis)
}

fn run_policy(c: &Checker, run: &RawRun) -> Result<RunPolicy, SpecError> {
    Ok(RunPolicy {
        max_attempts: c.positive("run.max_attempts", run.max_attempts)?,
        pack_size: c.positive("run.pack_size", run.pack_size)?,
        lease_seconds: c.positive("run.lease_seconds", run.lease_seconds)?,
        checkpoint_every: c.nonneg("run.checkpoint_every", run.checkpoint_every)?,
        checkpoint_seconds: c.nonneg("run.checkpoint_seconds", run.checkpoint_seconds)?,
    })
}

/// What every trial of the sweep shares, beside its cell.
struct Common<'a> {
    sweep: &'a SweepId,
    sizing: Sizing,
    budget: TrainBudget,
    analysis: AnalysisPlan,
    /// `train.lr_readout`, when the spec names one.
    lr_readout: Option<f64>,
}

impl Common<'_> {
    /// The trial of one cell: the CB-RNN's sizes as the grid gives them, the other architectures
    /// matched to them.
    fn trial(&self, cell: Cell) -> TrialSpec {
        let (hidden, granule, purkinje) = (cell.hidden, cell.granule, cell.purkinje);
        let h = match cell.arch {
            Arch::Cbrnn | Arch::Rmrnn | Arch::Cbgru => hidden,
            Arch::Rnn if self.sizing.published => model_size::matched_rnn_hidden(hidden, granule, purkinje),
            Arch::Rnn => model_size::closest_rnn_hidden(model_size::cbrnn_params(hidden, granule, purkinje)),
            Arch::Gru => model_size::matched_gru_hidden(hidden, granule, purkinje),
        };
        TrialSpec {
            sweep: self.sweep.clone(),
            task: cell.task,
            arch: cell.arch,
            hidden: h,
            granule,
            purkinje,
            seed: cell.seed,
            regime: cell.regime,
            lr_core: cell.lr_core,
            lr_cb: cell.lr_cb,
            // the readout learns in the core's group (the lab's optimiser), so a plasticity
            // factor scales it too, unless the spec names a rate of its own
            lr_readout: self.lr_readout.unwrap_or(cell.lr_core * cell.core_plasticity),
            core_plasticity: cell.core_plasticity,
            budget: self.budget,
            analysis: self.analysis,
            grid_hidden: hidden,
            gru_cell: GruCell::of(cell.arch),
            module_start: self.sizing.module_start.of(cell.arch),
        }
    }
}

/// A fixed level never moves, so no trial of it may freeze once a level is solved.
fn fixed_level_freezes(c: &Checker, budget: &TrainBudget, trials: &[TrialSpec]) -> Result<(), SpecError> {
    if budget.curriculum.is_fixed()
        && let Some(t) = trials.iter().find(|t| t.regime != Regime::Simult && matches!(t.regime.freeze(), FreezePoint::Level(_)))
    {
        return Err(c.invalid(
            "grid.freeze",
            t.regime.freeze(),
            "freezes once a level is solved, which never comes with train.fixed_level (the level never moves): freeze at epoch:N or step:N",
        ));
    }
    Ok(())
}
