//! The encoder with every weight a [`Var`], for fine-tuning (issue #24): the computation of
//! [`super::bert`] (same weights, same results in evaluation) written with ordinary candle
//! ops only, so that autograd reaches every weight.
//!
//! The frozen pass cannot simply be reused: candle-nn's `LayerNorm` takes a fused path with no
//! backward op (no gradient reaches anything below it, and nothing says so), as do
//! `softmax_last_dim` and the project's vectorised GELU; candle's own `gelu_erf` has a backward,
//! but with 1/√(2π) rounded to six digits, which a gradient check in f64 sees. Hence layer norm,
//! softmax and GELU are composed here from differentiable ops.
//!
//! Dropout (BERT's: after the embeddings, on the attention probabilities, and on both residual
//! branches of each block) follows `model::dropout`: given one key per example, each
//! example's masks come from a generator seeded by (seed, key, site), so they do not depend on
//! the batch the example is in, nor on how far that batch is padded.

use std::collections::HashMap;
use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_transformers::models::bert::{Config, HiddenAct};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::error::{EncoderError, Result};
use super::files;
use crate::rng::{stream, tag};

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
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
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

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

struct Norm {
    w: Var,
    b: Var,
    eps: f64,
}

impl Norm {
    /// Layer norm over the last dimension, biased variance (as PyTorch).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
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
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Self::build(config, dropout, seed, dtype, device, |name, shape| {
            let t = tensors
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| EncoderError::Run(format!("no tensor {prefix}{name}")))?;
            if t.dims() != shape {
                return Err(EncoderError::Run(format!(
                    "tensor {prefix}{name} is {:?}, the configuration makes it {shape:?}",
                    t.dims()
                )));
            }
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
            let values: Vec<f64> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if name.ends_with("LayerNorm.weight") {
                vec![1.0; n]
            } else {
                let mut rng = stream(&[tag::INIT, seed, ENCODER_STREAM, index]);
                (0..n).map(|_| std * normal(&mut rng)).collect()
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
        check_config(config)?;
        dropout.check().map_err(EncoderError::Run)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut params = Vec::new();
        let mut var = |name: String, shape: &[usize]| -> Result<Var> {
            let t = source(&name, shape)?;
            // `Var::from_tensor` of a variable shares its storage, so that training this
            // model would change the caller's tensors too.
            let t = if t.is_variable() { t.copy()? } else { t };
            let v = Var::from_tensor(&t)?;
            params.push((name, v.clone()));
            Ok(v)
        };
        let words = var(
            "embeddings.word_embeddings.weight".into(),
            &[config.vocab_size, h],
        )?;
        let positions = var(
            "embeddings.position_embeddings.weight".into(),
            &[config.max_position_embeddings, h],
        )?;
        let token_types = var(
            "embeddings.token_type_embeddings.weight".into(),
            &[config.type_vocab_size, h],
        )?;
        let eps = config.layer_norm_eps;
        let embed_norm = norm(&mut var, "embeddings.LayerNorm", h, eps)?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            blocks.push(Block {
                query: dense(&mut var, &format!("{p}.attention.self.query"), h, h)?,
                key: dense(&mut var, &format!("{p}.attention.self.key"), h, h)?,
                value: dense(&mut var, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: dense(&mut var, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&mut var, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                up: dense(&mut var, &format!("{p}.intermediate.dense"), i, h)?,
                down: dense(&mut var, &format!("{p}.output.dense"), h, i)?,
                out_norm: norm(&mut var, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
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
    /// key in `keys` (one per row) or, without keys, from one running stream.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let (n, t) = self.check_input(ids, mask, keys)?;
        let h = self.hidden;
        let x = self
            .words
            .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
            .reshape((n, t, h))?
            .broadcast_add(&self.positions.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_types.narrow(0, 0, 1)?)?;
        let x = self.norm.forward(&x)?;
        let p = self.dropout;
        let drop = |x: &Tensor, prob: f64, site: Site| {
            self.apply_dropout(x, n, t, prob, site, train, keys)
        };
        let mut x = drop(&x, p.hidden, Site::Tokens(0))?.reshape((n * t, h))?;
        // Additive mask: 0 for tokens, the lowest f32 for padding (as transformers), whose
        // exponential is 0 in f32 and f64 alike.
        let bias = match mask {
            Some(m) => Some(
                ((1.0 - m.to_dtype(self.dtype)?)? * f64::from(f32::MIN))?.reshape((n, 1, 1, t))?,
            ),
            None => None,
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for (l, b) in self.blocks.iter().enumerate() {
            let site = 1 + 3 * l as u64;
            let split = |d: &Dense| -> candle_core::Result<Tensor> {
                d.forward(&x)?
                    .reshape((n, t, self.heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(&b.query)?, split(&b.key)?, split(&b.value)?);
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(bias) = &bias {
                scores = scores.broadcast_add(bias)?;
            }
            let probs = drop(&softmax(&scores)?, p.attention, Site::Attention(site))?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n * t, h))?;
            let attn = drop(&b.attn_out.forward(&ctx)?, p.hidden, Site::Tokens(site + 1))?;
            let a = b.attn_norm.forward(&(attn + &x)?)?;
            let down = b.down.forward(&gelu_erf(&b.up.forward(&a)?)?)?;
            let down = drop(&down, p.hidden, Site::Tokens(site + 2))?;
            x = b.out_norm.forward(&(down + &a)?)?;
        }
        Ok(x.reshape((n, t, h))?)
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
        n: usize,
        t: usize,
        p: f64,
        site: Site,
        train: bool,
        keys: Option<&[u64]>,
    ) -> candle_core::Result<Tensor> {
        if !train || p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - p;
        let per_row = x.elem_count() / n;
        let mut mask = Vec::with_capacity(x.elem_count());
        let mut draw = |rng: &mut ChaCha8Rng, count: usize| {
            mask.extend((0..count).map(|_| u8::from(f64::from(rng.gen::<f32>()) < keep)));
        };
        match keys {
            Some(keys) => {
                let (id, attention) = match site {
                    Site::Tokens(id) => (id, false),
                    Site::Attention(id) => (id, true),
                };
                for &key in keys {
                    let mut rng = stream(&[tag::DROPOUT, self.seed, ENCODER_STREAM, key, id]);
                    if attention {
                        let pos = self.max_positions as u128;
                        for row in 0..(self.heads * t) as u128 {
                            let (head, query) = (row / t as u128, row % t as u128);
                            rng.set_word_pos((head * pos + query) * pos);
                            draw(&mut rng, t);
                        }
                    } else {
                        draw(&mut rng, per_row);
                    }
                }
            }
            None => {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                draw(&mut rng, x.elem_count());
            }
        }
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?
            .to_dtype(x.dtype())?
            .affine(1.0 / keep, 0.0)?;
        x.mul(&mask)
    }
}

/// Makes a [`Var`] of the named weight and records it.
type MakeVar<'a> = dyn FnMut(String, &[usize]) -> Result<Var> + 'a;

fn dense(var: &mut MakeVar, name: &str, out: usize, inp: usize) -> Result<Dense> {
    Ok(Dense {
        w: var(format!("{name}.weight"), &[out, inp])?,
        b: var(format!("{name}.bias"), &[out])?,
    })
}

fn norm(var: &mut MakeVar, name: &str, width: usize, eps: f64) -> Result<Norm> {
    Ok(Norm {
        w: var(format!("{name}.weight"), &[width])?,
        b: var(format!("{name}.bias"), &[width])?,
        eps,
    })
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
    let e = x
        .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `0.5 x (1 + erf(x / √2))`.
fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mul(&(((x * FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}
