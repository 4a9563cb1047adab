//! The augmentation plan of a run: what its options (`--augment`, `--num-aug`, the `--alpha`
//! rates, `--char-rate`, `--crop`) make of each training example, with EDA's recommendations
//! by training-set size where they are left to `auto`.

use std::borrow::Cow;

use rand::seq::SliceRandom;
use rand::Rng;

use super::chars::{self, char_noise};
use super::crop;
use super::eda::EdaRates;
use super::synonyms::Synonyms;
use crate::data::config::{AugmentKind, DataConfig, NumAug};
use crate::error::DataError;

/// A run's augmentation options, as given.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// `--augment`'s list.
    pub kinds: Vec<AugmentKind>,
    pub num_aug: NumAug,
    /// Every EDA rate, and each rate on its own (which wins).
    pub alpha: Option<f64>,
    pub alpha_sr: Option<f64>,
    pub alpha_ri: Option<f64>,
    pub alpha_rs: Option<f64>,
    pub alpha_rd: Option<f64>,
    pub char_rate: Option<f64>,
    pub crop: Option<f64>,
}

/// Which augmentations `--augment`'s list turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chosen {
    eda: bool,
    chars: bool,
}

impl AugmentConfig {
    pub fn of(cfg: &DataConfig) -> Self {
        AugmentConfig {
            kinds: cfg.augment.clone(),
            num_aug: cfg.num_aug,
            alpha: cfg.alpha,
            alpha_sr: cfg.alpha_sr,
            alpha_ri: cfg.alpha_ri,
            alpha_rs: cfg.alpha_rs,
            alpha_rd: cfg.alpha_rd,
            char_rate: cfg.char_rate,
            crop: cfg.crop,
        }
    }

    /// The list's kinds; `none` beside another kind is a contradiction, refused.
    fn chosen(&self) -> Result<Chosen, DataError> {
        let has = |k| self.kinds.contains(&k);
        let chosen = Chosen {
            eda: has(AugmentKind::Eda),
            chars: has(AugmentKind::Chars),
        };
        if has(AugmentKind::None) && (chosen.eda || chosen.chars) {
            return Err(DataError::Config(format!(
                "--augment {}: none cannot be combined with another augmentation",
                AugmentKind::join(&self.kinds)
            )));
        }
        Ok(chosen)
    }

