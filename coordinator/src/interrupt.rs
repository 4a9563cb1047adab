//! Ctrl-C and SIGTERM, acted on at once in every phase of a run, with a message that says
//! only what is true: where the run was, and whether a checkpoint is there to resume from.
//!
//! The run goes on a task of its own, so the thread that watches for the signal is never
//! the one busy preparing data; on a signal the run is dropped where it stands (its workers
//! are killed with it), and whatever blocking work it left behind is abandoned.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

/// What the run has done so far, as an interruption would report it.
#[derive(Default)]
pub struct StopNote(Mutex<Note>);

#[derive(Default, Clone)]
struct Note {
    phase: Option<String>,
    run_dir: Option<PathBuf>,
    /// Epochs done at the last checkpoint written or found, and steps into the next.
    checkpoint: Option<(u64, u64)>,
    workers_started: bool,
}

impl StopNote {
    fn with(&self, f: impl FnOnce(&mut Note)) {
        match self.0.lock() {
            Ok(mut n) => f(&mut n),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The run is now `phase` ("preparing the training data", "in epoch 3 of 10", ...).
    pub fn phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        self.with(|n| n.phase = Some(phase));
    }

    pub fn run_dir(&self, dir: PathBuf) {
        self.with(|n| n.run_dir = Some(dir));
    }

    /// A checkpoint after `epochs_done` epochs and `step` steps of the next is on disk.
    pub fn checkpoint(&self, epochs_done: u64, step: u64) {
        self.with(|n| n.checkpoint = Some((epochs_done, step)));
    }

    pub fn workers_started(&self) {
        self.with(|n| n.workers_started = true);
    }

    pub fn message(&self) -> String {
        let mut note = Note::default();
        self.with(|n| note = n.clone());
        let mut msg = "interrupted".to_string();
        if let Some(phase) = &note.phase {
            msg.push_str(&format!(" while {phase}"));
        }
        if note.workers_started {
            msg.push_str("; this run's workers are stopped");
        }
        match (&note.checkpoint, &note.run_dir) {
            (Some((epochs, step)), Some(dir)) => {
                let at = match step {
                    0 => format!("after epoch {epochs}"),
                    s => format!("{s} steps into epoch {}", epochs + 1),
                };
                msg.push_str(&format!(
                    "; the checkpoint {at} is kept in {}: `coordinator --resume {}` continues from it",
                    dir.display(),
                    dir.display()
                ));
            }
            _ => msg.push_str("; no checkpoint was written, so there is nothing to resume"),
        }
        msg
    }
}

/// Runs `run` to its end, or until `shutdown` resolves, whichever comes first: then the
/// error is the note's message. The run goes on a task of its own, so `shutdown` is watched
/// even while the run is busy.
pub async fn until<T, F>(
    note: Arc<StopNote>,
    run: F,
    shutdown: impl Future<Output = ()>,
) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let task = tokio::spawn(run);
    let abort = task.abort_handle();
    tokio::select! {
        r = task => match r {
            Ok(r) => r,
            Err(join) => Err(anyhow::anyhow!("the run failed: {join}")),
        },
        _ = shutdown => {
            // Dropping the run stops its workers and releases the run directory; a moment
            // is enough, unless it is inside blocking work, which cannot be cut short.
            abort.abort();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while !abort.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(anyhow::anyhow!(note.message()))
        }
    }
}
