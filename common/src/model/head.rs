//! A head: dropout, then a linear layer from the sentence vector to one task's class scores.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use super::config::HeadConfig;
use super::dropout::Dropout;
use super::error::Result;
use super::mode::Mode;
use super::params::Shapes;

pub(crate) struct Head {
    fc: Linear,
    dropout: Dropout,
}

/// The name of head `k`'s parameter group and the prefix of its parameters: `fc` for the first
/// (the name format 1 gave the seed's only head), `fc1`, `fc2`, … after it.
pub(crate) fn group(k: usize) -> String {
    match k {
        0 => "fc".into(),
        k => format!("fc{k}"),
    }
}

/// Names, shapes and initialisation fan of head `k`'s parameters over `input`-wide vectors.
pub(crate) fn params(config: &HeadConfig, k: usize, input: usize) -> (Shapes, usize) {
    let g = group(k);
    (
        vec![
            (format!("{g}.weight"), vec![config.num_classes, input]),
            (format!("{g}.bias"), vec![config.num_classes]),
        ],
        input,
    )
}

impl Head {
    /// Head `k` with its parameters read from `vb`; `seed` seeds its dropout.
    pub(crate) fn build(
        config: &HeadConfig,
        k: usize,
        input: usize,
        seed: u64,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let g = group(k);
        let fc = Linear::new(
            vb.get((config.num_classes, input), &format!("{g}.weight"))?,
            Some(vb.get(config.num_classes, &format!("{g}.bias"))?),
        );
        Ok(Self {
            fc,
            dropout: Dropout::new(config.dropout, seed),
        })
    }

    /// Class scores (B × C) of sentence vectors `x` (B × D).
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode, keys: Option<&[u64]>) -> Result<Tensor> {
        let x = self.dropout.forward_keyed(x, mode, keys)?;
        Ok(match mode {
            Mode::Train => self.fc.forward(&x)?,
            // Inference must not build an autograd graph over the parameters.
            Mode::Eval => {
                let fc = Linear::new(
                    self.fc.weight().detach(),
                    self.fc.bias().map(Tensor::detach),
                );
                fc.forward(&x)?
            }
        })
    }
}
