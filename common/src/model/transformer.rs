//! The fine-tuned encoder as a part of the model: a pretrained BERT-family transformer between
//! the input's word vectors and the sequence encoder, whose weights train with the rest
//! (`--encoder-mode finetune`).
//!
//! Its word-embedding table is the input's table, gathered by hand as any table is, so that
//! its gradient stays the rows a batch touched; every other weight is a dense parameter of
//! the groups below. With `trained_layers`, the stages below the trained blocks are a frozen
//! group: they run without dropout and outside autograd.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use super::config::TransformerConfig;
use super::error::{ModelError, Result};
use super::init::normal;
use super::mode::Mode;
use super::params::Shapes;
use crate::encoder::trainable::{weight_shapes, CutPass, Pass, Start, TrainableBert};

/// The group of the weights that train, and the prefix of every weight's name in the model
/// (`encoder.` + the Hugging Face name without `bert.`).
pub(crate) const GROUP: &str = "encoder";
/// The group of the stages that stay as they are (`--finetune-layers`).
pub(crate) const FROZEN_GROUP: &str = "encoder_frozen";
/// The Hugging Face name of the word table, which the model keeps as its input's table.
pub const WORD_TABLE: &str = "embeddings.word_embeddings.weight";

/// The model's name of the transformer's weight `hf` (Hugging Face's, without `bert.`).
pub fn model_name(hf: &str) -> String {
    format!("{GROUP}.{hf}")
}

/// The stage a weight belongs to: 0 the embeddings, l + 1 block l (see [`Pass`]).
pub(crate) fn stage(hf: &str) -> usize {
    hf.strip_prefix("encoder.layer.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|l| l.parse::<usize>().ok())
        .map_or(0, |l| l + 1)
}

/// Its weights but the word table, by their model names: (frozen, trained), each in the order
/// of the computation.
pub(crate) fn params(config: &TransformerConfig) -> Result<(Shapes, Shapes)> {
    let from = config.trained_from()?;
    let (mut frozen, mut trained) = (Vec::new(), Vec::new());
    for (hf, shape) in weight_shapes(&config.bert()?) {
        if hf == WORD_TABLE {
            continue;
        }
        match stage(&hf) >= from {
            true => trained.push((model_name(&hf), shape)),
            false => frozen.push((model_name(&hf), shape)),
        }
    }
    Ok((frozen, trained))
}

/// BERT's initialisation of the weight `name`: N(0, `std`), biases 0, norms the identity.
pub(crate) fn init(name: &str, n: usize, std: f64, rng: &mut impl Rng) -> Vec<f32> {
    match Start::of(name) {
        Start::Zeros => vec![0.0; n],
        Start::Ones => vec![1.0; n],
        Start::Normal => (0..n).map(|_| std as f32 * normal(rng)).collect(),
    }
}

pub(crate) struct Transformer {
    bert: TrainableBert,
    trained_from: usize,
}

impl Transformer {
    /// The part over the model's variables: `table` the input's, the rest from `vars`.
    pub(crate) fn build(
        config: &TransformerConfig,
        table: &Var,
        seed: u64,
        vars: &HashMap<String, Var>,
        device: &Device,
    ) -> Result<Self> {
        let bert = TrainableBert::with_vars(
            &config.bert()?,
            config.dropout()?,
            seed,
            DType::F32,
            device,
            |hf, _| match hf {
                WORD_TABLE => Ok(table.clone()),
                _ => vars.get(&model_name(hf)).cloned().ok_or_else(|| {
                    crate::encoder::EncoderError::Run(format!(
                        "missing parameter {}",
                        model_name(hf)
                    ))
                }),
            },
        )
        .map_err(|e| ModelError::Config(e.to_string()))?;
        Ok(Self {
            bert,
            trained_from: config.trained_from()?,
        })
    }

    /// The last layer's vectors (B × T × H) of word vectors `x` (B × T × H), row b valid for
    /// `lengths[b]` positions; in training, dropout drawn from the rows' `keys`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let pass = match mode {
            Mode::Train => self.training(),
            Mode::Eval => Pass::INFERENCE,
        };
        self.bert
            .forward_words(x, Some(lengths), pass, keys)
            .map_err(|e| ModelError::Batch(e.to_string()))
    }

    /// The training pass of [`Transformer::forward`], cut at the end of every stage that
    /// trains, for a backward pass in segments.
    pub(crate) fn forward_cut(
        &self,
        x: &Tensor,
        lengths: &[usize],
        keys: Option<&[u64]>,
    ) -> Result<CutPass> {
        self.bert
            .forward_words_cut(x, Some(lengths), self.training(), keys)
            .map_err(|e| ModelError::Batch(e.to_string()))
    }

    fn training(&self) -> Pass {
        Pass {
            dropout: true,
            trained_from: Some(self.trained_from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_blocks() {
        assert_eq!(stage("embeddings.LayerNorm.weight"), 0);
        assert_eq!(stage("encoder.layer.0.attention.self.query.weight"), 1);
        assert_eq!(stage("encoder.layer.11.output.dense.bias"), 12);
    }
}
