//! What a worker needs to know about the run it joins: the model's shape, the optimizer and
//! the seed every replica initialises from (so all start identical without shipping weights).

use serde::{Deserialize, Serialize};

use super::adam::AdamConfig;
use crate::encoder::EncoderRef;
use crate::model::ModelConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: ModelConfig,
    pub adam: AdamConfig,
    pub seed: u64,
    /// Per-class loss weights (index = label id); `None` weighs every example alike.
    #[serde(default)]
    pub class_weights: Option<Vec<f32>>,
    /// The encoder of `--encoder`: workers load it when the model reads its vectors
    /// (`model.reads_encoder()`); otherwise only its tokenizer was used, by the coordinator.
    #[serde(default)]
    pub encoder: Option<EncoderRef>,
    /// Bytes for the vectors of augmented sentences on each worker.
    #[serde(default)]
    pub encoder_cache_bytes: usize,
    /// The run's training sources (examples name theirs by index): each step sums its figures
    /// per source across the workers.
    #[serde(default = "one")]
    pub sources: u32,
}

fn one() -> u32 {
    1
}
