//! Augmentation: EDA operations and random cropping, planned per training-set size and
//! applied deterministically per example.

pub mod crop;
pub mod eda;
pub mod stopwords;
pub mod synonyms;

use rand::seq::SliceRandom;
use rand::Rng;

use eda::EdaRates;
use synonyms::Synonyms;

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
