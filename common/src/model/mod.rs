//! The BiLSTM text classifier: a fused LSTM layer written as a Candle custom op with its own
//! backpropagation through time, the bidirectional (optionally stacked) layer built on it, and
//! the classifier (embedding → BiLSTM → linear) with its parameters and checkpoints.

mod activation;
pub mod bilstm;
pub mod classifier;
mod dropout;
pub mod error;
mod gemm;
pub mod lstm_cell;
pub mod lstm_composed;
mod lstm_direction;
pub mod lstm_op;
pub mod malloc;
pub mod packing;
pub(crate) mod persist;
pub(crate) mod simd;
pub mod threads;

pub use bilstm::BiLstm;
pub use classifier::{Classifier, Mode, ModelConfig};
pub use error::{ModelError, Result};
pub use lstm_op::{Direction, FusedLstm, LstmOutput};
pub use packing::PackPlan;
pub use threads::{set_threads, threads};
