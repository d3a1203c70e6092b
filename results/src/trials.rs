//! trials.parquet: one row per grid cell: the grid keys (`keys`), the trial's spec and state,
//! what the store recorded of its result, and its learning measures from the curve.

use crate::error::ResultsError;
use crate::keys::{key_columns, key_fields};
use crate::measures::{Measure, trial_curves};
use crate::source::{SweepMeta, TrialRow};
use crate::table::write_table;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::measures::half_level;
use cbsweep_common::{EpochRecord, Task, TrialId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FILE: &str = "trials.parquet";

pub const CELL_INDEX: &str = "cell_index";
pub const LR_READOUT: &str = "lr_readout";
pub const PARAM_COUNT: &str = "param_count";
pub const EPOCHS_BUDGET: &str = "epochs_budget";
pub const STATUS: &str = "status";
pub const OUTCOME: &str = "outcome";
pub const ATTEMPTS: &str = "attempts";
pub const ERROR: &str = "error";
pub const MAX_LEVEL: &str = "max_level";
pub const FINAL_LEVEL: &str = "final_level";
pub const EPOCHS_RUN: &str = "epochs_run";
pub const SOLVED_ANY: &str = "solved_any";
pub const WALL_TIME_MS: &str = "wall_time_ms";
pub const DEVICE: &str = "device";
pub const WORKER_ID: &str = "worker_id";
pub const PACK_SIZE: &str = "pack_size";
pub const CODE_VERSION: &str = "code_version";
pub const SPEC_HASH: &str = "spec_hash";
pub const SPEC_OVERRIDES: &str = "spec_overrides";
pub const AUC_LEVEL_EPOCHS: &str = "auc_level_epochs";
pub const EPOCHS_TO_HALF_MAX: &str = "epochs_to_half_max";
pub const RESUMES: &str = "resumes";
pub const EPOCHS_LOST: &str = "epochs_lost";
pub const MODULE_UNITS: &str = "module_units";
/// The lab's measures (docs/results.md): max_N, the area under the level-trained curve, and the
/// epochs to half the largest max_N among the sweep's trials of the same task.
pub const MAX_N: &str = "max_n";
pub const AREA_N: &str = "area_n";
pub const EPOCHS_TO_HALF_MAX_N: &str = "epochs_to_half_max_n";

pub fn schema() -> SchemaRef {
    let mut fields = key_fields();
    fields.extend([
        Field::new(CELL_INDEX, DataType::UInt32, false),
        Field::new(LR_READOUT, DataType::Float64, false),
        Field::new(PARAM_COUNT, DataType::UInt64, false),
        Field::new(EPOCHS_BUDGET, DataType::UInt32, false),
        Field::new(STATUS, DataType::Utf8, false),
        Field::new(OUTCOME, DataType::Utf8, true),
        Field::new(ATTEMPTS, DataType::UInt32, false),
        Field::new(ERROR, DataType::Utf8, true),
        Field::new(MAX_LEVEL, DataType::UInt32, true),
        Field::new(FINAL_LEVEL, DataType::UInt32, true),
        Field::new(EPOCHS_RUN, DataType::UInt32, true),
        Field::new(SOLVED_ANY, DataType::Boolean, true),
        Field::new(WALL_TIME_MS, DataType::UInt64, true),
        Field::new(DEVICE, DataType::Utf8, true),
        Field::new(WORKER_ID, DataType::Utf8, true),
        Field::new(PACK_SIZE, DataType::UInt32, true),
        Field::new(CODE_VERSION, DataType::Utf8, false),
        Field::new(SPEC_HASH, DataType::Utf8, false),
        Field::new(SPEC_OVERRIDES, DataType::Utf8, false),
        Field::new(AUC_LEVEL_EPOCHS, DataType::Float64, true),
        Field::new(EPOCHS_TO_HALF_MAX, DataType::Float64, true),
        Field::new(RESUMES, DataType::UInt32, false),
        Field::new(EPOCHS_LOST, DataType::UInt32, false),
        Field::new(MODULE_UNITS, DataType::UInt32, true),
        Field::new(MAX_N, DataType::UInt32, true),
        Field::new(AREA_N, DataType::Float64, true),
        Field::new(EPOCHS_TO_HALF_MAX_N, DataType::Float64, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// `curves` gives the per-trial learning measures (cbsweep's: AUC of the level reached over
/// epochs, in level x epochs; epochs to half the trial's own highest level; the lab's: max_N,
/// the area under the level trained, epochs to half the largest max_N of the sweep's trials of
/// the same task); `meta` names the spec and the overrides it was validated with.
pub fn write(path: &Path, rows: &[TrialRow], curves: &[(TrialId, EpochRecord)], meta: &SweepMeta) -> Result<(), ResultsError> {
    let tc = trial_curves(rows, curves);
    let measures: HashMap<&TrialId, (f64, f64)> =
        tc.iter().map(|c| (&c.trial.id, (c.auc_level_epochs(), c.epochs_to(half_level(c.max_level))))).collect();
    let mut task_max_n: HashMap<Task, u32> = HashMap::new();
    for c in &tc {
        let m = task_max_n.entry(c.trial.spec.task).or_default();
        *m = (*m).max(c.max_n);
    }
    let lab: HashMap<&TrialId, (u32, f64, f64)> = tc
        .iter()
        .map(|c| {
            let half = half_level(task_max_n[&c.trial.spec.task]);
            (&c.trial.id, (c.max_n, c.value(Measure::AreaN, half), c.value(Measure::EpochsToHalfMaxN, half)))
        })
        .collect();
    let mut cols = key_columns(rows.iter());
    cols.extend::<[ArrayRef; 17]>([
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.cell_index))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.spec.lr_readout))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.spec.param_count()))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.spec.budget.epochs))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.state.as_str()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.outcome.clone()))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.attempt))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.last_error.clone()))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.max_level))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.final_level))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.epochs_run))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.max_level.map(|m| m > 0)))),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.wall_time_ms))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.device.clone()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.worker.clone()))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.pack_size))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| cbsweep_common::CODE_VERSION))),
    ]);
    cols.extend::<[ArrayRef; 7]>([
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| meta.spec_hash.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| meta.spec_overrides.as_str()))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| measures.get(&r.id).map(|m| m.0)))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| measures.get(&r.id).map(|m| m.1)))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.resumes))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epochs_lost))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.spec.module_units()))),
    ]);
    cols.extend::<[ArrayRef; 3]>([
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| lab.get(&r.id).map(|m| m.0)))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| lab.get(&r.id).map(|m| m.1)))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| lab.get(&r.id).map(|m| m.2)))),
    ]);
    write_table(path, schema(), cols, "trials")
}
