//! `coordinator`: trains the classifier across workers, and the tools around it
//! (`data preview|export`, later `evaluate`, `predict`, `experiment`).

mod data_cmd;
mod logging;

use clap::{Parser, Subcommand};

/// Train a text classifier on small data: mix sources, augment (EDA), balance classes, and
/// train a BiLSTM across workers.
#[derive(Parser, Debug)]
#[command(name = "coordinator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect or export what the data pipeline makes of your data.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let result = match cli.command {
        Command::Data(cmd) => data_cmd::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
