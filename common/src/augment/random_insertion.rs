//! EDA's random insertion (RI).

use rand::seq::SliceRandom;
use rand::Rng;

use super::stopwords::is_stop_word;
use super::synonyms::{push_synonym, usable, Synonyms};

/// Inserts, `n` times, a synonym of a random non-stop word at a random position.
pub fn random_insertion<'a, R: Rng>(
    words: &[&'a str],
    n: usize,
    syn: &Synonyms,
    rng: &mut R,
) -> Vec<&'a str> {
    let mut out = words.to_vec();
    for _ in 0..n {
        // The reference gives up after 10 draws without a word that has synonyms.
        for _ in 0..10 {
            let w = out[rng.gen_range(0..out.len())];
            if is_stop_word(w) {
                continue;
            }
            let options = usable(syn, w);
            if let Some(&s) = options.choose(rng) {
                let at = rng.gen_range(0..out.len());
                let mut piece = Vec::new();
                push_synonym(&mut piece, s);
                out.splice(at..at, piece);
                break;
            }
        }
    }
    out
}
