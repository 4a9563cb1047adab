//! The library every binary of the project shares: the data pipeline (load, mix, augment,
//! balance), the model and its training step, and the collective operations between workers.

pub mod augment;
pub mod collective;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod mix;
pub mod model;
pub mod pb;
pub mod pipeline;
pub mod resample;
pub mod rng;
pub mod train;

pub use error::DataError;
