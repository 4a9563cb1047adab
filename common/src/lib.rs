//! The library every binary of the project shares: the data pipeline (load, mix, augment,
//! balance), the model and its training step, and the collective operations between workers.

pub mod model;
pub mod train;
