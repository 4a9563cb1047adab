//! The encoder with every weight a [`Var`], for fine-tuning (issue #24): the computation of
//! [`super::bert`] (same weights, same results in evaluation) written with ordinary candle
//! ops only, so that autograd reaches every weight.
//!
//! The frozen pass cannot simply be reused: candle-nn's `LayerNorm` takes a fused path with no
//! backward op (no gradient reaches anything below it, and nothing says so), as do
//! `softmax_last_dim` and the project's vectorised GELU; candle's own `gelu_erf` has a backward,
//! but with 1/√(2π) rounded to six digits, which a gradient check in f64 sees. Hence layer norm,
//! softmax and GELU are ops of our own with a backward on the CPU ([`super::fused`]), and
//! composed from differentiable ops elsewhere.
//!
//! Dropout (BERT's: after the embeddings, on the attention probabilities, and on both residual
//! branches of each block) follows `model::dropout`: given one key per example, each
//! example's masks come from a generator seeded by (seed, key, site), so they do not depend on
//! the batch the example is in, nor on how far that batch is padded.

use std::collections::HashMap;
use std::f64::consts::FRAC_1_SQRT_2;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_transformers::models::bert::{Config, HiddenAct};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::dropout_mask::{self, Keep};
use super::error::{EncoderError, Result};
use super::files;
use super::fused;
use crate::rng::{standard_normal, stream, tag};

/// Keeps the encoder's dropout and initialisation streams apart from those of the rest of the
/// model, which may be seeded with the same number.
const ENCODER_STREAM: u64 = 0x0045_6e63_6f64_6572; // "Encoder" in ASCII

/// Dropout probabilities, as `config.json` gives them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutProbs {
    /// `hidden_dropout_prob`: after the embeddings and on each residual branch.
    pub hidden: f64,
    /// `attention_probs_dropout_prob`: on the attention probabilities.
    pub attention: f64,
}

impl DropoutProbs {
    pub const NONE: Self = Self {
        hidden: 0.0,
        attention: 0.0,
    };

    /// The probabilities in a `config.json`'s text. candle's [`Config`] has no field for the
    /// attention's, so it is read here; absent, it is BERT's default, 0.1.
    pub fn from_config_json(text: &str) -> std::result::Result<Self, String> {
        Self::from_config(&serde_json::from_str(text).map_err(|e| e.to_string())?)
    }

    /// As [`DropoutProbs::from_config_json`], from the parsed configuration.
    pub fn from_config(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let prob = |key: &str| -> std::result::Result<f64, String> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(0.1),
                Some(p) => p.as_f64().ok_or_else(|| format!("{key} is not a number")),
            }
        };
        let probs = Self {
            hidden: prob("hidden_dropout_prob")?,
            attention: prob("attention_probs_dropout_prob")?,
        };
        probs.check()?;
        Ok(probs)
    }

    fn check(&self) -> std::result::Result<(), String> {
        for (what, p) in [("hidden", self.hidden), ("attention", self.attention)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{what} dropout probability {p} is not in [0, 1)"));
            }
        }
        Ok(())
    }
}

/// `x Wᵀ + b`, W as stored (out × in).
struct Dense {
    w: Var,
    b: Var,
}

/// A weight as a pass uses it: inside autograd when the pass trains it, detached otherwise,
/// so that a pass that trains nothing (inference, or a frozen block) records no graph.
fn weight(v: &Var, grad: bool) -> Tensor {
    match grad {
        true => v.as_tensor().clone(),
        false => v.as_tensor().detach(),
    }
}

impl Dense {
    fn forward(&self, x: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let (w, b) = (weight(&self.w, grad), weight(&self.b, grad));
        match fused::applies(x) {
            true => fused::linear(x, &w, &b),
            false => x.matmul(&w.t()?)?.broadcast_add(&b),
        }
    }
}

struct Norm {
    w: Var,
    b: Var,
    eps: f64,
}

