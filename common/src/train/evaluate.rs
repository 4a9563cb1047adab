//! Inference and evaluation, one way for everyone: the workers' validation passes and the
//! coordinator's `evaluate`, `predict` and final test all come here, in the same batches, so
//! they agree to the last bit.

use super::step::argmax;
use crate::metrics::Confusion;
use crate::model::{Batch, Classifier, ModelError, Result};

/// Sentences per inference batch (the model slices it further, see `EVAL_ROWS`); the
/// coordinator streams validation examples to the workers in chunks of this size too.
pub const EVAL_BATCH: usize = 256;

/// For each row of `batch`: the most probable class and all class probabilities.
pub fn predict(model: &Classifier, batch: &Batch) -> Result<Vec<(usize, Vec<f32>)>> {
    let logits = model.logits(batch)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
    Ok(probs.into_iter().map(|p| (argmax(&p), p)).collect())
}

/// The most probable class and the class probabilities of each sentence, in batches of
/// [`EVAL_BATCH`].
pub fn predict_all(model: &Classifier, seqs: &[&[u32]]) -> Result<Vec<(usize, Vec<f32>)>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(EVAL_BATCH) {
        out.extend(predict(model, &Batch::unlabeled(chunk)?)?);
    }
    Ok(out)
}

/// A model's results on labelled sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub confusion: Confusion,
    /// Summed cross-entropy of the true labels.
    pub loss_sum: f64,
}

/// Evaluates `model` on `(tokens, label)` pairs.
pub fn evaluate(model: &Classifier, examples: &[(&[u32], u32)]) -> Result<Evaluation> {
    let classes = model.config().num_classes();
    if let Some((_, bad)) = examples.iter().find(|(_, l)| *l as usize >= classes) {
        return Err(ModelError::Batch(format!(
            "label {bad} ≥ number of classes {classes}"
        )));
    }
    let seqs: Vec<&[u32]> = examples.iter().map(|(s, _)| *s).collect();
    let mut confusion = Confusion::new(classes);
    let mut loss_sum = 0.0;
    for ((pred, probs), (_, label)) in predict_all(model, &seqs)?.into_iter().zip(examples) {
        confusion.add(*label as usize, pred);
        loss_sum -= f64::from(probs[*label as usize].max(1e-30)).ln();
    }
    Ok(Evaluation {
        confusion,
        loss_sum,
    })
}
