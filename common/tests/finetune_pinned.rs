//! Fine-tuning pinned against PyTorch (issue #24, item 4): all-MiniLM-L6-v2 under a mean-pooled
//! linear head with fixed weights, dropout off, four fixed sentences. The gradients of the mean
//! cross-entropy (block 0's query weights, the last block's output LayerNorm, the head) agree
//! within a relative 1e-3, and the weights after 3 AdamW steps (lr 1e-3 constant, decay 0.01 on
//! every parameter) within 1e-5.
//!
//! The figures below were printed by `tests/fixtures/finetune_pin.py` (torch 2.15.0,
//! transformers 5.25.0, CPU):
//!   HF_HUB_OFFLINE=1 python tests/fixtures/finetune_pin.py models/all-MiniLM-L6-v2

use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use common::collective::Local;
use common::encoder::WordPiece;
use common::model::{
    Batch, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
use common::train::{train_step, Adam, AdamConfig, Replica};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SENTENCES: [&str; 4] = [
    "the battery lasts all day",
    "what is the capital of peru ?",
    "a gorgeous , witty , seductive movie .",
    "the screen cracked within a week and support never answered",
];
const LABELS: [u32; 4] = [1, 0, 1, 0];

/// The tokenizer's ids, as transformers gives them.
const IDS: [&[u32]; 4] = [
    &[101, 1996, 6046, 16180, 2035, 2154, 102],
    &[101, 2054, 2003, 1996, 3007, 1997, 7304, 1029, 102],
    &[101, 1037, 9882, 1010, 25591, 1010, 23182, 3185, 1012, 102],
    &[
        101, 1996, 3898, 9630, 2306, 1037, 2733, 1998, 2490, 2196, 4660, 102,
    ],
];

/// A weight's first 8 values and its L2 norm.
struct Figures {
    first: [f64; 8],
    norm: f64,
}

const QUERY: &str = "encoder.encoder.layer.0.attention.self.query.weight";
const NORM: &str = "encoder.encoder.layer.5.output.LayerNorm.weight";
const HEAD: &str = "fc.weight";

const GRADIENTS: [(&str, Figures); 3] = [
    (
        QUERY,
        Figures {
            first: [
                0.000112131,
                -0.000133787,
                3.0964e-05,
                -0.000115471,
                -3.2047e-05,
                -1.0747e-05,
                2.4492e-05,
                -1.3858e-05,
            ],
            norm: 0.03277193754911423,
        },
    ),
    (
        NORM,
        Figures {
            first: [
                0.003735075,
                -0.000986895,
                0.001519856,
                -0.000721297,
                0.002803034,
                -0.001475561,
                -0.003944727,
                -0.00084392,
            ],
            norm: 0.04354538023471832,
        },
    ),
    (
        HEAD,
        Figures {
            first: [
                -0.097226553,
                0.027943883,
                -0.040537823,
                0.019038921,
                -0.06977053,
                0.040935405,
                0.107037723,
                -0.031429533,
            ],
            norm: 1.8612794876098633,
        },
    ),
];

const AFTER_3_STEPS: [(&str, Figures); 3] = [
    (
        QUERY,
        Figures {
            first: [
                -0.150794119,
                0.045536377,
                0.082975797,
                0.025552694,
                -0.037134785,
                -0.083547413,
                -0.016315799,
                0.048938449,
            ],
            norm: 36.660484313964844,
        },
    ),
    (
        NORM,
        Figures {
            first: [
                0.644613445,
                0.677529871,
                0.669795334,
                0.662112653,
                0.626725137,
                0.686367869,
                0.677264631,
                0.660381377,
            ],
            norm: 12.64522933959961,
        },
    ),
    (
        HEAD,
        Figures {
            first: [
                -0.018717812,
                -0.020272329,
                -0.013204142,
                -0.015179766,
                -0.007941928,
                -0.010378241,
                -0.007390859,
                0.000352313,
            ],
            norm: 0.3605760335922241,
        },
    ),
];

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
}

