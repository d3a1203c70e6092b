//! Training a pack of trials together (cb-rnn-spec.md, "Training" and "Regimes"): one packed
//! model, a hand-written Nesterov SGD with per-trial learning rates, clipping and freeze masks,
//! and a curriculum per trial. Every per-trial quantity lives on its own row of the pack axis,
//! so a trial's numbers do not depend on the others it trains with.

use super::analysis::{self, Checkpoint};
use super::fused::FusedPack;
use super::model::{self, CbOutput, Dims, Module, PackedInput, PackedModel};
use super::tasks::{self, Stream, TaskBatch};
use crate::trainer::{Control, Trainer};
use cbsweep_common::{
    AnalysisPlan, AnalysisRecord, Arch, EpochRecord, FreezePoint, Regime, TrainBudget, TrialOutcome, TrialResult, TrialSpec,
};
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, TchError, Tensor};

/// The libtorch trainer: trains a pack of trials as one batched computation on one device.
#[derive(Debug)]
pub struct TorchTrainer {
    device: Device,
    kind: Kind,
    engine: Engine,
    /// Where checkpoint weights go (DIR/<trial id>/level-<L>.safetensors); None: nowhere.
    checkpoint_dir: Option<PathBuf>,
}

/// What computes the training steps and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The CPU engine (`fused`): hand-written forward and backward through time on host memory.
    /// Only on the CPU in float32; elsewhere libtorch is used.
    Fused,
    /// libtorch's operations and autograd over the packed tensors: the path for CUDA.
    Libtorch,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Engine::Fused),
            "libtorch" => Ok(Engine::Libtorch),
            other => Err(format!("{other:?}: expected fused or libtorch")),
        }
    }
}

/// Why a pack could not train.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrainError {
    #[error("libtorch error")]
    Torch(#[from] TchError),
    #[error("trial {index} of the pack has pack key {found}, the first has {expected}")]
    MixedPack { index: usize, found: String, expected: String },
    #[error("an empty pack")]
    EmptyPack,
    #[error("training panicked: {0}")]
    Panicked(String),
}

/// Which modules of a trial learn during one SGD step. The readout always learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Learning {
    pub(crate) core: bool,
    pub(crate) cb: bool,
}

/// The reason reported for a trial stopped through `Control`.
const STOPPED: &str = "stopped";

impl TorchTrainer {
    /// A trainer computing in float32 on `device`.
    pub fn new(device: Device) -> Self {
        TorchTrainer { device, kind: Kind::Float, engine: Engine::Fused, checkpoint_dir: None }
    }

    /// Chooses the engine; `Engine::Fused` (the default) applies on the CPU only.
    pub fn with_engine(self, engine: Engine) -> Self {
        TorchTrainer { engine, ..self }
    }

    /// Whether packs of this trainer run on the CPU engine.
    pub fn fused(&self) -> bool {
        self.engine == Engine::Fused && self.device == Device::Cpu && self.kind == Kind::Float
    }

    /// Saves the weights at each checkpoint of trials whose plan asks for it under `dir`, as
    /// DIR/<trial id>/level-<L>.safetensors; None saves nothing.
    pub fn with_checkpoint_dir(self, dir: Option<PathBuf>) -> Self {
        TorchTrainer { checkpoint_dir: dir, ..self }
    }
}

impl Trainer for TorchTrainer {
    fn train_pack(&mut self, pack: &[TrialSpec], on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control) -> Vec<TrialResult> {
        if pack.is_empty() {
            return Vec::new();
        }
        let _span = tracing::info_span!("pack", size = pack.len(), key = %pack[0].pack_key().0).entered();
        let started = Instant::now();
        let mut trials: Vec<TrialRun> = pack.iter().map(|spec| TrialRun::new(spec, started)).collect();
        let fused = self.fused();
        let run = catch_unwind(AssertUnwindSafe(|| {
            PackRun::new(pack, self.kind, self.device, fused)?.run(&mut trials, on_epoch, self.checkpoint_dir.as_deref())
        }));
        let failure = match run {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(error_chain(&e)),
            Err(panic) => Some(error_chain(&TrainError::Panicked(panic_message(panic.as_ref())))),
        };
        if let Some(reason) = &failure {
            tracing::warn!(pack_size = pack.len(), reason = %reason, "pack failed");
        }
        let device = self.device();
        trials.into_iter().map(|t| t.into_result(failure.as_deref(), &device, pack.len())).collect()
    }

