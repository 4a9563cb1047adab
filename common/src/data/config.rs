//! Every option of the data pipeline, as command-line flags and as a serialisable struct.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::load::{BadLinePolicy, Format, LoadOptions};
use super::tokenize::Tokenizer;
use crate::mix::MixStop;
use crate::resample::Balance;
use crate::values::{at_least, fraction, open_fraction};

/// A training source: `PATH` or `PATH:WEIGHT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceSpec {
    pub path: PathBuf,
    pub weight: Option<f64>,
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty data path".into());
        }
        if let Some((path, w)) = s.rsplit_once(':') {
            if let Ok(weight) = w.parse::<f64>() {
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(format!("{s}: weight must be a positive number"));
                }
                return Ok(SourceSpec {
                    path: path.into(),
                    weight: Some(weight),
                });
            }
        }
        Ok(SourceSpec {
            path: s.into(),
            weight: None,
        })
    }
}

impl TryFrom<String> for SourceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SourceSpec> for String {
    fn from(s: SourceSpec) -> String {
        s.to_string()
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            Some(w) => write!(f, "{}:{w}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// `--num-aug K` or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NumAug {
    #[default]
    Auto,
    Count(usize),
}

impl FromStr for NumAug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(NumAug::Auto);
        }
        s.parse()
            .map(NumAug::Count)
            .map_err(|_| format!("{s:?}: expected a count or \"auto\""))
    }
}

