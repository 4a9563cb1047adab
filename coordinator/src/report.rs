//! What workers send the run driver, as the service hands it on: a worker's epoch report and a
//! checkpoint taken inside an epoch. The service converts the wire messages into these, and
//! nothing past it sees a `pb` type of theirs.

use std::collections::BTreeMap;

use crate::spool::SpooledState;
use common::pb;
use common::train::GroupTotals;

/// One worker's report of one epoch.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// The worker's id for the run.
    pub rank: u32,
    pub epoch: u64,
    /// The membership generation it reports in (reports of an older one are dropped).
    pub generation: u64,
    /// Examples trained in the whole epoch (every worker's, summed by the steps), their summed
    /// loss and correct predictions.
    pub examples: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// Examples in the global batches this replica applied, the lost workers' parts included.
    pub applied_examples: u64,
    pub steps: u64,
    /// Wall seconds of the training steps, and their all-reduce, compute and update parts.
    pub train_seconds: f64,
    pub allreduce_seconds: f64,
    pub compute_seconds: f64,
    pub update_seconds: f64,
    pub bytes_sent: u64,
    /// Validation: row-major confusion counts (true × predicted) and summed loss.
    pub confusion: Vec<u64>,
    pub eval_loss_sum: f64,
    /// With several tasks: the validation loss summed per task.
    pub eval_loss_by_task: Vec<f64>,
    /// With --encoder: sentences encoded, answered from the cache, and seconds spent encoding.
    pub encoded: u64,
    pub encode_cached: u64,
    pub encode_seconds: f64,
    pub peak_rss_bytes: u64,
    /// On a GPU: the most device memory in use after a step (0 on the CPU).
    pub peak_device_bytes: u64,
    /// Training figures per source.
    pub sources: BTreeMap<u32, GroupTotals>,
    /// A non-finite loss was seen.
    pub diverged: bool,
    /// Rank 0, when asked: the weights and optimizer state after the epoch (safetensors).
    pub state: SpooledState,
}

impl WorkerReport {
    /// The report `r` and the state received after it (empty when it announced none).
    pub fn from_pb(r: pb::EpochReport, state: SpooledState) -> Self {
        WorkerReport {
            rank: r.rank,
            epoch: r.epoch,
            generation: r.generation,
            examples: r.examples,
            loss_sum: r.loss_sum,
            correct: r.correct,
            applied_examples: r.applied_examples,
            steps: r.steps,
            train_seconds: r.train_seconds,
            allreduce_seconds: r.allreduce_seconds,
            compute_seconds: r.compute_seconds,
            update_seconds: r.update_seconds,
            bytes_sent: r.bytes_sent,
            confusion: r.confusion,
            eval_loss_sum: r.eval_loss_sum,
            eval_loss_by_task: r.eval_loss_by_task,
            encoded: r.encoded,
            encode_cached: r.encode_cached,
            encode_seconds: r.encode_seconds,
            peak_rss_bytes: r.peak_rss_bytes,
            peak_device_bytes: r.peak_device_bytes,
            sources: r.sources.iter().map(GroupTotals::from_pb).collect(),
            diverged: r.diverged,
            state,
        }
    }
}

/// Weights and optimizer state after some steps of an epoch (`--checkpoint-every`).
#[derive(Clone, Debug)]
pub struct StepCheckpoint {
    pub rank: u32,
    pub epoch: u64,
    pub generation: u64,
    /// Steps of the epoch applied to these weights, and the examples in their global batches.
    pub steps_done: u64,
    pub applied_examples: u64,
    pub state: SpooledState,
}

impl StepCheckpoint {
    /// The upload `c` and the state received after it.
    pub fn from_pb(c: pb::CheckpointUpload, state: SpooledState) -> Self {
        StepCheckpoint {
            rank: c.rank,
            epoch: c.epoch,
            generation: c.generation,
            steps_done: c.steps_done,
            applied_examples: c.applied_examples,
            state,
        }
    }
}
