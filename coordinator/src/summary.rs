//! `summary.json`: what a finished run reports, and what `run` returns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::data::config::DataConfig;
use common::encoder::EncoderMode;
use common::metrics::ClassMetrics;
use serde::{Deserialize, Serialize};

use crate::cli::TrainConfig;
use crate::record::{EpochLogEntry, SourceFigures};
use crate::rundir::InputFile;

/// A finished run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The headline figures: on the test set if there is one, else on the validation set.
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    /// Macro-F1 over the classes the evaluated data holds.
    pub macro_f1_present: Option<f64>,
    pub evaluated_on: EvaluatedOn,
    pub test_examples: Option<usize>,
    /// Test sentences the training data also holds.
    pub test_examples_in_training: Option<usize>,
    /// The selected model on the validation set.
    pub eval_accuracy: Option<f64>,
    pub eval_macro_f1: Option<f64>,
    pub eval_loss: Option<f64>,
    pub per_class: Option<Vec<ClassMetrics>>,
    /// Row-major, true × predicted.
    pub confusion: Option<Vec<u64>>,
    /// The classes of `per_class` and `confusion`: with tasks, the target's.
    pub labels: Vec<String>,
    /// With --task: each task's labels, and the test figures of each tested one, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, TaskSummary>>,
    /// 1-based: the epoch whose model was kept.
    pub best_epoch: u64,
    pub selected_on: SelectedOn,
    /// Epochs trained.
    pub epochs: u64,
    pub workers: usize,
    pub threads_per_worker: usize,
    /// The median epoch's.
    pub samples_per_s: f64,
    pub samples_per_s_by_epoch: Vec<f64>,
    /// The last epoch's training figures per source, on mixed data.
    pub train_by_source: Option<Vec<SourceFigures>>,
    pub epoch_log: Vec<EpochLogEntry>,
    pub workers_lost: u64,
    pub encoder: Option<EncoderSummary>,
    /// Wall seconds of the whole run (this process's part of it, for a resumed run).
    pub seconds: f64,
    pub peak_rss_mb: PeakRss,
    /// Each worker's most GPU memory in use after a step, as the driver reports it (the
    /// allocations and what the allocator keeps for reuse), MiB; absent on CPU workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_mb: Option<Vec<f64>>,
    pub seed: u64,
    /// The coordinator's version.
    pub version: String,
    pub config: RunConfig,
    /// The files the run read, hashed.
    pub data_files: Vec<InputFile>,
}

/// A task of a multi-task run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Whether it is the target, which the headline figures are of.
    pub target: bool,
    pub labels: Vec<String>,
    /// With a test set for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_examples: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1_present: Option<f64>,
}

/// Where the headline figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatedOn {
    Test,
    Eval,
    None,
}

/// How the kept model was chosen: the best validation loss, or the last epoch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectedOn {
    Eval,
    Last,
}

/// The encoder under the model, and the seconds spent encoding with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderSummary {
    pub name: String,
    pub sha256: String,
    pub path: PathBuf,
    pub mode: EncoderMode,
    pub encode_seconds: f64,
}

/// Peak resident memory, MiB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakRss {
    pub coordinator: f64,
    /// By worker id.
    pub workers: Vec<f64>,
}

/// The options the run trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: DataConfig,
    pub train: TrainConfig,
    pub test: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_test: Vec<common::data::tasks::TaskFile>,
    pub workers: usize,
    pub threads: usize,
    /// `cpu` or `cuda`.
    pub device: String,
}
