//! Turning a sentence into lower-cased tokens.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// Lower-casing plus Unicode word and punctuation segmentation (UAX #29).
    Unicode,
    /// Lower-cased whitespace splitting, as the PyTorch reference does; right for text that
    /// is already tokenized, like the bundled corpora.
    #[default]
    Whitespace,
}

impl Tokenizer {
    pub fn tokenize(self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        match self {
            Tokenizer::Whitespace => lower.split_whitespace().map(str::to_string).collect(),
            Tokenizer::Unicode => lower
                .split_word_bounds()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_lowercases_and_splits() {
        assert_eq!(
            Tokenizer::Whitespace.tokenize("What IS  it ?"),
            ["what", "is", "it", "?"]
        );
    }

    #[test]
    fn unicode_separates_punctuation() {
        assert_eq!(
            Tokenizer::Unicode.tokenize("Don't stop, Café-owner!"),
            ["don't", "stop", ",", "café", "-", "owner", "!"]
        );
    }
}
