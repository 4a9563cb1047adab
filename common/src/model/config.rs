//! The shape of a model, as parts: an input that turns token ids into vectors, a sequence
//! encoder that turns a sentence's vectors into one vector, and one or more heads that turn
//! that vector into class scores. Saved in `model.json` (model format 2) and sent to every
//! worker in the run spec.
//!
//! Model format 1 stored the seed's classifier as one flat record ([`FlatConfig`]); it still
//! reads, and converts to the same parts with the same parameters.

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub input: InputConfig,
    /// A pretrained transformer between the input's word vectors and the sequence encoder,
    /// trained with the rest (`--encoder-mode finetune`); the input is then its word table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerConfig>,
    pub sequence: SequenceConfig,
    /// At least one; head 0 is the one a batch uses unless it names another.
    pub heads: Vec<HeadConfig>,
}

/// What turns token ids into vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputConfig {
    /// An embedding table of `vocab_size` rows (PAD 0 and UNK 1 included) and `dim` columns,
    /// trained unless `frozen` (e.g. pretrained vectors kept as they are).
    Embedding {
        vocab_size: usize,
        dim: usize,
        #[serde(default)]
        frozen: bool,
    },
    /// A frozen encoder's token vectors, `dim` wide; `vocab_size` bounds its (WordPiece) ids.
    EncoderFeatures { vocab_size: usize, dim: usize },
}

/// A BERT-family encoder whose weights are part of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Its `config.json`, as the encoder ships it (dropout included).
    pub config: serde_json::Value,
    /// How many blocks train, from the top (the embeddings and the blocks below stay as they
    /// are, and run without dropout); `None`: every weight trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_layers: Option<usize>,
}

impl TransformerConfig {
    /// The configuration as candle reads it.
    pub fn bert(&self) -> Result<candle_transformers::models::bert::Config> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| ModelError::Config(format!("not a BERT configuration: {e}")))
    }

    /// The dropout probabilities its configuration gives.
    pub fn dropout(&self) -> Result<crate::encoder::trainable::DropoutProbs> {
        crate::encoder::trainable::DropoutProbs::from_config(&self.config)
            .map_err(ModelError::Config)
    }

    /// The first stage that trains (see [`crate::encoder::trainable::Pass`]).
    pub fn trained_from(&self) -> Result<usize> {
        let layers = self.bert()?.num_hidden_layers;
        Ok(match self.trained_layers {
            None => 0,
            Some(k) => layers + 1 - k.min(layers),
        })
    }
}

/// What turns a sentence's token vectors into one vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SequenceConfig {
    /// The seed's bidirectional LSTM: `hidden_dim` units per direction, `layers` stacked,
    /// `dropout` between layers in training.
    Bilstm {
        hidden_dim: usize,
        layers: usize,
        #[serde(default)]
        dropout: f32,
    },
    /// The mean of the sentence's token vectors (padding excluded): the usual head of a
    /// fine-tuned encoder, and the reference's (`torch_finetune.py --head mean`).
    MeanPool,
}

/// A linear layer from the sentence vector to `num_classes` scores, after `dropout` in
/// training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub num_classes: usize,
    #[serde(default)]
    pub dropout: f32,
}

impl InputConfig {
    /// The ids it accepts run from 0 to `vocab_size() - 1`.
    pub fn vocab_size(&self) -> usize {
        match *self {
            InputConfig::Embedding { vocab_size, .. } => vocab_size,
            InputConfig::EncoderFeatures { vocab_size, .. } => vocab_size,
        }
    }

    /// The width of the vectors it gives.
    pub fn dim(&self) -> usize {
        match *self {
            InputConfig::Embedding { dim, .. } | InputConfig::EncoderFeatures { dim, .. } => dim,
        }
    }
}

impl SequenceConfig {
    /// The width of the sentence vector, over `input`-wide token vectors.
    pub fn output_dim(&self, input: usize) -> usize {
        match *self {
            SequenceConfig::Bilstm { hidden_dim, .. } => 2 * hidden_dim,
            SequenceConfig::MeanPool => input,
        }
    }
}

impl ModelConfig {
    pub fn vocab_size(&self) -> usize {
        self.input.vocab_size()
    }

    /// Classes over all heads. A model's labels are one list in which each head owns the next
    /// `num_classes` (head 0 the first): with several heads (tasks), a label names its head.
    pub fn num_classes(&self) -> usize {
        self.heads.iter().map(|h| h.num_classes).sum()
    }

    /// Where head `head`'s labels start in the model's label list.
    pub fn head_offset(&self, head: usize) -> usize {
        self.heads.iter().take(head).map(|h| h.num_classes).sum()
    }

    /// The head that owns label `label`, and the label's index within that head.
    pub fn head_of(&self, label: u32) -> Option<(usize, u32)> {
        let mut start = 0u32;
        for (k, h) in self.heads.iter().enumerate() {
            let end = start + h.num_classes as u32;
            if label < end {
                return Some((k, label - start));
            }
            start = end;
        }
        None
    }

    /// Whether the input is a frozen encoder's vectors, which the worker must load.
    pub fn reads_encoder(&self) -> bool {
        matches!(self.input, InputConfig::EncoderFeatures { .. })
    }

