//! Adam against PyTorch's numbers and against a hand computation of its dense semantics for
//! the sparse embedding gradient; and resuming from saved optimizer state.

use crate::support;

use std::error::Error;

use candle_core::{Device, Tensor};
use common::collective::{Collective, CollectiveError};
use common::model::{Batch, Classifier, FlatConfig, Gradients, GroupOptim, SparseRows};
use common::train::{train_step, Adam, AdamConfig, LrSchedule, Replica};
use support::assert_close;

type TestResult = Result<(), Box<dyn Error>>;

fn tiny() -> FlatConfig {
    FlatConfig {
        vocab_size: 4,
        num_classes: 4,
        embedding_dim: 2,
        hidden_dim: 1,
        layers: 1,
        dropout: 0.0,
        ..FlatConfig::default()
    }
}

/// Gradients that are zero except on `fc.bias` (the last `num_classes` dense values).
fn bias_grads(model: &Classifier, bias: [f32; 4]) -> Gradients {
    let mut dense = vec![0.0; model.dense_len()];
    let n = dense.len();
    dense[n - 4..].copy_from_slice(&bias);
    Gradients {
        dense,
        sparse: vec![SparseRows::empty(2)],
    }
}

fn fc_bias(model: &Classifier) -> Result<Vec<f64>, Box<dyn Error>> {
    let var = model.param("fc.bias").ok_or("no fc.bias")?;
    Ok(support::flat(var.as_tensor())?)
}

/// Pinned from PyTorch 2.x:
/// ```python
/// p = torch.nn.Parameter(torch.tensor([0.5, -0.3, 0.0, 1.2]))
/// opt = torch.optim.Adam([p], lr=1e-3)
/// for g in ([0.1, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3], [0.0, 0.0, 0.0, 0.0]):
///     p.grad = torch.tensor(g); opt.step(); print(p.tolist())
/// ```
/// Stands in for the other workers of a run: whatever this worker computed, the all-reduced
/// sum is `fc.bias`'s gradient `bias` (the last values of the dense vector) and zero elsewhere,
/// so that the step's optimizer sees exactly the pinned gradients.
struct PinnedSum {
    bias: [f32; 4],
}

impl Collective for PinnedSum {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        buf.fill(0.0);
        let n = buf.len();
        buf[n - 4..].copy_from_slice(&self.bias);
        Ok(())
    }
    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        _dim: usize,
    ) -> Result<(), CollectiveError> {
        ids.clear();
        rows.clear();
        Ok(())
    }
    fn take_bytes_sent(&mut self) -> u64 {
        0
    }
}

/// Pinned from PyTorch 2.x, through the training step every worker runs (global batch of 1,
/// so the summed gradient is the mean):
/// ```python
/// p = torch.nn.Parameter(torch.tensor([0.5, -0.3, 0.0, 1.2]))
/// opt = torch.optim.Adam([p], lr=1e-3)
/// for g in ([0.1, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3], [0.0, 0.0, 0.0, 0.0]):
///     p.grad = torch.tensor(g); opt.step(); print(p.tolist())
/// ```
#[test]
fn adam_matches_pytorch() -> TestResult {
    let replica = Replica::new(&tiny().parts(), 0, &Device::Cpu)?;
    let model = replica.model();
    let bias = model.param("fc.bias").ok_or("no fc.bias")?;
    bias.set(&Tensor::new(&[0.5f32, -0.3, 0.0, 1.2], model.device())?)?;
    let mut opt = Adam::new(model.groups(), AdamConfig::default());
    let grads = [[0.1, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3], [0.0; 4]];
    let torch = [
        [0.499000013, -0.299000025, 0.0, 1.199000001],
        [0.498329967, -0.299442232, 0.0, 1.199052691],
        [0.497812003, -0.299784064, 0.0, 1.199093342],
    ];
    let batch = Batch::new(&[&[2, 3]], &[1])?;
    for (g, want) in grads.iter().zip(torch) {
        train_step(
            &replica,
            &mut opt,
            &mut PinnedSum { bias: *g },
            Some(&batch),
            1,
            None,
            None,
        )?;
        assert_close("fc.bias", &fc_bias(model)?, &want, 1e-6, 1e-3);
    }
    Ok(())
}

