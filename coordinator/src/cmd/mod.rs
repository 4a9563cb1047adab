//! The subcommands, a file each; without one, `coordinator` trains (`train.rs`).

pub mod command_line;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod experiment;
pub mod export_encoder;
pub mod predict;
pub mod train;

use std::ffi::OsString;

use anyhow::Result;

use command_line::{Cli, Command, ConfigCommand};

/// Runs what the parsed command line `cli` asks for; `argv` is the line itself (after the
/// program name's place), which a training run saves for `--resume`.
pub fn run(cli: Cli, argv: &[OsString]) -> Result<()> {
    if let Some(dir) = &cli.resume {
        return train::resume(dir);
    }
    match cli.command {
        Some(Command::Data(cmd)) => data::run(*cmd),
        Some(Command::Evaluate(a)) => evaluate::run(a),
        Some(Command::Predict(a)) => predict::run(a),
        Some(Command::Experiment(a)) => experiment::run(*a),
        Some(Command::ExportEncoder(a)) => export_encoder::run(a),
        Some(Command::Config(ConfigCommand::Example)) => {
            print!("{}", config::example());
            Ok(())
        }
        None => {
            let mut args = cli.train;
            args.command = argv
                .iter()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            train::train(args)
        }
    }
}
