//! The text classifier: Embedding(V, E) → BiLSTM(H) → Linear(2H, C), initialised as PyTorch
//! initialises the same layers, deterministically from a seed, and saved as safetensors.
//!
//! The embedding table is a parameter but not part of the autograd graph: rows are gathered
//! by hand (see [`Classifier::embed`]) so that its gradient can stay sparse.

use std::f64::consts::PI;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor, Var};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bilstm::{bilstm, bilstm_params, BiLstm};
use super::dropout::Dropout;
use super::error::{ModelError, Result};
use super::persist::{to_safetensors, write_bytes_atomically};
use crate::encoder::Encoder;
use crate::train::Batch;

/// Name of the embedding table in checkpoints.
pub const EMBEDDING: &str = "embedding.weight";

/// Rows per slice in [`Classifier::logits`]: the op's buffers grow with rows × length, and
/// an evaluation batch of hundreds of long rows would otherwise need hundreds of megabytes.
pub const EVAL_ROWS: usize = 32;

/// Training (dropout on, backward recorded) or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// The shape of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Rows of the embedding table, PAD (0) and UNK (1) included.
    pub vocab_size: usize,
    pub num_classes: usize,
    pub embedding_dim: usize,
    /// Units per direction.
    pub hidden_dim: usize,
    pub layers: usize,
    /// Between LSTM layers and before the linear layer, in training.
    pub dropout: f32,
    /// The BiLSTM reads a frozen encoder's token vectors (`embedding_dim` wide) instead of
    /// the embedding table, which then has a single unused row; `vocab_size` still bounds the
    /// (WordPiece) ids.
    pub encoder_features: bool,
    /// The embedding table is not trained (e.g. pretrained vectors kept as they are).
    pub freeze_embedding: bool,
}

impl Default for ModelConfig {
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

impl ModelConfig {
    fn validate(&self) -> Result<()> {
        let ok = self.vocab_size >= 2
            && self.num_classes >= 1
            && self.embedding_dim >= 1
            && self.hidden_dim >= 1
            && self.layers >= 1
            && (0.0..1.0).contains(&self.dropout);
        if ok {
            Ok(())
        } else {
            Err(ModelError::Config(format!("{self:?}")))
        }
    }

    /// Rows of the embedding table as stored: one placeholder row when the encoder's vectors
    /// replace it.
    pub fn table_rows(&self) -> usize {
        if self.encoder_features {
            1
        } else {
            self.vocab_size
        }
    }

    /// Whether training updates the embedding table.
    pub fn trains_embedding(&self) -> bool {
        !self.encoder_features && !self.freeze_embedding
    }

    /// Names and shapes of the dense parameters (all but the embedding), in the fixed order
    /// of the flat gradient vector.
    pub fn dense_params(&self) -> Vec<(String, Vec<usize>)> {
        let mut params: Vec<_> = bilstm_params(self.embedding_dim, self.hidden_dim, self.layers)
            .into_iter()
            .map(|(n, s)| (format!("lstm.{n}"), s))
            .collect();
        params.push((
            "fc.weight".into(),
            vec![self.num_classes, 2 * self.hidden_dim],
        ));
        params.push(("fc.bias".into(), vec![self.num_classes]));
        params
    }
}

pub struct Classifier {
    config: ModelConfig,
    device: Device,
    varmap: VarMap,
    embedding: Var,
    dense: Vec<(String, Var)>,
    lstm: BiLstm,
    dropout: Dropout,
    fc: Linear,
    /// The frozen encoder whose vectors replace the embedding table (`encoder_features`).
    encoder: Option<Arc<Encoder>>,
}

impl Classifier {
    /// A freshly initialised model on the CPU; the same seed gives the same weights.
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Self> {
        Self::new_on(config, seed, &Device::Cpu)
    }

