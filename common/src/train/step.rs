//! The training step as a library function, split where a distributed run inserts its
//! all-reduce: gradients of the local examples, the hook, then the shared update.

use candle_core::{DType, Storage, Tensor, Var};

use super::adam::Adam;
use super::batch::{Batch, PAD};
use super::gradients::{Gradients, SparseRows};
use crate::model::{Classifier, Mode, ModelError, Result};

/// The index of the largest value (NaN never wins).
pub(crate) fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Forward and backward over `batch`: the gradients of the summed cross-entropy (not the
/// mean, see [`Gradients`]), the summed loss, and how many examples were classified right.
pub fn compute_gradients(model: &Classifier, batch: &Batch) -> Result<(Gradients, f64, usize)> {
    compute_gradients_weighted(model, batch, None)
}

/// As [`compute_gradients`], with each example's loss multiplied by its class's weight (the
/// returned loss stays the plain cross-entropy, comparable across runs).
pub fn compute_gradients_weighted(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
) -> Result<(Gradients, f64, usize)> {
    let (grads, outcomes) = compute_gradients_per_example(model, batch, class_weights)?;
    let loss = outcomes.iter().map(|o| f64::from(o.loss)).sum();
    let correct = outcomes.iter().filter(|o| o.correct).count();
    Ok((grads, loss, correct))
}

/// How one training example fared in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Its cross-entropy (unweighted).
    pub loss: f32,
    /// Whether its highest logit is its label.
    pub correct: bool,
}

/// As [`compute_gradients_weighted`], with each example's loss and correctness in batch
/// order (for metrics per source of mixed data).
pub fn compute_gradients_per_example(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
) -> Result<(Gradients, Vec<Outcome>)> {
    let cfg = model.config();
    if class_weights.is_some_and(|w| w.len() != cfg.num_classes) {
        return Err(ModelError::Batch(format!(
            "{} class weights for {} classes",
            class_weights.map_or(0, <[f32]>::len),
            cfg.num_classes
        )));
    }
    let labels = batch.labels();
    if labels.len() != batch.len() {
        return Err(ModelError::Batch("training needs a labelled batch".into()));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cfg.num_classes) {
        return Err(ModelError::Batch(format!(
            "label {bad} ≥ number of classes {}",
            cfg.num_classes
        )));
    }
    // When the embedding trains, the embedded batch is a leaf of its own, so backward stops
    // there and hands us dX; otherwise it is a constant and backward computes no dX at all.
    let embedded = model.embed(batch)?;
    let x = match cfg.trains_embedding() {
        true => Some(Var::from_tensor(&embedded)?),
        false => None,
    };
    let input = x.as_ref().map_or(&embedded, Var::as_tensor);
    let logits = model.forward_embedded_keyed(input, batch.lengths(), Mode::Train, batch.keys())?;
    let targets = Tensor::from_slice(labels, (batch.len(), 1), model.device())?;
    let log_probs = candle_nn::ops::log_softmax(&logits, 1)?;
    let picked = log_probs.gather(&targets, 1)?;
    let loss = picked.sum_all()?.neg()?;
    let grads = match class_weights {
        None => loss.backward()?,
        Some(w) => {
            let per_example: Vec<f32> = labels.iter().map(|&l| w[l as usize]).collect();
            let w = Tensor::from_slice(&per_example, (batch.len(), 1), model.device())?;
            picked.mul(&w)?.sum_all()?.neg()?.backward()?
        }
    };

    let mut dense = Vec::with_capacity(model.dense_len());
    for (_, var) in model.dense_params() {
        match grads.get(var) {
            Some(g) => extend_from(&mut dense, g)?,
            None => dense.resize(dense.len() + var.elem_count(), 0.0),
        }
    }
    let embedding = match x.as_ref().and_then(|x| grads.get(x)) {
        Some(dx) => {
            let mut flat = Vec::with_capacity(dx.elem_count());
            extend_from(&mut flat, dx)?;
            scatter_rows(batch, &flat, cfg.embedding_dim)
        }
        _ => SparseRows::empty(cfg.embedding_dim),
    };

    let losses = picked.neg()?.flatten_all()?.to_vec1::<f32>()?;
    let outcomes = logits
        .to_vec2::<f32>()?
        .iter()
        .zip(labels)
        .zip(losses)
        .map(|((row, &label), loss)| Outcome {
            loss,
            correct: argmax(row) == label as usize,
        })
        .collect();
    Ok((Gradients { dense, embedding }, outcomes))
}

/// Appends a tensor's values, straight from its memory when it is a contiguous CPU tensor.
fn extend_from(dst: &mut Vec<f32>, t: &Tensor) -> Result<()> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(data) = cpu.as_slice::<f32>() {
                dst.extend_from_slice(&data[start..end]);
                return Ok(());
            }
        }
    }
    dst.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    Ok(())
}

/// Sums the rows of `dx` (B × T × E) into the rows of the tokens they embedded. PAD gets no
/// gradient (PyTorch's `padding_idx`), nor does padding.
fn scatter_rows(batch: &Batch, dx: &[f32], dim: usize) -> SparseRows {
    let t_len = batch.steps();
    let valid = || {
        batch
            .lengths()
            .iter()
            .enumerate()
            .flat_map(move |(b, &len)| {
                (0..len).map(move |t| (b * t_len + t, batch.ids()[b * t_len + t]))
            })
    };
    let mut ids: Vec<u32> = valid().map(|(_, id)| id).filter(|&id| id != PAD).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows = vec![0.0; ids.len() * dim];
    for (pos, id) in valid() {
        if let Ok(k) = ids.binary_search(&id) {
            let src = &dx[pos * dim..(pos + 1) * dim];
            rows[k * dim..(k + 1) * dim]
                .iter_mut()
                .zip(src)
                .for_each(|(r, g)| *r += g);
        }
    }
    SparseRows { ids, rows, dim }
}

/// One optimizer step: local gradients → `hook` (the all-reduce: sum across workers) →
/// divide by `global_batch_size` → clip (if configured) → Adam. Returns the local summed loss
/// and number correct. If the hook fails, the model is untouched.
pub fn train_step<E>(
    model: &Classifier,
    opt: &mut Adam,
    batch: &Batch,
    global_batch_size: usize,
    hook: impl FnOnce(&mut Gradients) -> std::result::Result<(), E>,
) -> Result<(f64, usize)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    if global_batch_size == 0 {
        return Err(ModelError::Batch("global batch size 0".into()));
    }
    let (mut grads, loss_sum, correct) = compute_gradients(model, batch)?;
    hook(&mut grads).map_err(|e| ModelError::Hook(Box::new(e)))?;
    super::apply::apply_gradients(model, opt, &mut grads, global_batch_size)?;
    Ok((loss_sum, correct))
}

/// A hook for single-process training: leaves the gradients as they are.
pub fn no_all_reduce(_: &mut Gradients) -> std::result::Result<(), std::convert::Infallible> {
    Ok(())
}
