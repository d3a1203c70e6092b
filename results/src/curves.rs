//! curves.parquet: one row per finished trial and epoch.

use crate::error::ResultsError;
use crate::keys::{key_columns, key_fields};
use crate::source::TrialRow;
use crate::table::write_table;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::{EpochRecord, TrialId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FILE: &str = "curves.parquet";

pub const EPOCH: &str = "epoch";
pub const LEVEL: &str = "level";
pub const TRAIN_LOSS: &str = "train_loss";
pub const TEST_ACCURACY: &str = "test_accuracy";
pub const SOLVED: &str = "solved";
pub const GRAD_NORM: &str = "grad_norm";
pub const CORE_LEARNING: &str = "core_learning";
pub const CB_LEARNING: &str = "cb_learning";

pub fn schema() -> SchemaRef {
    let mut fields = key_fields();
    fields.extend([
        Field::new(EPOCH, DataType::UInt32, false),
        Field::new(LEVEL, DataType::UInt32, false),
        Field::new(TRAIN_LOSS, DataType::Float64, false),
        Field::new(TEST_ACCURACY, DataType::Float64, false),
        Field::new(SOLVED, DataType::Boolean, false),
        Field::new(GRAD_NORM, DataType::Float64, false),
        Field::new(CORE_LEARNING, DataType::Boolean, false),
        Field::new(CB_LEARNING, DataType::Boolean, false),
    ]);
    Arc::new(Schema::new(fields))
}

pub fn write(path: &Path, trials: &[TrialRow], curves: &[(TrialId, EpochRecord)]) -> Result<(), ResultsError> {
    let by_id: HashMap<&TrialId, &TrialRow> = trials.iter().map(|t| (&t.id, t)).collect();
    let rows: Vec<(&TrialRow, &EpochRecord)> = curves.iter().filter_map(|(id, e)| by_id.get(id).map(|t| (*t, e))).collect();
    let mut cols = key_columns(rows.iter().map(|(t, _)| *t));
    let u = |f: fn(&EpochRecord) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, e)| f(e)))) };
    let x = |f: fn(&EpochRecord) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, e)| f(e)))) };
    let b = |f: fn(&EpochRecord) -> bool| -> ArrayRef { Arc::new(BooleanArray::from_iter(rows.iter().map(|(_, e)| Some(f(e))))) };
    cols.extend([
        u(|e| e.epoch),
        u(|e| e.level),
        x(|e| e.train_loss),
        x(|e| e.test_accuracy),
        b(|e| e.solved),
        x(|e| e.grad_norm),
        b(|e| e.core_learning),
        b(|e| e.cb_learning),
    ]);
    write_table(path, schema(), cols, "curves")
}
