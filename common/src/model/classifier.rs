//! The text classifier, assembled from parts: an [`Input`] (token ids to vectors), a
//! [`SequenceEncoder`] (vectors to one sentence vector) and one or more [`Head`]s (sentence
//! vector to class scores); initialised as PyTorch initialises the same layers,
//! deterministically from a seed, and saved as safetensors. Outside this folder the model is
//! its [`ParamGroup`]s and its forward and backward passes.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::batch::Batch;
use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::gradients::{DeviceGradients, Gradients, SparseRows};
use super::head::{self, Head};
use super::init::uniform;
use super::input::Input;
use super::mode::Mode;
use super::params::{dense_len, GroupKind, GroupOptim, ParamGroup, Shapes};
use super::persist::{tensor_pieces, to_safetensors, write_bytes_atomically, Piece};
use super::segments::{self, Bucket};
use super::sequence::{self, SequenceEncoder};
use super::transformer::{self, Transformer};
use crate::encoder::trainable::{pretrained_tensor, weight_shapes, Cut};
use crate::encoder::Encoder;

pub use super::input::EMBEDDING;

/// Rows per slice in [`Classifier::logits`]: the op's buffers grow with rows × length, and
/// an evaluation batch of hundreds of long rows would otherwise need hundreds of megabytes.
pub const EVAL_ROWS: usize = 32;

pub struct Classifier {
    config: ModelConfig,
    device: Device,
    varmap: VarMap,
    input: Input,
    transformer: Option<Transformer>,
    sequence: SequenceEncoder,
    heads: Vec<Head>,
    /// The input's table first, then the transformer, the sequence encoder and each head: the
    /// dense groups' order is the order of the flat gradient vector.
    groups: Vec<ParamGroup>,
    /// The flat dense gradient's buckets, in the order the backward pass completes them.
    pub(super) buckets: Vec<Bucket>,
}

/// A training forward pass: the scores of each head the batch's rows use, and what backward
/// needs to run in segments and hand back the input's gradient.
pub struct Forward {
    pub scored: Vec<Scored>,
    /// The embedded batch as a leaf of its own when the input trains, so that backward stops
    /// there and hands us dX; otherwise it is a constant and backward computes no dX at all.
    pub(super) leaf: Option<Var>,
    /// The fine-tuned encoder's trained stages, cut at their ends, bottom first.
    pub(super) cuts: Vec<Cut>,
    /// The leaf the sequence encoder starts from, above the last cut.
    pub(super) top: Option<Tensor>,
}

impl Forward {
    /// What the backward pass needs: the cuts, the top's leaf and the input's leaf. The scores
    /// are dropped: the loss holds the top's graph.
    fn into_pass(self) -> (Vec<Cut>, Option<Tensor>, Option<Var>) {
        (self.cuts, self.top, self.leaf)
    }
}

/// The logits (R × C) one head gives the batch's rows that are its own.
pub struct Scored {
    pub head: usize,
    /// The rows, in batch order; `None`: every row, as with a single head.
    pub rows: Option<Vec<usize>>,
    pub logits: Tensor,
}

/// One part's dense parameters: its group's name, the parameters' names and shapes, how
/// they are drawn, and whether they train.
struct DensePart {
    group: String,
    shapes: Shapes,
    init: Init,
    frozen: bool,
    /// Part of the fine-tuned encoder.
    pretrained: bool,
}

/// How a part's weights are first drawn.
#[derive(Clone, Copy)]
enum Init {
    /// PyTorch's LSTM and linear layers: U(±1/√fan).
    Uniform { fan: usize },
    /// BERT's: N(0, std), biases 0, norms the identity.
    Bert { std: f64 },
}

