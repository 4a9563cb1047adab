//! The sequence encoder: a sentence's token vectors (B × T × E, right-padded) in, one vector
//! per sentence (B × D) out: the seed's BiLSTM, or the mean of the vectors.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::bilstm::{bilstm, bilstm_params, BiLstm};
use super::config::SequenceConfig;
use super::error::Result;
use super::mode::Mode;
use super::params::Shapes;

/// The name of its parameter group and the prefix of its parameters' names.
pub(crate) const GROUP: &str = "lstm";

pub(crate) enum SequenceEncoder {
    BiLstm(BiLstm),
    MeanPool,
}

/// Names, shapes and initialisation fan of the encoder's parameters over `input`-wide
/// vectors, in the fixed order of the flat gradient vector.
pub(crate) fn params(config: &SequenceConfig, input: usize) -> (Shapes, usize) {
    match *config {
        SequenceConfig::Bilstm {
            hidden_dim, layers, ..
        } => (
            bilstm_params(input, hidden_dim, layers)
                .into_iter()
                .map(|(n, s)| (format!("{GROUP}.{n}"), s))
                .collect(),
            hidden_dim,
        ),
        SequenceConfig::MeanPool => (Vec::new(), 0),
    }
}

impl SequenceEncoder {
    /// The encoder with its parameters read from `vb`; `seed` seeds its dropout.
    pub(crate) fn build(
        config: &SequenceConfig,
        input: usize,
        seed: u64,
        vb: VarBuilder,
    ) -> Result<Self> {
        match *config {
            SequenceConfig::Bilstm {
                hidden_dim,
                layers,
                dropout,
            } => Ok(Self::BiLstm(bilstm(
                input,
                hidden_dim,
                layers,
                dropout,
                seed,
                vb.pp(GROUP),
            )?)),
            SequenceConfig::MeanPool => Ok(Self::MeanPool),
        }
    }

    /// Runs the ops every device has, on the CPU too.
    pub(crate) fn use_portable_ops(&mut self) {
        if let Self::BiLstm(lstm) = self {
            lstm.use_portable_ops();
        }
    }

    /// Encodes `x` (row b valid for `lengths[b]` steps); in [`Mode::Train`] it records what
    /// backward needs and draws dropout from the rows' `keys`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        match self {
            Self::BiLstm(lstm) => lstm.forward_keyed(x, lengths, mode, keys),
            Self::MeanPool => mean_pool(x, lengths),
        }
    }
}

/// The mean of each row's first `lengths[b]` vectors: one product with weights 1/length on
/// the valid positions and 0 on the padding.
fn mean_pool(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
        return Err(super::error::ModelError::Batch(format!(
            "lengths {lengths:?} for {b} rows of {t} positions"
        )));
    }
    let weights: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 / l as f32 } else { 0.0 }))
        .collect();
    let weights = Tensor::from_vec(weights, (b, 1, t), x.device())?.to_dtype(x.dtype())?;
    Ok(weights.matmul(&x.contiguous()?)?.squeeze(1)?)
}
