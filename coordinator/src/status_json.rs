//! The status as JSON: one serialisable type (`StatusJson`) for `cbsweep status --json` and the
//! dashboard's /api/status, made from the gRPC status answer both get (the client over gRPC,
//! the dashboard through `service::status_response`), so the numbers a script reads and the
//! page shows cannot differ. A number that is not known yet (NaN in the gRPC answer: a rate
//! before two trials finished, a mean with no trial done) is `null`. docs/dashboard.md lists
//! every field.

use cbsweep_proto::v1;
use serde::{Deserialize, Serialize};

/// Every sweep the coordinator holds (or the one asked for) and its live workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    pub sweeps: Vec<SweepJson>,
    pub workers: Vec<WorkerJson>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepJson {
    pub sweep: String,
    /// running, done or cancelled.
    pub state: String,
    pub total: u32,
    /// Trials per state (pending, leased, done, failed, cancelled), every state present.
    pub counts: Vec<StateCountJson>,
    pub conditions: Vec<ConditionJson>,
    pub trials_per_minute: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub epochs_lost: u64,
    pub resumes: u32,
    pub oldest_checkpoint_age_s: Option<f64>,
    pub running_without_checkpoint: u32,
    /// Why the latest export of the sweep failed; null when it succeeded or none ran.
    pub export_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateCountJson {
    pub state: String,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionJson {
    /// The full condition: every grid key but the seed.
    pub condition: String,
    pub total: u32,
    pub done: u32,
    pub failed: u32,
    /// Mean max_level over the done trials; null when none is done.
    pub mean_max_level: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerJson {
    pub worker: String,
    pub hostname: String,
    pub device: String,
    /// Trials it holds leases on.
    pub leased: u32,
    pub last_seen_ms_ago: u64,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl From<&v1::SweepStatusResponse> for StatusJson {
    fn from(r: &v1::SweepStatusResponse) -> StatusJson {
        StatusJson {
            sweeps: r
                .sweeps
                .iter()
                .map(|s| SweepJson {
                    sweep: s.sweep_id.clone(),
                    state: s.state.clone(),
                    total: s.total,
                    counts: s.counts.iter().map(|c| StateCountJson { state: c.state.clone(), count: c.count }).collect(),
                    conditions: s
                        .conditions
                        .iter()
                        .map(|c| ConditionJson {
                            condition: c.condition.clone(),
                            total: c.total,
                            done: c.done,
                            failed: c.failed,
                            mean_max_level: finite(c.mean_max_level),
                        })
                        .collect(),
                    trials_per_minute: finite(s.trials_per_minute),
                    eta_seconds: finite(s.eta_seconds),
                    epochs_lost: s.epochs_lost,
                    resumes: s.resumes,
                    oldest_checkpoint_age_s: finite(s.oldest_checkpoint_age_s),
                    running_without_checkpoint: s.running_without_checkpoint,
                    export_error: (!s.export_error.is_empty()).then(|| s.export_error.clone()),
                })
                .collect(),
            workers: r
                .workers
                .iter()
                .map(|w| WorkerJson {
                    worker: w.worker_id.clone(),
                    hostname: w.hostname.clone(),
                    device: w.device.clone(),
                    leased: w.leased,
                    last_seen_ms_ago: w.last_seen_ms_ago,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_numbers_are_null_and_known_ones_kept() {
        let r = v1::SweepStatusResponse {
            sweeps: vec![v1::SweepSummary {
                sweep_id: "s".into(),
                state: "running".into(),
                total: 2,
                conditions: vec![v1::ConditionProgress {
                    condition: "task=dms".into(),
                    total: 2,
                    done: 0,
                    failed: 0,
                    mean_max_level: f64::NAN,
                }],
                trials_per_minute: 1.5,
                eta_seconds: f64::NAN,
                ..Default::default()
            }],
            workers: vec![],
        };
        let text = serde_json::to_string(&StatusJson::from(&r)).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["sweeps"][0]["trials_per_minute"], 1.5);
        assert!(back["sweeps"][0]["eta_seconds"].is_null());
        assert!(back["sweeps"][0]["conditions"][0]["mean_max_level"].is_null());
        assert!(back["sweeps"][0]["export_error"].is_null());
    }
}