    /// Options of an augmentation that is off would be ignored without a word: refused.
    pub fn refuse_unused(&self) -> Result<(), DataError> {
        let chosen = self.chosen()?;
        let refuse = |msg: String| Err(DataError::Config(msg));
        if !chosen.eda {
            let rates = [
                ("--alpha", self.alpha),
                ("--alpha-sr", self.alpha_sr),
                ("--alpha-ri", self.alpha_ri),
                ("--alpha-rs", self.alpha_rs),
                ("--alpha-rd", self.alpha_rd),
            ];
            if let Some((flag, _)) = rates.iter().find(|(_, r)| r.is_some()) {
                return refuse(if chosen.chars {
                    format!(
                        "{flag} sets a rate of --augment eda, which is not in --augment {}",
                        AugmentKind::join(&self.kinds)
                    )
                } else {
                    format!(
                        "{flag} sets a rate of --augment eda, which is off (--balance augment \
                         alone fills classes at EDA's default rate, 0.1)"
                    )
                });
            }
        }
        if !chosen.chars && self.char_rate.is_some() {
            return refuse(format!(
                "--char-rate sets the rate of --augment chars, which is off (--augment {}): add \
                 chars to --augment's list",
                AugmentKind::join(&self.kinds)
            ));
        }
        if let (false, false, NumAug::Count(k), None) =
            (chosen.eda, chosen.chars, self.num_aug, self.crop)
        {
            return refuse(format!(
                "--num-aug {k} asks for augmentations, but none are made: add --augment eda or \
                 chars, or --crop FRACTION"
            ));
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
    /// Character noise's rate per word; `None` when it is off.
    pub chars: Option<f64>,
    /// New sentences per example (the original is kept besides them).
    pub num_aug: usize,
}

impl AugmentPlan {
    pub const NONE: AugmentPlan = AugmentPlan {
        eda: None,
        crop: None,
        chars: None,
        num_aug: 0,
    };

    /// The plan for a training set of `train_rows` originals (after de-duplication and the
    /// validation split): `--num-aug auto` and an unset `--alpha` take EDA's recommendation.
    pub fn resolve(cfg: &AugmentConfig, train_rows: usize) -> Result<Self, DataError> {
        let chosen = cfg.chosen()?;
        let (auto_k, auto_alpha) = AugmentPlan::recommended(train_rows);
        let num_aug = match cfg.num_aug {
            NumAug::Count(k) => k,
            NumAug::Auto => auto_k,
        };
        let alpha = cfg.alpha.unwrap_or(match cfg.num_aug {
            NumAug::Auto => auto_alpha,
            NumAug::Count(_) => 0.1,
        });
        let eda = if chosen.eda {
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
        } else {
            None
        };
        let chars = if chosen.chars {
            let rate = cfg.char_rate.unwrap_or(chars::DEFAULT_RATE);
            // A saved configuration is read without the flag's parser: checked here too.
            if !(0.0..=1.0).contains(&rate) {
                return Err(DataError::Config(format!(
                    "--char-rate {rate} is not between 0 and 1"
                )));
            }
            if rate == 0.0 {
                return Err(DataError::Config(
                    "--augment chars with --char-rate 0 does nothing".into(),
                ));
            }
            Some(rate)
        } else {
            None
        };
        let active = eda.is_some() || chars.is_some() || cfg.crop.is_some();
        Ok(AugmentPlan {
            eda,
            crop: cfg.crop,
            chars,
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
        self.num_aug > 0 && (self.eda.is_some() || self.crop.is_some() || self.chars.is_some())
    }

    /// The `num_aug` augmentations of one example: EDA and crop draw from `rng`, character
    /// noise from `noise` (its own stream, see [`chars::noise_stream`]).
    pub fn augmentations<'a, R: Rng, N: Rng>(
        &self,
        words: &[&'a str],
        rng: &mut R,
        noise: &mut N,
    ) -> Vec<Vec<Cow<'a, str>>> {
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
        out.iter().map(|s| self.noised(s, noise)).collect()
    }

    /// One more augmentation by a random operation (used to fill minority classes); EDA's
    /// default rates when the plan has neither EDA nor character noise.
    pub fn one<'a, R: Rng, N: Rng>(
        &self,
        words: &[&'a str],
        rng: &mut R,
        noise: &mut N,
    ) -> Vec<Cow<'a, str>> {
        let mut out = match (self.eda, self.chars) {
            // Character noise alone: the copy is made by it only.
            (None, Some(_)) => words.to_vec(),
            (rates, _) => {
                let rates = rates.unwrap_or(EdaRates::uniform(0.1));
                match rates.ops().choose(rng) {
                    Some(&op) => rates.apply(op, words, Synonyms::wordnet(), rng),
                    None => words.to_vec(),
                }
            }
        };
        if let Some(f) = self.crop {
            out = crop::crop(&out, f, rng);
        }
        self.noised(&out, noise)
    }

    /// `words` with the plan's character noise, if any.
    fn noised<'a, N: Rng>(&self, words: &[&'a str], noise: &mut N) -> Vec<Cow<'a, str>> {
        match self.chars {
            Some(rate) => char_noise(words, rate, noise),
            None => words.iter().map(|&w| Cow::Borrowed(w)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::chars::noise_stream;
    use crate::rng::stream;

    fn config(kinds: &[AugmentKind], num_aug: NumAug) -> AugmentConfig {
        AugmentConfig::of(&DataConfig {
            augment: kinds.to_vec(),
            num_aug,
            ..DataConfig::default()
        })
    }

    const EDA: &[AugmentKind] = &[AugmentKind::Eda];
    const CHARS: &[AugmentKind] = &[AugmentKind::Chars];
    const BOTH: &[AugmentKind] = &[AugmentKind::Eda, AugmentKind::Chars];
    const NONE: &[AugmentKind] = &[AugmentKind::None];

    #[test]
    fn auto_follows_the_training_set_size_and_a_single_rate_wins_over_alpha() {
        let eda = config(EDA, NumAug::Auto);
        let small = AugmentPlan::resolve(&eda, 400).unwrap();
        assert_eq!((small.num_aug, small.eda.unwrap().sr), (16, 0.05));
        let large = AugmentPlan::resolve(&eda, 5000).unwrap();
        assert_eq!((large.num_aug, large.eda.unwrap().rd), (4, 0.1));
        let tuned = AugmentConfig {
            alpha: Some(0.3),
            alpha_sr: Some(0.0),
            ..config(EDA, NumAug::Count(2))
        };
        let rates = AugmentPlan::resolve(&tuned, 400).unwrap().eda.unwrap();
        assert_eq!((rates.sr, rates.ri), (0.0, 0.3));
        let off = AugmentPlan::resolve(&config(NONE, NumAug::Auto), 400).unwrap();
        assert_eq!(off, AugmentPlan::NONE);
        let silent = AugmentConfig {
            alpha: Some(0.0),
            ..config(EDA, NumAug::Auto)
        };
        assert!(AugmentPlan::resolve(&silent, 400).is_err());
    }

    #[test]
    fn character_noise_alone_follows_edas_table_at_its_own_rate() {
        for (rows, k) in [(400, 16), (1500, 8), (5000, 4)] {
            let plan = AugmentPlan::resolve(&config(CHARS, NumAug::Auto), rows).unwrap();
            assert_eq!(
                plan,
                AugmentPlan {
                    eda: None,
                    crop: None,
                    chars: Some(0.05),
                    num_aug: k
                }
            );
        }
        let both = AugmentConfig {
            char_rate: Some(0.3),
            ..config(BOTH, NumAug::Count(2))
        };
        let plan = AugmentPlan::resolve(&both, 400).unwrap();
        assert_eq!((plan.chars, plan.num_aug), (Some(0.3), 2));
        assert_eq!(plan.eda, Some(EdaRates::uniform(0.1)));
        let silent = AugmentConfig {
            char_rate: Some(0.0),
            ..config(CHARS, NumAug::Auto)
        };
        assert!(AugmentPlan::resolve(&silent, 400).is_err());
        let out_of_range = AugmentConfig {
            char_rate: Some(1.5),
            ..config(CHARS, NumAug::Auto)
        };
        let err = AugmentPlan::resolve(&out_of_range, 400).unwrap_err();
        assert!(err.to_string().contains("--char-rate 1.5"), "{err}");
    }

    #[test]
    fn options_of_augmentation_that_is_off_are_refused() {
        let off = config(NONE, NumAug::Auto);
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
        let count = config(NONE, NumAug::Count(3));
        assert!(count.refuse_unused().is_err());
        let cropped = AugmentConfig {
            crop: Some(0.5),
            ..count
        };
        assert!(cropped.refuse_unused().is_ok(), "crops are augmentations");
    }

    #[test]
    fn char_rate_without_chars_and_eda_rates_without_eda_are_refused() {
        for kinds in [NONE, EDA] {
            let cfg = AugmentConfig {
                char_rate: Some(0.2),
                crop: Some(0.5),
                ..config(kinds, NumAug::Count(2))
            };
            let err = cfg.refuse_unused().unwrap_err().to_string();
            assert!(
                err.contains("--char-rate") && err.contains("--augment chars"),
                "{err}"
            );
        }
        let with_chars = AugmentConfig {
            char_rate: Some(0.2),
            ..config(CHARS, NumAug::Count(2))
        };
        assert!(with_chars.refuse_unused().is_ok());
        let alpha = AugmentConfig {
            alpha_sr: Some(0.2),
            ..config(CHARS, NumAug::Count(2))
        };
        let err = alpha.refuse_unused().unwrap_err().to_string();
        assert!(err.contains("--alpha-sr") && err.contains("chars"), "{err}");
        assert!(config(BOTH, NumAug::Count(2)).refuse_unused().is_ok());
        let contradiction = config(&[AugmentKind::None, AugmentKind::Eda], NumAug::Auto);
        let err = contradiction.refuse_unused().unwrap_err().to_string();
        assert!(err.contains("--augment none,eda"), "{err}");
        assert!(AugmentPlan::resolve(&contradiction, 10).is_err());
    }

    /// Character noise draws from its own stream: EDA's draws, and so its sentences, are those
    /// of EDA alone; the noise only edits letters inside them.
    #[test]
    fn eda_then_chars_is_eda_alone_with_words_edited() {
        let words = [
            "what",
            "is",
            "the",
            "oldest",
            "university",
            "in",
            "the",
            "united",
            "states",
            "?",
        ];
        let rows = 400;
        let eda = AugmentPlan::resolve(&config(EDA, NumAug::Count(6)), rows).unwrap();
        let both = AugmentPlan::resolve(
            &AugmentConfig {
                char_rate: Some(0.5),
                ..config(BOTH, NumAug::Count(6))
            },
            rows,
        )
        .unwrap();
        let mut edited = 0;
        for example in 0..20u64 {
            let rng = || stream(&[1, example]);
            let noise = || noise_stream(1, &[example]);
            let plain = eda.augmentations(&words, &mut rng(), &mut noise());
            let noisy = both.augmentations(&words, &mut rng(), &mut noise());
            assert_eq!(noisy, both.augmentations(&words, &mut rng(), &mut noise()));
            assert_eq!(plain.len(), noisy.len());
            for (p, n) in plain.iter().zip(&noisy) {
                assert_eq!(p.len(), n.len(), "{p:?} / {n:?}");
                for (a, b) in p.iter().zip(n) {
                    if a != b {
                        edited += 1;
                        assert!(chars::noisy(a), "{a:?} → {b:?}");
                    }
                }
            }
        }
        assert!(edited > 50, "{edited}");
        // Character noise alone: the sentence's words, some edited.
        let alone = AugmentPlan::resolve(
            &AugmentConfig {
                char_rate: Some(0.5),
                ..config(CHARS, NumAug::Count(3))
            },
            rows,
        )
        .unwrap();
        let copies = alone.augmentations(&words, &mut stream(&[2]), &mut noise_stream(2, &[]));
        assert_eq!(copies.len(), 3);
        assert!(copies.iter().all(|c| c.len() == words.len()));
        assert!(copies
            .iter()
            .any(|c| c.iter().zip(&words).any(|(a, b)| a != b)));
        let one = alone.one(&words, &mut stream(&[3]), &mut noise_stream(3, &[]));
        assert_eq!(one.len(), words.len());
    }
}
