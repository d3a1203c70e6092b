//! levels.parquet: one row per trial and solved level, with the epoch and SGD step it was
//! solved at (the test that solves a level runs after the epoch's last step).

use crate::error::ResultsError;
use crate::keys::{key_columns, key_fields};
use crate::source::TrialRow;
use crate::table::write_table;
use arrow_array::{ArrayRef, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::{EpochRecord, TrialId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FILE: &str = "levels.parquet";

pub const LEVEL: &str = "level";
pub const EPOCH_SOLVED: &str = "epoch_solved";
pub const STEP_SOLVED: &str = "step_solved";
pub const EPOCHS_ON_LEVEL: &str = "epochs_on_level";

pub fn schema() -> SchemaRef {
    let mut fields = key_fields();
    fields.extend([
        Field::new(LEVEL, DataType::UInt32, false),
        Field::new(EPOCH_SOLVED, DataType::UInt32, false),
        Field::new(STEP_SOLVED, DataType::UInt64, false),
        Field::new(EPOCHS_ON_LEVEL, DataType::UInt32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// (trial, level, epoch solved, epochs spent on the level) for every solved level.
pub fn solved_levels(curves: &[(TrialId, EpochRecord)]) -> Vec<(&TrialId, u32, u32, u32)> {
    let mut out = Vec::new();
    let mut since: HashMap<&TrialId, u32> = HashMap::new();
    for (id, e) in curves {
        let start = *since.entry(id).or_insert(0);
        if e.solved {
            out.push((id, e.level, e.epoch, e.epoch - start));
            since.insert(id, e.epoch);
        }
    }
    out
}

pub fn write(path: &Path, trials: &[TrialRow], curves: &[(TrialId, EpochRecord)]) -> Result<(), ResultsError> {
    let by_id: HashMap<&TrialId, &TrialRow> = trials.iter().map(|t| (&t.id, t)).collect();
    let rows: Vec<(&TrialRow, u32, u32, u32)> =
        solved_levels(curves).into_iter().filter_map(|(id, l, e, n)| by_id.get(id).map(|t| (*t, l, e, n))).collect();
    let mut cols = key_columns(rows.iter().map(|(t, ..)| *t));
    cols.extend::<[ArrayRef; 4]>([
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| u64::from(r.2) * u64::from(r.0.spec.budget.steps_per_epoch)))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.3))),
    ]);
    write_table(path, schema(), cols, "levels")
}
