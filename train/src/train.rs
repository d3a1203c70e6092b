//! The libtorch trainer as the worker sees it (`crate::trainer::Trainer`): `TorchTrainer`, its
//! device, float kind and checkpoint directory, and the `Engine` selector. Each pack's engine
//! is chosen here, once, when its run is built; the run itself (`run`) knows no engine. A
//! libtorch error or a panic while training ends the pack's unfinished trials as failures.

use super::engine::cpu::CpuEngine;
use super::engine::libtorch::LibtorchEngine;
use super::engine::{self, PackEngine, PackState};
use super::error::{TrainError, error_chain};
use super::fused;
use super::model::Dims;
use super::resume;
use super::run::PackRun;
use super::trial::TrialRun;
use crate::trainer::{Cadence, PackEvents, PackTrial, Trainer, TrialEnd};
use cbsweep_common::TrialSpec;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind};

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

impl TorchTrainer {
    /// A trainer computing in float32 on `device`.
    pub fn new(device: Device) -> Self {
        TorchTrainer { device, kind: Kind::Float, engine: Engine::Fused, checkpoint_dir: None }
    }

    /// Chooses the engine; `Engine::Fused` (the default) applies on the CPU only.
    pub fn with_engine(self, engine: Engine) -> Self {
        TorchTrainer { engine, ..self }
    }

    /// The engine packs of this trainer run on: the chosen one where it applies, else libtorch.
    pub fn engine(&self) -> Engine {
        match self.engine {
            Engine::Fused if self.device == Device::Cpu && self.kind == Kind::Float => Engine::Fused,
            _ => Engine::Libtorch,
        }
    }

    /// Saves the weights at each checkpoint of trials whose plan asks for it under `dir`, as
    /// DIR/<trial id>/level-<L>.safetensors; None saves nothing.
    pub fn with_checkpoint_dir(self, dir: Option<PathBuf>) -> Self {
        TorchTrainer { checkpoint_dir: dir, ..self }
    }
}

impl Trainer for TorchTrainer {
    fn train(&mut self, pack: &[PackTrial], cadence: Cadence, events: &mut dyn PackEvents) -> Vec<TrialEnd> {
        let Some(first) = pack.first() else {
            return Vec::new();
        };
        let _span = tracing::info_span!("pack", size = pack.len(), key = %first.spec.pack_key().0).entered();
        let started = Instant::now();
        let specs: Vec<TrialSpec> = pack.iter().map(|p| p.spec.clone()).collect();
        let dims = Dims::of(&first.spec);
        let mut trials: Vec<TrialRun> = Vec::with_capacity(pack.len());
        let mut checkpoints = Vec::new();
        for (row, p) in pack.iter().enumerate() {
            let resumed = p.resume.as_deref().map(|bytes| {
                let c = resume::decode(bytes, &p.spec, &dims, self.kind)?;
                Ok::<_, String>((TrialRun::resumed(&p.spec, started, &c)?, c))
            });
            match resumed {
                Some(Ok((trial, c))) => {
                    tracing::info!(trial_id = %p.spec.id(), epochs_done = c.epochs_done, level = c.level, "resuming from its checkpoint");
                    trials.push(trial);
                    checkpoints.push((row, c));
                }
                Some(Err(why)) => {
                    tracing::warn!(trial_id = %p.spec.id(), reason = %why, "checkpoint not usable; the trial starts afresh");
                    trials.push(TrialRun::new(&p.spec, started));
                }
                None => trials.push(TrialRun::new(&p.spec, started)),
            }
        }
        let run = catch_unwind(AssertUnwindSafe(|| {
            let state = PackState::initial(&specs, self.kind, self.device)?;
            let rows: Vec<_> = checkpoints.iter().map(|(row, c)| (*row, c)).collect();
            resume::write_rows(&state, &rows)?;
            let engine = engine_from(self.engine(), &specs, state, self.kind, self.device)?;
            PackRun::new(&specs, engine, self.kind, self.device)?.run(&mut trials, events, cadence, self.checkpoint_dir.as_deref())
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
        trials.into_iter().map(|t| t.into_end(failure.as_deref(), &device, pack.len())).collect()
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

/// The engine of `choice` for `pack` (of `kind` on `device`), starting from the pack's initial
/// state: the one place that knows the engines. `Engine::Fused` needs float32 on the CPU.
#[cfg(test)]
pub(crate) fn build_engine(choice: Engine, pack: &[TrialSpec], kind: Kind, device: Device) -> Result<Box<dyn PackEngine>, TrainError> {
    engine_from(choice, pack, PackState::initial(pack, kind, device)?, kind, device)
}

/// The engine of `choice` for `pack`, starting from `state`. The CPU engine has every
/// architecture today; one it lacks (`fused::supports`) would take the libtorch engine, with one
/// logged line.
fn engine_from(
    choice: Engine,
    pack: &[TrialSpec],
    state: PackState,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn PackEngine>, TrainError> {
    let rates = engine::module_rates(pack);
    let budget = pack[0].budget;
    let arch = pack[0].arch;
    let choice = if choice == Engine::Fused && !fused::supports(arch) {
        tracing::info!(%arch, "the CPU engine has no {arch}: this pack trains on the libtorch engine");
        Engine::Libtorch
    } else {
        choice
    };
    Ok(match choice {
        Engine::Fused => Box::new(CpuEngine::new(&state, &rates, budget)?),
        Engine::Libtorch => Box::new(LibtorchEngine::new(state, &rates, budget, kind, device)?),
    })
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

/// Sets up this process's threads for training on `device` with `engine`, once: `threads` for
/// the CPU engine's pool (or libtorch's own on another engine or device). With the CPU engine
/// libtorch only runs the checkpoint analyses, between training steps: one thread, so that its
/// OpenMP threads never spin against the engine's.
pub fn start_threads(device: Device, engine: Engine, threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    let cpu_engine = device == Device::Cpu && engine == Engine::Fused;
    tch::set_num_threads(if cpu_engine { 1 } else { i32::try_from(threads).unwrap_or(i32::MAX) });
    tch::set_num_interop_threads(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("cbsweep-cpu-{i}")).build_global()
}
