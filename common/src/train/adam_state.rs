//! What Adam remembers between steps, and the scalars of one step: shared by the host's fused
//! update (`adam.rs`) and the device's (`adam_device.rs`).

use serde::{Deserialize, Serialize};

/// Everything Adam remembers between steps; save it to resume a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    /// Steps taken.
    pub step: u64,
    /// First and second moments of the dense groups (flat, gradient order)…
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// …and of each sparse group's table, in group order.
    pub tables: Vec<Moments>,
}

/// The moments of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// The scalars of one step, as PyTorch computes them.
#[derive(Clone, Copy)]
pub(crate) struct Coef {
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) one_minus_beta1: f32,
    pub(crate) one_minus_beta2: f32,
    /// lr / (1 − β1^t)
    pub(crate) step_size: f32,
    /// 1 / √(1 − β2^t)
    pub(crate) inv_bc2_sqrt: f32,
    pub(crate) eps: f32,
    /// What the gradients are multiplied by first (1 / global batch), in the same pass: one
    /// sweep over the gradients fewer, and bitwise what scaling them beforehand gives.
    pub(crate) grad_scale: f32,
}
