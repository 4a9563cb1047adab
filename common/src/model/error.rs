//! The error type of the model and its training step.

use std::path::PathBuf;

/// What can go wrong building, running, training or persisting the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("gradients do not fit the model: {0}")]
    Gradients(String),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