/// A group's own learning rate and weight decay: `torch.optim.AdamW` on that group,
/// `lr = 1e-3 · lr_scale`, `p ← p·(1 − lr·decay)` before the Adam update; the other groups keep
/// plain Adam at the run's rate, and a frozen group does not move.
#[test]
fn a_group_has_its_own_learning_rate_and_weight_decay() -> TestResult {
    let model = Classifier::new(&tiny().parts(), 6)?;
    let mut groups = model.groups().to_vec();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["embedding", "lstm", "fc"]);
    groups[2].optim = GroupOptim {
        lr_scale: 0.5,
        weight_decay: 0.1,
        ..GroupOptim::default()
    };
    groups[0].optim = GroupOptim::frozen();
    let bias0 = fc_bias(&model)?;
    let table0 = support::flat(model.embedding().as_tensor())?;
    let lstm = model.param("lstm.l0.w_ih").ok_or("no lstm")?;
    let lstm0 = support::flat(lstm.as_tensor())?;
    let mut opt = Adam::new(&groups, AdamConfig::default());
    let steps = [[0.1f32, -0.2, 0.0, 0.3], [0.0, 0.5, 0.0, -0.3]];
    for g in steps {
        let mut grads = bias_grads(&model, g);
        grads.dense[0] = 0.25;
        grads.sparse[0] = SparseRows {
            ids: vec![1],
            rows: vec![1.0, 1.0],
            dim: 2,
        };
        opt.step(&groups, &grads)?;
    }
    let want: Vec<f64> = (0..4)
        .map(|i| adamw(bias0[i], &column(&steps, i), &[0.5e-3; 2], 0.1))
        .collect();
    assert_close("fc.bias", &fc_bias(&model)?, &want, 1e-6, 1e-3);
    let lstm1 = support::flat(lstm.as_tensor())?;
    assert_close(
        "lstm.l0.w_ih[0]",
        &lstm1[..1],
        &[reference(lstm0[0], &[0.25, 0.25])],
        1e-6,
        1e-3,
    );
    assert_eq!(
        &lstm1[1..],
        &lstm0[1..],
        "weights without a gradient decay only through m"
    );
    assert_eq!(
        support::flat(model.embedding().as_tensor())?,
        table0,
        "a frozen group moved"
    );
    Ok(())
}

/// AdamW on a linear schedule, as `torch.optim.AdamW` under
/// `get_linear_schedule_with_warmup(opt, 1, 4)`: the first update at rate 0 (no move, no
/// decay), then 1, 2/3, 1/3 of the rate, the decay following the scheduled rate.
#[test]
fn the_schedule_scales_each_steps_rate_and_its_weight_decay() -> TestResult {
    let model = Classifier::new(&tiny().parts(), 8)?;
    let mut groups = model.groups().to_vec();
    groups[2].optim = GroupOptim {
        lr_scale: 1.0,
        weight_decay: 0.1,
        ..GroupOptim::default()
    };
    let bias0 = fc_bias(&model)?;
    let config = AdamConfig {
        schedule: LrSchedule::linear(4, 0.25),
        ..AdamConfig::default()
    };
    let mut opt = Adam::new(&groups, config);
    let steps = [
        [0.1f32, -0.2, 0.0, 0.3],
        [0.0, 0.5, 0.0, -0.3],
        [0.2, 0.1, 0.4, 0.0],
        [0.3, -0.1, 0.0, 0.2],
    ];
    opt.step(&groups, &bias_grads(&model, steps[0]))?;
    assert_eq!(fc_bias(&model)?, bias0, "the first update's rate is 0");
    for g in &steps[1..] {
        opt.step(&groups, &bias_grads(&model, *g))?;
    }
    let rates = [0.0, 1e-3, 1e-3 * 2.0 / 3.0, 1e-3 / 3.0];
    let want: Vec<f64> = (0..4)
        .map(|i| adamw(bias0[i], &column(&steps, i), &rates, 0.1))
        .collect();
    assert_close("fc.bias", &fc_bias(&model)?, &want, 1e-6, 1e-3);
    // The schedule's position is the step count: a state saved and restored continues it.
    assert_eq!(opt.steps(), 4);
    Ok(())
}

