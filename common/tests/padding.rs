//! Padding never changes a result: an example's logits are the same alone and beside longer
//! examples, and a batch's gradients are the sum of its examples' gradients.

use crate::support;

use std::error::Error;

use common::model::{Batch, Classifier, FlatConfig};
use common::train::compute_gradients;
use support::assert_close;

type TestResult = Result<(), Box<dyn Error>>;

fn config() -> FlatConfig {
    FlatConfig {
        vocab_size: 300,
        num_classes: 3,
        ..FlatConfig::default()
    }
}

#[test]
fn logits_alone_equal_logits_in_a_padded_batch() -> TestResult {
    let model = Classifier::new(&config().parts(), 1)?;
    let short: &[u32] = &[4, 9, 2];
    let alone = model
        .logits(&Batch::unlabeled(&[short])?)?
        .to_vec2::<f32>()?;
    let long: Vec<u32> = (10..40).collect();
    let batch = Batch::unlabeled(&[&long, short, &[7, 7, 7, 7, 7, 7]])?;
    let together = model.logits(&batch)?.to_vec2::<f32>()?;
    let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    assert_close("logits", &f(&alone[0]), &f(&together[1]), 1e-5, 1e-2);
    Ok(())
}

#[test]
fn batch_gradients_are_sums_of_example_gradients() -> TestResult {
    let model = Classifier::new(&config().parts(), 2)?;
    let seqs: [&[u32]; 3] = [&[5, 6, 7, 8, 9, 10, 11], &[12, 5], &[3, 3, 4, 200]];
    let labels = [2, 0, 1];
    let (batch, loss, _) = compute_gradients(&model, &Batch::new(&seqs, &labels)?)?;
    let mut sum = None;
    let mut loss_sum = 0.0;
    for (s, &l) in seqs.iter().zip(&labels) {
        let (g, loss, _) = compute_gradients(&model, &Batch::new(&[s], &[l])?)?;
        loss_sum += loss;
        match sum.as_mut() {
            None => sum = Some(g),
            Some(acc) => common::model::Gradients::add(acc, &g)?,
        }
    }
    let sum = sum.ok_or("no examples")?;
    assert!((loss - loss_sum).abs() < 1e-4 * loss.abs().max(1.0));
    let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    assert_close("dense", &f(&batch.dense), &f(&sum.dense), 1e-4, 1e-3);
    assert_eq!(batch.sparse[0].ids, sum.sparse[0].ids);
    assert_close(
        "embedding",
        &f(&batch.sparse[0].rows),
        &f(&sum.sparse[0].rows),
        1e-4,
        1e-3,
    );
    Ok(())
}
