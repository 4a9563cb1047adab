//! EDA (Wei & Zou, 2019): its four operations (a file each: synonym replacement, random
//! insertion, random swap, random deletion) with their rates, and how an example's
//! augmentations draw them, following the paper's reference code.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::random_deletion::random_deletion;
use super::random_insertion::random_insertion;
use super::random_swap::random_swap;
use super::synonym_replacement::synonym_replacement;
use super::synonyms::Synonyms;

/// The four per-operation rates (the paper's alpha_sr, alpha_ri, alpha_rs, p_rd).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdaRates {
    pub sr: f64,
    pub ri: f64,
    pub rs: f64,
    pub rd: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    SynonymReplacement,
    RandomInsertion,
    RandomSwap,
    RandomDeletion,
}

impl EdaRates {
    pub fn uniform(alpha: f64) -> Self {
        EdaRates {
            sr: alpha,
            ri: alpha,
            rs: alpha,
            rd: alpha,
        }
    }

    /// The operations with a non-zero rate.
    pub fn ops(&self) -> Vec<Op> {
        [
            (self.sr, Op::SynonymReplacement),
            (self.ri, Op::RandomInsertion),
            (self.rs, Op::RandomSwap),
            (self.rd, Op::RandomDeletion),
        ]
        .into_iter()
        .filter(|(r, _)| *r > 0.0)
        .map(|(_, op)| op)
        .collect()
    }

    /// Applies one operation with its rate.
    pub fn apply<'a, R: Rng>(
        &self,
        op: Op,
        words: &[&'a str],
        syn: &Synonyms,
        rng: &mut R,
    ) -> Vec<&'a str> {
        let count = |rate: f64| ((rate * words.len() as f64) as usize).max(1);
        match op {
            Op::SynonymReplacement => synonym_replacement(words, count(self.sr), syn, rng),
            Op::RandomInsertion => random_insertion(words, count(self.ri), syn, rng),
            Op::RandomSwap => random_swap(words, count(self.rs), rng),
            Op::RandomDeletion => random_deletion(words, self.rd, rng),
        }
    }

    /// `num_aug` augmentations of `words`, each made by one operation; as in the reference,
    /// every operation gets `num_aug / 4 + 1` slots and `num_aug` of them are drawn.
    pub fn augment<'a, R: Rng>(
        &self,
        words: &[&'a str],
        num_aug: usize,
        syn: &Synonyms,
        rng: &mut R,
    ) -> Vec<Vec<&'a str>> {
        let ops = self.ops();
        if ops.is_empty() || words.is_empty() {
            return vec![words.to_vec(); num_aug];
        }
        let per_op = num_aug / 4 + 1;
        let mut slots: Vec<Op> = ops
            .iter()
            .flat_map(|&op| std::iter::repeat_n(op, per_op))
            .collect();
        slots.shuffle(rng);
        slots.truncate(num_aug);
        slots
            .into_iter()
            .map(|op| self.apply(op, words, syn, rng))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::stopwords::is_stop_word;
    use crate::augment::synonyms::usable;
    use crate::rng::stream;
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "what", "is", "the", "car", "film", "of", "a", "red", "house", "?",
    ];

    fn sentence() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(WORDS), 1..30)
    }

    proptest! {
        #[test]
        fn swap_keeps_the_multiset(words in sentence(), n in 0usize..10, seed: u64) {
            let mut before = words.clone();
            let mut after = random_swap(&words, n, &mut stream(&[seed]));
            before.sort_unstable();
            after.sort_unstable();
            prop_assert_eq!(before, after);
        }

        #[test]
        fn deletion_never_empties(words in sentence(), p in 0.0f64..=1.0, seed: u64) {
            let out = random_deletion(&words, p, &mut stream(&[seed]));
            prop_assert!(!out.is_empty());
            prop_assert!(out.iter().all(|w| words.contains(w)));
        }

        #[test]
        fn replacement_only_swaps_non_stop_words_for_their_synonyms(words in sentence(), n in 1usize..5, seed: u64) {
            let syn = Synonyms::wordnet();
            let out = synonym_replacement(&words, n, syn, &mut stream(&[seed]));
            // Each distinct input word maps, at every occurrence, to itself or to the tokens of
            // one of its synonyms; at most n words are replaced, never a stop word.
            let mut mapping = std::collections::HashMap::new();
            prop_assert!(explain(&words, &out, syn, &mut mapping), "{out:?} is not {words:?} with synonyms");
            let replaced: Vec<_> = mapping.iter().filter(|(w, to)| **w != to.as_str()).collect();
            prop_assert!(replaced.len() <= n);
            prop_assert!(replaced.iter().all(|(w, _)| !is_stop_word(w)));
        }

        #[test]
        fn augment_gives_num_aug_nonempty_sentences(words in sentence(), k in 0usize..20, seed: u64) {
            let out = EdaRates::uniform(0.1).augment(&words, k, Synonyms::wordnet(), &mut stream(&[seed]));
            prop_assert_eq!(out.len(), k);
            prop_assert!(out.iter().all(|s| !s.is_empty()));
        }
    }

    /// Backtracking search for a consistent word → replacement mapping that turns `words` into `out`.
    fn explain<'a>(
        words: &[&'a str],
        out: &[&str],
        syn: &Synonyms,
        mapping: &mut std::collections::HashMap<&'a str, String>,
    ) -> bool {
        let Some((&w, rest)) = words.split_first() else {
            return out.is_empty();
        };
        let candidates: Vec<String> = match mapping.get(w) {
            Some(to) => vec![to.clone()],
            None => std::iter::once(w.to_string())
                .chain(usable(syn, w).into_iter().map(str::to_string))
                .collect(),
        };
        let fixed = mapping.contains_key(w);
        for to in candidates {
            let toks: Vec<&str> = to.split(' ').filter(|t| !t.is_empty()).collect();
            if out.len() >= toks.len() && out[..toks.len()] == toks[..] {
                if !fixed {
                    mapping.insert(w, to.clone());
                }
                if explain(rest, &out[toks.len()..], syn, mapping) {
                    return true;
                }
                if !fixed {
                    mapping.remove(w);
                }
            }
        }
        false
    }

    #[test]
    fn insertion_adds_a_synonym_of_a_word() {
        let words = ["a", "car"];
        let out = random_insertion(&words, 1, Synonyms::wordnet(), &mut stream(&[3]));
        assert!(out.len() > words.len(), "{out:?}");
        let syns = Synonyms::wordnet().get("car");
        let added: Vec<&str> = out.iter().copied().filter(|w| !words.contains(w)).collect();
        assert!(
            syns.iter()
                .any(|s| s.split(' ').collect::<Vec<_>>() == added),
            "{added:?}"
        );
    }

    #[test]
    fn zero_rates_disable_operations() {
        let rates = EdaRates {
            sr: 0.0,
            ri: 0.1,
            rs: 0.0,
            rd: 0.0,
        };
        assert_eq!(rates.ops(), vec![Op::RandomInsertion]);
    }
}
