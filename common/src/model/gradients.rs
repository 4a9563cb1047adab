//! One step's gradients in the form an all-reduce exchanges cheaply: every dense group's
//! parameters in one flat vector (group order), and each sparse group's table as only the rows
//! the batch touched.
//!
//! Gradients are sums over examples, not means: workers hold different numbers of examples,
//! so the caller divides once by the global batch size after summing across workers.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::params::{dense_len, sparse_shapes, ParamGroup};

/// Some rows of a `V × dim` matrix; every other row is zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseRows {
    /// Row indices, strictly increasing.
    pub ids: Vec<u32>,
    /// `ids.len() × dim`, row-major.
    pub rows: Vec<f32>,
    pub dim: usize,
}

impl SparseRows {
    pub fn empty(dim: usize) -> Self {
        Self {
            ids: Vec::new(),
            rows: Vec::new(),
            dim,
        }
    }

    /// Checks the invariants, for rows that came from elsewhere (e.g. over the network).
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let sorted = self.ids.windows(2).all(|w| w[0] < w[1]);
        let in_range = self.ids.last().is_none_or(|&id| (id as usize) < vocab_size);
        if !sorted || !in_range || self.rows.len() != self.ids.len() * self.dim {
            return Err(ModelError::Gradients(format!(
                "sparse rows: {} ids (sorted: {sorted}, below {vocab_size}: {in_range}), \
                 {} values of width {}",
                self.ids.len(),
                self.rows.len(),
                self.dim
            )));
        }
        Ok(())
    }

    /// `self += other`, the union of both row sets.
    pub fn add(&mut self, other: &SparseRows) -> Result<()> {
        if self.dim != other.dim {
            return Err(ModelError::Gradients(format!(
                "adding rows of width {} to rows of width {}",
                other.dim, self.dim
            )));
        }
        let d = self.dim;
        let mut ids = Vec::with_capacity(self.ids.len() + other.ids.len());
        let mut rows = Vec::with_capacity(self.rows.len() + other.rows.len());
        let (mut i, mut j) = (0, 0);
        while i < self.ids.len() || j < other.ids.len() {
            let a = self.ids.get(i).copied().unwrap_or(u32::MAX);
            let b = other.ids.get(j).copied().unwrap_or(u32::MAX);
            let take_a = i < self.ids.len() && (j >= other.ids.len() || a <= b);
            let take_b = j < other.ids.len() && (i >= self.ids.len() || b <= a);
            let start = rows.len();
            if take_a {
                rows.extend_from_slice(&self.rows[i * d..(i + 1) * d]);
                ids.push(a);
                i += 1;
            }
            if take_b {
                let src = &other.rows[j * d..(j + 1) * d];
                if take_a {
                    rows[start..].iter_mut().zip(src).for_each(|(x, y)| *x += y);
                } else {
                    rows.extend_from_slice(src);
                    ids.push(b);
                }
                j += 1;
            }
        }
        self.ids = ids;
        self.rows = rows;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gradients {
    /// All dense groups' parameters, flat, in group order.
    pub dense: Vec<f32>,
    /// One per sparse group, in group order; PAD (row 0 of a token table) never has one.
    pub sparse: Vec<SparseRows>,
}

impl Gradients {
    /// No gradient at all, for `groups`: what a worker without an example of a step
    /// contributes to its all-reduce.
    pub fn zeros(groups: &[ParamGroup]) -> Self {
        Self {
            dense: vec![0.0; dense_len(groups)],
            sparse: sparse_shapes(groups)
                .into_iter()
                .map(|(_, dim)| SparseRows::empty(dim))
                .collect(),
        }
    }

    /// Checks that the gradients fit `groups` (e.g. after they crossed the network).
    pub fn validate(&self, groups: &[ParamGroup]) -> Result<()> {
        let dense = dense_len(groups);
        if self.dense.len() != dense {
            return Err(ModelError::Gradients(format!(
                "{} dense gradients for {dense} parameters",
                self.dense.len()
            )));
        }
        let shapes = sparse_shapes(groups);
        if self.sparse.len() != shapes.len() {
            return Err(ModelError::Gradients(format!(
                "{} sparse gradients for {} tables",
                self.sparse.len(),
                shapes.len()
            )));
        }
        for (rows, (n, dim)) in self.sparse.iter().zip(shapes) {
            rows.validate(n)?;
            if rows.dim != dim {
                return Err(ModelError::Gradients(format!(
                    "table rows of width {}, the table has {dim}",
                    rows.dim
                )));
            }
        }
        Ok(())
    }

    /// Multiplies every gradient by `factor` (e.g. `1 / global_batch_size`).
    pub fn scale(&mut self, factor: f32) {
        self.dense.iter_mut().for_each(|x| *x *= factor);
        for s in &mut self.sparse {
            s.rows.iter_mut().for_each(|x| *x *= factor);
        }
    }

    /// The L2 norm over all parameters.
    pub fn norm(&self) -> f32 {
        let sq = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        let sparse: f64 = self.sparse.iter().map(|s| sq(&s.rows)).sum();
        (sq(&self.dense) + sparse).sqrt() as f32
    }

    /// Scales the gradients down so that their L2 norm is at most `max` (as PyTorch's
    /// `clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_norm(&mut self, max: f32) -> f32 {
        let norm = self.norm();
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            self.scale(coef);
        }
        norm
    }

    /// `self += other` (e.g. summing workers' gradients).
    pub fn add(&mut self, other: &Gradients) -> Result<()> {
        if self.dense.len() != other.dense.len() || self.sparse.len() != other.sparse.len() {
            return Err(ModelError::Gradients(format!(
                "adding {} dense values and {} tables to {} and {}",
                other.dense.len(),
                other.sparse.len(),
                self.dense.len(),
                self.sparse.len()
            )));
        }
        self.dense
            .iter_mut()
            .zip(&other.dense)
            .for_each(|(x, y)| *x += y);
        for (a, b) in self.sparse.iter_mut().zip(&other.sparse) {
            a.add(b)?;
        }
        Ok(())
    }
}

