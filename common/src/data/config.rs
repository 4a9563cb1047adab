//! Every option of the data pipeline, as command-line flags and as a serialisable struct.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::load::{BadLinePolicy, Format, LoadOptions};
pub use super::source_spec::SourceSpec;
use super::tasks::{TaskFile, TaskSpec};
use super::tokenize::Tokenizer;
use crate::mix::MixStop;
use crate::resample::Balance;
use crate::values::{at_least, fraction, open_fraction};

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

/// One item of `--augment`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AugmentKind {
    /// No augmentation (only alone).
    #[default]
    None,
    /// EDA: synonym replacement and insertion from WordNet, random swap, random deletion.
    Eda,
    /// Character noise: typo-like edits inside words (--char-rate).
    Chars,
}

impl AugmentKind {
    pub fn name(self) -> &'static str {
        match self {
            AugmentKind::None => "none",
            AugmentKind::Eda => "eda",
            AugmentKind::Chars => "chars",
        }
    }

    /// A comma-separated list, as `--augment` takes it.
    pub fn parse_list(s: &str) -> Result<Vec<AugmentKind>, String> {
        s.split(',')
            .map(|name| {
                let name = name.trim();
                <AugmentKind as clap::ValueEnum>::from_str(name, false).map_err(|_| {
                    format!("unknown augmentation {name:?}: expected none, eda or chars")
                })
            })
            .collect()
    }

    /// The list as `--augment` writes it: `eda,chars`.
    pub fn join(kinds: &[AugmentKind]) -> String {
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    }
}

/// The serde form of `--augment`'s list: one kind is a string, as the field was before it took
/// a list, so that saved configurations (a model's `model.json`, `summary.json`, `--config`
/// files) read both ways; several are a list. A string may also be a comma-separated list.
mod augment_list {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    use super::AugmentKind;

