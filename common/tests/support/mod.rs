//! Shared by the integration tests: a reference LSTM composed from ordinary candle ops (one
//! row and one step at a time, autograd everywhere), random tensors, and comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One bidirectional layer's parameters as PyTorch has them (both directions stacked).
pub struct LayerParams {
    /// 2·4H × E
    pub w_ih: Tensor,
    /// 2 × 4H × H
    pub w_hh: Tensor,
    /// 2·4H each
    pub b_ih: Tensor,
    pub b_hh: Tensor,
}

impl LayerParams {
    /// Views of the fused op's inputs `[W_ih | b_ih]` and `[W_hh | b_hh]`; gradients taken
    /// through them reach those inputs.
    pub fn from_fused(w_ih: &Tensor, w_hh: &Tensor) -> Result<Self> {
        let e = w_ih.dims()[1] - 1;
        let h = w_hh.dims()[2] - 1;
        Ok(Self {
            w_ih: w_ih.narrow(1, 0, e)?,
            b_ih: w_ih.narrow(1, e, 1)?.squeeze(1)?,
            w_hh: w_hh.narrow(2, 0, h)?,
            b_hh: w_hh.narrow(2, h, 1)?.flatten_all()?,
        })
    }
}

/// Random fused inputs `[W_ih | b_ih]` (2·4H × (E + 1)) and `[W_hh | b_hh]` (2 × 4H × (H + 1)).
pub fn random_fused(
    input: usize,
    hidden: usize,
    dtype: DType,
    rng: &mut ChaCha8Rng,
) -> Result<(Var, Var)> {
    let g = 4 * hidden;
    Ok((
        random_var(&[2 * g, input + 1], dtype, rng)?,
        random_var(&[2, g, hidden + 1], dtype, rng)?,
    ))
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn random_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(-0.8..0.8)).collect()
}

pub fn random_var(shape: &[usize], dtype: DType, rng: &mut ChaCha8Rng) -> Result<Var> {
    let n = shape.iter().product();
    let t = Tensor::from_vec(random_vec(n, rng), shape, &Device::Cpu)?.to_dtype(dtype)?;
    Var::from_tensor(&t)
}

/// Zeroes `x` (B × T × E) beyond each row's length, as a padded batch would be.
pub fn mask_padding(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, e) = x.dims3()?;
    let mask: Vec<f64> = (0..b)
        .flat_map(|r| {
            (0..t).flat_map(move |s| std::iter::repeat_n(f64::from(u8::from(s < lengths[r])), e))
        })
        .collect();
    x.mul(&Tensor::from_vec(mask, (b, t, e), x.device())?.to_dtype(x.dtype())?)
}

/// The layer the fused op implements, from ordinary candle ops: each row on its own, each
/// direction over the row's valid tokens only. Returns B × 2H (`sequence == false`: last
/// states) or B × T × 2H (every position, zeros in padding).
pub fn reference_layer(
    x: &Tensor,
    p: &LayerParams,
    lengths: &[usize],
    hidden: usize,
    sequence: bool,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let h = hidden;
    let zeros = Tensor::zeros((1, h), x.dtype(), x.device())?;
    let mut rows = Vec::with_capacity(b);
    for (row, &len) in lengths.iter().enumerate() {
        let mut last = Vec::new();
        let mut seqs = Vec::new();
        for d in 0..2 {
            let w_ih = p.w_ih.narrow(0, d * 4 * h, 4 * h)?;
            let w_hh = p.w_hh.get(d)?;
            let bias =
                (p.b_ih.narrow(0, d * 4 * h, 4 * h)? + p.b_hh.narrow(0, d * 4 * h, 4 * h)?)?;
            let (mut hs, mut cs) = (zeros.clone(), zeros.clone());
            let mut seq = vec![zeros.squeeze(0)?; t];
            let positions: Vec<usize> = if d == 0 {
                (0..len).collect()
            } else {
                (0..len).rev().collect()
            };
            for pos in positions {
                let xt = x.get(row)?.get(pos)?.unsqueeze(0)?;
                let gates =
                    (xt.matmul(&w_ih.t()?)? + hs.matmul(&w_hh.t()?)?)?.broadcast_add(&bias)?;
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, h)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, h, h)?)?;
                let g = gates.narrow(1, 2 * h, h)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * h, h)?)?;
                cs = ((f * cs)? + (i * g)?)?;
                hs = (o * cs.tanh()?)?;
                seq[pos] = hs.squeeze(0)?;
            }
            last.push(hs.squeeze(0)?);
            seqs.push(Tensor::stack(&seq, 0)?);
        }
        rows.push(if sequence {
            Tensor::cat(&seqs, 1)?
        } else {
            Tensor::cat(&last, 0)?
        });
    }
    Tensor::stack(&rows, 0)
}

