//! End to end on a real slice of TREC, through the step every worker runs: training loss drops
//! clearly over two epochs, and a saved model predicts exactly as the one that was saved.

use crate::support;

use std::error::Error;
use std::path::Path;

use candle_core::Device;
use common::collective::Local;
use common::model::{Batch, Classifier, FlatConfig};
use common::train::{bucket_batches, predict, train_step, Adam, AdamConfig, Replica};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type TestResult = Result<(), Box<dyn Error>>;

/// The first rows of TREC's training set, encoded, with a model config that fits them.
struct Slice {
    seqs: Vec<Vec<u32>>,
    labels: Vec<u32>,
    cfg: FlatConfig,
}

fn trec_slice(n: usize) -> Result<Slice, Box<dyn Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/trec/train.tsv");
    let rows = support::read_tsv(&path, n)?;
    assert_eq!(rows.len(), n, "{} has fewer than {n} rows", path.display());
    let (seqs, labels, vocab_size, num_classes) = support::encode(&rows, 64);
    let cfg = FlatConfig {
        vocab_size,
        num_classes,
        ..FlatConfig::default()
    };
    Ok(Slice { seqs, labels, cfg })
}

fn batch_of(seqs: &[Vec<u32>], labels: &[u32], idx: &[usize]) -> Result<Batch, Box<dyn Error>> {
    let s: Vec<&[u32]> = idx.iter().map(|&i| seqs[i].as_slice()).collect();
    let l: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
    Ok(Batch::new(&s, &l)?)
}

/// One step of a single-process run (the whole batch is the global batch); its summed loss.
fn step(replica: &Replica, opt: &mut Adam, batch: &Batch) -> Result<f64, Box<dyn Error>> {
    let report = train_step(
        replica,
        opt,
        &mut Local,
        Some(batch),
        batch.len(),
        None,
        None,
    )?;
    Ok(report.loss_sum())
}

#[test]
fn training_loss_drops_over_two_epochs() -> TestResult {
    let Slice { seqs, labels, cfg } = trec_slice(300)?;
    let replica = Replica::new(&cfg.parts(), 0, &Device::Cpu)?;
    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut epoch_loss = Vec::new();
    for _ in 0..2 {
        let mut total = 0.0;
        for idx in bucket_batches(&lengths, 32, &mut rng) {
            let batch = batch_of(&seqs, &labels, &idx)?;
            total += step(&replica, &mut opt, &batch)?;
        }
        epoch_loss.push(total / seqs.len() as f64);
    }
    eprintln!("mean training loss per epoch: {epoch_loss:?}");
    assert!(
        epoch_loss[0] < 1.9,
        "first epoch starts near ln(6): {epoch_loss:?}"
    );
    assert!(epoch_loss[1] < epoch_loss[0] - 0.1, "{epoch_loss:?}");
    Ok(())
}

#[test]
fn saved_model_predicts_identically() -> TestResult {
    let Slice { seqs, labels, cfg } = trec_slice(64)?;
    let replica = Replica::new(&cfg.parts(), 5, &Device::Cpu)?;
    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
    let all: Vec<usize> = (0..seqs.len()).collect();
    let batch = batch_of(&seqs, &labels, &all)?;
    step(&replica, &mut opt, &batch)?;
    let model = replica.model();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    model.save(&path)?;
    let loaded = Classifier::load(&cfg.parts(), &path)?;
    let a = predict(model, &batch)?;
    let b = predict(&loaded, &batch)?;
    assert_eq!(a, b);
    for (class, probs) in &a {
        assert_eq!(probs.len(), cfg.num_classes);
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(probs.iter().all(|&p| p <= probs[*class]));
    }
    let wrong = FlatConfig {
        hidden_dim: 100,
        ..cfg
    };
    assert!(Classifier::load(&wrong.parts(), &path).is_err());
    Ok(())
}

#[test]
fn stacked_layers_with_dropout_train_and_predict_deterministically() -> TestResult {
    let Slice { seqs, labels, cfg } = trec_slice(96)?;
    let cfg = FlatConfig {
        layers: 2,
        dropout: 0.3,
        hidden_dim: 32,
        embedding_dim: 16,
        ..cfg
    };
    let replica = Replica::new(&cfg.parts(), 8, &Device::Cpu)?;
    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
    let all: Vec<usize> = (0..seqs.len()).collect();
    let mut losses = Vec::new();
    for idx in all.chunks(32).cycle().take(12) {
        let batch = batch_of(&seqs, &labels, idx)?;
        let loss = step(&replica, &mut opt, &batch)?;
        assert!(loss.is_finite());
        losses.push(loss);
    }
    let first: f64 = losses[..3].iter().sum();
    let last: f64 = losses[9..].iter().sum();
    assert!(last < first, "{losses:?}");
    let batch = batch_of(&seqs, &labels, &all)?;
    let model = replica.model();
    assert_eq!(predict(model, &batch)?, predict(model, &batch)?);
    Ok(())
}
