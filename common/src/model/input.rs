//! The model's input: token ids to vectors, from an embedding table (trained or frozen) or from
//! a frozen encoder.
//!
//! The table is a parameter but not part of the autograd graph: rows are gathered by hand (see
//! [`Input::embed`]) so that its gradient can stay sparse, one row per distinct token.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Storage, Tensor, Var};
use rand::Rng;

use super::batch::{Batch, PAD};
use super::config::InputConfig;
use super::error::{ModelError, Result};
use super::gradients::{SparseRows, TableRows};
use super::init::normal;
use super::params::{GroupKind, GroupOptim, ParamGroup};
use crate::encoder::Encoder;

/// Name of the embedding table in checkpoints.
pub const EMBEDDING: &str = "embedding.weight";

pub(crate) struct Input {
    config: InputConfig,
    /// V × E; with the encoder's vectors a single unused row, which models of format 1 hold
    /// and every model keeps, so that both formats have the same tensors.
    table: Var,
    /// The frozen encoder whose vectors replace the table ([`InputConfig::EncoderFeatures`]).
    encoder: Option<Arc<Encoder>>,
}

impl Input {
    fn table_rows(config: &InputConfig) -> usize {
        match config {
            InputConfig::Embedding { vocab_size, .. } => *vocab_size,
            InputConfig::EncoderFeatures { .. } => 1,
        }
    }

    /// Draws the table from `rng` as `nn.Embedding` does: N(0, 1), the padding row zero.
    pub(crate) fn init(
        config: &InputConfig,
        rng: &mut impl Rng,
        device: &Device,
        vars: &mut HashMap<String, Var>,
    ) -> Result<()> {
        let (v, e) = (Self::table_rows(config), config.dim());
        let mut table: Vec<f32> = (0..v * e).map(|_| normal(rng)).collect();
        table[..e].iter_mut().for_each(|x| *x = 0.0);
        vars.insert(EMBEDDING.into(), Var::from_vec(table, (v, e), device)?);
        Ok(())
    }

    pub(crate) fn from_vars(config: &InputConfig, vars: &HashMap<String, Var>) -> Result<Self> {
        let table = vars
            .get(EMBEDDING)
            .cloned()
            .ok_or_else(|| ModelError::Config(format!("missing parameter {EMBEDDING}")))?;
        Ok(Self {
            config: config.clone(),
            table,
            encoder: None,
        })
    }

    /// Whether training updates the table (and so needs the gradient of the input vectors).
    pub(crate) fn trains(&self) -> bool {
        matches!(self.config, InputConfig::Embedding { frozen: false, .. })
    }

    /// Its parameter groups: the table, a sparse group (frozen unless the table trains).
    pub(crate) fn groups(&self) -> Vec<ParamGroup> {
        let (rows, dim) = self.table.dims2().unwrap_or((0, 0));
        vec![ParamGroup {
            name: "embedding".into(),
            kind: GroupKind::Sparse { rows, dim },
            params: vec![(EMBEDDING.into(), self.table.clone())],
            optim: match self.trains() {
                true => GroupOptim::default(),
                false => GroupOptim::frozen(),
            },
        }]
    }

    pub(crate) fn table(&self) -> &Var {
        &self.table
    }

    pub(crate) fn attach_encoder(&mut self, encoder: Arc<Encoder>) -> Result<()> {
        if !matches!(self.config, InputConfig::EncoderFeatures { .. }) {
            return Err(ModelError::Config(
                "this model reads its embedding table, not an encoder".into(),
            ));
        }
        if encoder.hidden() != self.config.dim() {
            return Err(ModelError::Config(format!(
                "the encoder's vectors have {} dimensions but the model reads {}",
                encoder.hidden(),
                self.config.dim()
            )));
        }
        self.encoder = Some(encoder);
        Ok(())
    }

    pub(crate) fn encoder(&self) -> Option<&Arc<Encoder>> {
        self.encoder.as_ref()
    }