impl Norm {
    /// Layer norm over the last dimension, biased variance (as PyTorch).
    fn forward(&self, x: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let (w, b) = (weight(&self.w, grad), weight(&self.b, grad));
        if fused::applies(x) {
            return fused::layer_norm(x, &w, &b, self.eps);
        }
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&w)?
            .broadcast_add(&b)
    }
}

struct Block {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// How a dropout site's elements are laid out within one example.
#[derive(Clone, Copy)]
enum Site {
    /// Positions × width: drawn in position order, so a longer padding only appends.
    Tokens(u64),
    /// Heads × queries × keys: element (h, i, j) is word (h·P + i)·P + j of the example's
    /// stream (P the maximum number of positions), whatever the padded length.
    Attention(u64),
}

/// What a pass through the encoder trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Dropout in the stages that train.
    pub dropout: bool,
    /// The first stage that trains: 0 the embeddings' sum and norm, l + 1 block l; the stages
    /// below run outside autograd and without dropout. `None`: nothing trains
    /// (inference).
    pub trained_from: Option<usize>,
}

impl Pass {
    pub const INFERENCE: Self = Self {
        dropout: false,
        trained_from: None,
    };
}

/// One trained stage of a pass cut for a backward pass in segments: its `input` is a leaf of
/// the graph (a copy of the stage below's output, or the pass's word vectors), so a backward
/// pass from `output` stops there, and the gradient it hands `input` is what the stage below
/// backpropagates next.
pub struct Cut {
    /// 0 the embeddings' sum and norm, l + 1 block l (as [`Pass::trained_from`]).
    pub stage: usize,
    pub input: Tensor,
    pub output: Tensor,
}

/// A pass cut at every trained stage's end (see [`TrainableBert::forward_words_cut`]).
pub struct CutPass {
    /// The last layer's vectors (n × T × hidden), computed from `top`.
    pub output: Tensor,
    /// The trained stages, bottom first.
    pub cuts: Vec<Cut>,
    /// The leaf the layers above the encoder start from (a copy of the last cut's output);
    /// `None` when no stage trains.
    pub top: Option<Tensor>,
}

pub struct TrainableBert {
    words: Var,
    positions: Var,
    token_types: Var,
    norm: Norm,
    blocks: Vec<Block>,
    params: Vec<(String, Var)>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    vocab: usize,
    max_positions: usize,
    dropout: DropoutProbs,
    seed: u64,
    /// Masks of batches without keys: one running stream.
    rng: Mutex<ChaCha8Rng>,
    dtype: DType,
    device: Device,
}

impl TrainableBert {
    /// The model in `dir` (`config.json`, `model.safetensors`), dropout seeded by `seed`.
    pub fn load(dir: &Path, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let config = super::read_config(dir)?;
        let config_path = dir.join(files::CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|cause| EncoderError::Io {
            path: config_path.clone(),
            cause,
        })?;
        let probs = DropoutProbs::from_config_json(&text).map_err(|msg| EncoderError::Invalid {
            path: config_path,
            msg,
        })?;
        let weights = dir.join(files::WEIGHTS);
        let invalid = |msg: String| EncoderError::Invalid {
            path: weights.clone(),
            msg,
        };
        let tensors =
            candle_core::safetensors::load(&weights, device).map_err(|e| invalid(e.to_string()))?;
        Self::from_tensors(&tensors, &config, probs, seed, dtype, device).map_err(|e| match e {
            EncoderError::Run(msg) => invalid(msg),
            e => e,
        })
    }

