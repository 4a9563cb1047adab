//! Adam against PyTorch's numbers and against a hand computation of its dense semantics for
//! the sparse embedding gradient; and resuming from saved optimizer state.

mod support;

use std::error::Error;

use candle_core::Tensor;
use common::model::{Classifier, ModelConfig};
use common::train::{Adam, AdamConfig, Gradients, SparseRows};
use support::assert_close;

type TestResult = Result<(), Box<dyn Error>>;

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab_size: 4,
        num_classes: 4,
        embedding_dim: 2,
        hidden_dim: 1,
        layers: 1,
        dropout: 0.0,
        ..ModelConfig::default()
    }
}

/// Gradients that are zero except on `fc.bias` (the last `num_classes` dense values).
fn bias_grads(model: &Classifier, bias: [f32; 4]) -> Gradients {
    let mut dense = vec![0.0; model.dense_len()];
    let n = dense.len();
    dense[n - 4..].copy_from_slice(&bias);
    Gradients {
        dense,
        embedding: SparseRows::empty(2),
    }
}

fn fc_bias(model: &Classifier) -> Result<Vec<f64>, Box<dyn Error>> {
    let (_, var) = model
        .dense_params()
        .iter()
        .find(|(n, _)| n == "fc.bias")
        .ok_or("no fc.bias")?;
    Ok(support::flat(var.as_tensor())?)
}

/// Pinned from PyTorch 2.x:
/// ```python
/// p = torch.nn.Parameter(torch.tensor([0.5, -0.3, 0.0, 1.2]))
/// opt = torch.optim.Adam([p], lr=1e-3)
/// for g in ([0.1, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3], [0.0, 0.0, 0.0, 0.0]):
///     p.grad = torch.tensor(g); opt.step(); print(p.tolist())
/// ```
#[test]
fn adam_matches_pytorch() -> TestResult {
    let model = Classifier::new(&tiny(), 0)?;
    let (_, bias) = model
        .dense_params()
        .iter()
        .find(|(n, _)| n == "fc.bias")
        .ok_or("no fc.bias")?;
    bias.set(&Tensor::new(&[0.5f32, -0.3, 0.0, 1.2], model.device())?)?;
    let mut opt = Adam::new(&model, AdamConfig::default());
    let grads = [[0.1, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3], [0.0; 4]];
    let torch = [
        [0.499000013, -0.299000025, 0.0, 1.199000001],
        [0.498329967, -0.299442232, 0.0, 1.199052691],
        [0.497812003, -0.299784064, 0.0, 1.199093342],
    ];
    for (g, want) in grads.iter().zip(torch) {
        opt.step(&model, &bias_grads(&model, *g))?;
        assert_close("fc.bias", &fc_bias(&model)?, &want, 1e-6, 1e-3);
    }
    Ok(())
}

/// Adam in f64 on one value, the formula of `torch.optim.Adam`.
fn reference(p0: f64, grads: &[f64]) -> f64 {
    let (lr, b1, b2, eps) = (1e-3, 0.9f64, 0.999f64, 1e-8);
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, &g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        m += (g - m) * (1.0 - b1);
        v = b2 * v + (1.0 - b2) * g * g;
        p -= lr / (1.0 - b1.powi(t)) * m / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps);
    }
    p
}

#[test]
fn every_embedding_row_decays_as_in_dense_adam() -> TestResult {
    let model = Classifier::new(&tiny(), 3)?;
    let before = support::flat(model.embedding().as_tensor())?;
    let mut opt = Adam::new(&model, AdamConfig::default());
    // Step 1 touches row 1, step 2 touches rows 2 and 3: row 1 must still move in step 2.
    let steps = [
        SparseRows {
            ids: vec![1],
            rows: vec![0.3, -0.1],
            dim: 2,
        },
        SparseRows {
            ids: vec![2, 3],
            rows: vec![0.2, 0.0, -0.4, 0.05],
            dim: 2,
        },
    ];
    let mut dense_grads = vec![vec![0.0f64; 8]; 2];
    for (k, rows) in steps.iter().enumerate() {
        for (i, &id) in rows.ids.iter().enumerate() {
            for j in 0..2 {
                dense_grads[k][id as usize * 2 + j] = f64::from(rows.rows[i * 2 + j]);
            }
        }
        let g = Gradients {
            dense: vec![0.0; model.dense_len()],
            embedding: rows.clone(),
        };
        opt.step(&model, &g)?;
    }
    let after = support::flat(model.embedding().as_tensor())?;
    let want: Vec<f64> = (0..8)
        .map(|i| reference(before[i], &[dense_grads[0][i], dense_grads[1][i]]))
        .collect();
    assert_close("embedding", &after, &want, 1e-6, 1e-3);
    assert_eq!(&after[..2], &[0.0, 0.0], "PAD row moved");
    assert_ne!(after[2], want[2] + 1.0); // sanity: row 1 is compared above
    Ok(())
}

#[test]
fn resumed_optimizer_continues_identically() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = tiny();
    let model = Classifier::new(&cfg, 4)?;
    let mut opt = Adam::new(&model, AdamConfig::default());
    let g1 = bias_grads(&model, [0.1, 0.2, -0.3, 0.4]);
    let g2 = bias_grads(&model, [-0.5, 0.1, 0.0, 0.2]);
    opt.step(&model, &g1)?;
    model.save(&dir.path().join("model.safetensors"))?;
    opt.save(&dir.path().join("adam.safetensors"))?;
    opt.step(&model, &g2)?;

    let resumed = Classifier::load(&cfg, &dir.path().join("model.safetensors"))?;
    let mut opt2 = Adam::load(
        &resumed,
        AdamConfig::default(),
        &dir.path().join("adam.safetensors"),
    )?;
    assert_eq!(opt2.state().step, 1);
    opt2.step(&resumed, &g2)?;
    assert_eq!(fc_bias(&model)?, fc_bias(&resumed)?);
    assert_eq!(opt.state(), opt2.state());
    assert!(!dir.path().join("adam.safetensors.tmp").exists());
    Ok(())
}

/// Scaling inside the update is bitwise scaling the gradients first, sparse rows included.
#[test]
fn a_scaled_step_equals_scaling_the_gradients_first() -> TestResult {
    let cfg = tiny();
    let (a, b) = (Classifier::new(&cfg, 5)?, Classifier::new(&cfg, 5)?);
    let (mut opt_a, mut opt_b) = (
        Adam::new(&a, AdamConfig::default()),
        Adam::new(&b, AdamConfig::default()),
    );
    let sum = Gradients {
        dense: (0..a.dense_len())
            .map(|i| (i as f32 * 0.37).sin() * 3.1)
            .collect(),
        embedding: SparseRows {
            ids: vec![1, 3],
            rows: vec![0.7, -1.3, 2.9, 0.11],
            dim: 2,
        },
    };
    let scale = 1.0 / 29.0;
    for _ in 0..3 {
        let mut scaled = sum.clone();
        scaled.scale(scale);
        opt_a.step(&a, &scaled)?;
        opt_b.step_scaled(&b, &sum, scale)?;
    }
    for ((_, pa), (_, pb)) in a.dense_params().iter().zip(b.dense_params()) {
        assert_eq!(
            support::flat(pa.as_tensor())?,
            support::flat(pb.as_tensor())?
        );
    }
    assert_eq!(
        support::flat(a.embedding().as_tensor())?,
        support::flat(b.embedding().as_tensor())?
    );
    assert_eq!(opt_a.state(), opt_b.state());
    Ok(())
}
