//! The seed's random crop, for text: a contiguous window of at least a fraction of the tokens.

use rand::Rng;

pub fn crop<'a, R: Rng>(words: &[&'a str], min_fraction: f64, rng: &mut R) -> Vec<&'a str> {
    let n = words.len();
    if n <= 1 {
        return words.to_vec();
    }
    let shortest = ((min_fraction.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
    let len = rng.gen_range(shortest..=n);
    let start = rng.gen_range(0..=n - len);
    words[start..start + len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn crop_is_a_long_enough_contiguous_window(n in 1usize..40, f in 0.0f64..=1.0, seed: u64) {
            let words: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            let out = crop(&refs, f, &mut stream(&[seed]));
            prop_assert!(!out.is_empty());
            prop_assert!(out.len() as f64 >= (f * n as f64).ceil().min(n as f64).max(1.0));
            let start: usize = out[0].parse().unwrap();
            prop_assert_eq!(&refs[start..start + out.len()], &out[..]);
        }
    }
}
