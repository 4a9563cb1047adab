//! EDA's synonym replacement (SR).

use rand::seq::SliceRandom;
use rand::Rng;

use super::stopwords::is_stop_word;
use super::synonyms::{push_synonym, usable, Synonyms};

/// Replaces up to `n` distinct non-stop words (every occurrence of each) with a random synonym.
pub fn synonym_replacement<'a, R: Rng>(
    words: &[&'a str],
    n: usize,
    syn: &Synonyms,
    rng: &mut R,
) -> Vec<&'a str> {
    let mut candidates: Vec<&str> = Vec::new();
    for &w in words {
        if !is_stop_word(w) && !candidates.contains(&w) {
            candidates.push(w);
        }
    }
    candidates.shuffle(rng);
    let mut replacements: Vec<(&str, &'static str)> = Vec::new();
    for w in candidates {
        if replacements.len() >= n {
            break;
        }
        let options = usable(syn, w);
        if let Some(&s) = options.choose(rng) {
            replacements.push((w, s));
        }
    }
    let mut out = Vec::with_capacity(words.len() + 2);
    for &w in words {
        match replacements.iter().find(|(from, _)| *from == w) {
            Some(&(_, to)) => push_synonym(&mut out, to),
            None => out.push(w),
        }
    }
    out
}