    pub fn validate(&self) -> Result<()> {
        let input_ok = self.input.vocab_size() >= 2 && self.input.dim() >= 1;
        let sequence_ok = match self.sequence {
            SequenceConfig::Bilstm {
                hidden_dim,
                layers,
                dropout,
            } => hidden_dim >= 1 && layers >= 1 && (0.0..1.0).contains(&dropout),
            SequenceConfig::MeanPool => true,
        };
        if let Some(t) = &self.transformer {
            let bert = t.bert()?;
            t.dropout()?;
            if bert.hidden_size != self.input.dim() || bert.vocab_size != self.input.vocab_size() {
                return Err(ModelError::Config(format!(
                    "a transformer of width {} over {} words reads an input of {} × {}",
                    bert.hidden_size,
                    bert.vocab_size,
                    self.input.vocab_size(),
                    self.input.dim()
                )));
            }
            if t.trained_layers
                .is_some_and(|k| k == 0 || k > bert.num_hidden_layers)
            {
                return Err(ModelError::Config(format!(
                    "{} of the transformer's {} blocks to train",
                    t.trained_layers.unwrap_or(0),
                    bert.num_hidden_layers
                )));
            }
            if !matches!(self.input, InputConfig::Embedding { .. }) {
                return Err(ModelError::Config(
                    "a transformer reads its own word table, not another encoder's vectors".into(),
                ));
            }
        }
        let heads_ok = !self.heads.is_empty()
            && self
                .heads
                .iter()
                .all(|h| h.num_classes >= 1 && (0.0..1.0).contains(&h.dropout));
        if input_ok && sequence_ok && heads_ok {
            Ok(())
        } else {
            Err(ModelError::Config(format!("{self:?}")))
        }
    }
}

/// The seed's classifier (embedding or encoder vectors → BiLSTM → one linear head) as one flat
/// record: what model format 1 stored, and the shortest way to write that model down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlatConfig {
    /// Rows of the embedding table, PAD (0) and UNK (1) included.
    pub vocab_size: usize,
    pub num_classes: usize,
    pub embedding_dim: usize,
    /// Units per direction.
    pub hidden_dim: usize,
    pub layers: usize,
    /// Between LSTM layers and before the linear layer, in training.
    pub dropout: f32,
    /// The BiLSTM reads a frozen encoder's token vectors (`embedding_dim` wide).
    pub encoder_features: bool,
    /// The embedding table is not trained.
    pub freeze_embedding: bool,
}

impl Default for FlatConfig {
    fn default() -> Self {
        Self {
            vocab_size: 10_000,
            num_classes: 2,
            embedding_dim: 100,
            hidden_dim: 200,
            layers: 1,
            dropout: 0.0,
            encoder_features: false,
            freeze_embedding: false,
        }
    }
}

impl FlatConfig {
    /// The same model as parts.
    pub fn parts(&self) -> ModelConfig {
        self.clone().into()
    }
}

impl From<FlatConfig> for ModelConfig {
    fn from(f: FlatConfig) -> Self {
        let input = if f.encoder_features {
            InputConfig::EncoderFeatures {
                vocab_size: f.vocab_size,
                dim: f.embedding_dim,
            }
        } else {
            InputConfig::Embedding {
                vocab_size: f.vocab_size,
                dim: f.embedding_dim,
                frozen: f.freeze_embedding,
            }
        };
        ModelConfig {
            input,
            transformer: None,
            sequence: SequenceConfig::Bilstm {
                hidden_dim: f.hidden_dim,
                layers: f.layers,
                dropout: f.dropout,
            },
            heads: vec![HeadConfig {
                num_classes: f.num_classes,
                dropout: f.dropout,
            }],
        }
    }
}

impl Default for ModelConfig {
    /// The seed's model over a 10,000-word vocabulary, two classes.
    fn default() -> Self {
        FlatConfig::default().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_record_becomes_the_same_parts() {
        let flat: FlatConfig = serde_json::from_str(
            r#"{"vocab_size": 50, "num_classes": 6, "embedding_dim": 8, "hidden_dim": 4,
                "layers": 2, "dropout": 0.25, "encoder_features": false, "freeze_embedding": true}"#,
        )
        .unwrap();
        let parts = ModelConfig::from(flat);
        assert_eq!(parts.vocab_size(), 50);
        assert_eq!(parts.num_classes(), 6);
        assert_eq!(
            parts.input,
            InputConfig::Embedding {
                vocab_size: 50,
                dim: 8,
                frozen: true
            }
        );
        assert_eq!(parts.sequence.output_dim(8), 8);
        assert_eq!(parts.heads[0].dropout, 0.25);
        let json = serde_json::to_value(&parts).unwrap();
        assert_eq!(json["input"]["kind"], "embedding");
        assert_eq!(json["sequence"]["kind"], "bilstm");
        let back: ModelConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, parts);
    }

    #[test]
    fn a_model_needs_a_head() {
        let mut c = ModelConfig::default();
        c.validate().unwrap();
        c.heads.clear();
        assert!(c.validate().is_err());
    }
}