impl TryFrom<String> for NumAug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<NumAug> for String {
    fn from(n: NumAug) -> String {
        match n {
            NumAug::Auto => "auto".into(),
            NumAug::Count(k) => k.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AugmentKind {
    #[default]
    None,
    Eda,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnknownLabels {
    /// Stop with an error listing the labels.
    #[default]
    Error,
    /// Drop those examples and report how many.
    Skip,
}

/// The data pipeline's options: load → mix → eval split → augment → balance → shuffle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training data, repeatable: PATH or PATH:WEIGHT. Without weights the sources are
    /// concatenated; with weights each epoch draws from them in those proportions (sources
    /// without a weight share what is left of 1). The first source is the target domain.
    #[arg(long = "data", value_name = "PATH[:WEIGHT]", help_heading = "Data")]
    pub data: Vec<SourceSpec>,
    /// File format; by default from the extension (.tsv/.txt, .csv, .jsonl).
    #[arg(long, value_enum, help_heading = "Data")]
    pub format: Option<Format>,
    /// CSV/JSONL column holding the text.
    #[arg(long, default_value = "text", help_heading = "Data")]
    pub text_column: String,
    /// CSV/JSONL column holding the label.
    #[arg(long, default_value = "label", help_heading = "Data")]
    pub label_column: String,
    /// What to do with a malformed line: stop with an error naming it, or skip and count.
    #[arg(long, value_enum, default_value_t, help_heading = "Data")]
    pub on_bad_line: BadLinePolicy,
    /// Lines `alias<TAB>label` mapping differently spelled labels onto one.
    #[arg(long, value_name = "FILE", help_heading = "Data")]
    pub label_map: Option<PathBuf>,
    /// With weighted sources: end the epoch when the first source runs out, or when all have.
    #[arg(long, value_enum, default_value_t, help_heading = "Data")]
    pub mix_stop: MixStop,
    /// Validation set (model selection and early stopping), in any supported format.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Data",
        conflicts_with = "eval_split"
    )]
    pub eval: Option<PathBuf>,
    /// Carve this fraction of the first source as the validation set (stratified, seeded),
    /// before any augmentation or balancing.
    #[arg(long, value_name = "FRACTION", value_parser = open_fraction, help_heading = "Data")]
    pub eval_split: Option<f64>,
    /// Validation/test examples whose label training never saw: an error, or skipped.
    #[arg(long, value_enum, default_value_t, help_heading = "Data")]
    pub unknown_labels: UnknownLabels,

    /// unicode: lower-case + Unicode word/punctuation segmentation; whitespace: lower-case +
    /// split on whitespace (as the PyTorch reference; right for pre-tokenized corpora).
    #[arg(long, value_enum, default_value_t, help_heading = "Vocabulary")]
    pub tokenizer: Tokenizer,
    /// Vocabulary size, PAD and UNK included.
    #[arg(long, default_value_t = 10_000, value_parser = at_least(2), help_heading = "Vocabulary")]
    pub max_vocab: usize,
    /// Leave out tokens seen fewer times than this.
    #[arg(long, default_value_t = 1, help_heading = "Vocabulary")]
    pub min_freq: usize,
    /// Cut sequences to this many tokens.
    #[arg(long, default_value_t = 64, value_parser = at_least(1), help_heading = "Vocabulary")]
    pub max_len: usize,

    /// Augmentation: none, or EDA (synonym replacement from WordNet, random insertion, swap, deletion).
    #[arg(long, value_enum, default_value_t, help_heading = "Augmentation")]
    pub augment: AugmentKind,
    /// New sentences per example, or `auto`: EDA's recommendation by training-set size
    /// (≤500 rows: 16 with alpha 0.05; ≤2000: 8, 0.05; more: 4, 0.1).
    #[arg(long, default_value = "auto", help_heading = "Augmentation")]
    pub num_aug: NumAug,
    /// Rate of all four EDA operations (default 0.1, or the `auto` recommendation).
    #[arg(long, value_parser = fraction, help_heading = "Augmentation")]
    pub alpha: Option<f64>,
    /// Synonym-replacement rate (overrides --alpha).
    #[arg(long, value_parser = fraction, help_heading = "Augmentation")]
    pub alpha_sr: Option<f64>,
    /// Random-insertion rate (overrides --alpha).
    #[arg(long, value_parser = fraction, help_heading = "Augmentation")]
    pub alpha_ri: Option<f64>,
    /// Random-swap rate (overrides --alpha).
    #[arg(long, value_parser = fraction, help_heading = "Augmentation")]
    pub alpha_rs: Option<f64>,
    /// Random-deletion probability (overrides --alpha).
    #[arg(long, value_parser = fraction, help_heading = "Augmentation")]
    pub alpha_rd: Option<f64>,
    /// Random crop: each augmentation keeps a contiguous window of at least this fraction of
    /// its tokens (alone, with --augment none, the augmentations are crops).
    #[arg(long, value_name = "FRACTION", value_parser = open_fraction, help_heading = "Augmentation")]
    pub crop: Option<f64>,

    /// Class balance, redone every epoch: oversample (copies up to the majority count),
    /// undersample (down to the minority count), augment (new augmentations up to the majority).
    #[arg(long, value_enum, default_value_t, help_heading = "Selection")]
    pub balance: Balance,
    /// Bring minority classes to R × the majority count instead of all the way.
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = fraction, help_heading = "Selection")]
    pub balance_ratio: f64,

    /// Most memory an epoch may take, e.g. 8G or 500M (default: half the memory available
    /// when the data is prepared). An epoch estimated larger is refused before it is made.
    #[arg(long, value_name = "SIZE", value_parser = crate::values::byte_size, help_heading = "Selection")]
    pub memory_budget: Option<u64>,

    /// Seed of every random choice (augmentation, balance, shuffling, splits).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            data: Vec::new(),
            format: None,
            text_column: "text".into(),
            label_column: "label".into(),
            on_bad_line: BadLinePolicy::Error,
            label_map: None,
            mix_stop: MixStop::FirstExhausted,
            eval: None,
            eval_split: None,
            unknown_labels: UnknownLabels::Error,
            tokenizer: Tokenizer::Whitespace,
            max_vocab: 10_000,
            min_freq: 1,
            max_len: 64,
            augment: AugmentKind::None,
            num_aug: NumAug::Auto,
            alpha: None,
            alpha_sr: None,
            alpha_ri: None,
            alpha_rs: None,
            alpha_rd: None,
            crop: None,
            balance: Balance::None,
            balance_ratio: 1.0,
            memory_budget: None,
            seed: 0,
        }
    }
}

impl DataConfig {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            format: self.format,
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
            on_bad_line: self.on_bad_line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_spec_parses_optional_weight() {
        let s: SourceSpec = "a/b.jsonl:0.3".parse().unwrap();
        assert_eq!((s.path, s.weight), (PathBuf::from("a/b.jsonl"), Some(0.3)));
        let s: SourceSpec = "c:/x.tsv".parse().unwrap();
        assert_eq!(s.weight, None);
        assert!("a.tsv:-1".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = DataConfig {
            data: vec!["a.tsv".parse().unwrap(), "b.tsv:0.5".parse().unwrap()],
            num_aug: NumAug::Count(3),
            ..Default::default()
        };
        let back: DataConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
