//! What each epoch adds to a run's record: its line of `metrics.jsonl` and its entry in the
//! epoch log. Both are kept in the checkpoint too, so a resumed run's record is whole.

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// 1-based.
    pub epoch: u64,
    pub examples: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub samples_per_s: f64,
    pub allreduce_s_per_step: f64,
    pub bytes_per_step: f64,
    /// The slowest worker's forward and backward, and optimizer update, per step.
    pub compute_s_per_step: f64,
    pub update_s_per_step: f64,
    /// With --encoder: sentences encoded, answered from the cache, and seconds spent encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_cached: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_s: Option<f64>,
    /// Training figures per `--data` source, on mixed data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceFigures>>,
    /// With --task: each task's figures, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<std::collections::BTreeMap<String, TaskFigures>>,
    /// With a validation set (with tasks, the target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_macro_f1: Option<f64>,
}

/// One training source's figures in an epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceFigures {
    /// Its `--data` path.
    pub source: String,
    pub examples: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
}

/// One task's figures in an epoch: training, and validation when it has a validation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskFigures {
    pub examples: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_examples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_macro_f1: Option<f64>,
}

/// One epoch in the summary's `epoch_log`: every planned example trained, by how many workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLogEntry {
    pub epoch: u64,
    pub examples_planned: u64,
    pub examples_trained: u64,
    pub workers: u64,
    pub workers_lost: Vec<LostWorker>,
}

/// A worker lost during an epoch, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LostWorker {
    pub worker: u64,
    pub host: String,
    pub pid: u32,
    pub reason: String,
}

/// `value` as JSON with every object's keys sorted, as the run's files have always been written.
pub fn sorted_json<T: Serialize>(value: &T) -> serde_json::Result<serde_json::Value> {
    // serde_json's map is ordered by key: a struct through it comes out sorted, nested too.
    serde_json::to_value(value)
}
