//! Encoding throughput of the frozen encoder, comparable with `bench/encoder_speed.py`
//! (PyTorch transformers): the same rows in the same batches of 64, each padded to its
//! longest, tokenization done before the clock starts.
//!
//! ```text
//! cargo run --release -p common --example bench_encoder -- --data ../shared/datasets/sst2/train.tsv --threads 2
//! ```
//! Prints one JSON line with sentences/s.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use common::encoder::{Encoder, EncoderMode, ENCODE_BATCH};
use common::kernels::set_threads;

#[derive(Parser)]
struct Args {
    /// `label<TAB>text` rows; the first `--rows` are encoded.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = common::encoder::DEFAULT_MODEL_DIR)]
    encoder: PathBuf,
    #[arg(long, default_value_t = 2048)]
    rows: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    } else {
        set_threads(args.threads);
    }
    let enc = Encoder::load(&args.encoder, EncoderMode::Features, &Device::Cpu, 0)?;
    let text = std::fs::read_to_string(&args.data)?;
    let ids: Vec<Vec<u32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(args.rows)
        .map(|l| {
            enc.wordpiece()
                .encode(l.split_once('\t').map_or(l, |(_, t)| t))
        })
        .collect::<Result<_, _>>()?;
    let batches: Vec<Vec<&[u32]>> = ids
        .chunks(ENCODE_BATCH)
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    enc.encode_ids(&batches[0])?;
    let start = Instant::now();
    for b in &batches {
        enc.encode_ids(b)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    println!(
        "{}",
        serde_json::json!({"impl": "candle", "sentences": ids.len(), "tokens": tokens, "threads": args.threads,
            "seconds": (secs * 1000.0).round() / 1000.0, "sentences_per_s": (ids.len() as f64 / secs).round()})
    );
    Ok(())
}
