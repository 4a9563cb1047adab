//! The augmentation plan of a run: what its options (`--augment`, `--num-aug`, the `--alpha`
//! rates, `--crop`) make of each training example, with EDA's recommendations by training-set
//! size where they are left to `auto`.

use rand::seq::SliceRandom;
use rand::Rng;

use super::crop;
use super::eda::EdaRates;
use super::synonyms::Synonyms;
use crate::data::config::{AugmentKind, DataConfig, NumAug};
use crate::error::DataError;

/// A run's augmentation options, as given.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    pub kind: AugmentKind,
    pub num_aug: NumAug,
    /// Every EDA rate, and each rate on its own (which wins).
    pub alpha: Option<f64>,
    pub alpha_sr: Option<f64>,
    pub alpha_ri: Option<f64>,
    pub alpha_rs: Option<f64>,
    pub alpha_rd: Option<f64>,
    pub crop: Option<f64>,
}

impl AugmentConfig {
    pub fn of(cfg: &DataConfig) -> Self {
        AugmentConfig {
            kind: cfg.augment,
            num_aug: cfg.num_aug,
            alpha: cfg.alpha,
            alpha_sr: cfg.alpha_sr,
            alpha_ri: cfg.alpha_ri,
            alpha_rs: cfg.alpha_rs,
            alpha_rd: cfg.alpha_rd,
            crop: cfg.crop,
        }
    }

    /// Options of an augmentation that is off would be ignored without a word: refused.
    pub fn refuse_unused(&self) -> Result<(), DataError> {
        if self.kind != AugmentKind::None {
            return Ok(());
        }
        let rates = [
            ("--alpha", self.alpha),
            ("--alpha-sr", self.alpha_sr),
            ("--alpha-ri", self.alpha_ri),
            ("--alpha-rs", self.alpha_rs),
            ("--alpha-rd", self.alpha_rd),
        ];
        if let Some((flag, _)) = rates.iter().find(|(_, r)| r.is_some()) {
            return Err(DataError::Config(format!(
                "{flag} sets a rate of --augment eda, which is off (--balance augment alone \
                 fills classes at EDA's default rate, 0.1)"
            )));
        }
        if let (NumAug::Count(k), None) = (self.num_aug, self.crop) {
            return Err(DataError::Config(format!(
                "--num-aug {k} asks for augmentations, but none are made: add --augment eda or \
                 --crop FRACTION"
            )));
        }
        Ok(())
    }
}

/// What augmentation makes of each training example.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentPlan {
    /// EDA operations and their rates; `None` when EDA is off.
    pub eda: Option<EdaRates>,
    /// Crop each augmentation to a window of at least this fraction of its tokens.
    pub crop: Option<f64>,
    /// New sentences per example (the original is kept besides them).
    pub num_aug: usize,
}

impl AugmentPlan {
    pub const NONE: AugmentPlan = AugmentPlan {
        eda: None,
        crop: None,
        num_aug: 0,
    };

    /// The plan for a training set of `train_rows` originals (after de-duplication and the
    /// validation split): `--num-aug auto` and an unset `--alpha` take EDA's recommendation.
    pub fn resolve(cfg: &AugmentConfig, train_rows: usize) -> Result<Self, DataError> {
        let (auto_k, auto_alpha) = AugmentPlan::recommended(train_rows);
        let num_aug = match cfg.num_aug {
            NumAug::Count(k) => k,
            NumAug::Auto => auto_k,
        };
        let alpha = cfg.alpha.unwrap_or(match cfg.num_aug {
            NumAug::Auto => auto_alpha,
            NumAug::Count(_) => 0.1,
        });
        let eda = match cfg.kind {
            AugmentKind::None => None,
            AugmentKind::Eda => {
                let rates = EdaRates {
                    sr: cfg.alpha_sr.unwrap_or(alpha),
                    ri: cfg.alpha_ri.unwrap_or(alpha),
                    rs: cfg.alpha_rs.unwrap_or(alpha),
                    rd: cfg.alpha_rd.unwrap_or(alpha),
                };
                if rates.ops().is_empty() {
                    return Err(DataError::Config(
                        "--augment eda with every rate at 0 does nothing".into(),
                    ));
                }
                Some(rates)
            }
        };
        let active = eda.is_some() || cfg.crop.is_some();
        Ok(AugmentPlan {
            eda,
            crop: cfg.crop,
            num_aug: if active { num_aug } else { 0 },
        })
    }

