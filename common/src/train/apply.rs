//! The shared half of a distributed step: after the all-reduce every replica applies the same
//! summed gradients, so every replica holds the same weights after every step.

use super::adam::Adam;
use super::gradients::{Gradients, SparseRows};
use crate::model::{Classifier, Result};

/// Gradients of a worker that holds no example of this step: it still joins the all-reduce.
pub fn zero_gradients(model: &Classifier) -> Gradients {
    Gradients {
        dense: vec![0.0; model.dense_len()],
        embedding: SparseRows::empty(model.config().embedding_dim),
    }
}

/// Divides the all-reduced sums by the global batch size, clips if configured, and steps Adam
/// (which divides as it goes when there is no clipping). `grads` may be left unscaled.
pub fn apply_gradients(
    model: &Classifier,
    opt: &mut Adam,
    grads: &mut Gradients,
    global_batch_size: usize,
) -> Result<()> {
    let mean = 1.0 / global_batch_size.max(1) as f32;
    match opt.config().clip_norm {
        Some(max) => {
            grads.scale(mean);
            grads.clip_norm(max);
            opt.step(model, grads)
        }
        None => opt.step_scaled(model, grads, mean),
    }
}