    /// As [`Classifier::new`], on `device`.
    pub fn new_on(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        {
            let mut vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            let (v, e) = (config.table_rows(), config.embedding_dim);
            // nn.Embedding: N(0, 1), the padding row zero.
            let mut table: Vec<f32> = (0..v * e).map(|_| normal(&mut rng)).collect();
            table[..e].iter_mut().for_each(|x| *x = 0.0);
            vars.insert(EMBEDDING.into(), Var::from_vec(table, (v, e), device)?);
            for (name, shape) in config.dense_params() {
                // nn.LSTM: U(±1/√H) everywhere. nn.Linear: Kaiming-uniform with a = √5 for the
                // weight and U(±1/√fan_in) for the bias, which are the same bound.
                let fan = if name.starts_with("lstm.") {
                    config.hidden_dim
                } else {
                    2 * config.hidden_dim
                };
                let bound = 1.0 / (fan as f32).sqrt();
                let n = shape.iter().product();
                let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
                vars.insert(name, Var::from_vec(data, shape, device)?);
            }
        }
        Self::from_varmap(config, varmap, device, rng.gen())
    }

    fn from_varmap(
        config: &ModelConfig,
        varmap: VarMap,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let (embedding, dense) = {
            let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            let get = |name: &str| {
                vars.get(name)
                    .cloned()
                    .ok_or_else(|| ModelError::Config(format!("missing parameter {name}")))
            };
            let dense = config
                .dense_params()
                .into_iter()
                .map(|(n, _)| get(&n).map(|v| (n, v)))
                .collect::<Result<Vec<_>>>()?;
            (get(EMBEDDING)?, dense)
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let h = config.hidden_dim;
        let lstm = bilstm(
            config.embedding_dim,
            h,
            config.layers,
            config.dropout,
            seed,
            vb.pp("lstm"),
        )?;
        let fc = Linear::new(
            vb.get((config.num_classes, 2 * h), "fc.weight")?,
            Some(vb.get(config.num_classes, "fc.bias")?),
        );
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            varmap,
            embedding,
            dense,
            lstm,
            dropout: Dropout::new(config.dropout, seed.wrapping_sub(1)),
            fc,
            encoder: None,
        })
    }

    /// Gives a model of `encoder_features` shape the encoder whose vectors it reads.
    pub fn attach_encoder(&mut self, encoder: Arc<Encoder>) -> Result<()> {
        if !self.config.encoder_features {
            return Err(ModelError::Config(
                "this model reads its embedding table, not an encoder".into(),
            ));
        }
        if encoder.hidden() != self.config.embedding_dim {
            return Err(ModelError::Config(format!(
                "the encoder's vectors have {} dimensions but the model reads {}",
                encoder.hidden(),
                self.config.embedding_dim
            )));
        }
        self.encoder = Some(encoder);
        Ok(())
    }

    pub fn encoder(&self) -> Option<&Arc<Encoder>> {
        self.encoder.as_ref()
    }

    /// A model of shape `config` with the weights saved at `path`.
    pub fn load(config: &ModelConfig, path: &Path) -> Result<Self> {
        let mut model = Self::new(config, 0)?;
        model.load_weights(path)?;
        Ok(model)
    }

