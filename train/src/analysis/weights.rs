//! Level weights: a trial's weights when it solves a level, as safetensors (not a checkpoint,
//! which is a trial's saved training state): one file per trial and level, one tensor per
//! parameter named as in the parameter table, written through a temporary name.

use crate::model::PackedModel;
use cbsweep_common::TrialSpec;
use std::path::{Path, PathBuf};
use tch::{Device, TchError, Tensor};

/// Why a checkpoint's weights could not be saved (a warning, never a failed trial).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch error")]
    Torch(#[from] TchError),
}

/// Writes row `row` of `model` to `path` as safetensors, one tensor per parameter named as in
/// the parameter table (core.w_h, ...) with its per-trial shape, through a temporary file.
pub(crate) fn save_weights(model: &PackedModel, row: i64, path: &Path) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let named = model
        .dims()
        .param_specs()
        .iter()
        .zip(model.params())
        .map(|(spec, p)| Ok((spec.name, p.f_get(row)?.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<Vec<_>, TchError>>()?;
    let partial = path.with_extension("safetensors.partial");
    Tensor::write_safetensors(&named, &partial)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Where a trial's checkpoint at `level` is saved under `dir`.
pub(crate) fn weights_path(dir: &Path, spec: &TrialSpec, level: u32) -> PathBuf {
    dir.join(spec.id().as_str()).join(format!("level-{level}.safetensors"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dims;
    use crate::testing::{one_thread, small_spec};
    use cbsweep_common::{Arch, Regime, Task};
    use tch::{Device, Kind};

    #[test]
    fn saved_level_weights_read_back_as_the_weights() {
        one_thread();
        let specs: Vec<TrialSpec> = (1..3).map(|s| small_spec(s, Task::Dms, Arch::Cbrnn, Regime::Simult)).collect();
        let dims = Dims::of(&specs[0]);
        let model = PackedModel::new(dims, &specs, Kind::Float, Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = weights_path(dir.path(), &specs[1], 3);
        save_weights(&model, 1, &path).unwrap();
        assert_eq!(path, dir.path().join(specs[1].id().as_str()).join("level-3.safetensors"));
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["level-3.safetensors"], "no temporary file is left");

        let read = Tensor::read_safetensors(&path).unwrap();
        assert_eq!(read.len(), dims.param_specs().len());
        for (p, packed) in dims.param_specs().iter().zip(model.params()) {
            let (_, t) = read.iter().find(|(name, _)| name == p.name).unwrap();
            assert_eq!(t.size(), p.shape, "{}", p.name);
            assert!(t.equal(&packed.get(1).detach()), "{}", p.name);
        }
        // a directory that cannot be made is an error to report, not a panic
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        assert!(save_weights(&model, 0, &blocked.join("x").join("level-2.safetensors")).is_err());
    }
}
