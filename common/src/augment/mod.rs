//! Augmentation: EDA's four operations, character noise and random cropping, a file each, planned per
//! training-set size from the run's augmentation options (`plan.rs`) and applied
//! deterministically per example. A new operation is a file here, a field of
//! [`AugmentConfig`] and [`AugmentPlan`], and its flag in `data/config.rs`.

pub mod chars;
pub mod crop;
pub mod eda;
mod plan;
pub mod random_deletion;
pub mod random_insertion;
pub mod random_swap;
pub mod stopwords;
pub mod synonym_replacement;
pub mod synonyms;

pub use plan::{AugmentConfig, AugmentPlan};