    pub fn serialize<S: Serializer>(kinds: &[AugmentKind], s: S) -> Result<S::Ok, S::Error> {
        match kinds {
            [one] => one.serialize(s),
            _ => kinds.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AugmentKind>, D::Error> {
        struct Kinds;
        impl<'de> Visitor<'de> for Kinds {
            type Value = Vec<AugmentKind>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\", \"eda\", \"chars\", or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                AugmentKind::parse_list(s).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut kinds = Vec::new();
                while let Some(k) = seq.next_element()? {
                    kinds.push(k);
                }
                Ok(kinds)
            }
        }
        d.deserialize_any(Kinds)
    }
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
    /// A task of multi-task training, repeatable, instead of --data: NAME=PATH or
    /// NAME=PATH:WEIGHT. Each task keeps its own labels and gets its own head over the shared
    /// embedding (or encoder) and BiLSTM; each epoch draws the tasks' examples by weight, as
    /// --data PATH:WEIGHT does. Balance, class weights and --eval-split work within each task.
    /// The vocabulary holds every word of the target task first, then the others' by
    /// frequency up to --max-vocab, so that a large auxiliary task cannot crowd the target out.
    #[arg(
        long = "task",
        value_name = "NAME=PATH[:WEIGHT]",
        help_heading = "Tasks"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task: Vec<TaskSpec>,
    /// The task that validation, early stopping, --test and the reported accuracy refer to
    /// (default: the first --task).
    #[arg(long, value_name = "NAME", help_heading = "Tasks")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A validation set of another task than the target (whose set is --eval), repeatable:
    /// NAME=PATH. Its figures are logged per task; selection follows the target's.
    #[arg(long = "task-eval", value_name = "NAME=PATH", help_heading = "Tasks")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_eval: Vec<TaskFile>,
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
    /// before any augmentation or balancing; with --task, of every task that has no
    /// validation file, each from its own rows.
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

    /// Augmentations, a list (comma-separated or repeated): none; eda (synonym replacement
    /// from WordNet, random insertion, swap, deletion); chars (character noise, see
    /// --char-rate). `eda,chars` makes each augmented copy by EDA, then character noise.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "KIND[,KIND]",
        default_value = "none",
        help_heading = "Augmentation"
    )]
    #[serde(with = "augment_list")]
    pub augment: Vec<AugmentKind>,
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
    /// Character noise (--augment chars): the probability that a word gets one typo-like
    /// edit: a letter inserted, deleted, replaced by a QWERTY neighbour, or swapped with the
    /// next one (default 0.05). Stop words, numbers and words under 3 characters are left alone.
    #[arg(long, value_name = "P", value_parser = fraction, help_heading = "Augmentation")]
    // Left out while unset, so that configurations without character noise are written as
    // before it existed (and older builds still read them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub char_rate: Option<f64>,
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
            task: Vec::new(),
            target: None,
            task_eval: Vec::new(),
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
            augment: vec![AugmentKind::None],
            num_aug: NumAug::Auto,
            alpha: None,
            alpha_sr: None,
            alpha_ri: None,
            alpha_rs: None,
            alpha_rd: None,
            char_rate: None,
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
    fn config_round_trips_through_json() {
        let cfg = DataConfig {
            data: vec!["a.tsv".parse().unwrap(), "b.tsv:0.5".parse().unwrap()],
            num_aug: NumAug::Count(3),
            ..Default::default()
        };
        let back: DataConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        data: DataConfig,
    }

    fn parse(args: &[&str]) -> Result<DataConfig, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.data)
    }

    #[test]
    fn augment_takes_a_list_comma_separated_or_repeated() {
        use AugmentKind::{Chars, Eda, None};
        let both = vec![Eda, Chars];
        assert_eq!(parse(&["--augment", "eda,chars"]).unwrap().augment, both);
        assert_eq!(parse(&["--augment=eda,chars"]).unwrap().augment, both);
        assert_eq!(
            parse(&["--augment", "eda", "--augment", "chars"])
                .unwrap()
                .augment,
            both
        );
        assert_eq!(parse(&["--augment", "chars"]).unwrap().augment, [Chars]);
        assert_eq!(parse(&["--augment", "eda"]).unwrap().augment, [Eda]);
        assert_eq!(parse(&[]).unwrap(), DataConfig::default());
        assert_eq!(DataConfig::default().augment, [None]);
        let err = parse(&["--augment", "eda,typos"]).unwrap_err().to_string();
        assert!(err.contains("typos") && err.contains("--augment"), "{err}");
        let cfg = parse(&["--augment", "chars", "--char-rate", "0.3"]).unwrap();
        assert_eq!(cfg.char_rate, Some(0.3));
        assert!(parse(&["--char-rate", "1.5"]).is_err());
    }

    #[test]
    fn augment_reads_the_old_single_value_and_writes_one_kind_as_it_did() {
        let read = |json: &str| serde_json::from_str::<DataConfig>(json).map(|c| c.augment);
        assert_eq!(read(r#"{"augment": "eda"}"#).unwrap(), [AugmentKind::Eda]);
        assert_eq!(read(r#"{"augment": "none"}"#).unwrap(), [AugmentKind::None]);
        assert_eq!(
            read(r#"{"augment": ["eda", "chars"]}"#).unwrap(),
            [AugmentKind::Eda, AugmentKind::Chars]
        );
        assert_eq!(
            read(r#"{"augment": "eda,chars"}"#).unwrap(),
            [AugmentKind::Eda, AugmentKind::Chars]
        );
        assert!(read(r#"{"augment": "typos"}"#).is_err());
        assert!(read(r#"{"augment": ["eda", "typos"]}"#).is_err());
        assert!(read(r#"{"augment": 3}"#).is_err());

        // A model directory of format 1 records its training's data options.
        let model: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/model-format1/model.json"
        ))
        .unwrap();
        let data: DataConfig = serde_json::from_value(model["training"]["data"].clone()).unwrap();
        assert_eq!(data.augment, [AugmentKind::None]);

        let write = |cfg: DataConfig| serde_json::to_value(cfg).unwrap();
        let eda = write(DataConfig {
            augment: vec![AugmentKind::Eda],
            ..Default::default()
        });
        assert_eq!(eda["augment"], "eda");
        assert!(
            eda.get("char_rate").is_none(),
            "unset, it is left out as before"
        );
        let both = write(DataConfig {
            augment: vec![AugmentKind::Eda, AugmentKind::Chars],
            char_rate: Some(0.2),
            ..Default::default()
        });
        assert_eq!(both["augment"], serde_json::json!(["eda", "chars"]));
        assert_eq!(both["char_rate"], 0.2);
        let back: DataConfig = serde_json::from_value(both).unwrap();
        assert_eq!(back.augment, [AugmentKind::Eda, AugmentKind::Chars]);
    }
}