/// The dense parts in gradient order: the transformer (its frozen stages, then those that
/// train), the sequence encoder, then each head. A part without parameters has no group.
fn dense_parts(config: &ModelConfig) -> Result<Vec<DensePart>> {
    let mut parts = Vec::new();
    if let Some(t) = &config.transformer {
        let std = t.bert()?.initializer_range;
        let (frozen, trained) = transformer::params(t)?;
        for (group, shapes, frozen) in [
            (transformer::FROZEN_GROUP, frozen, true),
            (transformer::GROUP, trained, false),
        ] {
            parts.push(DensePart {
                group: group.into(),
                shapes,
                init: Init::Bert { std },
                frozen,
                pretrained: true,
            });
        }
    }
    let (shapes, fan) = sequence::params(&config.sequence, config.input.dim());
    parts.push(DensePart {
        group: sequence::GROUP.to_string(),
        shapes,
        init: Init::Uniform { fan },
        frozen: false,
        pretrained: false,
    });
    let width = config.sequence.output_dim(config.input.dim());
    for (k, h) in config.heads.iter().enumerate() {
        let (shapes, fan) = head::params(h, k, width);
        parts.push(DensePart {
            group: head::group(k),
            shapes,
            init: Init::Uniform { fan },
            frozen: false,
            pretrained: false,
        });
    }
    parts.retain(|p| !p.shapes.is_empty());
    Ok(parts)
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
            Input::init(&config.input, &mut rng, device, &mut vars)?;
            for part in dense_parts(config)? {
                for (name, shape) in part.shapes {
                    let n = shape.iter().product();
                    let data = match part.init {
                        Init::Uniform { fan } => uniform(n, fan, &mut rng),
                        Init::Bert { std } => transformer::init(&name, n, std, &mut rng),
                    };
                    vars.insert(name, Var::from_vec(data, shape, device)?);
                }
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
        let (input, dense, transformer) = {
            let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            let get = |name: &str| {
                vars.get(name)
                    .cloned()
                    .ok_or_else(|| ModelError::Config(format!("missing parameter {name}")))
            };
            let dense = dense_parts(config)?
                .into_iter()
                .map(|part| {
                    let params = part
                        .shapes
                        .into_iter()
                        .map(|(n, _)| get(&n).map(|v| (n, v)))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(ParamGroup {
                        name: part.group,
                        kind: GroupKind::Dense,
                        params,
                        optim: GroupOptim {
                            frozen: part.frozen,
                            pretrained: part.pretrained,
                            ..GroupOptim::default()
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let input = Input::from_vars(&config.input, &vars)?;
            let transformer = match &config.transformer {
                Some(t) => Some(Transformer::build(
                    t,
                    input.table(),
                    seed.wrapping_add(1),
                    &vars,
                    device,
                )?),
                None => None,
            };
            (input, dense, transformer)
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let sequence =
            SequenceEncoder::build(&config.sequence, config.input.dim(), seed, vb.clone())?;
        let width = config.sequence.output_dim(config.input.dim());
        let heads = config
            .heads
            .iter()
            .enumerate()
            .map(|(k, h)| Head::build(h, k, width, seed.wrapping_sub(1 + k as u64), &vb))
            .collect::<Result<Vec<_>>>()?;
        let mut groups = input.groups();
        if transformer.is_some() {
            // The input's table is the transformer's word table.
            groups.iter_mut().for_each(|g| g.optim.pretrained = true);
        }
        groups.extend(dense);
        let buckets = segments::plan(&groups);
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            varmap,
            input,
            transformer,
            sequence,
            heads,
            groups,
            buckets,
        })
    }

    /// Runs the ops every device has, on the CPU too, instead of the CPU's fused LSTM: the
    /// path an accelerator takes, run where the tests can check it. (A fine-tuned encoder's
    /// fused attention and GELU stay: they are ordinary ops' equals, checked on their own.)
    pub fn use_portable_ops(&mut self) {
        self.sequence.use_portable_ops();
    }

    /// Gives a model that reads an encoder's vectors the encoder.
    pub fn attach_encoder(&mut self, encoder: Arc<Encoder>) -> Result<()> {
        self.input.attach_encoder(encoder)
    }

    pub fn encoder(&self) -> Option<&Arc<Encoder>> {
        self.input.encoder()
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

    /// Sets the transformer's weights (and the input's table, its word table) from a
    /// Hugging Face BERT checkpoint's tensors, named with or without `bert.`.
    pub fn load_encoder_weights(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        let t = self.config.transformer.as_ref().ok_or_else(|| {
            ModelError::Config("this model has no transformer to load weights into".into())
        })?;
        for (hf, shape) in weight_shapes(&t.bert()?) {
            let found = pretrained_tensor(tensors, &hf, &shape)
                .map_err(|e| ModelError::Config(format!("the encoder: {e}")))?;
            let var = match hf.as_str() {
                transformer::WORD_TABLE => self.input.table(),
                _ => self.param(&transformer::model_name(&hf)).ok_or_else(|| {
                    ModelError::Config(format!(
                        "missing parameter {}",
                        transformer::model_name(&hf)
                    ))
                })?,
            };
            var.set(&found.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// The weights as safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let vars = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        to_safetensors(vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())))
    }

    /// The weights as the pieces of [`Classifier::to_bytes`]'s file, each tensor read only
    /// when its turn comes (for sending the state without a buffer of all of it).
    pub fn to_pieces(&self) -> Result<Vec<Piece<'static>>> {
        let vars = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        tensor_pieces(vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())))
    }

    /// Saves the weights as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_bytes_atomically(path, &self.to_bytes()?)
    }

    /// Overwrites rows of the embedding table (e.g. with pretrained word vectors).
    pub fn set_embedding_rows(&self, rows: &[(u32, Vec<f32>)]) -> Result<()> {
        self.input.set_rows(rows, &self.device)
    }

    /// Copies every weight of `other` (same shape, any device) into this model.
    pub fn copy_weights_from(&self, other: &Classifier) -> Result<()> {
        if other.config != self.config {
            return Err(ModelError::Config(format!(
                "copying weights of {:?} into {:?}",
                other.config, self.config
            )));
        }
        let params = |m: &Classifier| -> Vec<Var> {
            m.groups
                .iter()
                .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
                .collect()
        };
        for (dst, src) in params(self).iter().zip(params(other)) {
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

    /// The parameter groups: what the optimizer, the collective and checkpoints work on.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Elements in all dense groups: the length of the flat dense gradient.
    pub fn dense_len(&self) -> usize {
        dense_len(&self.groups)
    }

    /// The ranges of the flat dense gradient that [`Classifier::backward`] completes one after
    /// the other, in that order: the heads' and the sequence encoder's first, then each trained
    /// stage of a fine-tuned encoder from the top down; one range without such an encoder. A
    /// frozen group's range is in none (its gradient is zeros everywhere).
    pub fn buckets(&self) -> Vec<Range<usize>> {
        self.buckets.iter().map(|b| b.range.clone()).collect()
    }

    /// Where the parameter called `name` lies in the flat dense gradient.
    pub fn dense_range(&self, name: &str) -> Option<Range<usize>> {
        let mut offset = 0;
        for group in self.groups.iter().filter(|g| g.is_dense()) {
            for (n, var) in &group.params {
                if n == name {
                    return Some(offset..offset + var.elem_count());
                }
                offset += var.elem_count();
            }
        }
        None
    }

    /// The parameter called `name` (as in the weights file).
    pub fn param(&self, name: &str) -> Option<&Var> {
        self.groups
            .iter()
            .flat_map(|g| &g.params)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The embedding table (V × E).
    pub fn embedding(&self) -> &Var {
        self.input.table()
    }

    /// The input vectors of the batch's tokens (B × T × E), outside autograd.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.input.embed(batch, &self.device)
    }

    /// Logits (B × C) of head `head` for embedded tokens `x` (B × T × E), with one dropout key
    /// per row when `keys` is given: each row's dropout masks then depend on its key alone
    /// (see `dropout.rs`).
    pub fn forward_embedded(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
        head: usize,
    ) -> Result<Tensor> {
        let head = self.head(head)?;
        let encoded = self.encode(x, lengths, mode, keys)?;
        head.forward(&encoded, mode, keys)
    }

    fn head(&self, k: usize) -> Result<&Head> {
        self.heads.get(k).ok_or_else(|| {
            ModelError::Batch(format!("head {k} of a model with {}", self.heads.len()))
        })
    }

    /// The sentence vectors (B × D) of embedded tokens `x`: through the transformer, when the
    /// model has one, then the sequence encoder.
    fn encode(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        match &self.transformer {
            Some(t) => {
                let x = t.forward(x, lengths, mode, keys)?;
                self.sequence.forward(&x, lengths, mode, keys)
            }
            None => self.sequence.forward(x, lengths, mode, keys),
        }
    }

    /// The training forward pass over `batch`, on the head it names, cut for a backward pass
    /// in segments (see [`Classifier::backward`]).
    pub fn forward_train(&self, batch: &Batch) -> Result<Forward> {
        self.forward_train_cut(batch, true)
    }

    /// `cut` false: one graph, for checking the cut one against.
    pub(crate) fn forward_train_cut(&self, batch: &Batch, cut: bool) -> Result<Forward> {
        let embedded = self.embed(batch)?;
        let leaf = match self.input.trains() {
            true => Some(Var::from_tensor(&embedded)?),
            false => None,
        };
        let x = leaf.as_ref().map_or(&embedded, Var::as_tensor);
        let (lengths, keys) = (batch.lengths(), batch.keys());
        let (encoded, cuts, top) = match (&self.transformer, cut) {
            (Some(t), true) => {
                let pass = t.forward_cut(x, lengths, keys)?;
                let encoded = self
                    .sequence
                    .forward(&pass.output, lengths, Mode::Train, keys)?;
                (encoded, pass.cuts, pass.top)
            }
            _ => (
                self.encode(x, lengths, Mode::Train, keys)?,
                Vec::new(),
                None,
            ),
        };
        if self.heads.len() == 1 || batch.labels().is_empty() {
            let scored = vec![Scored {
                head: batch.head(),
                rows: None,
                logits: self
                    .head(batch.head())?
                    .forward(&encoded, Mode::Train, keys)?,
            }];
            return Ok(Forward {
                scored,
                leaf,
                cuts,
                top,
            });
        }
        // Several tasks: the sentence vectors are computed once, and each head scores the rows
        // whose labels are its own, so an example's loss reaches only its task's head.
        let mut scored = Vec::new();
        for (head, rows) in self.rows_by_head(batch.labels())? {
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let idx = Tensor::from_vec(idx, rows.len(), &self.device)?;
            let own_keys: Option<Vec<u64>> = keys.map(|k| rows.iter().map(|&r| k[r]).collect());
            let logits = self.heads[head].forward(
                &encoded.index_select(&idx, 0)?,
                Mode::Train,
                own_keys.as_deref(),
            )?;
            scored.push(Scored {
                head,
                rows: Some(rows),
                logits,
            });
        }
        Ok(Forward {
            scored,
            leaf,
            cuts,
            top,
        })
    }

    /// The rows of each head that owns some of `labels`, heads in order, rows in batch order.
    pub fn rows_by_head(&self, labels: &[u32]) -> Result<Vec<(usize, Vec<usize>)>> {
        let mut rows = vec![Vec::new(); self.heads.len()];
        for (r, &label) in labels.iter().enumerate() {
            let (head, _) = self.config.head_of(label).ok_or_else(|| {
                ModelError::Batch(format!(
                    "label {label} ≥ number of classes {}",
                    self.config.num_classes()
                ))
            })?;
            rows[head].push(r);
        }
        Ok(rows
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .collect())
    }

    /// The backward pass from `loss` (a scalar of `forward`'s scores), in segments: `dense`
    /// (the flat dense gradient, [`Classifier::dense_len`] zeros) is filled one of
    /// [`Classifier::buckets`] at a time, and each is handed to `ready` as soon as it is
    /// complete, so that it can be summed with other workers' while the pass goes on below it.
    /// Every bucket is handed on exactly once, in order. Returns the sparse groups' gradients:
    /// the table's rows the batch touched.
    pub fn backward<'a>(
        &self,
        forward: Forward,
        loss: &Tensor,
        batch: &Batch,
        dense: &'a mut [f32],
        ready: &mut dyn FnMut(&'a mut [f32]),
    ) -> Result<Vec<SparseRows>> {
        if dense.len() != self.dense_len() {
            return Err(ModelError::Gradients(format!(
                "{} places for {} dense gradients",
                dense.len(),
                self.dense_len()
            )));
        }
        let (cuts, top, leaf) = forward.into_pass();
        let dx = segments::backward(
            &self.buckets,
            loss,
            cuts,
            top,
            leaf.as_ref().map(Var::as_tensor),
            dense,
            ready,
        )?;
        let dx = match dx {
            Some(dx) => {
                let mut flat = vec![0f32; dx.elem_count()];
                segments::copy_into(&mut flat, &dx)?;
                Some(flat)
            }
            None => None,
        };
        Ok(vec![self.input.gradient(batch, dx.as_deref())])
    }

    /// [`Classifier::backward`]'s gradients, left on the model's device: one flat tensor per
    /// bucket, and the table's touched rows.
    pub fn backward_on_device(
        &self,
        forward: Forward,
        loss: &Tensor,
        batch: &Batch,
    ) -> Result<DeviceGradients> {
        let (cuts, top, leaf) = forward.into_pass();
        let (buckets, dx) = segments::backward_flat(
            &self.buckets,
            loss,
            cuts,
            top,
            leaf.as_ref().map(Var::as_tensor),
        )?;
        let tables = vec![self.input.gradient_on_device(batch, dx.as_ref())?];
        Ok(DeviceGradients {
            ranges: self.buckets(),
            buckets,
            tables,
        })
    }

    /// [`Classifier::backward`]'s gradients, all at once.
    pub fn gradients(&self, forward: Forward, loss: &Tensor, batch: &Batch) -> Result<Gradients> {
        let mut dense = vec![0f32; self.dense_len()];
        let sparse = self.backward(forward, loss, batch, &mut dense, &mut |_| {})?;
        Ok(Gradients { dense, sparse })
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
            parts.push(self.forward_embedded(&rows, lengths, Mode::Eval, None, batch.head())?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}
