//! Training the model: the one training step every worker runs (gradients, all-reduce, the
//! optimizer, the device copy), the Adam optimizer over parameter groups, the replica a worker
//! holds, evaluation, the run's spec, and the length-bucketed batch plan.

pub mod adam;
pub mod bucket;
pub mod evaluate;
pub mod replica;
pub mod schedule;
pub mod spec;
pub mod step;
pub mod tally;

pub use adam::{Adam, AdamConfig, AdamState, Moments};
pub use bucket::bucket_batches;
pub use evaluate::{evaluate, predict, predict_all, predict_all_by, Evaluation, EVAL_BATCH};
pub use replica::Replica;
pub use schedule::LrSchedule;
pub use spec::RunSpec;
pub use step::{
    compute_gradients, compute_gradients_per_example, compute_gradients_weighted, train_share,
    train_step, Outcome, Share, StepError, StepReport, StepTimings,
};
pub use tally::{GroupTotals, Tally};
