//! One run at a time in a directory: a kernel lock (`flock`) on `DIR/.lock`, taken before
//! anything is read or written there and held for the life of the run. The kernel releases it
//! when its holder dies, however it dies, so a coordinator restarted after a crash (a pod
//! Kubernetes restarts) takes the directory over and continues its run. `DIR/.holder.json`
//! says who holds the lock, for the message that refuses a second run.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const LOCK: &str = ".lock";
const HOLDER: &str = ".holder.json";

/// Files of the lock itself, which do not make a directory hold anything.
pub const FILES: [&str; 2] = [LOCK, HOLDER];

/// Who holds a directory's lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = now().saturating_sub(self.started);
        write!(
            f,
            "process {} on {}, started {ago} s ago",
            self.pid, self.host
        )
    }
}

/// The held lock of a directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    holder: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.holder);
    }
}

/// Locks `dir` (created if missing) for this process, or refuses, naming the holder. `what`
/// names the directory in messages (`the run directory`, `the experiment directory`) and
/// `flag` the option that picks another.
pub fn lock(dir: &Path, what: &str, flag: &str) -> Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {what} {}", dir.display()))?;
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let holder = std::fs::read(dir.join(HOLDER))
            .ok()
            .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
            .map_or_else(|| "another process".to_string(), |h| h.to_string());
        bail!(
            "{what} {} is in use by another run ({holder}): one run at a time writes there; \
             wait for it to end, or give another {flag}",
            dir.display()
        );
    }
    let holder = Holder {
        pid: std::process::id(),
        host: common::hostname(),
        started: now(),
    };
    let holder_path = dir.join(HOLDER);
    common::fsutil::write_atomic(&holder_path, &serde_json::to_vec(&holder)?)
        .with_context(|| format!("writing {}", holder_path.display()))?;
    Ok(DirLock {
        _file: file,
        holder: holder_path,
    })
}

/// Whether `dir` is missing or holds nothing but its lock.
pub fn is_empty(dir: &Path) -> Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        if !FILES.iter().any(|f| name == *f) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = lock(&run, "the run directory", "--run-dir").unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as a second coordinator's would.
        let err = lock(&run, "the run directory", "--run-dir").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("process {}", std::process::id())) && msg.contains("--run-dir"),
            "{msg}"
        );
        assert!(is_empty(&run).unwrap(), "the lock's files do not count");
        drop(held);
        let _again = lock(&run, "the run directory", "--run-dir").unwrap();
        std::fs::write(run.join("notes.txt"), "mine").unwrap();
        assert!(!is_empty(&run).unwrap());
    }
}
