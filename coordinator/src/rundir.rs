//! The run directory: `model/` (the selected model), `checkpoint/` (the last epoch's weights,
//! optimizer state and the run's progress, from which `--resume` continues), `command.json`
//! (the options it was started with), `metrics.jsonl` (one line per epoch) and
//! `summary.json`. Every file is written atomically, and the checkpoint as a whole: it is
//! written beside the old one and swapped in by renames.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use common::metrics::Confusion;
use serde::{Deserialize, Serialize};

use crate::model_dir::{self, ModelMeta, MODEL};
use crate::record::{sorted_json, EpochLogEntry, MetricsLine};
use crate::stored_state::StoredState;

const COMMAND: &str = "command.json";
const STATE: &str = "state.json";

/// How a run was started: `coordinator --resume` starts it again the same way.
#[derive(Debug, Serialize, Deserialize)]
pub struct Command {
    /// The working directory, against which its relative paths resolve.
    pub cwd: PathBuf,
    /// The arguments after the program name, with any --config file expanded.
    pub argv: Vec<String>,
    /// The files the run reads, as it found them: a resumed run must read the same (a run
    /// directory from before this field resumes unchecked).
    #[serde(default)]
    pub inputs: Vec<InputFile>,
}

/// An input file and the SHA-256 of its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub sha256: String,
}

impl InputFile {
    pub fn hash(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            sha256: common::pipeline::file_sha256(path)?,
        })
    }
}

/// Refuses to go on when an input file differs from what the run started with (relative
/// paths against the working directory, which `--resume` has restored): the vocabulary, the
/// labels and every epoch's draw come from them, so the checkpoint would not fit.
pub fn check_inputs(inputs: &[InputFile]) -> Result<()> {
    for f in inputs {
        let now = common::pipeline::file_sha256(&f.path)
            .with_context(|| format!("{}: the run read it when it started", f.path.display()))?;
        if now != f.sha256 {
            bail!(
                "{} changed since the run started (sha256 {}… then, {}… now): a resumed run \
                 must read the same data to continue its checkpoint; restore the file, or start \
                 a new run",
                f.path.display(),
                f.sha256.get(..12).unwrap_or(&f.sha256),
                &now[..12]
            );
        }
    }
    Ok(())
}

/// Where a run stands after its last checkpointed epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub epochs_done: u64,
    /// Best validation loss so far, its epoch (0-based) and confusion matrix.
    pub best: Option<(f64, u64, Confusion)>,
    pub since_best: u64,
    pub samples_per_s: Vec<f64>,
    pub encode_seconds: f64,
    /// The lines of `metrics.jsonl` so far.
    pub metrics: Vec<MetricsLine>,
    pub epoch_log: Vec<EpochLogEntry>,
    /// Workers lost so far (a checkpoint from before this field reads as 0).
    #[serde(default)]
    pub workers_lost: u64,
    /// A checkpoint inside epoch `epochs_done` (--checkpoint-every): its steps applied, and
    /// the examples in their global batches; 0 at an epoch boundary.
    #[serde(default)]
    pub step: u64,
    #[serde(default)]
    pub applied: u64,
}

/// What `--resume` starts from.
pub struct Checkpoint {
    /// Its weights and optimizer state, copied out of the checkpoint (a later checkpoint
    /// replaces those files) and checked against their recorded hashes; taken as the run's
    /// initial state.
    pub state: StoredState,
    pub progress: RunState,
}

/// The start command saved in `dir`.
pub fn read_command(dir: &Path) -> Result<Command> {
    let p = dir.join(COMMAND);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{} is not a resumable run directory (no {COMMAND})",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", p.display()))
}

/// Whether `path` holds (part of) a run: the files a run writes first.
pub fn holds_run(path: &Path) -> bool {
    [
        COMMAND,
        "metrics.jsonl",
        "summary.json",
        MODEL,
        "checkpoint",
        "checkpoint.old",
    ]
    .iter()
    .any(|f| path.join(f).exists())
}

/// The start command of the unfinished run in `path`, if it holds one that can be continued:
/// a checkpoint, a `command.json` and no `summary.json`.
pub fn unfinished(path: &Path) -> Result<Option<Command>> {
    let finished = path.join("summary.json").exists();
    if finished || checkpoint_in(path).is_none() || !path.join(COMMAND).exists() {
        return Ok(None);
    }
    read_command(path).map(Some)
}

/// Whether the run in `path` kept a checkpoint, finished or not.
pub fn has_checkpoint(path: &Path) -> bool {
    checkpoint_in(path).is_some()
}

