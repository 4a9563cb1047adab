//! `coordinator [OPTIONS]`: a training run; `coordinator --resume RUN_DIR` continues one.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Parser;

use super::command_line::Cli;
use crate::cli::TrainArgs;
use crate::plan::TrainPlan;

/// Trains with `args` until the run ends or a signal stops it.
pub fn train(args: TrainArgs) -> Result<()> {
    let plan = TrainPlan::from_args(args)?;
    let rt = crate::run::runtime()?;
    let result = rt.block_on(async {
        let listener = plan.bind().await?;
        crate::run(plan, listener, common::shutdown::signal()).await
    });
    // Blocking work an interrupted run left behind (an epoch half prepared) is not waited for.
    rt.shutdown_background();
    result.map(drop)
}

/// `--resume RUN_DIR`: the run's saved command line, in its working directory, continued.
pub fn resume(dir: &Path) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--resume {}", dir.display()))?;
    let command = crate::rundir::read_command(&dir)?;
    std::env::set_current_dir(&command.cwd).with_context(|| {
        format!(
            "the run was started in {}, which is gone",
            command.cwd.display()
        )
    })?;
    let saved =
        Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(command.argv.clone()))
            .with_context(|| format!("the command saved in {} no longer parses", dir.display()))?;
    let mut args = saved.train;
    args.command = command.argv;
    args.run_dir = Some(dir);
    args.resume = true;
    train(args)
}
