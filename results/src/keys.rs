//! The grid-key columns every table starts with (the sweep, the trial and its grid
//! coordinate): their names, fields and columns. A condition's keys are these less trial_id
//! and seed.

use crate::source::TrialRow;
use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field};
use std::sync::Arc;

pub const SWEEP_ID: &str = "sweep_id";
pub const TRIAL_ID: &str = "trial_id";
pub const TASK: &str = "task";
pub const ARCH: &str = "arch";
pub const HIDDEN: &str = "hidden";
pub const GRANULE: &str = "granule";
pub const PURKINJE: &str = "purkinje";
pub const SEED: &str = "seed";
pub const REGIME: &str = "regime";
pub const FREEZE: &str = "freeze";
pub const REFRESH_EVERY: &str = "refresh_every";
pub const CORE_PLASTICITY: &str = "core_plasticity";
pub const LR_CORE: &str = "lr_core";
pub const LR_CB: &str = "lr_cb";

/// The grid keys every table carries, in order.
pub(crate) fn key_fields() -> Vec<Field> {
    vec![
        Field::new(SWEEP_ID, DataType::Utf8, false),
        Field::new(TRIAL_ID, DataType::Utf8, false),
        Field::new(TASK, DataType::Utf8, false),
        Field::new(ARCH, DataType::Utf8, false),
        Field::new(HIDDEN, DataType::UInt32, false),
        Field::new(GRANULE, DataType::UInt32, false),
        Field::new(PURKINJE, DataType::UInt32, false),
        Field::new(SEED, DataType::UInt64, false),
        Field::new(REGIME, DataType::Utf8, false),
        Field::new(FREEZE, DataType::Utf8, false),
        Field::new(REFRESH_EVERY, DataType::UInt32, true),
        Field::new(CORE_PLASTICITY, DataType::Float64, false),
        Field::new(LR_CORE, DataType::Float64, false),
        Field::new(LR_CB, DataType::Float64, false),
    ]
}

/// The keys of a condition: `key_fields` less trial_id and seed.
pub(crate) fn condition_key_fields() -> Vec<Field> {
    key_fields().into_iter().filter(|f| f.name() != TRIAL_ID && f.name() != SEED).collect()
}

/// Columns for `key_fields`, one value per entry of `rows` (repeated rows allowed).
pub(crate) fn key_columns<'a>(rows: impl Iterator<Item = &'a TrialRow> + Clone) -> Vec<ArrayRef> {
    let s = |f: fn(&TrialRow) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.clone().map(f))) };
    let u = |f: fn(&TrialRow) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(rows.clone().map(f))) };
    let x = |f: fn(&TrialRow) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.clone().map(f))) };
    vec![
        s(|r| r.sweep.0.clone()),
        s(|r| r.id.0.clone()),
        s(|r| r.spec.task.to_string()),
        s(|r| r.spec.arch.to_string()),
        u(|r| r.spec.hidden),
        u(|r| r.spec.granule),
        u(|r| r.spec.purkinje),
        Arc::new(UInt64Array::from_iter_values(rows.clone().map(|r| r.spec.seed.0))),
        s(|r| r.spec.regime.name().to_string()),
        s(|r| r.spec.regime.freeze_label()),
        Arc::new(UInt32Array::from_iter(rows.clone().map(|r| r.spec.regime.refresh_every()))),
        x(|r| r.spec.core_plasticity),
        x(|r| r.spec.lr_core),
        x(|r| r.spec.lr_cb),
    ]
}