    /// The vectors of the batch's tokens (B × T × E), outside autograd; padding positions get
    /// the PAD row (or, from an encoder, zero).
    pub(crate) fn embed(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        let (b, t) = (batch.len(), batch.steps());
        let (v, e) = (self.config.vocab_size(), self.config.dim());
        if let Some(&bad) = batch.ids().iter().find(|&&id| id as usize >= v) {
            return Err(ModelError::Batch(format!(
                "token id {bad} ≥ vocabulary size {v}"
            )));
        }
        if let InputConfig::EncoderFeatures { .. } = self.config {
            let encoder = self.encoder.as_ref().ok_or_else(|| {
                ModelError::Config(
                    "this model reads an encoder's vectors, but none is attached".into(),
                )
            })?;
            let rows: Vec<&[u32]> = (0..b).map(|i| batch.row(i)).collect();
            let augmented: Vec<bool> = (0..b).map(|i| batch.augmented(i)).collect();
            return encoder
                .features(&rows, &augmented, t, device)
                .map_err(|e| ModelError::Batch(e.to_string()));
        }
        let (storage, layout) = self.table.storage_and_layout();
        let table = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
            _ => {
                drop(storage);
                let ids = Tensor::from_slice(batch.ids(), b * t, device)?;
                let rows = self.table.detach().index_select(&ids, 0)?;
                return Ok(rows.reshape((b, t, e))?);
            }
        };
        let mut out = Vec::with_capacity(b * t * e);
        for &id in batch.ids() {
            let id = id as usize;
            out.extend_from_slice(&table[id * e..(id + 1) * e]);
        }
        drop(storage);
        Ok(Tensor::from_vec(out, (b, t, e), device)?)
    }

    /// The table's gradient from the gradient `dx` (B × T × E, flat) of the vectors
    /// [`Input::embed`] gave: each token's rows summed into its row. PAD gets no gradient
    /// (PyTorch's `padding_idx`), nor does padding.
    pub(crate) fn gradient(&self, batch: &Batch, dx: Option<&[f32]>) -> SparseRows {
        let dim = self.config.dim();
        match dx {
            Some(dx) => scatter_rows(batch, dx, dim),
            None => SparseRows::empty(dim),
        }
    }

    /// As [`Input::gradient`], with `dx` and the rows left on their device.
    pub(crate) fn gradient_on_device(
        &self,
        batch: &Batch,
        dx: Option<&Tensor>,
    ) -> Result<TableRows> {
        let dim = self.config.dim();
        match dx {
            Some(dx) => scatter_rows_on_device(batch, dx, dim),
            None => Ok(TableRows::empty(dim)),
        }
    }

    /// Overwrites rows of the table (e.g. with pretrained word vectors).
    pub(crate) fn set_rows(&self, rows: &[(u32, Vec<f32>)], device: &Device) -> Result<()> {
        let (v, e) = self.table.dims2()?;
        let mut table = self
            .table
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
        let table = Tensor::from_vec(table, (v, e), &Device::Cpu)?.to_device(device)?;
        Ok(self.table.set(&table)?)
    }
}

/// Each valid, non-PAD token's position in the flat batch (B × T) with its id, in batch order.
fn tokens(batch: &Batch) -> impl Iterator<Item = (usize, u32)> + '_ {
    let t_len = batch.steps();
    batch
        .lengths()
        .iter()
        .enumerate()
        .flat_map(move |(b, &len)| {
            (0..len).map(move |t| (b * t_len + t, batch.ids()[b * t_len + t]))
        })
        .filter(|&(_, id)| id != PAD)
}

/// The table's rows that the batch touches: sorted, each once.
fn touched(batch: &Batch) -> Vec<u32> {
    let mut ids: Vec<u32> = tokens(batch).map(|(_, id)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Sums the rows of `dx` (B × T × E) into the rows of the tokens they embedded.
fn scatter_rows(batch: &Batch, dx: &[f32], dim: usize) -> SparseRows {
    let ids = touched(batch);
    let mut rows = vec![0.0; ids.len() * dim];
    for (pos, id) in tokens(batch) {
        if let Ok(k) = ids.binary_search(&id) {
            let src = &dx[pos * dim..(pos + 1) * dim];
            rows[k * dim..(k + 1) * dim]
                .iter_mut()
                .zip(src)
                .for_each(|(r, g)| *r += g);
        }
    }
    SparseRows { ids, rows, dim }
}

/// [`scatter_rows`] where `dx` lies: the rows stay on its device, and only the batch's
/// positions go down.
fn scatter_rows_on_device(batch: &Batch, dx: &Tensor, dim: usize) -> Result<TableRows> {
    let ids = touched(batch);
    if ids.is_empty() {
        return Ok(TableRows::empty(dim));
    }
    let (positions, slots): (Vec<u32>, Vec<u32>) = tokens(batch)
        .filter_map(|(pos, id)| Some((pos as u32, ids.binary_search(&id).ok()? as u32)))
        .unzip();
    let device = dx.device();
    let n = positions.len();
    let picked = dx
        .reshape((dx.elem_count() / dim, dim))?
        .index_select(&Tensor::from_vec(positions, n, device)?, 0)?;
    let rows = Tensor::zeros((ids.len(), dim), picked.dtype(), device)?.index_add(
        &Tensor::from_vec(slots, n, device)?,
        &picked,
        0,
    )?;
    Ok(TableRows {
        ids,
        rows: Some(rows),
        dim,
    })
}
