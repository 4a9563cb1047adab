//! The BERT forward pass the encoder runs: candle-transformers' `BertModel` computation
//! (same configuration type, weights and results: checked against it in
//! `common/tests/encoder.rs`), restated for inference speed on the CPU: one matrix product
//! for query, key and value; candle's fused softmax and layer norm; a vectorised GELU; and no
//! attention mask at all for a batch without padding.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm};
use candle_transformers::models::bert::{Config, HiddenAct};

use super::fused;

/// `x W^T + b` with W^T stored contiguous (in × out): the product then reads the weights
/// row-major instead of through a transposed view.
struct Linear {
    wt: Tensor,
    b: Tensor,
}

impl Linear {
    fn new(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        let b = b.ok_or_else(|| candle_core::Error::Msg("a dense layer without bias".into()))?;
        Ok(Self {
            wt: w.t()?.contiguous()?,
            b,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    words: Embedding,
    positions: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
}

impl Bert {
    /// The model from its safetensors tensors (names as in Hugging Face's BERT, with or
    /// without a `bert.` prefix).
    pub fn load(tensors: &HashMap<String, Tensor>, config: &Config) -> Result<Self> {
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!("only BERT models with the gelu activation are supported");
        }
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let get = |name: &str| -> Result<Tensor> {
            tensors
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {prefix}{name}")))?
                .to_dtype(DType::F32)
        };
        let linear = |name: &str| -> Result<Linear> {
            Linear::new(
                get(&format!("{name}.weight"))?,
                Some(get(&format!("{name}.bias"))?),
            )
        };
        let eps = config.layer_norm_eps;
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                get(&format!("{name}.weight"))?,
                get(&format!("{name}.bias"))?,
                eps,
            ))
        };
        let hidden = config.hidden_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let part = |w: &str| get(&format!("{p}.attention.self.{w}"));
            let qkv_w = Tensor::cat(
                &[
                    part("query.weight")?,
                    part("key.weight")?,
                    part("value.weight")?,
                ],
                0,
            )?;
            let qkv_b = Tensor::cat(
                &[part("query.bias")?, part("key.bias")?, part("value.bias")?],
                0,
            )?;
            layers.push(Layer {
                qkv: Linear::new(qkv_w, Some(qkv_b))?,
                attn_out: linear(&format!("{p}.attention.output.dense"))?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"))?,
                down: linear(&format!("{p}.output.dense"))?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            words: Embedding::new(get("embeddings.word_embeddings.weight")?, hidden),
            positions: get("embeddings.position_embeddings.weight")?,
            token_type: get("embeddings.token_type_embeddings.weight")?.narrow(0, 0, 1)?,
            norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
            head_dim: hidden / config.num_attention_heads,
            hidden,
        })
    }

    /// Last-layer vectors (n × T × hidden) of `ids` (n × T), every token of type 0; `mask`
    /// (n × T, 1 for a token, 0 for padding) is needed only when there is padding.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let h = self.hidden;
        let x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.norm.forward(&x)?.reshape((n * t, h))?;
        // Additive mask: 0 for tokens, the lowest f32 for padding (as transformers).
        let bias = match mask {
            Some(m) => Some(
                ((m.ones_like()? - m)?.to_dtype(DType::F32)? * f64::from(f32::MIN))?
                    .reshape((n, 1, 1, t))?,
            ),
            None => None,
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for l in &self.layers {
            let qkv = l
                .qkv
                .forward(&x)?
                .reshape((n, t, 3, self.heads, self.head_dim))?
                .permute((2, 0, 3, 1, 4))?;
            let q = (qkv.get(0)?.contiguous()? * scale)?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(b) = &bias {
                scores = scores.broadcast_add(b)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n * t, h))?;
            let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let up = gelu_erf(&l.up.forward(&a)?)?;
            x = l.out_norm.forward(&(l.down.forward(&up)? + &a)?)?;
        }
        x.reshape((n, t, h))
    }
}

/// `0.5 x (1 + erf(x / √2))`: the fused op on the CPU in f32, candle's elsewhere.
fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    match fused::applies(x) && x.dtype() == DType::F32 {
        true => fused::gelu_erf(x),
        false => x.gelu_erf(),
    }
}
