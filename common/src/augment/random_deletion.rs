//! EDA's random deletion (RD).

use rand::Rng;

/// Deletes each word with probability `p`, never leaving the sentence empty.
pub fn random_deletion<'a, R: Rng>(words: &[&'a str], p: f64, rng: &mut R) -> Vec<&'a str> {
    if words.len() <= 1 {
        return words.to_vec();
    }
    let kept: Vec<&str> = words
        .iter()
        .copied()
        .filter(|_| rng.gen::<f64>() > p)
        .collect();
    if kept.is_empty() {
        vec![words[rng.gen_range(0..words.len())]]
    } else {
        kept
    }
}
