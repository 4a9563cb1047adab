//! The copies of training state between the host and the device, counted: training held on the
//! device (see `replica.rs`) promises that a step copies no weights, gradients or optimizer
//! state either way, and the tests hold it to that by these counts. Every such copy the
//! training code makes goes through here. The counts are per thread, so that tests running side
//! by side do not see each other's.

use std::cell::Cell;

use candle_core::{Device, Shape, Tensor};

use crate::model::Result;

/// What a copy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cargo {
    Weights,
    Gradients,
    Optimizer,
}

/// Copies made so far on this thread, by what they carried (a tensor or a set of tensors
/// moved at once is one copy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
}

impl Transfers {
    /// All copies of training state.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer
    }
}

thread_local! {
    static COUNTS: Cell<Transfers> = Cell::new(Transfers::default());
}

/// The copies made on this thread so far.
pub fn counted() -> Transfers {
    COUNTS.with(Cell::get)
}

/// Counts one copy of `cargo`.
pub(crate) fn count(cargo: Cargo) {
    COUNTS.with(|c| {
        let mut t = c.get();
        match cargo {
            Cargo::Weights => t.weights += 1,
            Cargo::Gradients => t.gradients += 1,
            Cargo::Optimizer => t.optimizer += 1,
        }
        c.set(t);
    });
}

/// `values` as a tensor of `shape` on `device`.
pub(crate) fn down(
    values: &[f32],
    shape: impl Into<Shape>,
    device: &Device,
    cargo: Cargo,
) -> Result<Tensor> {
    count(cargo);
    Ok(Tensor::from_slice(values, shape, device)?)
}

/// A tensor's values on the host, flat.
pub(crate) fn up(t: &Tensor, cargo: Cargo) -> Result<Vec<f32>> {
    count(cargo);
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Several tensors' values on the host, each flat: one copy of one set of state.
pub(crate) fn up_each(ts: &[&Tensor], cargo: Cargo) -> Result<Vec<Vec<f32>>> {
    count(cargo);
    ts.iter()
        .map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .collect()
}

/// Several vectors as tensors of their shapes on `device`: one copy of one set of state.
pub(crate) fn down_each(
    values: &[(&[f32], &Shape)],
    device: &Device,
    cargo: Cargo,
) -> Result<Vec<Tensor>> {
    count(cargo);
    values
        .iter()
        .map(|(v, shape)| Ok(Tensor::from_slice(v, *shape, device)?))
        .collect()
}
