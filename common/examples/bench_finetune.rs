//! Where a fine-tuning step's time goes: all-MiniLM-L6-v2's shape (random weights: the cost does
//! not depend on them) under the mean-pooled head, batches of 16 sentences of 25 WordPiece
//! tokens (SST-2's mean), with dropout keys, as a worker runs them.
//!
//! ```text
//! cargo run --release -p common --example bench_finetune -- --threads 2
//! ```

use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use common::collective::Local;
use common::kernels::set_threads;
use common::model::{
    Batch, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
use common::train::{train_step, Adam, AdamConfig, Replica};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 25)]
    tokens: usize,
    /// The encoder's config.json.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2/config.json")]
    config: std::path::PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    set_threads(args.threads);
    if let Ok(n) = std::env::var("BENCH_CANDLE_THREADS") {
        std::env::set_var("CANDLE_NUM_THREADS", n);
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args.config)?)?;
    let (vocab, hidden) = (
        config["vocab_size"].as_u64().unwrap_or(0) as usize,
        config["hidden_size"].as_u64().unwrap_or(0) as usize,
    );
    let model = ModelConfig {
        input: InputConfig::Embedding {
            vocab_size: vocab,
            dim: hidden,
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
    let replica = Replica::new(&model, 0, &Device::Cpu)?;
    let mut opt = Adam::new(
        replica.model().groups(),
        AdamConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            encoder_lr: Some(5e-5),
            ..AdamConfig::default()
        },
    );
    let (b, t) = (args.batch, args.tokens);
    let mut forward = Vec::new();
    let mut total = Vec::new();
    for step in 0..args.steps {
        let seqs: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                (0..t - (i % 5))
                    .map(|k| (1000 + 37 * (step * b + i) + 11 * k) as u32 % vocab as u32)
                    .collect()
            })
            .collect();
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let labels: Vec<u32> = (0..b as u32).map(|i| i % 2).collect();
        let keys: Vec<u64> = (0..b as u64).map(|i| i + 100 * step as u64).collect();
        let batch = Batch::new(&rows, &labels)?.with_keys(&keys)?;
        let start = Instant::now();
        let f = replica.model().forward_train(&batch)?;
        forward.push(start.elapsed().as_secs_f64());
        drop(f);
        let start = Instant::now();
        let report = train_step(&replica, &mut opt, &mut Local, Some(&batch), b, None, None)?;
        total.push(start.elapsed().as_secs_f64());
        eprintln!(
            "step {step}: forward {:.3} s; step {:.3} s (compute {:.3}, update {:.3})",
            forward[step],
            total[step],
            report.timings.compute.as_secs_f64(),
            report.timings.update.as_secs_f64()
        );
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let step = median(&mut total);
    println!(
        "{{\"forward_s\": {:.4}, \"step_s\": {:.4}, \"samples_per_s\": {:.1}}}",
        median(&mut forward),
        step,
        b as f64 / step
    );
    Ok(())
}