/// Some rows of a table's gradient, left on the model's device: the ids on the host (they
/// come from the batch), the rows (`ids.len() × dim`) on the device.
#[derive(Debug, Clone)]
pub struct TableRows {
    /// Row indices, strictly increasing.
    pub ids: Vec<u32>,
    /// `None` when there are no ids.
    pub rows: Option<Tensor>,
    pub dim: usize,
}

impl TableRows {
    pub fn empty(dim: usize) -> Self {
        Self {
            ids: Vec::new(),
            rows: None,
            dim,
        }
    }
}

/// One step's gradients left where the model lies (`train::Replica` holds the training state
/// on the device): the flat dense gradient as one flat tensor per bucket, in the order of
/// `Classifier::buckets`, and each sparse group's touched rows.
#[derive(Debug, Clone)]
pub struct DeviceGradients {
    /// Each bucket's range of the flat dense gradient.
    pub ranges: Vec<Range<usize>>,
    pub buckets: Vec<Tensor>,
    pub tables: Vec<TableRows>,
}

impl DeviceGradients {
    /// No gradient at all (what a worker without an example of a step contributes), for
    /// buckets `ranges` and tables of width `dims`, on `device`.
    pub fn zeros(ranges: &[Range<usize>], dims: &[usize], device: &Device) -> Result<Self> {
        Ok(Self {
            ranges: ranges.to_vec(),
            buckets: ranges
                .iter()
                .map(|r| Tensor::zeros(r.len(), DType::F32, device))
                .collect::<candle_core::Result<_>>()?,
            tables: dims.iter().map(|&d| TableRows::empty(d)).collect(),
        })
    }

    /// The gradient of the dense values `range` (one parameter's), flat, from the bucket that
    /// holds them.
    pub fn dense(&self, range: &Range<usize>) -> Result<Tensor> {
        self.ranges
            .iter()
            .zip(&self.buckets)
            .find(|(r, _)| r.start <= range.start && range.end <= r.end)
            .map(|(r, b)| b.narrow(0, range.start - r.start, range.len()))
            .transpose()?
            .ok_or_else(|| ModelError::Gradients(format!("no bucket holds dense values {range:?}")))
    }

    /// Table `t`'s gradient as the whole table (`like`'s shape): zero outside its rows.
    pub fn table(&self, t: usize, like: &Tensor) -> Result<Tensor> {
        let rows = self
            .tables
            .get(t)
            .ok_or_else(|| ModelError::Gradients(format!("no gradient for table {t}")))?;
        let whole = Tensor::zeros(like.shape(), like.dtype(), like.device())?;
        match &rows.rows {
            Some(r) => {
                let ids = Tensor::from_slice(&rows.ids, rows.ids.len(), like.device())?;
                Ok(whole.index_add(&ids, r, 0)?)
            }
            None => Ok(whole),
        }
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f32) -> Result<()> {
        let f = f64::from(factor);
        for b in &mut self.buckets {
            *b = b.affine(f, 0.0)?;
        }
        for t in &mut self.tables {
            if let Some(r) = &mut t.rows {
                *r = r.affine(f, 0.0)?;
            }
        }
        Ok(())
    }

    /// Scales the gradients down so that their L2 norm is at most `max`, as
    /// [`Gradients::clip_norm`], without reading the norm back to the host.
    pub fn clip_norm(&mut self, max: f32) -> Result<()> {
        let mut squares = Vec::new();
        for b in &self.buckets {
            squares.push(b.sqr()?.sum_all()?);
        }
        for r in self.tables.iter().filter_map(|t| t.rows.as_ref()) {
            squares.push(r.sqr()?.sum_all()?);
        }
        let Some(first) = squares.first() else {
            return Ok(());
        };
        let mut total = first.clone();
        for s in &squares[1..] {
            total = (total + s)?;
        }
        let coef = (total.sqrt()? + 1e-6)?
            .recip()?
            .affine(f64::from(max), 0.0)?
            .clamp(0f32, 1f32)?;
        for b in &mut self.buckets {
            *b = b.broadcast_mul(&coef)?;
        }
        for t in &mut self.tables {
            if let Some(r) = &mut t.rows {
                *r = r.broadcast_mul(&coef)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_add_is_a_union() -> Result<()> {
        let mut a = SparseRows {
            ids: vec![1, 4],
            rows: vec![1.0, 1.0, 4.0, 4.0],
            dim: 2,
        };
        let b = SparseRows {
            ids: vec![2, 4, 9],
            rows: vec![2.0, 2.0, 0.5, 0.5, 9.0, 9.0],
            dim: 2,
        };
        a.add(&b)?;
        assert_eq!(a.ids, vec![1, 2, 4, 9]);
        assert_eq!(a.rows, vec![1.0, 1.0, 2.0, 2.0, 4.5, 4.5, 9.0, 9.0]);
        a.validate(10)?;
        assert!(a.validate(9).is_err());
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut g = Gradients {
            dense: vec![3.0],
            sparse: vec![SparseRows {
                ids: vec![1],
                rows: vec![4.0],
                dim: 1,
            }],
        };
        assert_eq!(g.clip_norm(10.0), 5.0);
        assert_eq!(g.dense, vec![3.0]);
        g.clip_norm(1.0);
        assert!((g.norm() - 1.0).abs() < 1e-5);
    }
}
