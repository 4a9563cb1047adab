//! `coordinator`: trains the classifier across workers, and the tools around it
//! (`data preview|export`, `evaluate`, `predict`).

mod cli;
mod daemons;
mod data_cmd;
mod infer_cmd;
mod local;
mod logging;
mod model_dir;
mod run;
mod rundir;
mod service;
mod sharding;

use clap::{Parser, Subcommand};

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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: cli::TrainArgs,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect or export what the data pipeline makes of your data.
    #[command(subcommand)]
    Data(Box<data_cmd::DataCommand>),
    /// Accuracy, macro-F1 and per-class scores of a trained model on labelled data.
    Evaluate(infer_cmd::EvaluateArgs),
    /// Classify sentences with a trained model.
    Predict(infer_cmd::PredictArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let result = match cli.command {
        Some(Command::Data(cmd)) => data_cmd::run(*cmd),
        Some(Command::Evaluate(a)) => infer_cmd::evaluate(a),
        Some(Command::Predict(a)) => infer_cmd::predict_cmd(a),
        None => train(cli.train),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn train(args: cli::TrainArgs) -> anyhow::Result<()> {
    if args.data.data.is_empty() {
        anyhow::bail!(
            "no training data: give --data PATH (e.g. --data data/trec/train.tsv); see --help"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = run::train(args) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; workers stopped"),
        }
    })
}
