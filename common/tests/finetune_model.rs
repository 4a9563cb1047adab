//! The fine-tuned encoder as part of the model: what its parameter groups are, what travels of
//! its word table, and the learning rate its groups train at.

use candle_core::Device;
use common::collective::Local;
use common::model::{
    Batch, Classifier, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
use common::train::{compute_gradients, train_step, Adam, AdamConfig, Replica};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config(trained_layers: Option<usize>) -> ModelConfig {
    let bert = crate::support::small_bert(50, 8);
    ModelConfig {
        input: InputConfig::Embedding {
            vocab_size: 50,
            dim: 8,
            frozen: trained_layers.is_some(),
        },
        transformer: Some(TransformerConfig {
            config: bert,
            trained_layers,
        }),
        sequence: SequenceConfig::MeanPool,
        heads: vec![HeadConfig {
            num_classes: 3,
            dropout: 0.0,
        }],
    }
}

fn batch() -> Batch {
    let rows: [&[u32]; 3] = [&[2, 7, 9, 3], &[2, 9, 9, 11, 40, 3], &[2, 5, 3]];
    Batch::new(&rows, &[0, 2, 1])
        .and_then(|b| b.with_keys(&[10, 11, 12]))
        .expect("a batch")
}

#[test]
fn only_the_word_rows_a_batch_touched_travel() -> TestResult {
    let model = Classifier::new(&config(None), 3)?;
    let names: Vec<(&str, bool)> = model
        .groups()
        .iter()
        .map(|g| (g.name.as_str(), g.optim.pretrained))
        .collect();
    assert_eq!(
        names,
        [("embedding", true), ("encoder", true), ("fc", false)],
        "the groups and which of them are the pretrained encoder's"
    );
    let (grads, _, _) = compute_gradients(&model, &batch())?;
    assert_eq!(grads.sparse.len(), 1);
    assert_eq!(grads.sparse[0].ids, [2, 3, 5, 7, 9, 11, 40]);
    assert!(grads.sparse[0].rows.iter().all(|g| g.is_finite()));
    assert!(grads.sparse[0].rows.iter().any(|&g| g != 0.0));
    // The dense vector holds the encoder's blocks and the head, not the table.
    assert_eq!(grads.dense.len(), model.dense_len());
    let all: usize = model.groups().iter().map(|g| g.len()).sum();
    assert_eq!(model.dense_len(), all - 50 * 8);
    Ok(())
}

#[test]
fn the_encoder_trains_at_its_own_rate_and_frozen_stages_not_at_all() -> TestResult {
    // At an encoder rate of 0 the encoder's groups stay, the head moves.
    let replica = Replica::new(&config(None), 3, &Device::Cpu)?;
    let before = replica.model().to_bytes()?;
    let mut opt = Adam::new(
        replica.model().groups(),
        AdamConfig {
            encoder_lr: Some(0.0),
            ..AdamConfig::default()
        },
    );
    train_step(
        &replica,
        &mut opt,
        &mut Local,
        Some(&batch()),
        3,
        None,
        None,
    )?;
    let after = replica.model();
    let old = Classifier::new(&config(None), 0)?;
    let mut old = old;
    old.load_weights_bytes(&before)?;
    let moved = |name: &str| -> Result<f32, Box<dyn std::error::Error>> {
        let a = after.param(name).ok_or(name.to_string())?.as_tensor();
        let b = old.param(name).ok_or(name.to_string())?.as_tensor();
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };
    assert_eq!(
        moved("encoder.encoder.layer.0.attention.self.query.weight")?,
        0.0
    );
    assert_eq!(moved("embedding.weight")?, 0.0);
    assert!(moved("fc.weight")? > 0.0);

    // With one block of two trained, the embeddings and block 0 are a frozen group that gets
    // no gradient; block 1 gets one.
    let model = Classifier::new(&config(Some(1)), 3)?;
    let names: Vec<(&str, bool)> = model
        .groups()
        .iter()
        .map(|g| (g.name.as_str(), g.optim.frozen))
        .collect();
    assert_eq!(
        names,
        [
            ("embedding", true),
            ("encoder_frozen", true),
            ("encoder", false),
            ("fc", false)
        ]
    );
    let (grads, _, _) = compute_gradients(&model, &batch())?;
    let frozen_len = model.groups()[1].len();
    assert!(grads.dense[..frozen_len].iter().all(|&g| g == 0.0));
    assert!(grads.dense[frozen_len..].iter().any(|&g| g != 0.0));
    assert!(grads.sparse[0].ids.is_empty());
    Ok(())
}
