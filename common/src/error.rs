//! Errors of the data pipeline (every message names the file, and line, a user must look at),
//! and how the binaries print an error chain.

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
    #[error(
        "{path}: none of its {rows} rows is left for training: {in_eval} are in the validation \
         set (the same text as a row of --eval) and {duplicates} repeat (text, label) rows of \
         the sources before it or of itself"
    )]
    NothingLeft {
        path: String,
        rows: usize,
        in_eval: usize,
        duplicates: usize,
    },
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

/// An error chain as `{:#}` prints it, without a cause that repeats the one before it
/// (e.g. hyper's `tcp connect error: tcp connect error: Connection refused`).
pub fn chain_without_repeats(chain: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in chain.split(": ") {
        if out.last() != Some(&part) {
            out.push(part);
        }
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_printed_once() {
        assert_eq!(
            chain_without_repeats(
                "cannot reach x: transport error: tcp connect error: tcp connect error: refused"
            ),
            "cannot reach x: transport error: tcp connect error: refused"
        );
        assert_eq!(chain_without_repeats("a: b: a"), "a: b: a");
    }
}
