//! Loading labelled text, tokenizing it, and the vocabulary.

pub mod config;
pub mod load;
pub mod source_spec;
pub mod sources;
pub mod task_flags;
pub mod tasks;
pub mod tokenize;
pub mod vectors;
pub mod vocab;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The byte order mark Excel and Notepad write at the start of UTF-8 files. It belongs to no
/// line: left in, it would make the first label a class of its own or hide the first word.
pub const BYTE_ORDER_MARK: &str = "\u{feff}";

/// `text` without a leading [`BYTE_ORDER_MARK`]; for the start of a file only.
pub fn strip_byte_order_mark(text: &str) -> &str {
    text.strip_prefix(BYTE_ORDER_MARK).unwrap_or(text)
}

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

/// One sentence of an epoch, as tokens borrowed from its [`Doc`] (and the synonym table),
/// or owned where character noise made a new word.
#[derive(Clone, Debug)]
pub struct Item<'a> {
    pub doc: &'a Doc,
    /// 0 for the original; k > 0 for an augmentation.
    pub aug: u32,
    pub tokens: Vec<Cow<'a, str>>,
}

impl Item<'_> {
    pub fn label(&self) -> u32 {
        self.doc.label
    }
}