    /// Replaces the weights with those saved at `path` (names and shapes must match).
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        self.load_weights_bytes(&bytes)
            .map_err(|e| ModelError::Checkpoint {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }

    /// Replaces the weights with those in `bytes` (safetensors, as [`Classifier::to_bytes`]
    /// makes them; names and shapes must match).
    pub fn load_weights_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let vars = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in vars.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| ModelError::Config(format!("no tensor {name} in the weights")))?;
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// The weights as safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let vars = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        to_safetensors(vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())))
    }

    /// Saves the weights as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_bytes_atomically(path, &self.to_bytes()?)
    }

    /// Overwrites rows of the embedding table (e.g. with pretrained word vectors).
    pub fn set_embedding_rows(&self, rows: &[(u32, Vec<f32>)]) -> Result<()> {
        let (v, e) = (self.config.vocab_size, self.config.embedding_dim);
        let mut table = self
            .embedding
            .as_tensor()
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        for (id, row) in rows {
            let id = *id as usize;
            if id >= v || row.len() != e {
                return Err(ModelError::Config(format!(
                    "an embedding row {id} of width {} for a {v} × {e} table",
                    row.len()
                )));
            }
            table[id * e..(id + 1) * e].copy_from_slice(row);
        }
        let table = Tensor::from_vec(table, (v, e), &Device::Cpu)?.to_device(&self.device)?;
        Ok(self.embedding.set(&table)?)
    }

    /// Copies every weight of `other` (same shape, any device) into this model.
    pub fn copy_weights_from(&self, other: &Classifier) -> Result<()> {
        if other.config != self.config {
            return Err(ModelError::Config(format!(
                "copying weights of {:?} into {:?}",
                other.config, self.config
            )));
        }
        let pairs = std::iter::once((&self.embedding, &other.embedding)).chain(
            self.dense
                .iter()
                .zip(&other.dense)
                .map(|((_, a), (_, b))| (a, b)),
        );
        for (dst, src) in pairs {
            dst.set(&src.as_tensor().to_device(&self.device)?)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The embedding table (V × E).
    pub fn embedding(&self) -> &Var {
        &self.embedding
    }

    /// The dense parameters, in the order of the flat gradient vector.
    pub fn dense_params(&self) -> &[(String, Var)] {
        &self.dense
    }

    /// Elements in all dense parameters.
    pub fn dense_len(&self) -> usize {
        self.dense.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The embedding rows of the batch's tokens (B × T × E), gathered outside autograd;
    /// padding positions get the PAD row. With an encoder: its vectors of the batch.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = (batch.len(), batch.steps());
        let (v, e) = (self.config.vocab_size, self.config.embedding_dim);
        if let Some(&bad) = batch.ids().iter().find(|&&id| id as usize >= v) {
            return Err(ModelError::Batch(format!(
                "token id {bad} ≥ vocabulary size {v}"
            )));
        }
        if self.config.encoder_features {
            let encoder = self.encoder.as_ref().ok_or_else(|| {
                ModelError::Config(
                    "this model reads an encoder's vectors, but none is attached".into(),
                )
            })?;
            return encoder
                .features(batch, &self.device)
                .map_err(|e| ModelError::Batch(e.to_string()));
        }
        let (storage, layout) = self.embedding.storage_and_layout();
        let table = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
            _ => {
                drop(storage);
                let ids = Tensor::from_slice(batch.ids(), b * t, &self.device)?;
                let rows = self.embedding.detach().index_select(&ids, 0)?;
                return Ok(rows.reshape((b, t, e))?);
            }
        };
        let mut out = Vec::with_capacity(b * t * e);
        for &id in batch.ids() {
            let id = id as usize;
            out.extend_from_slice(&table[id * e..(id + 1) * e]);
        }
        drop(storage);
        Ok(Tensor::from_vec(out, (b, t, e), &self.device)?)
    }

    /// Logits (B × C) for embedded tokens `x` (B × T × E).
    pub fn forward_embedded(&self, x: &Tensor, lengths: &[usize], mode: Mode) -> Result<Tensor> {
        self.forward_embedded_keyed(x, lengths, mode, None)
    }

    /// As [`Classifier::forward_embedded`], with one dropout key per row: each row's dropout
    /// masks then depend on its key alone (see `dropout.rs`).
    pub fn forward_embedded_keyed(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let encoded = self.lstm.forward_keyed(x, lengths, mode, keys)?;
        let encoded = self.dropout.forward_keyed(&encoded, mode, keys)?;
        Ok(match mode {
            Mode::Train => self.fc.forward(&encoded)?,
            Mode::Eval => {
                let fc = Linear::new(
                    self.fc.weight().detach(),
                    self.fc.bias().map(Tensor::detach),
                );
                fc.forward(&encoded)?
            }
        })
    }

    /// Logits (B × C) of a batch, in inference mode. Large batches run in slices of
    /// [`EVAL_ROWS`] rows, each padded only to its own longest row.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = self.embed(batch)?;
        let mut parts = Vec::with_capacity(batch.len().div_ceil(EVAL_ROWS));
        for (k, lengths) in batch.lengths().chunks(EVAL_ROWS).enumerate() {
            let steps = lengths.iter().copied().max().unwrap_or(0);
            let rows = x
                .narrow(0, k * EVAL_ROWS, lengths.len())?
                .narrow(1, 0, steps)?;
            parts.push(self.forward_embedded(&rows, lengths, Mode::Eval)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()) as f32
}
