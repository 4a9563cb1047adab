//! A model with one head per task: each example's loss reaches only its own task's head, a
//! mixed batch's gradient is the sum of its tasks' parts, and evaluation scores each example
//! with its task's head (a block-diagonal confusion).

use std::error::Error;

use common::model::{Batch, Classifier, HeadConfig, InputConfig, ModelConfig, SequenceConfig};
use common::train::{compute_gradients_per_example, evaluate};

type TestResult = Result<(), Box<dyn Error>>;

/// Task 0 has labels 0..3, task 1 labels 3..5: one label list, a block per head.
fn config() -> ModelConfig {
    ModelConfig {
        transformer: None,
        input: InputConfig::Embedding {
            vocab_size: 30,
            dim: 8,
            frozen: false,
        },
        sequence: SequenceConfig::Bilstm {
            hidden_dim: 6,
            layers: 1,
            dropout: 0.0,
        },
        heads: vec![
            HeadConfig {
                num_classes: 3,
                dropout: 0.3,
            },
            HeadConfig {
                num_classes: 2,
                dropout: 0.3,
            },
        ],
    }
}

fn seqs() -> Vec<Vec<u32>> {
    vec![
        vec![2, 3, 4],
        vec![5, 6],
        vec![7, 8, 9, 10],
        vec![11],
        vec![12, 13, 2],
        vec![14, 15, 16, 17, 18],
    ]
}

fn batch(rows: &[usize], labels: &[u32]) -> Result<Batch, Box<dyn Error>> {
    let all = seqs();
    let refs: Vec<&[u32]> = rows.iter().map(|&r| all[r].as_slice()).collect();
    let own: Vec<u32> = rows.iter().map(|&r| labels[r]).collect();
    let keys: Vec<u64> = rows.iter().map(|&r| 1000 + r as u64).collect();
    Ok(Batch::new(&refs, &own)?.with_keys(&keys)?)
}

/// The flat dense gradient's slice of each group, by name.
fn slices(model: &Classifier, dense: &[f32]) -> Vec<(String, Vec<f32>)> {
    let mut at = 0;
    let mut out = Vec::new();
    for g in model.groups().iter().filter(|g| g.is_dense()) {
        out.push((g.name.clone(), dense[at..at + g.len()].to_vec()));
        at += g.len();
    }
    out
}

fn group<'a>(parts: &'a [(String, Vec<f32>)], name: &str) -> &'a [f32] {
    &parts.iter().find(|(n, _)| n == name).expect(name).1
}

#[test]
fn each_example_reaches_only_its_own_head_and_a_mixed_batch_sums_its_tasks() -> TestResult {
    let model = Classifier::new(&config(), 7)?;
    let labels = [0, 3, 2, 4, 1, 3];
    let task0 = [0, 2, 4];
    let task1 = [1, 3, 5];

    let (g0, o0) = compute_gradients_per_example(&model, &batch(&task0, &labels)?, None)?;
    let (g1, o1) = compute_gradients_per_example(&model, &batch(&task1, &labels)?, None)?;
    let (all, o) =
        compute_gradients_per_example(&model, &batch(&[0, 1, 2, 3, 4, 5], &labels)?, None)?;
    let (p0, p1) = (slices(&model, &g0.dense), slices(&model, &g1.dense));
    assert!(
        group(&p0, "fc1").iter().all(|&g| g == 0.0),
        "task 0 reached head 1"
    );
    assert!(
        group(&p1, "fc").iter().all(|&g| g == 0.0),
        "task 1 reached head 0"
    );
    assert!(group(&p0, "fc").iter().any(|&g| g != 0.0));
    assert!(group(&p1, "fc1").iter().any(|&g| g != 0.0));
    // Per-example dropout keys: an example's gradient does not depend on its batch.
    for ((a, b), c) in g0.dense.iter().zip(&g1.dense).zip(&all.dense) {
        assert!(
            (a + b - c).abs() <= 1e-5 * (1.0 + c.abs()),
            "{a} + {b} vs {c}"
        );
    }
    // Each example's loss is its own task's cross-entropy, in batch order.
    for (k, &r) in task0.iter().enumerate() {
        assert!((o[r].loss - o0[k].loss).abs() < 1e-5);
    }
    for (k, &r) in task1.iter().enumerate() {
        assert!((o[r].loss - o1[k].loss).abs() < 1e-5);
    }
    // A label beyond every head is refused.
    let bad = Batch::new(&[&[2u32, 3][..]], &[5])?;
    assert!(compute_gradients_per_example(&model, &bad, None).is_err());
    Ok(())
}

#[test]
fn evaluation_scores_each_example_with_its_task_head() -> TestResult {
    let model = Classifier::new(&config(), 3)?;
    let all = seqs();
    let labels = [0u32, 3, 2, 4, 1, 3];
    let pairs: Vec<(&[u32], u32)> = all.iter().map(Vec::as_slice).zip(labels).collect();
    let e = evaluate(&model, &pairs)?;
    assert_eq!(e.confusion.classes, 5);
    assert_eq!(e.confusion.total(), 6);
    // Block diagonal: a task-0 example is never predicted as a task-1 label, and the reverse.
    for t in 0..5 {
        for p in 0..5 {
            let n = e.confusion.counts[t * 5 + p];
            if (t < 3) != (p < 3) {
                assert_eq!(n, 0, "true {t} predicted {p}");
            }
        }
    }
    assert_eq!(e.loss_by_head.len(), 2);
    // Head 1's loss is its examples' cross-entropy under head 1 alone.
    let t1: Vec<&[u32]> = [1, 3, 5].iter().map(|&r| all[r].as_slice()).collect();
    let probs = common::train::predict_all_by(&model, &t1, 1)?;
    let own = [0usize, 1, 0];
    let want: f64 = probs
        .iter()
        .zip(own)
        .map(|((_, p), l)| -f64::from(p[l]).ln())
        .sum();
    assert!((e.loss_by_head[1] - want).abs() < 1e-9);
    Ok(())
}
