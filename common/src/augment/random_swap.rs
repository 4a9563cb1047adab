//! EDA's random swap (RS).

use rand::Rng;

/// Swaps two random positions, `n` times.
pub fn random_swap<'a, R: Rng>(words: &[&'a str], n: usize, rng: &mut R) -> Vec<&'a str> {
    let mut out = words.to_vec();
    if out.len() < 2 {
        return out;
    }
    for _ in 0..n {
        let i = rng.gen_range(0..out.len());
        let mut j = rng.gen_range(0..out.len());
        // The reference retries three times to find a second, different position.
        for _ in 0..3 {
            if j != i {
                break;
            }
            j = rng.gen_range(0..out.len());
        }
        out.swap(i, j);
    }
    out
}
