//! Loading labelled text, tokenizing it, and the vocabulary.

pub mod config;
pub mod load;
pub mod tokenize;
pub mod vectors;
pub mod vocab;

use serde::{Deserialize, Serialize};

/// A stable identity for an example: its source (index of `--data`) and line in that file.
/// Later stages key every random choice about the example on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExampleId {
    pub source: u16,
    pub line: u32,
}

/// A tokenized, labelled sentence of a source, before augmentation.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub id: ExampleId,
    pub tokens: Vec<String>,
    pub label: u32,
}

/// What training consumes: token ids, a label id and the source it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub id: ExampleId,
    /// 0 for the original sentence, k > 0 for its k-th augmentation.
    pub aug: u32,
    pub tokens: Vec<u32>,
    pub label: u32,
}

impl Example {
    pub fn source(&self) -> u16 {
        self.id.source
    }
}