    fn device(&self) -> String {
        match self.device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(i) => format!("cuda:{i}"),
            Device::Mps => "mps".into(),
            Device::Vulkan => "vulkan".into(),
        }
    }
}

impl Learning {
    pub(crate) fn module(self, module: Module) -> bool {
        match module {
            Module::Core => self.core,
            Module::Cb => self.cb,
            Module::Readout => true,
        }
    }
}

/// Which modules learn for a trial with `regime` that has done `epochs_done` epochs and
/// `steps_done` SGD steps and now trains at `level` of a curriculum starting at `start_level`.
pub(crate) fn learning(regime: Regime, start_level: u32, level: u32, epochs_done: u32, steps_done: u64) -> Learning {
    let frozen = match regime.freeze() {
        FreezePoint::Level(n) => level > n,
        FreezePoint::Epoch(n) => epochs_done >= n,
        FreezePoint::Step(n) => steps_done >= n,
        FreezePoint::Never => false,
    };
    match regime {
        Regime::Simult => Learning { core: true, cb: true },
        Regime::Reservoir { .. } | Regime::Interleaved { .. } if !frozen => Learning { core: true, cb: false },
        Regime::Interleaved { every, .. } if every > 0 && level > start_level && (level - start_level).is_multiple_of(every) => {
            Learning { core: true, cb: true }
        }
        Regime::Reservoir { .. } | Regime::Interleaved { .. } => Learning { core: false, cb: true },
    }
}

/// The host-side state of one trial: curriculum, random streams, curve and how it ended.
pub(crate) struct TrialRun<'a> {
    spec: &'a TrialSpec,
    started: Instant,
    level: u32,
    epochs_done: u32,
    train_data: ChaCha8Rng,
    train_h0: ChaCha8Rng,
    test_data: ChaCha8Rng,
    test_h0: ChaCha8Rng,
    /// The modules that learned in the latest step.
    learning: Learning,
    /// Levels solved so far.
    levels_solved: u32,
    curve: Vec<EpochRecord>,
    /// Checkpoint analyses, in the order taken.
    analyses: Vec<AnalysisRecord>,
    end: Option<(TrialOutcome, u64)>,
}

/// A trial's checkpoint found in an epoch: its pack row, index in the pack, level and epoch.
#[derive(Clone, Copy, Debug)]
struct Due {
    row: usize,
    trial: usize,
    level: u32,
    epoch: u32,
}

impl<'a> TrialRun<'a> {
    fn new(spec: &'a TrialSpec, started: Instant) -> Self {
        TrialRun {
            spec,
            started,
            level: spec.budget.start_level,
            epochs_done: 0,
            train_data: tasks::stream(spec.seed, Stream::TrainData),
            train_h0: tasks::stream(spec.seed, Stream::TrainH0),
            test_data: tasks::stream(spec.seed, Stream::TestData),
            test_h0: tasks::stream(spec.seed, Stream::TestH0),
            learning: Learning { core: false, cb: false },
            levels_solved: 0,
            curve: Vec::new(),
            analyses: Vec::new(),
            end: None,
        }
    }

    fn running(&self) -> bool {
        self.end.is_none()
    }

    fn finish(&mut self, outcome: TrialOutcome) {
        if self.end.is_none() {
            let ms = self.elapsed_ms();
            tracing::debug!(seed = self.spec.seed.0, outcome = outcome.status(), level = self.level, "trial ended");
            self.end = Some((outcome, ms));
        }
    }

    /// Counts the analyses of a trial's last epoch, which run after it ended, in its wall time.
    fn restamp_end(&mut self) {
        let now = self.elapsed_ms();
        if let Some((_, ms)) = &mut self.end {
            *ms = now;
        }
    }

    /// Milliseconds since the pack started.
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a solved level; true when it is one to analyse: the 1st, (1 + k)th, (1 + 2k)th
    /// ... solved level for `every_levels` = k > 0.
    fn solve_level(&mut self) -> bool {
        let every = self.spec.analysis.every_levels;
        let due = every > 0 && self.levels_solved.is_multiple_of(every);
        self.levels_solved += 1;
        due
    }

    fn learning_at(&self, steps_done: u64) -> Learning {
        let l = learning(self.spec.regime, self.spec.budget.start_level, self.level, self.epochs_done, steps_done);
        Learning { core: l.core, cb: l.cb && self.spec.arch == Arch::Cbrnn }
    }

