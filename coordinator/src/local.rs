//! Single-node mode: the coordinator starts its workers as child processes, forwards their
//! logs with a rank prefix, and never leaves one behind (killed on error, on Ctrl-C and when
//! the handle is dropped).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::LocalDevice;

pub struct Fleet {
    /// Index, process id, process.
    children: Vec<(usize, u32, Child)>,
}

/// The `worker` binary installed beside this `coordinator`.
fn worker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the coordinator binary")?;
    let path = exe.with_file_name(format!("worker{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!("the worker binary is not beside the coordinator ({}); build it with `cargo build --release --bin worker`", path.display());
    }
    Ok(path)
}

impl Fleet {
    pub fn none() -> Self {
        Fleet {
            children: Vec::new(),
        }
    }

    /// Starts `n` workers joining `url` with `token`, `threads` compute threads each, worker i
    /// on GPU i when `device` is CUDA.
    pub fn spawn(
        n: usize,
        url: &str,
        token: &str,
        threads: usize,
        device: LocalDevice,
        tls: &common::tls::TlsFiles,
    ) -> Result<Self> {
        let bin = worker_binary()?;
        let mut children = Vec::with_capacity(n);
        for i in 0..n {
            let device = match device {
                LocalDevice::Cpu => "cpu".to_string(),
                LocalDevice::Cuda => format!("cuda:{i}"),
            };
            let mut child = Command::new(&bin)
                .args([
                    "--coordinator",
                    url,
                    "--threads",
                    &threads.to_string(),
                    "--advertise-addr",
                    "127.0.0.1",
                    "--device",
                    &device,
                ])
                .args(tls.args())
                .env("SMALLTEXT_TOKEN", token)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {i} ({})", bin.display()))?;
            if let Some(err) = child.stderr.take() {
                tokio::spawn(async move {
                    let mut lines = BufReader::new(err).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("[worker {i}] {line}");
                    }
                });
            }
            let pid = child.id().unwrap_or(0);
            children.push((i, pid, child));
        }
        Ok(Fleet { children })
    }

    /// An error naming the first worker that has exited (a worker only exits on its own when
    /// the run is over).
    pub fn check(&mut self) -> Result<()> {
        for (i, _, child) in &mut self.children {
            if let Some(status) = child.try_wait().context("checking a worker")? {
                bail!("worker {i} exited unexpectedly ({status})");
            }
        }
        Ok(())
    }

    /// Workers that have exited since the last call, by process id with their exit status;
    /// they are no longer tracked.
    pub fn exited(&mut self) -> Result<Vec<(u32, String)>> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.children.len() {
            match self.children[i].2.try_wait().context("checking a worker")? {
                Some(status) => {
                    let (_, pid, _) = self.children.remove(i);
                    gone.push((pid, status.to_string()));
                }
                None => i += 1,
            }
        }
        Ok(gone)
    }

    /// Kills and forgets the worker with process id `pid` (one declared lost while alive,
    /// e.g. hung), so it can neither rejoin the ring nor fail the run by its exit status.
    pub async fn kill(&mut self, pid: u32) {
        if let Some(at) = self.children.iter().position(|(_, p, _)| *p == pid) {
            let (i, _, mut child) = self.children.remove(at);
            tracing::warn!("worker {i} (pid {pid}) was declared lost while running: killed");
            let _ = child.kill().await;
        }
    }

    /// Waits for every worker to exit, killing those still running after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<()> {
        let mut failed = Vec::new();
        for (i, _, child) in &mut self.children {
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => failed.push(format!("worker {i} exited with {status}")),
                Ok(Err(e)) => failed.push(format!("worker {i}: {e}")),
                Err(_) => {
                    let _ = child.kill().await;
                    failed.push(format!(
                        "worker {i} did not stop within {} s and was killed",
                        timeout.as_secs()
                    ));
                }
            }
        }
        self.children.clear();
        if failed.is_empty() {
            Ok(())
        } else {
            bail!(failed.join("; "))
        }
    }

    /// Kills every worker still running and reaps it.
    pub async fn kill_all(&mut self) {
        for (_, _, child) in &mut self.children {
            let _ = child.kill().await;
        }
        self.children.clear();
    }
}