    /// The model from its tensors, named as in Hugging Face's BERT with or without a `bert.`
    /// prefix (the frozen encoder reads the same), converted to `dtype` on `device`.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        config: &Config,
        dropout: DropoutProbs,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, dropout, seed, dtype, device, |name, shape| {
            let t = pretrained_tensor(tensors, name, shape).map_err(EncoderError::Run)?;
            Ok(t.to_device(device)?.to_dtype(dtype)?)
        })
    }

    /// A model with BERT's initialisation (weights from N(0, `initializer_range`), biases 0,
    /// layer norms the identity), drawn from `seed`.
    pub fn random(
        config: &Config,
        dropout: DropoutProbs,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let std = config.initializer_range;
        let mut index = 0u64;
        Self::build(config, dropout, seed, dtype, device, |name, shape| {
            index += 1;
            let n: usize = shape.iter().product();
            let values: Vec<f64> = match Start::of(name) {
                Start::Zeros => vec![0.0; n],
                Start::Ones => vec![1.0; n],
                Start::Normal => {
                    let mut rng = stream(&[tag::INIT, seed, ENCODER_STREAM, index]);
                    (0..n).map(|_| std * standard_normal(&mut rng)).collect()
                }
            };
            Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
        })
    }

    fn build(
        config: &Config,
        dropout: DropoutProbs,
        seed: u64,
        dtype: DType,
        device: &Device,
        mut source: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        Self::with_vars(config, dropout, seed, dtype, device, |name, shape| {
            let t = source(name, shape)?;
            // `Var::from_tensor` of a variable shares its storage, so that training this
            // model would change the caller's tensors too.
            let t = if t.is_variable() { t.copy()? } else { t };
            Ok(Var::from_tensor(&t)?)
        })
    }

    /// The model over variables that `var_of` gives for each weight's name (Hugging Face's,
    /// without `bert.`) and shape: a classifier that holds the encoder's weights among its own
    /// passes them in, and training updates them in place. They must be of `dtype`, on
    /// `device`.
    pub fn with_vars(
        config: &Config,
        dropout: DropoutProbs,
        seed: u64,
        dtype: DType,
        device: &Device,
        mut var_of: impl FnMut(&str, &[usize]) -> Result<Var>,
    ) -> Result<Self> {
        check_config(config)?;
        dropout.check().map_err(EncoderError::Run)?;
        let h = config.hidden_size;
        let mut params = Vec::new();
        for (name, shape) in weight_shapes(config) {
            let v = var_of(&name, &shape)?;
            if v.dims() != shape || v.dtype() != dtype {
                return Err(EncoderError::Run(format!(
                    "weight {name} is {:?} {:?}, the configuration makes it {shape:?} {dtype:?}",
                    v.dims(),
                    v.dtype()
                )));
            }
            params.push((name, v));
        }
        let var = |name: &str| -> Var {
            // weight_shapes named every weight that is looked up here.
            let found = params.iter().find(|(n, _)| n == name);
            found
                .map(|(_, v)| v.clone())
                .expect("a weight of weight_shapes")
        };
        let dense = |name: &str| Dense {
            w: var(&format!("{name}.weight")),
            b: var(&format!("{name}.bias")),
        };
        let eps = config.layer_norm_eps;
        let norm = |name: &str| Norm {
            w: var(&format!("{name}.weight")),
            b: var(&format!("{name}.bias")),
            eps,
        };
        let words = var("embeddings.word_embeddings.weight");
        let positions = var("embeddings.position_embeddings.weight");
        let token_types = var("embeddings.token_type_embeddings.weight");
        let embed_norm = norm("embeddings.LayerNorm");
        let blocks = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Block {
                    query: dense(&format!("{p}.attention.self.query")),
                    key: dense(&format!("{p}.attention.self.key")),
                    value: dense(&format!("{p}.attention.self.value")),
                    attn_out: dense(&format!("{p}.attention.output.dense")),
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm")),
                    up: dense(&format!("{p}.intermediate.dense")),
                    down: dense(&format!("{p}.output.dense")),
                    out_norm: norm(&format!("{p}.output.LayerNorm")),
                }
            })
            .collect();
        Ok(Self {
            words,
            positions,
            token_types,
            norm: embed_norm,
            blocks,
            params,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            hidden: h,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            dropout,
            seed,
            rng: Mutex::new(stream(&[tag::DROPOUT, seed, ENCODER_STREAM])),
            dtype,
            device: device.clone(),
        })
    }

    /// Every weight with its Hugging Face name (without `bert.`, e.g.
    /// `encoder.layer.0.attention.self.query.weight`), embeddings first, then block by block.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Width of a token vector.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last-layer vectors (n × T × hidden) of `ids` (n × T, integers), every token of type 0
    /// as in the frozen encoder; `mask` (n × T, 1 for a token, 0 for padding) may be left out
    /// when there is no padding. With `train`, dropout is on, each row's masks drawn from its
    /// key in `keys` (one per row) or, without keys, from one running stream. Every weight is
    /// inside autograd, with or without `train`.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let (n, t) = self.check_input(ids, mask, keys)?;
        let words = self
            .words
            .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
            .reshape((n, t, self.hidden))?;
        let pass = Pass {
            dropout: train,
            trained_from: Some(0),
        };
        let lengths = mask.map(lengths_of).transpose()?;
        self.forward_words(&words, lengths.as_deref(), pass, keys)
    }

    /// As [`TrainableBert::forward`], from the rows of the word-embedding table that the ids
    /// select (n × T × hidden), row b holding `lengths[b]` tokens and then padding (`None`:
    /// none), as `pass` says. Padding positions come out zero.
    pub fn forward_words(
        &self,
        words: &Tensor,
        lengths: Option<&[usize]>,
        pass: Pass,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        Ok(self.run(words, lengths, pass, keys, false)?.output)
    }

    /// As [`TrainableBert::forward_words`], with the graph cut at the end of every stage that
    /// trains: a backward pass can then run stage by stage from the top, and hand on each
    /// stage's gradients before it computes the next's. The values are the same as uncut.
    pub fn forward_words_cut(
        &self,
        words: &Tensor,
        lengths: Option<&[usize]>,
        pass: Pass,
        keys: Option<&[u64]>,
    ) -> Result<CutPass> {
        self.run(words, lengths, pass, keys, true)
    }

    fn run(
        &self,
        words: &Tensor,
        lengths: Option<&[usize]>,
        pass: Pass,
        keys: Option<&[u64]>,
        cut: bool,
    ) -> Result<CutPass> {
        let (n, t, h) = words.dims3()?;
        if h != self.hidden || n == 0 || t == 0 || t > self.max_positions {
            return Err(EncoderError::Run(format!(
                "word vectors of {:?} for an encoder of width {} and {} positions",
                words.dims(),
                self.hidden,
                self.max_positions
            )));
        }
        let lengths = lengths.map_or_else(|| vec![t; n], <[usize]>::to_vec);
        if lengths.len() != n || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(EncoderError::Run(format!(
                "lengths {lengths:?} for {n} rows of {t} words"
            )));
        }
        if keys.is_some_and(|k| k.len() != n) {
            return Err(EncoderError::Run(format!(
                "{} dropout keys for {n} rows",
                keys.map_or(0, <[u64]>::len)
            )));
        }
        let trains = |stage: usize| pass.trained_from.is_some_and(|f| stage >= f);
        let packing = Packing::new(&lengths, t, words.device())?;
        let grad = trains(0);
        // Below the stages that train, no gradient is wanted, the words' included.
        let words = match grad {
            true => words.clone(),
            false => words.detach(),
        };
        let x = words
            .broadcast_add(&weight(&self.positions, grad).narrow(0, 0, t)?)?
            .broadcast_add(&weight(&self.token_types, grad).narrow(0, 0, 1)?)?
            .reshape((n * t, h))?;
        let x = self.norm.forward(&packing.pack(&x)?, grad)?;
        let p = self.dropout;
        let drop = |x: &Tensor, prob: f64, site: Site, on: bool| {
            self.apply_dropout(x, &lengths, t, prob, site, on && pass.dropout, keys)
        };
        // Tokens are packed (n·T rows less the padding): every step but attention works on
        // each token alone, so padding would only cost.
        let mut x = drop(&x, p.hidden, Site::Tokens(0), grad)?;
        let mut cuts = Vec::new();
        // Ends a trained stage: what is above starts from a leaf copy of its output.
        let mut end = |stage: usize, input: Tensor, x: Tensor| -> Result<Tensor> {
            if !cut || !trains(stage) {
                return Ok(x);
            }
            let leaf = Var::from_tensor(&x.detach())?.into_inner();
            cuts.push(Cut {
                stage,
                input,
                output: x,
            });
            Ok(leaf)
        };
        x = end(0, words.clone(), x)?;
        let padded = lengths.iter().any(|&l| l < t).then_some(lengths.as_slice());
        // Additive mask: 0 for tokens, the lowest f32 for padding (as transformers), whose
        // exponential is 0 in f32 and f64 alike. Only the composed ops take it as a tensor; the
        // fused softmax adds it from the lengths.
        let bias = match padded.is_some() && !fused::applies(&words) {
            true => {
                let b: Vec<f32> = lengths
                    .iter()
                    .flat_map(|&l| (0..t).map(move |i| if i < l { 0.0 } else { f32::MIN }))
                    .collect();
                Some(Tensor::from_vec(b, (n, 1, 1, t), words.device())?.to_dtype(self.dtype)?)
            }
            false => None,
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for (l, b) in self.blocks.iter().enumerate() {
            // A frozen block runs without dropout and outside autograd.
            let grad = trains(l + 1);
            let input = x.clone();
            let site = 1 + 3 * l as u64;
            let split = |d: &Dense| -> candle_core::Result<Tensor> {
                packing
                    .unpack(&d.forward(&x, grad)?)?
                    .reshape((n, t, self.heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(&b.query)?, split(&b.key)?, split(&b.value)?);
            let scores = q.matmul(&k.t()?)?;
            let probs = match fused::applies(&scores) {
                true => fused::attention_softmax(&scores, scale, padded)?,
                false => {
                    let mut scores = (scores * scale)?;
                    if let Some(bias) = &bias {
                        scores = scores.broadcast_add(bias)?;
                    }
                    softmax(&scores)?
                }
            };
            let probs = drop(&probs, p.attention, Site::Attention(site), grad)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n * t, h))?;
            let attn = b.attn_out.forward(&packing.pack(&ctx)?, grad)?;
            let attn = drop(&attn, p.hidden, Site::Tokens(site + 1), grad)?;
            let a = b.attn_norm.forward(&(attn + &x)?, grad)?;
            let down = b.down.forward(&gelu_erf(&b.up.forward(&a, grad)?)?, grad)?;
            let down = drop(&down, p.hidden, Site::Tokens(site + 2), grad)?;
            x = end(l + 1, input, b.out_norm.forward(&(down + &a)?, grad)?)?;
        }
        let top = cuts.last().map(|_| x.clone());
        Ok(CutPass {
            output: packing.unpack(&x)?.reshape((n, t, h))?,
            cuts,
            top,
        })
    }

    fn check_input(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        keys: Option<&[u64]>,
    ) -> Result<(usize, usize)> {
        let bad = |msg: String| Err(EncoderError::Run(msg));
        let (n, t) = ids.dims2()?;
        if n == 0 || t == 0 {
            return bad(format!("an empty batch ({n} × {t} ids)"));
        }
        if t > self.max_positions {
            return bad(format!(
                "{t} positions, more than the encoder's {}",
                self.max_positions
            ));
        }
        if !matches!(ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return bad(format!("token ids of type {:?}", ids.dtype()));
        }
        // Through i64 so that a negative id is seen as one, not wrapped.
        let ids = ids.to_dtype(DType::I64)?.flatten_all()?;
        let (lo, hi) = (
            ids.min(0)?.to_scalar::<i64>()?,
            ids.max(0)?.to_scalar::<i64>()?,
        );
        if lo < 0 || hi as usize >= self.vocab {
            return bad(format!(
                "token ids from {lo} to {hi}, outside the vocabulary of {}",
                self.vocab
            ));
        }
        if let Some(m) = mask {
            if m.dims() != [n, t] {
                return bad(format!("a mask of {:?} for {n} × {t} ids", m.dims()));
            }
        }
        if let Some(k) = keys {
            if k.len() != n {
                return bad(format!("{} dropout keys for {n} rows", k.len()));
            }
        }
        Ok((n, t))
    }

    /// Dropout on `x` (n examples of T positions, laid out as `site` says) in training.
    #[allow(clippy::too_many_arguments)]
    fn apply_dropout(
        &self,
        x: &Tensor,
        lengths: &[usize],
        t: usize,
        p: f64,
        site: Site,
        train: bool,
        keys: Option<&[u64]>,
    ) -> candle_core::Result<Tensor> {
        if !train || p <= 0.0 {
            return Ok(x.clone());
        }
        let kept = 1.0 - p;
        let scale = (1.0 / kept) as f32;
        let mut keep = Keep::with_capacity(x.elem_count());
        let mut draw = |rng: &mut ChaCha8Rng, count: usize| {
            for _ in 0..count {
                keep.push(f64::from(rng.gen::<f32>()) < kept);
            }
        };
        match keys {
            Some(keys) => {
                let tokens: usize = lengths.iter().sum();
                let width = x.elem_count() / tokens.max(1);
                let id = match site {
                    Site::Tokens(id) | Site::Attention(id) => id,
                };
                for (&key, &len) in keys.iter().zip(lengths) {
                    let mut rng = stream(&[tag::DROPOUT, self.seed, ENCODER_STREAM, key, id]);
                    match site {
                        Site::Attention(_) => {
                            let pos = self.max_positions as u128;
                            for row in 0..(self.heads * t) as u128 {
                                let (head, query) = (row / t as u128, row % t as u128);
                                rng.set_word_pos((head * pos + query) * pos);
                                draw(&mut rng, t);
                            }
                        }
                        // The example's own tokens, in position order.
                        Site::Tokens(_) => draw(&mut rng, len * width),
                    }
                }
            }
            None => {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                draw(&mut rng, x.elem_count());
            }
        }
        if fused::applies(x) {
            return dropout_mask::dropout(x, keep, scale);
        }
        let mask: Vec<f32> = (0..keep.len())
            .map(|i| if keep.get(i) { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

/// The lengths of right-padded rows from their mask (n × T, 1 for a token, 0 for padding).
fn lengths_of(mask: &Tensor) -> Result<Vec<usize>> {
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    rows.iter()
        .map(|r| {
            let len = r.iter().take_while(|&&m| m != 0.0).count();
            match len > 0 && r[len..].iter().all(|&m| m == 0.0) {
                true => Ok(len),
                false => Err(EncoderError::Run(
                    "a mask row that is not tokens followed by padding".into(),
                )),
            }
        })
        .collect()
}

/// Moves token rows between the padded layout (n·T rows) and the packed one (the tokens
/// alone, example after example); with no padding, both are the same and nothing moves.
struct Packing {
    /// For each packed row, its padded row.
    gather: Option<Tensor>,
    /// For each padded row, its packed row, or the zero row past the last for padding.
    scatter: Option<Tensor>,
}

impl Packing {
    fn new(lengths: &[usize], t: usize, device: &Device) -> Result<Self> {
        if lengths.iter().all(|&l| l == t) {
            return Ok(Self {
                gather: None,
                scatter: None,
            });
        }
        let tokens: usize = lengths.iter().sum();
        let mut gather = Vec::with_capacity(tokens);
        let mut scatter = vec![tokens as u32; lengths.len() * t];
        for (b, &len) in lengths.iter().enumerate() {
            for i in 0..len {
                scatter[b * t + i] = gather.len() as u32;
                gather.push((b * t + i) as u32);
            }
        }
        Ok(Self {
            gather: Some(Tensor::from_vec(gather, tokens, device)?),
            scatter: Some(Tensor::from_vec(scatter, lengths.len() * t, device)?),
        })
    }

    /// Padded rows (n·T × w) to packed.
    fn pack(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.gather {
            Some(g) => x.index_select(g, 0),
            None => Ok(x.clone()),
        }
    }

    /// Packed rows to padded, the padding zero.
    fn unpack(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.scatter {
            Some(s) => {
                let zero = Tensor::zeros((1, x.dim(1)?), x.dtype(), x.device())?;
                Tensor::cat(&[x, &zero], 0)?.index_select(s, 0)
            }
            None => Ok(x.clone()),
        }
    }
}

/// How BERT starts a weight.
pub(crate) enum Start {
    Zeros,
    Ones,
    /// N(0, `initializer_range`).
    Normal,
}

impl Start {
    /// Biases at 0, layer norms the identity, every other weight drawn.
    pub(crate) fn of(name: &str) -> Self {
        if name.ends_with(".bias") {
            Start::Zeros
        } else if name.ends_with("LayerNorm.weight") {
            Start::Ones
        } else {
            Start::Normal
        }
    }
}

/// The tensor of a Hugging Face BERT checkpoint's weight `name` (named with or without the
/// `bert.` prefix of a task model), checked against `shape`.
pub fn pretrained_tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<&'a Tensor, String> {
    let full = pretrained_name(|n| tensors.get(n).map(|t| t.dims().to_vec()), name, shape)?;
    Ok(&tensors[&full])
}

/// The name under which a checkpoint holds the weight `name` of `shape` (with or without the
/// `bert.` prefix), from the shape `shape_of` gives for a name it holds.
fn pretrained_name(
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<String, String> {
    let prefixed = format!("bert.{name}");
    let full = match shape_of(&prefixed) {
        Some(_) => prefixed,
        None => name.to_string(),
    };
    let found = shape_of(&full).ok_or_else(|| format!("no tensor {name}"))?;
    if found != shape {
        return Err(format!(
            "tensor {full} is {found:?}, the configuration makes it {shape:?}"
        ));
    }
    Ok(full)
}

/// Checks that the safetensors file at `path` holds every weight of `config` with its shape,
/// reading only the file's header: what the workers will load, refused before they start.
pub fn check_pretrained_file(path: &Path, config: &Config) -> Result<()> {
    let io = |cause| EncoderError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let header =
        crate::model::read_header(&mut std::fs::File::open(path).map_err(io)?).map_err(io)?;
    for (name, shape) in weight_shapes(config) {
        pretrained_name(|n| header.info(n).map(|i| i.shape.clone()), &name, &shape).map_err(
            |msg| EncoderError::Invalid {
                path: path.to_path_buf(),
                msg,
            },
        )?;
    }
    Ok(())
}

/// Every weight's name (Hugging Face's, without `bert.`) and shape: the embeddings, then block
/// by block, each in the order of its computation.
pub fn weight_shapes(config: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let mut out: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![config.type_vocab_size, h],
        ),
    ];
    let linear = |out: &mut Vec<_>, name: String, o: usize, i: usize| {
        out.push((format!("{name}.weight"), vec![o, i]));
        out.push((format!("{name}.bias"), vec![o]));
    };
    let norm = |out: &mut Vec<_>, name: String| {
        out.push((format!("{name}.weight"), vec![h]));
        out.push((format!("{name}.bias"), vec![h]));
    };
    norm(&mut out, "embeddings.LayerNorm".into());
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for part in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
        ] {
            linear(&mut out, format!("{p}.{part}"), h, h);
        }
        linear(&mut out, format!("{p}.attention.output.dense"), h, h);
        norm(&mut out, format!("{p}.attention.output.LayerNorm"));
        linear(&mut out, format!("{p}.intermediate.dense"), i, h);
        linear(&mut out, format!("{p}.output.dense"), h, i);
        norm(&mut out, format!("{p}.output.LayerNorm"));
    }
    out
}

fn check_config(c: &Config) -> Result<()> {
    let bad = |msg: String| Err(EncoderError::Run(msg));
    if c.hidden_act != HiddenAct::Gelu {
        return bad("only BERT models with the gelu activation are supported".into());
    }
    let sizes = [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("num_attention_heads", c.num_attention_heads),
        ("intermediate_size", c.intermediate_size),
        ("max_position_embeddings", c.max_position_embeddings),
        ("type_vocab_size", c.type_vocab_size),
    ];
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return bad(format!("{name} is 0"));
    }
    if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    Ok(())
}

/// Softmax over the last dimension. The maximum is subtracted for range only (the result
/// does not depend on it), so it is detached.
fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    if fused::applies(x) {
        return fused::softmax(x);
    }
    let e = x
        .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `0.5 x (1 + erf(x / √2))`.
fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if fused::applies(x) {
        return fused::gelu_erf(x);
    }
    x.mul(&(((x * FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?)
}
