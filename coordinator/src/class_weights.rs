//! `--class-weights`: checked as the flags are, resolved against the labels once the data
//! is read.

use std::ops::Range;
use std::str::FromStr;

/// Per-class loss weights, as asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassWeights {
    /// n / (classes × n_class), from the training originals.
    Balanced,
    /// `LABEL=W,...`; unlisted classes weigh 1.
    Explicit(Vec<(String, f32)>),
}

impl FromStr for ClassWeights {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        if spec == "balanced" {
            return Ok(ClassWeights::Balanced);
        }
        let mut weights = Vec::new();
        for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (label, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--class-weights: {pair:?} is not LABEL=WEIGHT"))?;
            let v: f32 = value
                .trim()
                .parse()
                .map_err(|_| format!("--class-weights: {value:?} is not a number"))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "--class-weights: weight {v} must be a non-negative number"
                ));
            }
            weights.push((label.trim().to_string(), v));
        }
        Ok(ClassWeights::Explicit(weights))
    }
}

impl ClassWeights {
    /// One weight per label, `counts` being the training originals per label, resolved within
    /// each of `blocks` (a multi-task run's tasks; one block of every label otherwise):
    /// `balanced` among the block's own classes, and an explicit label weighing that label in
    /// every block that has it. A label of no block is an error.
    pub fn resolve(
        &self,
        labels: &[String],
        counts: &[usize],
        blocks: &[Range<usize>],
    ) -> Result<Vec<f32>, String> {
        if let ClassWeights::Explicit(pairs) = self {
            if let Some((label, _)) = pairs.iter().find(|(l, _)| !labels.contains(l)) {
                return Err(format!(
                    "--class-weights: unknown label {label:?} (labels: {})",
                    labels.join(", ")
                ));
            }
        }
        let mut w = Vec::with_capacity(labels.len());
        for block in blocks {
            let (labels, counts) = (&labels[block.clone()], &counts[block.clone()]);
            match self {
                ClassWeights::Balanced => {
                    let n: usize = counts.iter().sum();
                    w.extend(counts.iter().map(|&c| match c {
                        0 => 1.0,
                        c => n as f32 / (labels.len() * c) as f32,
                    }));
                }
                // The last weight given for a label counts.
                ClassWeights::Explicit(pairs) => w.extend(labels.iter().map(|l| {
                    pairs
                        .iter()
                        .rev()
                        .find(|(p, _)| p == l)
                        .map_or(1.0, |(_, v)| *v)
                })),
            }
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_and_explicit() {
        let labels = vec!["a".to_string(), "b".to_string()];
        // One block of every label: a run without tasks.
        let everything = 0..2;
        let all = std::slice::from_ref(&everything);
        let balanced: ClassWeights = "balanced".parse().unwrap();
        assert_eq!(
            balanced.resolve(&labels, &[30, 10], all).unwrap(),
            vec![40.0 / 60.0, 2.0]
        );
        let explicit: ClassWeights = "b=3".parse().unwrap();
        assert_eq!(
            explicit.resolve(&labels, &[1, 1], all).unwrap(),
            vec![1.0, 3.0]
        );
        let unknown: ClassWeights = "c=3".parse().unwrap();
        assert!(unknown
            .resolve(&labels, &[1, 1], all)
            .unwrap_err()
            .contains("unknown label"));
        for (bad, why) in [
            ("a", "is not LABEL=WEIGHT"),
            ("a=x", "is not a number"),
            ("a=-1", "non-negative"),
        ] {
            let e = bad.parse::<ClassWeights>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn with_tasks_each_block_is_weighed_within_itself() {
        // Two tasks: (neg, pos) and (neg, pos, neutral), the same names in both.
        let labels: Vec<String> = ["neg", "pos", "neg", "pos", "neutral"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let blocks = [0..2, 2..5];
        let balanced: ClassWeights = "balanced".parse().unwrap();
        assert_eq!(
            balanced
                .resolve(&labels, &[30, 10, 5, 5, 10], &blocks)
                .unwrap(),
            vec![40.0 / 60.0, 2.0, 20.0 / 15.0, 20.0 / 15.0, 20.0 / 30.0]
        );
        let explicit: ClassWeights = "pos=2,neutral=4,pos=3".parse().unwrap();
        assert_eq!(
            explicit.resolve(&labels, &[1; 5], &blocks).unwrap(),
            vec![1.0, 3.0, 1.0, 3.0, 4.0]
        );
    }
}
