//! The run directory, locked for this run, and whether the run starts afresh or continues
//! from a checkpoint there.

use anyhow::{bail, Context, Result};

use crate::interrupt::StopNote;
use crate::plan::TrainPlan;
use crate::run_lock::DirLock;
use crate::rundir::{self, Checkpoint, RunDir};

/// The run directory this run holds, and the checkpoint it continues from, if any.
pub(super) struct Opened {
    /// Held for the life of the run: a second run there is refused meanwhile.
    pub(super) _lock: DirLock,
    pub(super) run_dir: RunDir,
    pub(super) checkpoint: Option<Checkpoint>,
}

pub(super) fn open(plan: &TrainPlan, note: &StopNote) -> Result<Opened> {
    let args = &plan.args;
    let run_path = &plan.run_dir;
    // Before anything in the directory is read: a second run there is refused while this one
    // lives, and the kernel frees the lock when this process dies, however it dies.
    let lock = crate::run_lock::lock(run_path, "the run directory", "--run-dir")?;
    // A coordinator started again with the same command (e.g. a pod Kubernetes restarts)
    // continues its unfinished run rather than starting over on top of its checkpoint.
    let resume = match (&args.run_dir, args.resume) {
        (Some(dir), false) if !args.command.is_empty() => match rundir::unfinished(dir)? {
            Some(saved)
                if saved.argv == args.command
                    && Some(&saved.cwd) == std::env::current_dir().ok().as_ref() =>
            {
                tracing::info!(
                    "{} holds an unfinished run of this same command: continuing it from its \
                     checkpoint, as --resume does",
                    dir.display()
                );
                true
            }
            Some(_) => bail!(
                "the run directory {dir} holds an unfinished run started with other options \
                 (its command.json): continue it with `coordinator --resume {dir}`, or give a new \
                 --run-dir",
                dir = dir.display()
            ),
            None => false,
        },
        // Nothing of it was kept: the same run, from its beginning (the data still checked).
        (Some(dir), true) if !rundir::has_checkpoint(dir) => {
            rundir::check_inputs(&rundir::read_command(dir)?.inputs)?;
            tracing::info!(
                "{} has no checkpoint yet (its run stopped before the first epoch ended): \
                 starting the run from its beginning",
                dir.display()
            );
            false
        }
        (_, resume) => resume,
    };
    let (run_dir, checkpoint) = match (&args.run_dir, resume) {
        (Some(dir), true) => {
            let (run_dir, checkpoint) = RunDir::reopen(dir)?;
            rundir::check_inputs(&rundir::read_command(dir)?.inputs)?;
            let p = &checkpoint.progress;
            note.run_dir(dir.clone());
            note.checkpoint(p.epochs_done, p.step);
            tracing::info!(
                "resuming {} after epoch {} and {} steps of the next",
                dir.display(),
                p.epochs_done,
                p.step
            );
            (run_dir, Some(checkpoint))
        }
        _ => {
            if !args.run_dir_force
                && !rundir::holds_run(run_path)
                && !crate::run_lock::is_empty(run_path)?
            {
                bail!(
                    "the run directory {} holds files and no run: give a new --run-dir, or add \
                     --run-dir-force to put the run's files beside them",
                    run_path.display()
                );
            }
            let run_dir = RunDir::create(run_path.clone())?;
            if !args.command.is_empty() {
                run_dir.save_command(&rundir::Command {
                    cwd: std::env::current_dir().context("the working directory")?,
                    argv: args.command.clone(),
                    inputs: plan.input_files()?,
                })?;
            }
            (run_dir, None)
        }
    };
    tracing::info!("run directory {}", run_dir.path().display());
    note.run_dir(run_dir.path().to_path_buf());
    Ok(Opened {
        _lock: lock,
        run_dir,
        checkpoint,
    })
}
