//! analyses.parquet: one row per trial, checkpoint level, population and metric (long format).

use crate::error::ResultsError;
use crate::keys::{key_columns, key_fields};
use crate::source::TrialRow;
use crate::table::write_table;
use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use cbsweep_common::{AnalysisRecord, TrialId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const FILE: &str = "analyses.parquet";

pub const LEVEL: &str = "level";
pub const EPOCH: &str = "epoch";
pub const POPULATION: &str = "population";
pub const METRIC: &str = "metric";
pub const VALUE: &str = "value";

pub fn schema() -> SchemaRef {
    let mut fields = key_fields();
    fields.extend([
        Field::new(LEVEL, DataType::UInt32, false),
        Field::new(EPOCH, DataType::UInt32, false),
        Field::new(POPULATION, DataType::Utf8, false),
        Field::new(METRIC, DataType::Utf8, false),
        Field::new(VALUE, DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
}

pub fn write(path: &Path, trials: &[TrialRow], analyses: &[(TrialId, AnalysisRecord)]) -> Result<(), ResultsError> {
    let by_id: HashMap<&TrialId, &TrialRow> = trials.iter().map(|t| (&t.id, t)).collect();
    let rows: Vec<(&TrialRow, &AnalysisRecord)> = analyses.iter().filter_map(|(id, a)| by_id.get(id).map(|t| (*t, a))).collect();
    let mut cols = key_columns(rows.iter().map(|(t, _)| *t));
    cols.extend::<[ArrayRef; 5]>([
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, a)| a.level))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, a)| a.epoch))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, a)| a.population.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, a)| a.metric.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, a)| a.value))),
    ]);
    write_table(path, schema(), cols, "analyses")
}
