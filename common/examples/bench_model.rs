//! Training throughput of the classifier, comparable with `shared/anchors/torch_bilstm.py`:
//! same vocabulary (9,998 most frequent lower-cased whitespace tokens + PAD + UNK, a 10,000-row
//! table), same model, Adam 1e-3, batch 32, sequences cut at 64 tokens.
//!
//! ```text
//! cargo run --release -p common --example bench_model -- --data data/trec/train.tsv --threads 2
//! ```
//! Prints one JSON line: samples/s (median over epochs of the time spent in training steps
//! only), the last epoch's mean training loss, and test accuracy when `--test` is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use common::collective::Local;
use common::kernels::set_threads;
use common::model::{Batch, FlatConfig};
use common::train::{bucket_batches, predict, train_step, Adam, AdamConfig, Replica};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
struct Args {
    /// Training rows, `label<TAB>text`.
    #[arg(long)]
    data: PathBuf,
    /// Test rows, for an accuracy figure.
    #[arg(long)]
    test: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 10_000)]
    max_vocab: usize,
    #[arg(long, default_value_t = 64)]
    max_len: usize,
    /// Plain shuffled batches, as the PyTorch reference (no length bucketing).
    #[arg(long)]
    no_bucket: bool,
}

type Rows = Vec<(String, Vec<String>)>;

fn read(path: &Path) -> Result<Rows, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(label, t)| {
            let toks = t
                .to_lowercase()
                .split_whitespace()
                .map(String::from)
                .collect();
            (label.to_string(), toks)
        })
        .collect())
}

/// Word → id for the `max_vocab - 2` most frequent words (ties by first appearance, as
/// Python's `Counter.most_common`), ids from 2.
fn vocabulary(rows: &Rows, max_vocab: usize) -> HashMap<String, u32> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (_, toks) in rows {
        for t in toks {
            let next = counts.len();
            counts.entry(t).or_insert((0, next)).0 += 1;
        }
    }
    let mut words: Vec<(&str, (usize, usize))> = counts.into_iter().collect();
    words.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
    words
        .into_iter()
        .take(max_vocab.saturating_sub(2))
        .enumerate()
        .map(|(i, (w, _))| (w.to_string(), i as u32 + 2))
        .collect()
}

fn encode(rows: &Rows, vocab: &HashMap<String, u32>, max_len: usize) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|(_, toks)| {
            let ids: Vec<u32> = toks
                .iter()
                .take(max_len)
                .map(|t| vocab.get(t).copied().unwrap_or(1))
                .collect();
            if ids.is_empty() {
                vec![1]
            } else {
                ids
            }
        })
        .collect()
}

fn batch(seqs: &[Vec<u32>], labels: &[u32], idx: &[usize]) -> Result<Batch, String> {
    let s: Vec<&[u32]> = idx.iter().map(|&i| seqs[i].as_slice()).collect();
    let l: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
    Batch::new(&s, &l).map_err(|e| e.to_string())
}

/// CPU seconds this process has used (user + system), from /proc; `None` elsewhere. On a
/// busy machine, samples per CPU second is the steadier figure.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    set_threads(args.threads);
    let rows = read(&args.data)?;
    let vocab = vocabulary(&rows, args.max_vocab);
    let mut names: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let label_of = |l: &str| names.iter().position(|&n| n == l).map(|p| p as u32);
    let seqs = encode(&rows, &vocab, args.max_len);
    let labels: Vec<u32> = rows.iter().filter_map(|(l, _)| label_of(l)).collect();
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();

    let cfg = FlatConfig {
        vocab_size: args.max_vocab,
        num_classes: names.len(),
        ..FlatConfig::default()
    }
    .parts();
    let replica = Replica::new(&cfg, args.seed, &Device::Cpu).map_err(|e| e.to_string())?;
    let model = replica.model();
    let mut opt = Adam::new(model.groups(), AdamConfig::default());

    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut last_loss = f64::NAN;
    let mut padded = 0usize;
    for epoch in 0..args.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed * 1000 + epoch as u64);
        let plan = if args.no_bucket {
            let mut order: Vec<usize> = (0..seqs.len()).collect();
            order.shuffle(&mut rng);
            order.chunks(args.batch).map(<[usize]>::to_vec).collect()
        } else {
            bucket_batches(&lengths, args.batch, &mut rng)
        };
        let (mut busy, mut loss, mut n) = (0.0f64, 0.0f64, 0usize);
        let cpu_start = cpu_seconds();
        padded = 0;
        for idx in &plan {
            let b = batch(&seqs, &labels, idx)?;
            padded += b.len() * b.steps();
            let start = Instant::now();
            let l = train_step(
                &replica,
                &mut opt,
                &mut Local,
                Some(&b),
                b.len(),
                None,
                None,
            )
            .map_err(|e| e.to_string())?
            .loss_sum();
            busy += start.elapsed().as_secs_f64();
            loss += l;
            n += b.len();
        }
        rates.push(n as f64 / busy);
        if let (Some(a), Some(b)) = (cpu_start, cpu_seconds()) {
            cpu_rates.push(n as f64 / (b - a));
        }
        last_loss = loss / n as f64;
        eprintln!(
            "epoch {epoch}: {:.1} samples/s, loss {last_loss:.4}",
            n as f64 / busy
        );
    }

    let accuracy = match &args.test {
        None => None,
        Some(path) => {
            let test: Rows = read(path)?
                .into_iter()
                .filter(|(l, _)| label_of(l).is_some())
                .collect();
            let tseqs = encode(&test, &vocab, args.max_len);
            let tlabels: Vec<u32> = test.iter().filter_map(|(l, _)| label_of(l)).collect();
            let all: Vec<usize> = (0..tseqs.len()).collect();
            let mut right = 0;
            for idx in all.chunks(256) {
                let b = batch(&tseqs, &tlabels, idx)?;
                let preds = predict(model, &b).map_err(|e| e.to_string())?;
                right += preds
                    .iter()
                    .zip(b.labels())
                    .filter(|((c, _), &y)| *c == y as usize)
                    .count();
            }
            Some(right as f64 / tseqs.len().max(1) as f64)
        }
    };

    let tokens: usize = lengths.iter().sum();
    let line = serde_json::json!({
        "data": args.data.display().to_string(),
        "train_rows": seqs.len(),
        "threads": args.threads,
        "epochs": args.epochs,
        "bucketed": !args.no_bucket,
        "samples_per_s_median": (median(&rates) * 10.0).round() / 10.0,
        "samples_per_s": rates.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
        "samples_per_cpu_s_median": (median(&cpu_rates) * 10.0).round() / 10.0,
        "final_train_loss": (last_loss * 1e4).round() / 1e4,
        "mean_tokens": tokens as f64 / seqs.len().max(1) as f64,
        "padded_over_real_tokens": padded as f64 / tokens.max(1) as f64,
        "test_accuracy": accuracy,
    });
    println!("{line}");
    Ok(())
}
