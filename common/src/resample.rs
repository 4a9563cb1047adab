//! Class balance by random over- or under-sampling, with the semantics of imbalanced-learn's
//! `RandomOverSampler` / `RandomUnderSampler` (strategy "auto"), redone every epoch.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    None,
    /// Every class up to the majority count, by drawing copies with replacement.
    Oversample,
    /// Every class down to the minority count, by drawing without replacement.
    Undersample,
    /// Every class up to the majority count with new augmentations instead of copies.
    Augment,
}

/// Per class, how many examples it should have after balancing (`None` for classes absent from
/// the epoch). `ratio` R < 1 brings minority classes to R × majority (over-sampling) or cuts
/// larger classes to minority / R (under-sampling).
pub fn targets(counts: &[usize], kind: Balance, ratio: f64) -> Vec<Option<usize>> {
    let present = counts.iter().copied().filter(|&c| c > 0);
    let (max, min) = (
        present.clone().max().unwrap_or(0),
        present.min().unwrap_or(0),
    );
    counts
        .iter()
        .map(|&c| {
            (c > 0).then(|| match kind {
                Balance::None => c,
                Balance::Oversample | Balance::Augment => {
                    c.max((ratio * max as f64).ceil() as usize)
                }
                Balance::Undersample => c.min(((min as f64) / ratio).floor() as usize).max(min),
            })
        })
        .collect()
}

/// Indices into `labels` after over- or under-sampling to `targets`: kept examples in their
/// original order, then drawn copies.
pub fn resample(labels: &[u32], targets: &[Option<usize>], rng: &mut impl Rng) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut keep = vec![true; labels.len()];
    let mut extra = Vec::new();
    for (members, target) in by_class.iter().zip(targets) {
        let Some(target) = *target else { continue };
        let n = members.len();
        if target < n {
            let kept: std::collections::HashSet<usize> =
                members.choose_multiple(rng, target).copied().collect();
            for &i in members {
                keep[i] = kept.contains(&i);
            }
        } else {
            for _ in n..target {
                extra.push(members[rng.gen_range(0..n)]);
            }
        }
    }
    (0..labels.len())
        .filter(|&i| keep[i])
        .chain(extra)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use proptest::prelude::*;

    fn counts_of(labels: &[u32], idx: &[usize], k: usize) -> Vec<usize> {
        let mut c = vec![0; k];
        for &i in idx {
            c[labels[i] as usize] += 1;
        }
        c
    }

    proptest! {
        #[test]
        fn oversample_gives_every_class_the_majority_count(labels in prop::collection::vec(0u32..4, 1..300), seed: u64) {
            let counts = counts_of(&labels, &(0..labels.len()).collect::<Vec<_>>(), 4);
            let idx = resample(&labels, &targets(&counts, Balance::Oversample, 1.0), &mut stream(&[seed]));
            let max = *counts.iter().max().unwrap();
            let after = counts_of(&labels, &idx, 4);
            for (b, a) in counts.iter().zip(&after) {
                prop_assert_eq!(*a, if *b == 0 { 0 } else { max });
            }
            // Every original example is kept.
            prop_assert!((0..labels.len()).all(|i| idx.contains(&i)));
        }

        #[test]
        fn undersample_gives_every_class_the_minority_count(labels in prop::collection::vec(0u32..4, 1..300), seed: u64) {
            let counts = counts_of(&labels, &(0..labels.len()).collect::<Vec<_>>(), 4);
            let idx = resample(&labels, &targets(&counts, Balance::Undersample, 1.0), &mut stream(&[seed]));
            let min = *counts.iter().filter(|&&c| c > 0).min().unwrap();
            let after = counts_of(&labels, &idx, 4);
            for (b, a) in counts.iter().zip(&after) {
                prop_assert_eq!(*a, if *b == 0 { 0 } else { min });
            }
            let mut sorted = idx.clone();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), idx.len(), "no example twice");
        }
    }

    #[test]
    fn ratio_brings_minorities_to_a_fraction_of_the_majority() {
        assert_eq!(
            targets(&[100, 10, 0], Balance::Oversample, 0.5),
            vec![Some(100), Some(50), None]
        );
        assert_eq!(
            targets(&[100, 10, 60], Balance::Undersample, 0.5),
            vec![Some(20), Some(10), Some(20)]
        );
        assert_eq!(
            targets(&[100, 10], Balance::None, 1.0),
            vec![Some(100), Some(10)]
        );
    }
}
