//! The model, as parts: the input (embedding table or a frozen encoder's vectors), the
//! sequence encoder (the seed's BiLSTM: a fused LSTM layer written as a Candle custom op with
//! its own backpropagation through time), and the heads; their configuration, their parameter
//! groups and their gradients (a backward pass in segments, top first, one bucket of the
//! gradient each), and the batch they read.

mod activation;
pub mod batch;
pub mod bilstm;
pub mod classifier;
pub mod config;
mod dropout;
pub mod error;
pub mod gradients;
mod head;
mod init;
mod input;
pub mod lstm_cell;
pub mod lstm_composed;
mod lstm_direction;
pub mod lstm_op;
pub mod mode;
pub mod packing;
pub mod params;
pub(crate) mod persist;
mod segments;
mod sequence;
pub mod transformer;

pub use batch::{Batch, PAD};
pub use bilstm::BiLstm;
pub use classifier::{Classifier, Forward, Scored, EMBEDDING, EVAL_ROWS};
pub use config::{
    FlatConfig, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
pub use error::{ModelError, Result};
pub use gradients::{DeviceGradients, Gradients, SparseRows, TableRows};
pub use lstm_op::{Direction, FusedLstm, LstmOutput};
pub use mode::Mode;
pub use packing::PackPlan;
pub use params::{GroupKind, GroupOptim, ParamGroup};
pub use persist::{read_header, Piece};
