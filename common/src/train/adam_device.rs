//! Adam's moments and update for weights held on a device (see `replica.rs`): the arithmetic
//! of the CPU's fused pass (`adam.rs`), op for op, in ops every device has, with the moments as
//! tensors beside the weights. Nothing crosses to the host in a step; the moments are copied out
//! only when the state is saved or sent.

use candle_core::{Device, Shape, Tensor, Var};

use super::adam_state::{AdamState, Coef, Moments};
use super::transfers::{self, Cargo};
use crate::model::persist::{tensor_pieces, Piece};
use crate::model::{GroupKind, ModelError, ParamGroup, Result};

/// The moments of every parameter of every group, in group order, each shaped as its
/// parameter and on its device.
pub(crate) struct DeviceMoments {
    per_param: Vec<(Tensor, Tensor)>,
    /// Whether each parameter is in a dense group (else it is a table).
    dense: Vec<bool>,
}

/// Every parameter with the range its values take in the flat dense vector (dense groups) or
/// the index of its table (sparse groups).
pub(crate) enum Place {
    Dense(std::ops::Range<usize>),
    Table(usize),
}

/// Each parameter of `groups` in group order, with its group's index, the group and its place.
pub(crate) fn places(groups: &[ParamGroup]) -> Vec<(usize, &ParamGroup, &Var, Place)> {
    let (mut offset, mut table) = (0, 0);
    let mut out = Vec::new();
    for (k, group) in groups.iter().enumerate() {
        for (_, var) in &group.params {
            let place = match group.kind {
                GroupKind::Dense => {
                    let n = var.elem_count();
                    offset += n;
                    Place::Dense(offset - n..offset)
                }
                GroupKind::Sparse { .. } => Place::Table(table),
            };
            out.push((k, group, var, place));
        }
        if !group.is_dense() {
            table += 1;
        }
    }
    out
}

impl DeviceMoments {
    /// `state`'s moments, copied onto the parameters' device.
    pub(crate) fn upload(groups: &[ParamGroup], state: &AdamState) -> Result<Self> {
        let mut values: Vec<(&[f32], &Shape)> = Vec::new();
        let mut dense = Vec::new();
        let mut device = Device::Cpu;
        for (_, _, var, place) in places(groups) {
            dense.push(matches!(place, Place::Dense(_)));
            device = var.device().clone();
            let (m, v): (&[f32], &[f32]) = match &place {
                Place::Dense(r) => (&state.m[r.clone()], &state.v[r.clone()]),
                Place::Table(t) => {
                    let Moments { m, v } = state.tables.get(*t).ok_or_else(|| {
                        ModelError::Gradients(format!("no optimizer state for table {t}"))
                    })?;
                    (m, v)
                }
            };
            values.push((m, var.shape()));
            values.push((v, var.shape()));
        }
        let mut tensors = transfers::down_each(&values, &device, Cargo::Optimizer)?.into_iter();
        let mut per_param = Vec::with_capacity(dense.len());
        while let (Some(m), Some(v)) = (tensors.next(), tensors.next()) {
            per_param.push((m, v));
        }
        Ok(Self { per_param, dense })
    }

    /// The moments as the host keeps them (see [`AdamState`]), taken `step` steps.
    pub(crate) fn download(&self, step: u64) -> Result<AdamState> {
        let mut state = AdamState {
            step,
            m: Vec::new(),
            v: Vec::new(),
            tables: Vec::new(),
        };
        let all: Vec<&Tensor> = self.per_param.iter().flat_map(|(m, v)| [m, v]).collect();
        let mut host = transfers::up_each(&all, Cargo::Optimizer)?.into_iter();
        for &dense in &self.dense {
            let (Some(m), Some(v)) = (host.next(), host.next()) else {
                break;
            };
            match dense {
                true => {
                    state.m.extend(m);
                    state.v.extend(v);
                }
                false => state.tables.push(Moments { m, v }),
            }
        }
        Ok(state)
    }

    /// The pieces of `Adam::to_bytes`' file, byte for byte what the host's state gives: each
    /// tensor is copied out only when its turn comes.
    pub(crate) fn pieces(&self, step: u64, table_names: &[String]) -> Result<Vec<Piece<'static>>> {
        let flat = |ts: Vec<&Tensor>| -> Result<Tensor> {
            let parts = ts
                .into_iter()
                .map(Tensor::flatten_all)
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let (mut dense_m, mut dense_v, mut tables) = (Vec::new(), Vec::new(), Vec::new());
        for (&dense, (m, v)) in self.dense.iter().zip(&self.per_param) {
            match dense {
                true => {
                    dense_m.push(m);
                    dense_v.push(v);
                }
                false => tables.push((m.flatten_all()?, v.flatten_all()?)),
            }
        }
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let mut named = vec![("step".to_string(), Tensor::new(&[step], &Device::Cpu)?)];
        if !dense_m.is_empty() {
            named.push(("m".to_string(), flat(dense_m)?));
            named.push(("v".to_string(), flat(dense_v)?));
        }
        for (name, (m, v)) in table_names.iter().zip(tables) {
            named.push((format!("m_{name}"), m));
            named.push((format!("v_{name}"), v));
        }
        transfers::count(Cargo::Optimizer);
        tensor_pieces(named)
    }

    /// One Adam update of parameter `index` (`var`) with gradient `g`, after multiplying the
    /// weights by `decay` (AdamW).
    pub(crate) fn update(
        &mut self,
        index: usize,
        var: &Var,
        g: &Tensor,
        c: Coef,
        decay: f32,
    ) -> Result<()> {
        let (m, v) = self.per_param.get_mut(index).ok_or_else(|| {
            ModelError::Gradients(format!("no optimizer state for parameter {index}"))
        })?;
        let g = match c.grad_scale {
            1.0 => g.clone(),
            s => g.affine(f64::from(s), 0.0)?,
        };
        // m.lerp_(g, 1 − β1); v = β2·v + (1 − β2)·g²; p −= step · m / (√v / √bc2 + ε), as the
        // CPU's pass computes them.
        *m = (&*m + (g.sub(m)?.affine(f64::from(c.one_minus_beta1), 0.0))?)?;
        *v = (v.affine(f64::from(c.beta2), 0.0)?
            + g.affine(f64::from(c.one_minus_beta2), 0.0)?.mul(&g)?)?;
        let denom = v
            .sqrt()?
            .affine(f64::from(c.inv_bc2_sqrt), f64::from(c.eps))?;
        let p = var.as_tensor().detach();
        let p = match decay {
            1.0 => p,
            d => p.affine(f64::from(d), 0.0)?,
        };
        let p = (p - m.div(&denom)?.affine(f64::from(c.step_size), 0.0)?)?;
        Ok(var.set(&p)?)
    }
}
