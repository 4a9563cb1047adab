//! `coordinator config example`: a complete, commented configuration file for --config.

use clap::CommandFactory;

use super::command_line::Cli;

/// Every training option at its default, commented, as a `--config` file.
pub fn example() -> String {
    crate::config_file::example(&Cli::command())
}