/// Value `i` of each step's gradient.
fn column(steps: &[[f32; 4]], i: usize) -> Vec<f64> {
    steps.iter().map(|g| f64::from(g[i])).collect()
}

/// AdamW in f64 on one value, the formula of `torch.optim.AdamW`: step t at rate `rates[t]`,
/// decoupled weight decay `wd` at that rate.
fn adamw(p0: f64, grads: &[f64], rates: &[f64], wd: f64) -> f64 {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, (&g, &lr)) in grads.iter().zip(rates).enumerate() {
        let t = t as i32 + 1;
        p *= 1.0 - lr * wd;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        p -= lr / (1.0 - b1.powi(t)) * m / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps);
    }
    p
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
    let model = Classifier::new(&tiny().parts(), 3)?;
    let before = support::flat(model.embedding().as_tensor())?;
    let mut opt = Adam::new(model.groups(), AdamConfig::default());
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
            sparse: vec![rows.clone()],
        };
        opt.step(model.groups(), &g)?;
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
    let model = Classifier::new(&cfg.parts(), 4)?;
    let mut opt = Adam::new(model.groups(), AdamConfig::default());
    let g1 = bias_grads(&model, [0.1, 0.2, -0.3, 0.4]);
    let g2 = bias_grads(&model, [-0.5, 0.1, 0.0, 0.2]);
    opt.step(model.groups(), &g1)?;
    model.save(&dir.path().join("model.safetensors"))?;
    opt.save(&dir.path().join("adam.safetensors"))?;
    opt.step(model.groups(), &g2)?;

    let resumed = Classifier::load(&cfg.parts(), &dir.path().join("model.safetensors"))?;
    let mut opt2 = Adam::load(
        resumed.groups(),
        AdamConfig::default(),
        &dir.path().join("adam.safetensors"),
    )?;
    assert_eq!(opt2.steps(), 1);
    opt2.step(resumed.groups(), &g2)?;
    assert_eq!(fc_bias(&model)?, fc_bias(&resumed)?);
    assert_eq!(opt.state()?, opt2.state()?);
    assert!(!dir.path().join("adam.safetensors.tmp").exists());
    Ok(())
}

/// Scaling inside the update is bitwise scaling the gradients first, sparse rows included.
#[test]
fn a_scaled_step_equals_scaling_the_gradients_first() -> TestResult {
    let cfg = tiny();
    let (a, b) = (
        Classifier::new(&cfg.parts(), 5)?,
        Classifier::new(&cfg.parts(), 5)?,
    );
    let (mut opt_a, mut opt_b) = (
        Adam::new(a.groups(), AdamConfig::default()),
        Adam::new(b.groups(), AdamConfig::default()),
    );
    let sum = Gradients {
        dense: (0..a.dense_len())
            .map(|i| (i as f32 * 0.37).sin() * 3.1)
            .collect(),
        sparse: vec![SparseRows {
            ids: vec![1, 3],
            rows: vec![0.7, -1.3, 2.9, 0.11],
            dim: 2,
        }],
    };
    let scale = 1.0 / 29.0;
    for _ in 0..3 {
        let mut scaled = sum.clone();
        scaled.scale(scale);
        opt_a.step(a.groups(), &scaled)?;
        opt_b.step_scaled(b.groups(), &sum, scale)?;
    }
    for (ga, gb) in a.groups().iter().zip(b.groups()) {
        for ((_, pa), (_, pb)) in ga.params.iter().zip(&gb.params) {
            assert_eq!(
                support::flat(pa.as_tensor())?,
                support::flat(pb.as_tensor())?
            );
        }
    }
    assert_eq!(opt_a.state()?, opt_b.state()?);
    Ok(())
}
