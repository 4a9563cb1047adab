//! The whole command line: the training options, or a subcommand with its own.

use clap::{Parser, Subcommand};

use super::{data, evaluate, experiment, export_encoder, predict};
use crate::cli::TrainArgs;
use crate::logging::LogArgs;

/// Train a text classifier on small data: mix sources, augment (EDA), balance classes, and
/// train a BiLSTM across workers.
///
/// Without a subcommand it trains, e.g.
///   coordinator --workers 2 --data data/trec/train.tsv --test data/trec/test.tsv
#[derive(Parser, Debug)]
#[command(
    name = "coordinator",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Training options from this TOML file (keys are the long flag names; `coordinator
    /// config example` prints one); flags given on the command line override it.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub config: Option<std::path::PathBuf>,
    /// Continue the unfinished run in RUN_DIR from its last checkpoint (the end of its last
    /// completed epoch, or a later step with --checkpoint-every), with the options it was
    /// started with, from the directory it was started in, on unchanged data files; it reaches
    /// the weights an uninterrupted run reaches.
    #[arg(long, value_name = "RUN_DIR", help_heading = "Output")]
    pub resume: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect or export what the data pipeline makes of your data.
    #[command(subcommand)]
    Data(Box<data::DataCommand>),
    /// Accuracy, macro-F1 and per-class scores of a trained model on labelled data.
    Evaluate(evaluate::EvaluateArgs),
    /// Classify sentences with a trained model.
    Predict(predict::PredictArgs),
    /// Measure the small-sample gain on your data: every size × condition × seed trained with
    /// one early-stopping protocol and tested; results.jsonl, report.md, learning-curve.png.
    ///
    /// e.g. coordinator experiment --data train.tsv --test test.tsv --sizes 100,500,2000,full
    ///        --conditions baseline,eda,balance,eda+balance --seeds 3 --workers 2 --out runs/exp
    Experiment(Box<experiment::ExperimentArgs>),
    /// Write the fine-tuned encoder of a model (--encoder-mode finetune) as a Hugging Face
    /// model directory, which transformers' AutoModel.from_pretrained loads.
    ///
    /// e.g. coordinator export-encoder --model runs/x/model --out my-minilm
    ExportEncoder(export_encoder::ExportEncoderArgs),
    /// Configuration files for --config.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a complete, commented configuration file with every training option at its
    /// default: `coordinator config example > run.toml`.
    Example,
}
