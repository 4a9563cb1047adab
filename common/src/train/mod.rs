//! Training the model: the one training step every worker runs (gradients, all-reduce, the
//! optimizer), the Adam optimizer over parameter groups, the replica a worker holds and where
//! it holds its training state (host or device, with the copies between them counted),
//! evaluation, the run's spec, and the length-bucketed batch plan.

pub mod adam;
mod adam_device;
mod adam_state;
pub mod bucket;
pub mod evaluate;
pub mod replica;
pub mod schedule;
pub mod spec;
pub mod step;
mod step_device;
mod step_entry;
pub mod tally;
pub mod transfers;

pub use adam::{Adam, AdamConfig, AdamState, Moments};
pub use bucket::bucket_batches;
pub use evaluate::{evaluate, predict, predict_all, predict_all_by, Evaluation, EVAL_BATCH};
pub use replica::{Held, Replica};
pub use schedule::LrSchedule;
pub use spec::RunSpec;
pub use step::{
    compute_gradients, compute_gradients_per_example, compute_gradients_weighted, Outcome, Share,
    StepError, StepReport, StepTimings,
};
pub use step_entry::{train_share, train_step};
pub use tally::{GroupTotals, Tally};
pub use transfers::{counted as transfers_counted, Transfers};
