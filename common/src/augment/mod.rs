//! Augmentation: EDA operations and random cropping, planned per training-set size from the
//! run's augmentation options (`plan.rs`) and applied deterministically per example. A new
//! operation is a file here, a field of [`AugmentConfig`] and [`AugmentPlan`], and its flag in
//! `data/config.rs`.

pub mod crop;
pub mod eda;
mod plan;
pub mod stopwords;
pub mod synonyms;

pub use plan::{AugmentConfig, AugmentPlan};
