//! Inference: class probabilities without any autograd bookkeeping.

use super::batch::Batch;
use super::step::argmax;
use crate::model::{Classifier, Result};

/// For each row of `batch`: the most probable class and all class probabilities.
pub fn predict(model: &Classifier, batch: &Batch) -> Result<Vec<(usize, Vec<f32>)>> {
    let logits = model.logits(batch)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
    Ok(probs.into_iter().map(|p| (argmax(&p), p)).collect())
}
