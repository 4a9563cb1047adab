//! The encoder's own tokenizer (a `tokenizer.json`, WordPiece for BERT models): words become
//! `[CLS] pieces… [SEP]`, at most [`MAX_PIECES`] ids in all, as the reference feeds the encoder.

use std::path::Path;

use super::error::{EncoderError, Result};

/// WordPiece tokens per sentence, `[CLS]` and `[SEP]` included (the reference's `max_length`).
pub const MAX_PIECES: usize = 64;

pub struct WordPiece {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
}

impl WordPiece {
    pub fn load(path: &Path) -> Result<Self> {
        let invalid = |msg: String| EncoderError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| invalid(e.to_string()))?;
        // The file may pad every sentence to 128; our batches pad themselves.
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_PIECES,
                ..Default::default()
            }))
            .map_err(|e| invalid(e.to_string()))?;
        let vocab_size = inner.get_vocab_size(true);
        let wp = Self { inner, vocab_size };
        // The tokenizer fails only when misconfigured (e.g. an unknown-token missing from its
        // vocabulary), and then on every sentence: find out now, naming the file.
        let probe = wp
            .encode("Hello, wörld! ☃ qzxv")
            .map_err(|e| invalid(e.to_string()))?;
        if probe.len() < 3 || probe.iter().any(|&id| id as usize >= vocab_size) {
            return Err(invalid(format!(
                "the tokenizer produced {probe:?} for a test sentence"
            )));
        }
        Ok(wp)
    }

    /// As [`WordPiece::encode_words`]; should the tokenizer fail after all, the sentence
    /// becomes `[CLS] [UNK] [SEP]` and the error is logged.
    pub fn encode_words_or_unknown<S: AsRef<str>>(&self, words: &[S]) -> Vec<u32> {
        self.encode_words(words).unwrap_or_else(|e| {
            tracing::error!("{e}; the sentence is read as unknown");
            ["[CLS]", "[UNK]", "[SEP]"]
                .iter()
                .filter_map(|t| self.inner.token_to_id(t))
                .collect()
        })
    }

    /// Ids of a sentence given as words (joined with spaces: the tokenizer splits again).
    pub fn encode_words<S: AsRef<str>>(&self, words: &[S]) -> Result<Vec<u32>> {
        let text = words
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" ");
        self.encode(&text)
    }

    /// Ids of a sentence, special tokens included.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| EncoderError::Run(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of `[UNK]`, the piece of what the vocabulary cannot spell.
    pub fn unknown_id(&self) -> Option<u32> {
        self.inner.token_to_id("[UNK]")
    }

    /// Ids run from 0 to `vocab_size() - 1`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}
