//! The run directory: `model/` (the selected model), `checkpoint/` (the last epoch's weights
//! and optimizer state), `metrics.jsonl` (one line per epoch) and `summary.json`. Every file
//! is written atomically.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

pub struct RunDir {
    path: PathBuf,
    metrics: Mutex<String>,
}

impl RunDir {
    /// Creates the directory and checks it is writable before any training starts.
    pub fn create(path: Option<PathBuf>) -> Result<Self> {
        let path = path.unwrap_or_else(crate::run::default_run_dir);
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn model(&self) -> PathBuf {
        self.path.join("model")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    /// Adds one line to `metrics.jsonl` (the whole file is rewritten atomically).
    pub fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        let mut text = self
            .metrics
            .lock()
            .map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?;
        text.push_str(&line.to_string());
        text.push('\n');
        let p = self.path.join("metrics.jsonl");
        common::fsutil::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))
    }

    pub fn write_summary(&self, summary: &serde_json::Value) -> Result<()> {
        let p = self.path.join("summary.json");
        common::fsutil::write_atomic(&p, &serde_json::to_vec_pretty(summary)?)
            .with_context(|| format!("writing {}", p.display()))
    }
}
