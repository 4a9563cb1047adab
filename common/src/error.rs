//! Errors of the data pipeline. Every message names the file (and line) a user must look at.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// One bad line of a data file: `file:line: what is wrong`.
    #[error("{path}:{line}: {msg}")]
    BadLine {
        path: String,
        line: u64,
        msg: String,
    },
    #[error("{path}: cannot tell the format from the extension; use --format tsv|csv|jsonl")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: no examples")]
    Empty { path: String },
    #[error("training data has a single class ({0}); a classifier needs at least two")]
    SingleClass(String),
    #[error(
        "{what} has {count} examples whose labels were never seen in training: {labels} \
         (use --unknown-labels skip to drop them, or --label-map to map them)"
    )]
    UnknownLabels {
        what: String,
        count: usize,
        labels: String,
    },
    #[error("{0}")]
    Config(String),
}

impl DataError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_string(),
            cause: source,
        }
    }
}
