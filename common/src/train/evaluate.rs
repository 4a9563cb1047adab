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
/// [`EVAL_BATCH`], by head 0.
pub fn predict_all(model: &Classifier, seqs: &[&[u32]]) -> Result<Vec<(usize, Vec<f32>)>> {
    predict_all_by(model, seqs, 0)
}

/// As [`predict_all`], by head `head` (a task of a multi-task model); the classes are the
/// head's own, counted from 0.
pub fn predict_all_by(
    model: &Classifier,
    seqs: &[&[u32]],
    head: usize,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(EVAL_BATCH) {
        out.extend(predict(model, &Batch::unlabeled(chunk)?.with_head(head))?);
    }
    Ok(out)
}

/// A model's results on labelled sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub confusion: Confusion,
    /// Summed cross-entropy of the true labels, per head (task).
    pub loss_by_head: Vec<f64>,
}

impl Evaluation {
    /// Summed cross-entropy of the true labels.
    pub fn loss_sum(&self) -> f64 {
        self.loss_by_head.iter().sum()
    }
}

/// Evaluates `model` on `(tokens, label)` pairs.
pub fn evaluate(model: &Classifier, examples: &[(&[u32], u32)]) -> Result<Evaluation> {
    let classes = model.config().num_classes();
    if let Some((_, bad)) = examples.iter().find(|(_, l)| *l as usize >= classes) {
        return Err(ModelError::Batch(format!(
            "label {bad} ≥ number of classes {classes}"
        )));
    }
    let mut confusion = Confusion::new(classes);
    let heads = model.config().heads.len();
    let mut loss_by_head = vec![0.0; heads];
    let labels: Vec<u32> = examples.iter().map(|(_, l)| *l).collect();
    // Each example is scored by its label's head (the only one with one head), and the
    // prediction is a label of that head's block: the confusion of several tasks is block
    // diagonal.
    for (head, rows) in model.rows_by_head(&labels)? {
        let offset = model.config().head_offset(head);
        let seqs: Vec<&[u32]> = rows.iter().map(|&r| examples[r].0).collect();
        for ((pred, probs), &r) in predict_all_by(model, &seqs, head)?.into_iter().zip(&rows) {
            let label = examples[r].1 as usize;
            confusion.add(label, offset + pred);
            loss_by_head[head] -= f64::from(probs[label - offset].max(1e-30)).ln();
        }
    }
    Ok(Evaluation {
        confusion,
        loss_by_head,
    })
}