/// The folder of the run's last complete checkpoint: `checkpoint/`, or `checkpoint.old/` when
/// the run was interrupted between the renames of a checkpoint swap.
fn checkpoint_in(path: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .into_iter()
        .map(|d| path.join(d))
        .find(|d| d.join(STATE).exists())
}

pub struct RunDir {
    path: PathBuf,
    metrics: Mutex<String>,
}

impl RunDir {
    /// Creates the directory and checks it is writable before any training starts.
    pub fn create(path: PathBuf) -> Result<Self> {
        // A finished run is never overwritten (e.g. by a coordinator that Kubernetes restarts).
        if path.join("summary.json").exists() {
            anyhow::bail!(
                "the run directory {} already holds a finished run (summary.json); give a new --run-dir",
                path.display()
            );
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the run directory {}", path.display()))?;
        let probe = path.join(".writable");
        common::fsutil::write_atomic(&probe, b"ok")
            .with_context(|| format!("the run directory {} is not writable", path.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(RunDir {
            path,
            metrics: Mutex::new(String::new()),
        })
    }

    /// Opens the unfinished run in `path` to continue it from its checkpoint.
    pub fn reopen(path: &Path) -> Result<(Self, Checkpoint)> {
        if path.join("summary.json").exists() {
            bail!(
                "{} holds a finished run (summary.json): nothing to resume",
                path.display()
            );
        }
        let Some(dir) = checkpoint_in(path) else {
            bail!("{} has no checkpoint", path.display());
        };
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        let progress: RunState = serde_json::from_slice(&read(STATE)?)
            .with_context(|| format!("{} is corrupt", dir.join(STATE).display()))?;
        let meta_path = dir.join(model_dir::META);
        let text = std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta = ModelMeta::from_json(&text)
            .with_context(|| format!("{} cannot be read", meta_path.display()))?;
        let checkpoint = Checkpoint {
            state: StoredState::from_checkpoint(&dir, &meta, path)?,
            progress,
        };
        let mut text = String::new();
        for line in &checkpoint.progress.metrics {
            text.push_str(&sorted_json(line)?.to_string());
            text.push('\n');
        }
        let p = path.join("metrics.jsonl");
        common::fsutil::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        Ok((
            RunDir {
                path: path.to_path_buf(),
                metrics: Mutex::new(text),
            },
            checkpoint,
        ))
    }

    /// Records how the run was started, for `--resume`.
    pub fn save_command(&self, command: &Command) -> Result<()> {
        let p = self.path.join(COMMAND);
        common::fsutil::write_atomic(&p, &serde_json::to_vec_pretty(command)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// Writes the checkpoint (model files and progress) beside the current one, then swaps it
    /// in: a crash at any point leaves one complete checkpoint.
    pub fn save_checkpoint(
        &self,
        meta: &ModelMeta,
        state: &model_dir::Verified<'_>,
        progress: &RunState,
    ) -> Result<()> {
        let (cur, tmp, old) = (
            self.checkpoint(),
            self.path.join("checkpoint.tmp"),
            self.path.join("checkpoint.old"),
        );
        let _ = std::fs::remove_dir_all(&tmp);
        let written = model_dir::save(&tmp, meta, state).and_then(|()| {
            let p = tmp.join(STATE);
            common::fsutil::write_atomic(&p, &serde_json::to_vec(progress)?)
                .with_context(|| format!("writing {}", p.display()))
        });
        if let Err(e) = written {
            // A full disk, say: leave no half-written checkpoint beside the complete one.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&old);
        if cur.exists() {
            std::fs::rename(&cur, &old)
                .with_context(|| format!("moving {} aside", cur.display()))?;
        }
        std::fs::rename(&tmp, &cur)
            .with_context(|| format!("moving the new checkpoint to {}", cur.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn model(&self) -> PathBuf {
        self.path.join(MODEL)
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    /// Adds one line to `metrics.jsonl` (the whole file is rewritten atomically).
    pub fn append_metrics(&self, line: &MetricsLine) -> Result<()> {
        let line = sorted_json(line)?.to_string();
        let mut text = self
            .metrics
            .lock()
            .map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?;
        text.push_str(&line);
        text.push('\n');
        let p = self.path.join("metrics.jsonl");
        common::fsutil::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))
    }

    pub fn write_summary(&self, summary: &impl Serialize) -> Result<()> {
        let p = self.path.join("summary.json");
        common::fsutil::write_atomic(&p, &serde_json::to_vec_pretty(&sorted_json(summary)?)?)
            .with_context(|| format!("writing {}", p.display()))
    }
}
