//! Single-node mode: the coordinator starts its workers as child processes, forwards their
//! logs with a rank prefix, and never leaves one behind (killed on error, on Ctrl-C and when
//! the handle is dropped).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::cli::LocalDevice;

pub struct Fleet {
    children: Vec<Worker>,
}

struct Worker {
    index: usize,
    pid: u32,
    child: Child,
    /// The task forwarding its log, and the last error it logged: why it exited, when it did.
    log: Option<JoinHandle<()>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Worker {
    /// Tracks worker `index`, forwarding its log with the prefix `[worker index]`.
    fn watch(index: usize, mut child: Child) -> Self {
        let last_error = Arc::new(Mutex::new(None));
        let log = child.stderr.take().map(|err| {
            let last_error = Arc::clone(&last_error);
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[worker {index}] {line}");
                    if let (Some(message), Ok(mut last)) = (error_message(&line), last_error.lock())
                    {
                        *last = Some(message.to_string());
                    }
                }
            })
        });
        Worker {
            index,
            pid: child.id().unwrap_or(0),
            child,
            log,
            last_error,
        }
    }

    /// `status`, and the error the worker logged last, once its log has been read to the end
    /// (it ends with the process; waited for briefly).
    async fn exit_reason(&mut self, status: std::process::ExitStatus) -> String {
        if let Some(log) = self.log.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), log).await;
        }
        let last = self.last_error.lock().ok().and_then(|e| e.clone());
        match last {
            Some(error) => format!("{status}: {error}"),
            None => status.to_string(),
        }
    }
}

/// The message of a worker's error line: tracing's `… ERROR message` or a final `error: …`.
fn error_message(line: &str) -> Option<&str> {
    match line.split_once(" ERROR ") {
        Some((_, message)) => Some(message.trim()),
        None => line.strip_prefix("error: ").map(str::trim),
    }
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
    /// on GPU i when `device` is CUDA; `program` is the worker binary (default: the one beside
    /// this executable).
    pub fn spawn(
        program: Option<&Path>,
        n: usize,
        url: &str,
        token: &str,
        threads: usize,
        device: LocalDevice,
        tls: &common::tls::TlsFiles,
    ) -> Result<Self> {
        let bin = match program {
            Some(p) => p.to_path_buf(),
            None => worker_binary()?,
        };
        let mut children = Vec::with_capacity(n);
        for i in 0..n {
            let device = match device {
                LocalDevice::Cpu => "cpu".to_string(),
                LocalDevice::Cuda => format!("cuda:{i}"),
            };
            let child = Command::new(&bin)
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
                .pre_exec_parent_death()
                .spawn()
                .with_context(|| format!("starting worker {i} ({})", bin.display()))?;
            children.push(Worker::watch(i, child));
        }
        Ok(Fleet { children })
    }

    /// An error naming the first worker that has exited, and why (a worker only exits on its
    /// own when the run is over).
    pub async fn check(&mut self) -> Result<()> {
        for w in &mut self.children {
            if let Some(status) = w.child.try_wait().context("checking a worker")? {
                let why = w.exit_reason(status).await;
                bail!("worker {} exited unexpectedly ({why})", w.index);
            }
        }
        Ok(())
    }

    /// Workers that have exited since the last call, by process id with their exit status and
    /// the last error they logged; they are no longer tracked.
    pub async fn exited(&mut self) -> Result<Vec<(u32, String)>> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.children.len() {
            match self.children[i]
                .child
                .try_wait()
                .context("checking a worker")?
            {
                Some(status) => {
                    let mut w = self.children.remove(i);
                    gone.push((w.pid, w.exit_reason(status).await));
                }
                None => i += 1,
            }
        }
        Ok(gone)
    }

    /// Kills and forgets the worker with process id `pid` (one declared lost while alive,
    /// e.g. hung), so it can neither rejoin the ring nor fail the run by its exit status.
    pub async fn kill(&mut self, pid: u32) {
        if let Some(at) = self.children.iter().position(|w| w.pid == pid) {
            let mut w = self.children.remove(at);
            tracing::warn!(
                "worker {} (pid {pid}) was declared lost while running: killed",
                w.index
            );
            let _ = w.child.kill().await;
        }
    }

    /// Waits for every worker to exit, killing those still running after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<()> {
        let mut failed = Vec::new();
        for w in &mut self.children {
            let i = w.index;
            match tokio::time::timeout(timeout, w.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    let why = w.exit_reason(status).await;
                    failed.push(format!("worker {i} exited with {why}"));
                }
                Ok(Err(e)) => failed.push(format!("worker {i}: {e}")),
                Err(_) => {
                    let _ = w.child.kill().await;
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
        for w in &mut self.children {
            let _ = w.child.kill().await;
        }
        self.children.clear();
    }
}

/// Local workers die with the coordinator, however it dies: a coordinator killed, or
/// interrupted in the middle of blocking work, never leaves them running.
trait ParentDeath {
    fn pre_exec_parent_death(&mut self) -> &mut Self;
}

impl ParentDeath for tokio::process::Command {
    fn pre_exec_parent_death(&mut self) -> &mut Self {
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
        // which is async-signal-safe. The signal follows the forking thread: a runtime
        // worker thread, which lives as long as the coordinator's runtime.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_worker_is_reported_with_the_last_error_it_logged() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let script = "echo '2026-11-29T10:00:00Z  INFO starting' >&2; \
                          echo '2026-11-29T10:00:01Z ERROR first problem' >&2; \
                          echo '2026-11-29T10:00:02Z ERROR building the model: bad size' >&2; \
                          exit 3";
            let child = Command::new("sh")
                .args(["-c", script])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut fleet = Fleet {
                children: vec![Worker::watch(0, child)],
            };
            let gone = loop {
                let gone = fleet.exited().await.unwrap();
                if !gone.is_empty() {
                    break gone;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(gone.len(), 1);
            assert_eq!(gone[0].1, "exit status: 3: building the model: bad size");
            assert!(fleet.children.is_empty());
        });
        assert_eq!(error_message("error: no data"), Some("no data"));
        assert_eq!(error_message("2026 INFO all fine"), None);
    }
}