/// `|a − b| ≤ tol · (floor + max(|a|, |b|))` everywhere; returns the worst ratio.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64, floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut worst = 0.0f64;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs() / (floor + x.abs().max(y.abs()));
        assert!(
            err <= tol,
            "{what}[{i}]: {x} vs {y} (error {err:e} > {tol:e})"
        );
        worst = worst.max(err);
    }
    worst
}

pub fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// Rows of a `label<TAB>text` file, lower-cased and split on whitespace (as the reference).
pub fn read_tsv(
    path: &std::path::Path,
    limit: usize,
) -> std::io::Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .take(limit)
        .map(|(label, t)| {
            (
                label.to_string(),
                t.to_lowercase()
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            )
        })
        .collect())
}

/// Token ids (PAD 0, UNK 1, then words by frequency) and label ids (sorted label names).
pub fn encode(
    rows: &[(String, Vec<String>)],
    max_len: usize,
) -> (Vec<Vec<u32>>, Vec<u32>, usize, usize) {
    use std::collections::{BTreeSet, HashMap};
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, toks) in rows {
        for t in toks {
            *counts.entry(t).or_default() += 1;
        }
    }
    let mut words: Vec<(&str, usize)> = counts.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let vocab: HashMap<&str, u32> = words
        .iter()
        .enumerate()
        .map(|(i, (w, _))| (*w, i as u32 + 2))
        .collect();
    let labels: Vec<&str> = rows
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let seqs = rows
        .iter()
        .map(|(_, toks)| {
            let ids: Vec<u32> = toks
                .iter()
                .take(max_len)
                .map(|t| vocab.get(t.as_str()).copied().unwrap_or(1))
                .collect();
            if ids.is_empty() {
                vec![1]
            } else {
                ids
            }
        })
        .collect();
    let ys = rows
        .iter()
        .map(|(l, _)| labels.iter().position(|x| x == l).unwrap_or(0) as u32)
        .collect();
    (seqs, ys, vocab.len() + 2, labels.len())
}

/// A small BERT's `config.json`: two layers of two heads, width `hidden`, the feed-forward
/// layer and the positions twice that, `vocab` words, dropout 0.1 as MiniLM's.
pub fn small_bert(vocab: usize, hidden: usize) -> serde_json::Value {
    serde_json::json!({
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 2 * hidden, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 2 * hidden, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
    })
}

/// Every parameter's values of `replica`'s model, flat, in group order.
pub fn weights(replica: &common::train::Replica) -> Vec<f32> {
    let mut out = Vec::new();
    for group in replica.model().groups() {
        for (_, var) in &group.params {
            out.extend(flat(var.as_tensor()).unwrap().iter().map(|&x| x as f32));
        }
    }
    out
}

/// A TCP ring of `world` ranks on loopback, formed.
pub fn tcp_ring(world: usize) -> Vec<common::collective::RingAllReduce> {
    use common::collective::{RingAllReduce, RingAuth};
    let listeners: Vec<std::net::TcpListener> = (0..world)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let auth = RingAuth::new(b"step test token", 7);
    let timeout = std::time::Duration::from_secs(10);
    std::thread::scope(|s| {
        let handles: Vec<_> = listeners
            .iter()
            .enumerate()
            .map(|(r, l)| {
                let (addrs, auth) = (&addrs, &auth);
                s.spawn(move || RingAllReduce::connect(r, addrs, l, auth, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ring thread").expect("ring"))
            .collect()
    })
}
