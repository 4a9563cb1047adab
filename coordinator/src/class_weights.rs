//! `--class-weights`: checked as the flags are, resolved against the labels once the data
//! is read.

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
    /// One weight per label, `counts` being the training originals per label.
    /// Only what concerns `labels` (one task's): explicit weights of other labels left out.
    pub fn within(&self, labels: &[String]) -> ClassWeights {
        match self {
            ClassWeights::Balanced => ClassWeights::Balanced,
            ClassWeights::Explicit(pairs) => ClassWeights::Explicit(
                pairs
                    .iter()
                    .filter(|(l, _)| labels.contains(l))
                    .cloned()
                    .collect(),
            ),
        }
    }

    pub fn resolve(&self, labels: &[String], counts: &[usize]) -> Result<Vec<f32>, String> {
        match self {
            ClassWeights::Balanced => {
                let n: usize = counts.iter().sum();
                Ok(counts
                    .iter()
                    .map(|&c| {
                        if c == 0 {
                            1.0
                        } else {
                            n as f32 / (labels.len() * c) as f32
                        }
                    })
                    .collect())
            }
            ClassWeights::Explicit(pairs) => {
                let mut w = vec![1.0f32; labels.len()];
                for (label, v) in pairs {
                    let i = labels.iter().position(|l| l == label).ok_or_else(|| {
                        format!(
                            "--class-weights: unknown label {label:?} (labels: {})",
                            labels.join(", ")
                        )
                    })?;
                    w[i] = *v;
                }
                Ok(w)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_and_explicit() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let balanced: ClassWeights = "balanced".parse().unwrap();
        assert_eq!(
            balanced.resolve(&labels, &[30, 10]).unwrap(),
            vec![40.0 / 60.0, 2.0]
        );
        let explicit: ClassWeights = "b=3".parse().unwrap();
        assert_eq!(explicit.resolve(&labels, &[1, 1]).unwrap(), vec![1.0, 3.0]);
        let unknown: ClassWeights = "c=3".parse().unwrap();
        assert!(unknown
            .resolve(&labels, &[1, 1])
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
}