    fn draw(&mut self, data: DataSplit, hidden: usize) -> (TaskBatch, Vec<f64>) {
        let batch = self.spec.budget.batch_size as usize;
        let (data_rng, h0_rng) = match data {
            DataSplit::Train => (&mut self.train_data, &mut self.train_h0),
            DataSplit::Test => (&mut self.test_data, &mut self.test_h0),
        };
        let b = tasks::draw_batch(data_rng, self.spec.task, self.level, batch);
        let h0 = tasks::draw_h0(h0_rng, batch, hidden);
        (b, h0)
    }

    fn into_result(self, failure: Option<&str>, device: &str, pack_size: usize) -> TrialResult {
        let now = self.elapsed_ms();
        let (outcome, wall_time_ms) = match (self.end, failure) {
            (Some(end), _) => end,
            (None, failure) => {
                let outcome = match failure {
                    Some(reason) => TrialOutcome::Failed(reason.to_string()),
                    None => TrialOutcome::Completed,
                };
                (outcome, now)
            }
        };
        TrialResult {
            outcome,
            curve: self.curve,
            wall_time_ms,
            device: device.to_string(),
            pack_size: u32::try_from(pack_size).unwrap_or(u32::MAX),
            analyses: self.analyses,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataSplit {
    Train,
    Test,
}

/// The device-side state of a pack: model, momentum, per-trial rates and freeze masks. Row r
/// of every tensor belongs to trial `rows[r]`; rows of ended trials are dropped.
pub(crate) struct PackRun {
    dims: Dims,
    budget: TrainBudget,
    kind: Kind,
    device: Device,
    pub(crate) model: PackedModel,
    /// Nesterov momentum buffers, one per parameter, zero until a module first learns.
    pub(crate) momentum: Vec<Tensor>,
    /// Learning rate per module (in `Module::ALL` order), [M] each.
    rates: Vec<Tensor>,
    /// Learn mask per module for the flags they were built from, [M] (bool) each.
    masks: Option<(Vec<Learning>, Vec<Tensor>)>,
    /// The CPU engine's host state; when present it is the pack's state, and `model` and
    /// `momentum` are refreshed from it by `sync` only where libtorch needs them (analyses).
    fused: Option<FusedPack<f32>>,
    rows: Vec<usize>,
    steps_done: u64,
}

/// Per-trial sums over an epoch's steps, [M] each, kept on the device until the epoch ends.
pub(crate) struct EpochSums {
    loss: Tensor,
    grad_norm: Tensor,
}

impl PackRun {
    pub(crate) fn new(pack: &[TrialSpec], kind: Kind, device: Device, fused: bool) -> Result<Self, TrainError> {
        let Some(first) = pack.first() else {
            return Err(TrainError::EmptyPack);
        };
        let expected = first.pack_key();
        if let Some((index, t)) = pack.iter().enumerate().find(|(_, t)| t.pack_key() != expected) {
            return Err(TrainError::MixedPack { index, found: t.pack_key().0, expected: expected.0 });
        }
        let dims = Dims::of(first);
        let model = PackedModel::new(dims, pack, kind, device)?;
        let momentum = model.params().iter().map(|p| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        let rates = Module::ALL
            .iter()
            .map(|&module| {
                let values: Vec<f64> = pack
                    .iter()
                    .map(|t| match module {
                        Module::Core => t.lr_core * t.core_plasticity,
                        Module::Readout => t.lr_readout,
                        Module::Cb => t.lr_cb,
                    })
                    .collect();
                model::host_tensor(&values, &[pack.len() as i64], kind, device)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fused = if fused {
            let rates: Vec<[f64; 3]> = pack.iter().map(|t| [t.lr_core * t.core_plasticity, t.lr_readout, t.lr_cb]).collect();
            Some(FusedPack::from_tensors(dims, model.params(), &momentum, &rates)?)
        } else {
            None
        };
        Ok(PackRun {
            dims,
            budget: first.budget,
            kind,
            device,
            model,
            momentum,
            rates,
            masks: None,
            fused,
            rows: (0..pack.len()).collect(),
            steps_done: 0,
        })
    }

    fn run(
        mut self,
        trials: &mut [TrialRun],
        on_epoch: &mut dyn FnMut(usize, &EpochRecord) -> Control,
        checkpoint_dir: Option<&Path>,
    ) -> Result<(), TrainError> {
        let budget = self.budget;
        let steps = budget.steps_per_epoch.max(1);
        let tested = f64::from(budget.test_batches.max(1)) * f64::from(budget.batch_size.max(1));
        for epoch in 1..=budget.epochs {
            if self.rows.is_empty() {
                break;
            }
            let mut sums = EpochSums::zeros(self.rows.len(), self.kind, self.device)?;
            for _ in 0..budget.steps_per_epoch {
                self.train_step(trials, &mut sums)?;
            }
            let correct = self.test(trials, CbOutput::On)?;
            // one transfer per epoch: [3, M] -> host
            let per_trial = [&sums.loss, &sums.grad_norm, &correct].map(|t| t.f_to_kind(Kind::Double));
            let per_trial = per_trial.into_iter().collect::<Result<Vec<_>, _>>()?;
            let stats = Tensor::f_stack(&per_trial, 0)?.f_to_device(Device::Cpu)?.f_flatten(0, -1)?; // [3 * M]
            let stats = Vec::<f64>::try_from(&stats)?;
            let m = self.rows.len();

            let mut stop_all = false;
            let mut due = Vec::new();
            for (row, &i) in self.rows.iter().enumerate() {
                let t = &mut trials[i];
                let train_loss = stats[row] / f64::from(steps);
                let grad_norm = stats[m + row] / f64::from(steps);
                if stop_all {
                    t.finish(TrialOutcome::Failed(STOPPED.into()));
                    continue;
                }
                if !train_loss.is_finite() || !grad_norm.is_finite() {
                    t.finish(TrialOutcome::Diverged);
                    continue;
                }
                let test_accuracy = stats[2 * m + row] / tested;
                let solved = test_accuracy >= budget.solve_threshold;
                let record = EpochRecord {
                    epoch,
                    level: t.level,
                    train_loss,
                    test_accuracy,
                    solved,
                    grad_norm,
                    core_learning: t.learning.core,
                    cb_learning: t.learning.cb,
                };
                t.curve.push(record);
                t.epochs_done = epoch;
                match on_epoch(i, &record) {
                    Control::Continue => {}
                    Control::StopTrial => {
                        t.finish(TrialOutcome::Failed(STOPPED.into()));
                        continue;
                    }
                    Control::StopAll => {
                        stop_all = true;
                        continue;
                    }
                }
                if solved {
                    if t.solve_level() {
                        due.push(Due { row, trial: i, level: t.level, epoch });
                    }
                    if t.level >= budget.max_level {
                        t.finish(TrialOutcome::Completed);
                        continue;
                    }
                    t.level += 1;
                }
                if epoch == budget.epochs {
                    t.finish(TrialOutcome::Completed);
                }
            }
            if stop_all {
                for &i in &self.rows {
                    trials[i].finish(TrialOutcome::Failed(STOPPED.into()));
                }
            } else if !due.is_empty() {
                self.sync()?;
                self.checkpoints(trials, &due, checkpoint_dir)?;
                due.iter().for_each(|d| trials[d.trial].restamp_end());
            }
            self.drop_ended(trials)?;
        }
        Ok(())
    }

    /// One SGD step of every trial in the pack, each on a fresh batch at its own level.
    pub(crate) fn train_step(&mut self, trials: &mut [TrialRun], sums: &mut EpochSums) -> Result<(), TrainError> {
        let flags: Vec<Learning> = self.rows.iter().map(|&i| trials[i].learning_at(self.steps_done)).collect();
        for (&i, &f) in self.rows.iter().zip(&flags) {
            trials[i].learning = f;
        }
        let hidden = self.dims.hidden as usize;
        let drawn: Vec<Vec<(TaskBatch, Vec<f64>)>> = self.rows.iter().map(|&i| vec![trials[i].draw(DataSplit::Train, hidden)]).collect();
        if let Some(fused) = &mut self.fused {
            let (losses, grads) = fused.loss_and_grads(&drawn);
            let norms = fused.sgd(&grads, &flags, &self.budget);
            let as_tensor = |v: &[f64]| model::host_tensor(v, &[v.len() as i64], self.kind, self.device);
            sums.loss = sums.loss.f_add(&as_tensor(&losses)?)?;
            sums.grad_norm = sums.grad_norm.f_add(&as_tensor(&norms)?)?;
            self.steps_done += 1;
            return Ok(());
        }
        let (input, labels) = pack_batches(&drawn, self.dims.hidden, self.kind, self.device)?;
        let logits = self.model.forward(&input, CbOutput::On)?; // [M, B, 2]
        let losses = model::cross_entropy(&logits, &labels)?; // [M]
        let norms = self.sgd_step(&losses, &flags)?; // [M]
        sums.loss = sums.loss.f_add(&losses.f_detach()?)?;
        sums.grad_norm = sums.grad_norm.f_add(&norms)?;
        self.steps_done += 1;
        Ok(())
    }

    /// Backward from the per-trial losses [M] and one Nesterov SGD step with per-trial
    /// clipping over each trial's trainable parameters; returns the pre-clip norms [M].
    fn sgd_step(&mut self, losses: &Tensor, flags: &[Learning]) -> Result<Tensor, TrainError> {
        let masks = self.masks(flags)?;
        let specs = self.dims.param_specs();
        // parameters of modules no trial trains need no gradient
        let trained: Vec<usize> = (0..specs.len()).filter(|&i| flags.iter().any(|f| f.module(specs[i].module))).collect();
        let inputs: Vec<&Tensor> = trained.iter().map(|&i| &self.model.params()[i]).collect();
        let grads = Tensor::f_run_backward(&[losses.f_sum(None::<Kind>)?], &inputs, false, false)?;

        let _no_grad = tch::no_grad_guard();
        let m = self.rows.len() as i64;
        // squared norm per trial over its trainable parameters only
        let mut squared = Tensor::f_zeros([m], (self.kind, self.device))?; // [M]
        for (g, &i) in grads.iter().zip(&trained) {
            let dims: Vec<i64> = (1..g.dim() as i64).collect();
            let s = g.f_square()?.f_sum_dim_intlist(Some(dims.as_slice()), false, None::<Kind>)?; // [M]
            squared = squared.f_add(&s.f_where_scalarother(&masks[specs[i].module.index()], 0.0)?)?;
        }
        let norm = squared.f_sqrt()?; // [M]
        // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1
        let coef = norm.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(self.budget.clip_norm)?.f_clamp_max(1.0)?;

        let mu = self.budget.momentum;
        for (g, &i) in grads.iter().zip(&trained) {
            let module = specs[i].module.index();
            let shape: Vec<i64> = std::iter::once(m).chain(std::iter::repeat_n(1, g.dim() - 1)).collect();
            let coef = coef.f_view(shape.as_slice())?; // [M, 1, ...]
            let mask = masks[module].f_view(shape.as_slice())?; // [M, 1, ...]
            let rate = self.rates[module].f_view(shape.as_slice())?; // [M, 1, ...]
            let g = g.f_mul(&coef)?;
            // torch.optim.SGD, dampening 0, Nesterov: buf = mu buf + g; p -= lr (g + mu buf)
            let buf = self.momentum[i].f_mul_scalar(mu)?.f_add(&g)?;
            let update = g.f_add(&buf.f_mul_scalar(mu)?)?;
            let param = &self.model.params()[i];
            let stepped = param.f_sub(&update.f_mul(&rate)?)?;
            // frozen rows keep their exact weights and buffers
            let kept = stepped.f_where_self(&mask, param)?;
            param.shallow_clone().f_copy_(&kept)?;
            self.momentum[i] = buf.f_where_self(&mask, &self.momentum[i])?;
        }
        Ok(norm)
    }

    /// The per-module learn masks for `flags`, rebuilt only when the flags change.
    fn masks(&mut self, flags: &[Learning]) -> Result<Vec<Tensor>, TchError> {
        if let Some((cached, masks)) = &self.masks
            && cached.as_slice() == flags
        {
            return masks.iter().map(|t| Ok(t.shallow_clone())).collect();
        }
        let masks = Module::ALL
            .iter()
            .map(|&module| {
                let values: Vec<bool> = flags.iter().map(|f| f.module(module)).collect();
                Tensor::f_from_slice(&values)?.f_to_device(self.device)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = masks.iter().map(|t| t.shallow_clone()).collect();
        self.masks = Some((flags.to_vec(), masks));
        Ok(out)
    }

    /// Correct test answers per trial, [M] (int64): `test_batches` fresh batches at each trial's
    /// current level, under no_grad.
    fn test(&mut self, trials: &mut [TrialRun], cb: CbOutput) -> Result<Tensor, TchError> {
        let hidden = self.dims.hidden as usize;
        let n = self.budget.test_batches as usize;
        // every trial draws its batches in order
        let drawn: Vec<Vec<(TaskBatch, Vec<f64>)>> =
            self.rows.iter().map(|&i| (0..n).map(|_| trials[i].draw(DataSplit::Test, hidden)).collect()).collect();
        if let Some(fused) = &mut self.fused {
            return Tensor::f_from_slice(&fused.count_correct(&drawn, cb))?.f_to_device(self.device);
        }
        count_correct(&self.model, drawn, cb, self.kind, self.device)
    }

    /// Refreshes `model` and `momentum` from the CPU engine's host state (nothing to do on the
    /// libtorch engine).
    pub(crate) fn sync(&mut self) -> Result<(), TchError> {
        if let Some(fused) = &self.fused {
            let (params, momentum) = fused.to_tensors(self.kind)?;
            self.model = PackedModel::from_tensors(self.dims, params)?;
            self.momentum = momentum;
        }
        Ok(())
    }

    /// Runs the analyses of the checkpoints `due` on the current weights, batched over the
    /// trials that share an analysis plan, and saves their weights where asked. A save that
    /// fails is a warning.
    fn checkpoints(&self, trials: &mut [TrialRun], due: &[Due], dir: Option<&Path>) -> Result<(), TchError> {
        let _no_grad = tch::no_grad_guard();
        let mut groups: Vec<(AnalysisPlan, Vec<Due>)> = Vec::new();
        for d in due {
            let plan = trials[d.trial].spec.analysis;
            match groups.iter_mut().find(|(p, _)| *p == plan) {
                Some((_, group)) => group.push(*d),
                None => groups.push((plan, vec![*d])),
            }
        }
        for (plan, group) in groups {
            let started = Instant::now();
            let rows: Vec<i64> = group.iter().map(|d| d.row as i64).collect();
            let model = self.model.select(&Tensor::f_from_slice(&rows)?.f_to_device(self.device)?)?;
            let points: Vec<Checkpoint> =
                group.iter().map(|d| Checkpoint { spec: trials[d.trial].spec, level: d.level, epoch: d.epoch }).collect();
            let records = analysis::analyse(&model, &points, self.kind, self.device)?;
            let wall_time_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            for (r, (point, records)) in points.iter().zip(records).enumerate() {
                let trial_id = point.spec.id();
                let (level, epoch) = (point.level, point.epoch);
                tracing::debug!(%trial_id, level, epoch, wall_time_ms, "checkpoint analysed");
                if let (true, Some(dir)) = (plan.save_checkpoints, dir) {
                    let path = analysis::checkpoint_path(dir, point.spec, point.level);
                    if let Err(e) = analysis::save_checkpoint(&model, r as i64, &path) {
                        let reason = error_chain(&e);
                        tracing::warn!(%trial_id, level, reason = %reason, "checkpoint not saved");
                    }
                }
                trials[group[r].trial].analyses.extend(records);
            }
        }
        Ok(())
    }

    /// Drops the rows of trials that have ended from every packed tensor.
    fn drop_ended(&mut self, trials: &[TrialRun]) -> Result<(), TchError> {
        let keep: Vec<i64> = (0..self.rows.len()).filter(|&r| trials[self.rows[r]].running()).map(|r| r as i64).collect();
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        self.rows = keep.iter().map(|&r| self.rows[r as usize]).collect();
        if let Some(fused) = &mut self.fused {
            // the host state is the pack's; `sync` rebuilds the tensors when they are needed
            fused.keep(&keep.iter().map(|&r| r as usize).collect::<Vec<_>>());
            return Ok(());
        }
        if self.rows.is_empty() {
            return Ok(());
        }
        let index = Tensor::f_from_slice(&keep)?.f_to_device(self.device)?;
        self.model = self.model.select(&index)?;
        self.momentum = self.momentum.iter().map(|b| b.f_index_select(0, &index)).collect::<Result<_, _>>()?;
        self.rates = self.rates.iter().map(|r| r.f_index_select(0, &index)).collect::<Result<_, _>>()?;
        self.masks = None;
        Ok(())
    }
}

impl EpochSums {
    fn zeros(m: usize, kind: Kind, device: Device) -> Result<Self, TchError> {
        Ok(EpochSums { loss: Tensor::f_zeros([m as i64], (kind, device))?, grad_norm: Tensor::f_zeros([m as i64], (kind, device))? })
    }
}

/// Correct answers per row, [M] (int64), of `model` on each row's batches (every row the same
/// number), under no_grad.
pub(crate) fn count_correct(
    model: &PackedModel,
    drawn: Vec<Vec<(TaskBatch, Vec<f64>)>>,
    cb: CbOutput,
    kind: Kind,
    device: Device,
) -> Result<Tensor, TchError> {
    let _no_grad = tch::no_grad_guard();
    let mut correct = Tensor::f_zeros([drawn.len() as i64], (Kind::Int64, device))?;
    // test batches evaluated together in one forward pass (sorted by length, so little
    // padding); the memory model sizes packs for this many
    let per_pass = cbsweep_common::memory::TEST_BATCHES_PER_PASS as usize;
    in_passes(drawn, per_pass, model.dims().hidden, kind, device, &mut |input, labels| {
        let logits = model.forward(input, cb)?; // [M, B', 2]
        correct = correct.f_add(&model::correct_counts(&logits, labels)?)?;
        Ok(())
    })?;
    Ok(correct)
}

/// Calls `f` on each row's batches packed in passes of at most `per_pass` batches; each row's
/// batches are sorted by length first, so passes carry little padding.
pub(crate) fn in_passes(
    mut drawn: Vec<Vec<(TaskBatch, Vec<f64>)>>,
    per_pass: usize,
    hidden: i64,
    kind: Kind,
    device: Device,
    f: &mut dyn FnMut(&PackedInput, &Tensor) -> Result<(), TchError>,
) -> Result<(), TchError> {
    for batches in &mut drawn {
        batches.sort_by_key(|(b, _)| b.len);
    }
    while let Some(left) = drawn.first().map(Vec::len).filter(|&left| left > 0) {
        let take = left.min(per_pass.max(1));
        let part: Vec<Vec<_>> = drawn.iter_mut().map(|b| b.drain(..take).collect()).collect();
        let (input, labels) = pack_batches(&part, hidden, kind, device)?;
        f(&input, &labels)?;
    }
    Ok(())
}

/// Packs per-trial batches (`per_row[m]`: trial m's batches, concatenated along B) into one
/// padded input and the labels [M, B'].
pub(crate) fn pack_batches(
    per_row: &[Vec<(TaskBatch, Vec<f64>)>],
    hidden: i64,
    kind: Kind,
    device: Device,
) -> Result<(PackedInput, Tensor), TchError> {
    let m = per_row.len();
    let h = hidden as usize;
    let row_width = |r: &Vec<(TaskBatch, Vec<f64>)>| r.iter().map(|(b, _)| b.labels.len()).sum::<usize>();
    let width = per_row.first().map(row_width).unwrap_or(0);
    if per_row.iter().any(|r| row_width(r) != width) {
        return Err(TchError::Shape("every trial of a pack needs the same number of sequences".into()));
    }
    let t_max = per_row.iter().flatten().map(|(b, _)| b.len).max().unwrap_or(0);
    let min_len = per_row.iter().flatten().map(|(b, _)| b.len).min().unwrap_or(0);
    let mut x = vec![0u8; t_max * m * width]; // [T, M, B']
    let mut lengths = vec![0i64; m * width]; // [M, B']
    let mut labels = vec![0i64; m * width]; // [M, B']
    let mut h0 = vec![0f64; m * width * h]; // [M, B', H]
    for (row, batches) in per_row.iter().enumerate() {
        let mut offset = 0;
        for (b, state) in batches {
            let n = b.labels.len();
            for t in 0..b.len {
                let dst = (t * m + row) * width + offset;
                x[dst..dst + n].copy_from_slice(&b.bits[t * n..(t + 1) * n]);
            }
            let at = row * width + offset;
            lengths[at..at + n].fill(b.len as i64);
            labels[at..at + n].copy_from_slice(&b.labels);
            h0[at * h..(at + n) * h].copy_from_slice(state);
            offset += n;
        }
    }
    let (m, width, t_max) = (m as i64, width as i64, t_max as i64);
    let x = model::to_device(Tensor::f_from_slice(&x)?.f_view([t_max, m, width])?, device)?.f_to_kind(kind)?; // [T, M, B']
    let lengths = model::to_device(Tensor::f_from_slice(&lengths)?.f_view([m, width])?, device)?; // [M, B']
    let labels = model::to_device(Tensor::f_from_slice(&labels)?.f_view([m, width])?, device)?; // [M, B']
    let h0 = model::host_tensor(&h0, &[m, width, hidden], kind, device)?; // [M, B', H]
    Ok((PackedInput { x, lengths, min_len: min_len as i64, h0 }, labels))
}

/// The error and its sources, joined: what a failed trial reports.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::tests::small_spec;
    use cbsweep_common::Task;

    /// Copies of one row's parameters and momentum buffers of `module`.
    fn row_state(run: &PackRun, row: i64, module: Module) -> Vec<Tensor> {
        let specs = run.dims.param_specs();
        let params = run.model.params().iter().zip(&run.momentum).zip(&specs);
        params.filter(|(_, s)| s.module == module).flat_map(|((p, b), _)| [p.get(row).copy(), b.get(row).copy()]).collect()
    }

    fn identical(a: &[Tensor], b: &[Tensor]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.equal(y))
    }

    fn steps(run: &mut PackRun, trials: &mut [TrialRun], n: usize) {
        let mut sums = EpochSums::zeros(trials.len(), Kind::Float, Device::Cpu).unwrap();
        for _ in 0..n {
            run.train_step(trials, &mut sums).unwrap();
        }
    }

    #[test]
    fn frozen_modules_stay_bit_identical_momentum_included() {
        crate::torch::tests::one_thread();
        let specs = [
            small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Reservoir { freeze: FreezePoint::Step(100) }),
            small_spec(2, Task::Parity, Arch::Cbrnn, Regime::Simult),
        ];
        let started = Instant::now();
        let mut trials: Vec<TrialRun> = specs.iter().map(|s| TrialRun::new(s, started)).collect();
        let mut run = PackRun::new(&specs, Kind::Float, Device::Cpu, true).unwrap();
        let snapshot = |run: &mut PackRun, row| {
            run.sync().unwrap();
            Module::ALL.map(|m| row_state(run, row, m))
        };

        let start = [snapshot(&mut run, 0), snapshot(&mut run, 1)];
        steps(&mut run, &mut trials, 100);
        let mid = [snapshot(&mut run, 0), snapshot(&mut run, 1)];
        assert_eq!(trials[0].learning, Learning { core: true, cb: false });
        steps(&mut run, &mut trials, 100);
        let end = [snapshot(&mut run, 0), snapshot(&mut run, 1)];
        assert_eq!(trials[0].learning, Learning { core: false, cb: true });

        let (core, readout, cb) = (Module::Core.index(), Module::Readout.index(), Module::Cb.index());
        // the reservoir trial: module frozen before the freeze point, core after it
        assert!(identical(&start[0][cb], &mid[0][cb]), "the module is untouched before the freeze point");
        assert!(!identical(&start[0][core], &mid[0][core]) && !identical(&start[0][readout], &mid[0][readout]));
        assert!(identical(&mid[0][core], &end[0][core]), "the core is untouched after the freeze point");
        assert!(!identical(&mid[0][cb], &end[0][cb]) && !identical(&mid[0][readout], &end[0][readout]));
        // its pack mate learns everything throughout
        for module in [core, readout, cb] {
            assert!(!identical(&start[1][module], &mid[1][module]) && !identical(&mid[1][module], &end[1][module]));
        }
    }

    #[test]
    fn regimes_decide_which_modules_learn() {
        let learns = |regime, level, epochs, steps| {
            let l = learning(regime, 2, level, epochs, steps);
            (l.core, l.cb)
        };
        assert_eq!(learns(Regime::Simult, 7, 9, 900), (true, true));
        let level2 = Regime::Reservoir { freeze: FreezePoint::Level(2) };
        assert_eq!(learns(level2, 2, 5, 500), (true, false));
        assert_eq!(learns(level2, 3, 5, 500), (false, true));
        let epoch3 = Regime::Reservoir { freeze: FreezePoint::Epoch(3) };
        assert_eq!(learns(epoch3, 4, 2, 200), (true, false));
        assert_eq!(learns(epoch3, 4, 3, 300), (false, true));
        let step10 = Regime::Reservoir { freeze: FreezePoint::Step(10) };
        assert_eq!(learns(step10, 2, 0, 9), (true, false));
        assert_eq!(learns(step10, 2, 0, 10), (false, true));
        assert_eq!(learns(Regime::Reservoir { freeze: FreezePoint::Never }, 50, 99, 9_999), (true, false));
        let refresh = Regime::Interleaved { freeze: FreezePoint::Level(2), every: 10 };
        assert_eq!(learns(refresh, 2, 0, 0), (true, false));
        assert_eq!(learns(refresh, 3, 1, 100), (false, true));
        assert_eq!(learns(refresh, 12, 9, 900), (true, true));
        assert_eq!(learns(refresh, 13, 9, 900), (false, true));
        assert_eq!(learns(refresh, 22, 9, 900), (true, true));
        // a refresh level before the freeze point still trains the core alone
        let late = Regime::Interleaved { freeze: FreezePoint::Epoch(50), every: 1 };
        assert_eq!(learns(late, 3, 10, 1000), (true, false));
    }
}
