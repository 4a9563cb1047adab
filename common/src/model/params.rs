//! Parameter groups: all that the optimizer, the collective, the replica and the checkpoints
//! see of a model. A part of the model declares its groups; nothing outside `model/` needs to
//! know which part a group belongs to.

use candle_core::Var;
use serde::{Deserialize, Serialize};

/// Parameters' names and shapes, in gradient order.
pub(crate) type Shapes = Vec<(String, Vec<usize>)>;

/// How a group's gradient travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Every value gets a gradient each step. The dense groups' gradients share one flat
    /// vector, in group order (see [`super::Gradients`]).
    Dense,
    /// One `rows × dim` table of which a step touches a few rows: only those travel.
    Sparse { rows: usize, dim: usize },
}

/// A group's optimizer settings, applied on top of the run's optimizer: a second learning rate
/// or weight decay for one part is a setting here, not a new code path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupOptim {
    /// Multiplies the run's learning rate.
    pub lr_scale: f64,
    /// Decoupled weight decay (AdamW): each step multiplies the weights by `1 − lr·decay`.
    pub weight_decay: f64,
    /// Not trained: the optimizer leaves the group alone (its moments stay zero).
    pub frozen: bool,
    /// Part of a pretrained encoder that is fine-tuned: it trains at the run's encoder
    /// learning rate (`AdamConfig::encoder_lr`).
    #[serde(default)]
    pub pretrained: bool,
}

impl Default for GroupOptim {
    fn default() -> Self {
        Self {
            lr_scale: 1.0,
            weight_decay: 0.0,
            frozen: false,
            pretrained: false,
        }
    }
}

impl GroupOptim {
    pub fn frozen() -> Self {
        Self {
            frozen: true,
            ..Self::default()
        }
    }

    /// The settings of a fine-tuned encoder's group.
    pub fn pretrained() -> Self {
        Self {
            pretrained: true,
            ..Self::default()
        }
    }
}

/// Named parameters that train together.
#[derive(Clone)]
pub struct ParamGroup {
    pub name: String,
    pub kind: GroupKind,
    /// In the fixed order of the flat gradient vector; a sparse group has exactly one.
    pub params: Vec<(String, Var)>,
    pub optim: GroupOptim,
}

impl ParamGroup {
    /// Values in the group.
    pub fn len(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_dense(&self) -> bool {
        self.kind == GroupKind::Dense
    }
}

/// Values in all dense groups: the length of the flat dense gradient.
pub fn dense_len(groups: &[ParamGroup]) -> usize {
    groups
        .iter()
        .filter(|g| g.is_dense())
        .map(ParamGroup::len)
        .sum()
}

/// The sparse groups' tables, in group order: `(rows, dim)` each.
pub fn sparse_shapes(groups: &[ParamGroup]) -> Vec<(usize, usize)> {
    groups
        .iter()
        .filter_map(|g| match g.kind {
            GroupKind::Sparse { rows, dim } => Some((rows, dim)),
            GroupKind::Dense => None,
        })
        .collect()
}