    /// EDA's recommendation by training-set size: (augmentations per example, alpha).
    pub fn recommended(train_rows: usize) -> (usize, f64) {
        match train_rows {
            0..=500 => (16, 0.05),
            501..=2000 => (8, 0.05),
            _ => (4, 0.1),
        }
    }

    pub fn is_active(&self) -> bool {
        self.num_aug > 0 && (self.eda.is_some() || self.crop.is_some())
    }

    /// The `num_aug` augmentations of one example.
    pub fn augmentations<'a, R: Rng>(&self, words: &[&'a str], rng: &mut R) -> Vec<Vec<&'a str>> {
        if !self.is_active() {
            return Vec::new();
        }
        let mut out = match &self.eda {
            Some(rates) => rates.augment(words, self.num_aug, Synonyms::wordnet(), rng),
            None => vec![words.to_vec(); self.num_aug],
        };
        if let Some(f) = self.crop {
            for s in &mut out {
                *s = crop::crop(s, f, rng);
            }
        }
        out
    }

    /// One more augmentation by a random operation (used to fill minority classes); EDA's
    /// default rates when the plan itself has none.
    pub fn one<'a, R: Rng>(&self, words: &[&'a str], rng: &mut R) -> Vec<&'a str> {
        let rates = self.eda.unwrap_or(EdaRates::uniform(0.1));
        let ops = rates.ops();
        let mut out = match ops.choose(rng) {
            Some(&op) => rates.apply(op, words, Synonyms::wordnet(), rng),
            None => words.to_vec(),
        };
        if let Some(f) = self.crop {
            out = crop::crop(&out, f, rng);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: AugmentKind, num_aug: NumAug) -> AugmentConfig {
        AugmentConfig::of(&DataConfig {
            augment: kind,
            num_aug,
            ..DataConfig::default()
        })
    }

    #[test]
    fn auto_follows_the_training_set_size_and_a_single_rate_wins_over_alpha() {
        let eda = config(AugmentKind::Eda, NumAug::Auto);
        let small = AugmentPlan::resolve(&eda, 400).unwrap();
        assert_eq!((small.num_aug, small.eda.unwrap().sr), (16, 0.05));
        let large = AugmentPlan::resolve(&eda, 5000).unwrap();
        assert_eq!((large.num_aug, large.eda.unwrap().rd), (4, 0.1));
        let tuned = AugmentConfig {
            alpha: Some(0.3),
            alpha_sr: Some(0.0),
            ..config(AugmentKind::Eda, NumAug::Count(2))
        };
        let rates = AugmentPlan::resolve(&tuned, 400).unwrap().eda.unwrap();
        assert_eq!((rates.sr, rates.ri), (0.0, 0.3));
        let off = AugmentPlan::resolve(&config(AugmentKind::None, NumAug::Auto), 400).unwrap();
        assert_eq!(off, AugmentPlan::NONE);
        let silent = AugmentConfig {
            alpha: Some(0.0),
            ..config(AugmentKind::Eda, NumAug::Auto)
        };
        assert!(AugmentPlan::resolve(&silent, 400).is_err());
    }

    #[test]
    fn options_of_augmentation_that_is_off_are_refused() {
        let off = config(AugmentKind::None, NumAug::Auto);
        assert!(off.refuse_unused().is_ok());
        let rate = AugmentConfig {
            alpha_ri: Some(0.2),
            ..off.clone()
        };
        assert!(rate
            .refuse_unused()
            .unwrap_err()
            .to_string()
            .contains("--alpha-ri"));
        let count = config(AugmentKind::None, NumAug::Count(3));
        assert!(count.refuse_unused().is_err());
        let cropped = AugmentConfig {
            crop: Some(0.5),
            ..count
        };
        assert!(cropped.refuse_unused().is_ok(), "crops are augmentations");
    }
}
