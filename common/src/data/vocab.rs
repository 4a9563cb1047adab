//! The vocabulary: token strings to ids, with PAD = 0 and UNK = 1, shipped with a model as JSON.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;
const PAD_TOKEN: &str = "<pad>";
const UNK_TOKEN: &str = "<unk>";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "VocabFile", into = "VocabFile")]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

/// The serialised form: the tokens in id order.
#[derive(Serialize, Deserialize)]
struct VocabFile {
    tokens: Vec<String>,
}

impl From<VocabFile> for Vocab {
    fn from(f: VocabFile) -> Self {
        Vocab::from_tokens(f.tokens)
    }
}

impl From<Vocab> for VocabFile {
    fn from(v: Vocab) -> Self {
        VocabFile { tokens: v.tokens }
    }
}

impl Vocab {
    fn from_tokens(tokens: Vec<String>) -> Self {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Vocab { tokens, index }
    }

    /// The `max_size - 2` most frequent tokens occurring at least `min_freq` times, most
    /// frequent first; ties keep the order of first occurrence (as Python's `Counter`).
    pub fn build<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
        max_size: usize,
        min_freq: usize,
    ) -> Self {
        Self::build_first(std::iter::empty(), tokens, max_size, min_freq)
    }

    /// As [`Vocab::build`], with every token of `first` (a multi-task run's target task)
    /// ranked before those only `rest` has: a large auxiliary task cannot crowd the target's
    /// words out. Within each part the order is by frequency over both.
    pub fn build_first<'a>(
        first: impl IntoIterator<Item = &'a str>,
        rest: impl IntoIterator<Item = &'a str>,
        max_size: usize,
        min_freq: usize,
    ) -> Self {
        let mut counts: HashMap<&str, (usize, usize, bool)> = HashMap::new();
        let tagged = first
            .into_iter()
            .map(|t| (t, true))
            .chain(rest.into_iter().map(|t| (t, false)));
        for (order, (tok, of_first)) in tagged.enumerate() {
            counts.entry(tok).or_insert((0, order, of_first)).0 += 1;
        }
        let mut ranked: Vec<(&str, usize, usize, bool)> = counts
            .into_iter()
            .filter(|&(_, (n, _, _))| n >= min_freq.max(1))
            .map(|(t, (n, order, of_first))| (t, n, order, of_first))
            .collect();
        ranked.sort_by(|a, b| b.3.cmp(&a.3).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut tokens = vec![PAD_TOKEN.to_string(), UNK_TOKEN.to_string()];
        tokens.extend(
            ranked
                .into_iter()
                .filter(|(t, ..)| *t != PAD_TOKEN && *t != UNK_TOKEN)
                .take(max_size.saturating_sub(2))
                .map(|(t, ..)| t.to_string()),
        );
        Vocab::from_tokens(tokens)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many tokens it holds besides PAD and UNK.
    pub fn words(&self) -> usize {
        self.tokens.len().saturating_sub(UNK as usize + 1)
    }

    pub fn id(&self, token: &str) -> u32 {
        self.index.get(token).copied().unwrap_or(UNK)
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Ids of `tokens`, cut at `max_len`; never empty (an empty input becomes one UNK, as the
    /// reference does, so every sequence has a last token).
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S], max_len: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = tokens
            .iter()
            .take(max_len.max(1))
            .map(|t| self.id(t.as_ref()))
            .collect();
        if ids.is_empty() {
            ids.push(UNK);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_frequent_first_with_pad_and_unk() {
        let v = Vocab::build("b a b c a b".split(' '), 10, 1);
        assert_eq!(v.token(PAD), Some("<pad>"));
        assert_eq!(v.token(UNK), Some("<unk>"));
        assert_eq!((v.id("b"), v.id("a"), v.id("c")), (2, 3, 4));
        assert_eq!(v.id("zzz"), UNK);
        let small = Vocab::build("b a b c a b".split(' '), 3, 1);
        assert_eq!(small.len(), 3);
        let frequent = Vocab::build("b a b c a b".split(' '), 10, 2);
        assert_eq!(frequent.id("c"), UNK);
    }

    #[test]
    fn the_first_part_keeps_every_word_before_the_rest() {
        // "x" is the rest's most frequent word, yet every target word comes first.
        let v = Vocab::build_first("t u t".split(' '), "x x x x u y".split(' '), 10, 1);
        assert_eq!((v.id("t"), v.id("u"), v.id("x"), v.id("y")), (2, 3, 4, 5));
        let small = Vocab::build_first("t u t".split(' '), "x x x x u".split(' '), 4, 1);
        assert_eq!(
            small.id("x"),
            UNK,
            "the auxiliary word is crowded out, not the target's"
        );
        assert_ne!(small.id("t"), UNK);
    }

    #[test]
    fn encode_truncates_and_never_empties() {
        let v = Vocab::build(["x", "y"], 10, 1);
        assert_eq!(v.encode(&["x", "y", "x"], 2), vec![2, 3]);
        assert_eq!(v.encode::<&str>(&[], 5), vec![UNK]);
    }

    #[test]
    fn json_round_trip() {
        let v = Vocab::build("a b c".split(' '), 10, 1);
        let json = serde_json::to_string(&v).unwrap();
        let back: Vocab = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.id("c"), v.id("c"));
    }
}
