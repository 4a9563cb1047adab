//! Mixing several labelled sources: concatenation, or weighted interleaving as Hugging Face's
//! `interleave_datasets(probabilities=...)` does.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MixStop {
    /// Stop the epoch as soon as one source runs out (Hugging Face's default).
    #[default]
    FirstExhausted,
    /// Restart sources that run out until every source has been seen whole at least once.
    AllExhausted,
}

/// Normalised sampling probabilities from per-source weights: sources without a weight share
/// what the weighted ones leave of 1. `None` when no source has a weight (plain concatenation).
pub fn probabilities(weights: &[Option<f64>]) -> Result<Option<Vec<f64>>, String> {
    if weights.iter().all(Option::is_none) {
        return Ok(None);
    }
    for w in weights.iter().flatten() {
        if !(w.is_finite() && *w > 0.0) {
            return Err(format!("source weight {w} must be a positive number"));
        }
    }
    let given: f64 = weights.iter().flatten().sum();
    let unweighted = weights.iter().filter(|w| w.is_none()).count();
    let share = if unweighted > 0 {
        let rest = 1.0 - given;
        if rest <= 0.0 {
            return Err(format!(
                "source weights add up to {given}, leaving nothing for the {unweighted} source(s) without a weight"
            ));
        }
        rest / unweighted as f64
    } else {
        0.0
    };
    let raw: Vec<f64> = weights.iter().map(|w| w.unwrap_or(share)).collect();
    let total: f64 = raw.iter().sum();
    Ok(Some(raw.iter().map(|w| w / total).collect()))
}

/// One line telling what a weighted mix does: each source's share of the draws, how the
/// given weights became those shares, and when an epoch ends. `kind` names what is mixed:
/// "source" (or "task").
pub fn describe(
    kind: &str,
    names: &[&str],
    weights: &[Option<f64>],
    probs: &[f64],
    stop: MixStop,
) -> String {
    let shares: Vec<String> = names
        .iter()
        .zip(probs)
        .map(|(n, p)| format!("{n} {p:.3}"))
        .collect();
    let unweighted: Vec<&str> = names
        .iter()
        .zip(weights)
        .filter(|(_, w)| w.is_none())
        .map(|(n, _)| *n)
        .collect();
    let given: f64 = weights.iter().flatten().sum();
    let how = if !unweighted.is_empty() {
        format!(
            " ({} without a weight: an equal share of what the weights leave of 1)",
            unweighted.join(", ")
        )
    } else if (given - 1.0).abs() > 1e-9 {
        format!(" (the weights add up to {given}: scaled to add up to 1)")
    } else {
        String::new()
    };
    let end = match stop {
        MixStop::FirstExhausted => format!("one {kind} runs out (--mix-stop first-exhausted)"),
        MixStop::AllExhausted => {
            format!("every {kind} has been drawn whole at least once (--mix-stop all-exhausted)")
        }
    };
    format!(
        "mixing {} {kind}s by weight: {} of the draws{how}; an epoch ends when {end}",
        names.len(),
        shares.join(", ")
    )
}

