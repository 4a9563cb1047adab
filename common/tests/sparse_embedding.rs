//! The sparse embedding gradient of `compute_gradients` equals the dense gradient candle's
//! autograd gives for the table when the lookup is an ordinary (differentiable) op.

use crate::support;

use std::error::Error;

use candle_core::Tensor;
use common::model::{Batch, Classifier, FlatConfig, Mode};
use common::train::compute_gradients;
use support::{assert_close, flat};

#[test]
fn sparse_rows_equal_dense_autograd() -> Result<(), Box<dyn Error>> {
    let cfg = FlatConfig {
        vocab_size: 20,
        num_classes: 3,
        embedding_dim: 5,
        hidden_dim: 4,
        ..FlatConfig::default()
    };
    let model = Classifier::new(&cfg.parts(), 9)?;
    // Token 7 twice in one sentence and once in another; token 19 (last row) once.
    let batch = Batch::new(&[&[7, 3, 7, 2], &[7, 19], &[5]], &[0, 2, 1])?;
    let (grads, _, _) = compute_gradients(&model, &batch)?;

    let ids = Tensor::from_slice(batch.ids(), batch.ids().len(), model.device())?;
    let x = model.embedding().as_tensor().embedding(&ids)?.reshape((
        batch.len(),
        batch.steps(),
        cfg.embedding_dim,
    ))?;
    let logits = model.forward_embedded(&x, batch.lengths(), Mode::Train, None, 0)?;
    let targets = Tensor::from_slice(batch.labels(), (batch.len(), 1), model.device())?;
    let loss = candle_nn::ops::log_softmax(&logits, 1)?
        .gather(&targets, 1)?
        .sum_all()?
        .neg()?;
    let autograd = loss.backward()?;
    let dense_table = flat(autograd.get(model.embedding()).ok_or("no table gradient")?)?;

    let e = cfg.embedding_dim;
    let mut ours = vec![0.0; cfg.vocab_size * e];
    for (k, &id) in grads.sparse[0].ids.iter().enumerate() {
        for j in 0..e {
            ours[id as usize * e + j] = f64::from(grads.sparse[0].rows[k * e + j]);
        }
    }
    assert_eq!(grads.sparse[0].ids, vec![2, 3, 5, 7, 19]);
    assert_close("embedding gradient", &ours, &dense_table, 1e-5, 1e-4);

    let mut dense = Vec::new();
    for group in model.groups().iter().filter(|g| g.is_dense()) {
        for (_, var) in &group.params {
            dense.extend(flat(autograd.get(var).ok_or("no dense gradient")?)?);
        }
    }
    let g: Vec<f64> = grads.dense.iter().map(|&x| f64::from(x)).collect();
    assert_close("dense gradient", &g, &dense, 1e-5, 1e-4);
    Ok(())
}

/// A frozen table: backward skips the input gradient and the rest of the gradients are
/// bitwise those of the same model with a trainable table (two layers: the second layer's
/// input gradient is still computed).
#[test]
fn a_frozen_table_gets_no_rows_and_the_same_dense_gradients() -> Result<(), Box<dyn Error>> {
    let cfg = FlatConfig {
        vocab_size: 20,
        num_classes: 3,
        embedding_dim: 5,
        hidden_dim: 4,
        layers: 2,
        ..FlatConfig::default()
    };
    let frozen_cfg = FlatConfig {
        freeze_embedding: true,
        ..cfg.clone()
    };
    let (trained, frozen) = (
        Classifier::new(&cfg.parts(), 9)?,
        Classifier::new(&frozen_cfg.parts(), 9)?,
    );
    let batch = Batch::new(&[&[7, 3, 7, 2], &[7, 19], &[5]], &[0, 2, 1])?;
    let (a, loss_a, _) = compute_gradients(&trained, &batch)?;
    let (b, loss_b, _) = compute_gradients(&frozen, &batch)?;
    assert!(!a.sparse[0].ids.is_empty());
    assert!(b.sparse[0].ids.is_empty() && b.sparse[0].rows.is_empty());
    assert_eq!(a.dense, b.dense);
    assert_eq!(loss_a, loss_b);
    Ok(())
}
