//! Training the classifier: batches, the step's gradients in a form an all-reduce can
//! exchange, the Adam optimizer, the training step itself (with a hook where the all-reduce
//! goes), prediction, and the length-bucketed batch plan.

pub mod adam;
pub mod apply;
pub mod batch;
pub mod bucket;
pub mod gradients;
pub mod predict;
pub mod replica;
pub mod spec;
pub mod step;

pub use adam::{Adam, AdamConfig, AdamState};
pub use apply::{apply_gradients, zero_gradients};
pub use batch::Batch;
pub use bucket::bucket_batches;
pub use gradients::{Gradients, SparseRows};
pub use predict::predict;
pub use replica::Replica;
pub use spec::RunSpec;
pub use step::{
    compute_gradients, compute_gradients_per_example, compute_gradients_weighted, no_all_reduce,
    train_step, Outcome,
};
