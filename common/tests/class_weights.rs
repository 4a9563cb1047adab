//! Class-weighted loss: the gradient is the per-example gradient scaled by its class's weight.

use common::model::{Batch, Classifier, FlatConfig};
use common::train::{compute_gradients, compute_gradients_weighted};

#[test]
fn weights_scale_each_examples_gradient() {
    let cfg = FlatConfig {
        vocab_size: 20,
        num_classes: 3,
        embedding_dim: 4,
        hidden_dim: 5,
        layers: 1,
        dropout: 0.0,
        ..FlatConfig::default()
    };
    let model = Classifier::new(&cfg.parts(), 11).unwrap();
    let seqs: [&[u32]; 2] = [&[2, 3, 4], &[5, 6]];
    let both = Batch::new(&seqs, &[0, 2]).unwrap();
    let (plain, loss, _) = compute_gradients(&model, &both).unwrap();
    // Uniform weight 2 doubles everything; the reported loss stays the plain cross-entropy.
    let (doubled, wloss, _) =
        compute_gradients_weighted(&model, &both, Some(&[2.0, 2.0, 2.0])).unwrap();
    assert!((loss - wloss).abs() < 1e-9);
    for (a, b) in plain.dense.iter().zip(&doubled.dense) {
        assert!((2.0 * a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} {b}");
    }
    // Weight 0 on class 2 leaves only the first example's gradient.
    let (only_first, _, _) =
        compute_gradients_weighted(&model, &both, Some(&[1.0, 1.0, 0.0])).unwrap();
    let first = Batch::new(&seqs[..1], &[0]).unwrap();
    let (alone, _, _) = compute_gradients(&model, &first).unwrap();
    for (a, b) in alone.dense.iter().zip(&only_first.dense) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} {b}");
    }
    assert!(compute_gradients_weighted(&model, &both, Some(&[1.0])).is_err());
}