/// MiniLM with dropout off under the head of the script, weights loaded.
fn model() -> Result<Replica, Box<dyn std::error::Error>> {
    let dir = minilm();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    let shape = ModelConfig {
        input: InputConfig::Embedding {
            vocab_size: 30522,
            dim: 384,
            frozen: false,
        },
        transformer: Some(TransformerConfig {
            config,
            trained_layers: None,
        }),
        sequence: SequenceConfig::MeanPool,
        heads: vec![HeadConfig {
            num_classes: 2,
            dropout: 0.0,
        }],
    };
    let replica = Replica::new(&shape, 0, &Device::Cpu)?;
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let host = replica.model();
    host.load_encoder_weights(&tensors)?;
    let w: Vec<f32> = (0..2 * 384)
        .map(|i| (0.02 * (((i % 17) as f64 - 8.0) / 8.0)) as f32)
        .collect();
    host.param(HEAD)
        .ok_or("no head")?
        .set(&Tensor::from_vec(w, (2, 384), &Device::Cpu)?)?;
    host.param("fc.bias")
        .ok_or("no head bias")?
        .set(&Tensor::new(&[0.01f32, -0.01], &Device::Cpu)?)?;
    Ok(replica)
}

fn batch() -> Result<Batch, Box<dyn std::error::Error>> {
    let wordpiece = WordPiece::load(&minilm().join("tokenizer.json"))?;
    let ids: Vec<Vec<u32>> = SENTENCES
        .iter()
        .map(|s| wordpiece.encode(s))
        .collect::<Result<_, _>>()?;
    for (ours, theirs) in ids.iter().zip(IDS) {
        assert_eq!(ours, theirs, "the tokenizers disagree");
    }
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    Ok(Batch::new(&rows, &LABELS)?)
}

fn check(
    name: &str,
    t: &Tensor,
    want: &Figures,
    tolerance: impl Fn(f64, f64) -> bool,
) -> TestResult {
    let values = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        tolerance(norm, want.norm),
        "{name}: norm {norm} against PyTorch's {}",
        want.norm
    );
    for (i, (&got, &expected)) in values.iter().zip(&want.first).enumerate() {
        assert!(
            tolerance(got, expected),
            "{name}[{i}]: {got} against PyTorch's {expected}"
        );
    }
    Ok(())
}

#[test]
fn gradients_match_pytorch_within_a_relative_thousandth() -> TestResult {
    let replica = model()?;
    let model = replica.model();
    let batch = batch()?;
    let forward = model.forward_train(&batch)?;
    let logits = &forward.scored[0].logits;
    let targets = Tensor::from_slice(&LABELS, (4, 1), &Device::Cpu)?;
    let loss = candle_nn::ops::log_softmax(logits, D::Minus1)?
        .gather(&targets, 1)?
        .mean_all()?
        .neg()?;
    // The backward pass the workers run: in segments, stage by stage from the top.
    let grads = model.gradients(forward, &loss, &batch)?;
    for (name, want) in &GRADIENTS {
        let range = model.dense_range(name).ok_or(*name)?;
        let shape = model.param(name).ok_or(*name)?.shape().clone();
        let g = Tensor::from_slice(&grads.dense[range], shape, &Device::Cpu)?;
        let g = &g;
        // Relative to the weight's largest first values: a single tiny entry carries the
        // rounding of the sums it came from.
        let scale = want.first.iter().fold(0f64, |m, v| m.max(v.abs()));
        check(name, g, want, |a, b| {
            (a - b).abs() <= 1e-3 * b.abs().max(scale)
        })?;
    }
    Ok(())
}

#[test]
fn three_adamw_steps_match_pytorch_within_1e_5() -> TestResult {
    let replica = model()?;
    let mut opt = Adam::new(
        replica.model().groups(),
        AdamConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            ..AdamConfig::default()
        },
    );
    let batch = batch()?;
    for _ in 0..3 {
        train_step(&replica, &mut opt, &mut Local, Some(&batch), 4, None, None)?;
    }
    for (name, want) in &AFTER_3_STEPS {
        let w = replica
            .model()
            .param(name)
            .ok_or(*name)?
            .as_tensor()
            .clone();
        check(name, &w, want, |a, b| {
            (a - b).abs() <= 1e-5 * b.abs().max(1.0)
        })?;
    }
    Ok(())
}