/// The epoch's draw as (source, index within source): at each draw a source is chosen with
/// its probability and yields its next example (each source in its own shuffled order).
pub fn interleave(
    sizes: &[usize],
    probs: &[f64],
    stop: MixStop,
    rng: &mut impl Rng,
) -> Vec<(usize, usize)> {
    let orders: Vec<Vec<usize>> = sizes
        .iter()
        .map(|&n| {
            let mut o: Vec<usize> = (0..n).collect();
            o.shuffle(rng);
            o
        })
        .collect();
    let mut next = vec![0usize; sizes.len()];
    let mut exhausted = vec![false; sizes.len()];
    let live: Vec<usize> = (0..sizes.len())
        .filter(|&i| sizes[i] > 0 && probs[i] > 0.0)
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let cumulative: Vec<f64> = live
        .iter()
        .scan(0.0, |acc, &i| {
            *acc += probs[i];
            Some(*acc)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(1.0);
    let mut out = Vec::new();
    loop {
        let x = rng.gen::<f64>() * total;
        let k = cumulative.partition_point(|&c| c <= x).min(live.len() - 1);
        let s = live[k];
        out.push((s, orders[s][next[s]]));
        next[s] += 1;
        if next[s] == sizes[s] {
            exhausted[s] = true;
            match stop {
                MixStop::FirstExhausted => return out,
                MixStop::AllExhausted => {
                    if live.iter().all(|&i| exhausted[i]) {
                        return out;
                    }
                    next[s] = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn describe_says_how_weights_became_shares() {
        let w = [Some(0.9), Some(0.3)];
        let p = probabilities(&w).unwrap().unwrap();
        assert_eq!(
            describe(
                "source",
                &["a.tsv", "b.tsv"],
                &w,
                &p,
                MixStop::FirstExhausted
            ),
            "mixing 2 sources by weight: a.tsv 0.750, b.tsv 0.250 of the draws (the weights add \
             up to 1.2: scaled to add up to 1); an epoch ends when one source runs out \
             (--mix-stop first-exhausted)"
        );
        let w = [Some(0.5), None, None];
        let p = probabilities(&w).unwrap().unwrap();
        let line = describe("source", &["a", "b", "c"], &w, &p, MixStop::AllExhausted);
        assert!(
            line.starts_with(
                "mixing 3 sources by weight: a 0.500, b 0.250, c 0.250 of the draws (b, c without \
                 a weight: an equal share of what the weights leave of 1)"
            ),
            "{line}"
        );
        assert!(line.ends_with("drawn whole at least once (--mix-stop all-exhausted)"));
        let w = [Some(0.25), Some(0.75)];
        let p = probabilities(&w).unwrap().unwrap();
        let line = describe("source", &["a", "b"], &w, &p, MixStop::FirstExhausted);
        assert!(line.contains("b 0.750 of the draws; an epoch"), "{line}");
    }

    #[test]
    fn unweighted_sources_share_the_rest() {
        assert_eq!(probabilities(&[None, None]).unwrap(), None);
        let p = probabilities(&[None, Some(0.3)]).unwrap().unwrap();
        assert!((p[0] - 0.7).abs() < 1e-12 && (p[1] - 0.3).abs() < 1e-12);
        let p = probabilities(&[Some(2.0), Some(6.0)]).unwrap().unwrap();
        assert!((p[0] - 0.25).abs() < 1e-12);
        assert!(probabilities(&[None, Some(1.5)]).is_err());
        assert!(probabilities(&[Some(-1.0), Some(1.0)]).is_err());
    }

    #[test]
    fn weighted_mix_honours_weights_within_three_sigma() {
        let (n, p) = (10_000usize, 0.3);
        let draws = interleave(
            &[100_000, 100_000],
            &[1.0 - p, p],
            MixStop::FirstExhausted,
            &mut stream(&[7]),
        );
        let first: Vec<_> = draws.iter().take(n).collect();
        assert_eq!(first.len(), n);
        let from_b = first.iter().filter(|(s, _)| *s == 1).count() as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (from_b - n as f64 * p).abs() <= 3.0 * sigma,
            "{from_b} draws from b"
        );
    }

    #[test]
    fn first_exhausted_stops_at_the_first_empty_source() {
        let draws = interleave(
            &[5, 1000],
            &[0.5, 0.5],
            MixStop::FirstExhausted,
            &mut stream(&[1]),
        );
        assert_eq!(draws.iter().filter(|(s, _)| *s == 0).count(), 5);
        assert_eq!(draws.last().unwrap().0, 0);
    }

    #[test]
    fn all_exhausted_sees_every_example_of_every_source() {
        let draws = interleave(
            &[5, 50],
            &[0.5, 0.5],
            MixStop::AllExhausted,
            &mut stream(&[2]),
        );
        for (s, n) in [(0, 5), (1, 50)] {
            let mut seen: Vec<usize> = draws.iter().filter(|d| d.0 == s).map(|d| d.1).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), n);
        }
    }
}
