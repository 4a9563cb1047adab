//! Writing a file so that a crash leaves either the old file or the new one, never half of
//! one: write `path.tmp`, fsync it, rename it over `path`, fsync the directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::error::{ModelError, Result};

/// Named tensors as safetensors bytes (what checkpoints hold and workers send).
pub fn to_safetensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    safetensors::serialize(tensors, None)
        .map_err(|e| ModelError::Config(format!("serialising tensors: {e}")))
}

/// `bytes` written to `path` atomically.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| fs::write(tmp, bytes).map_err(io(tmp)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Has `write` create the file at the path it is given, then puts it at `path` atomically.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    });
    if result.is_err() {
        // Best effort: a stale temporary file is harmless, the error that caused it is not.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename itself durable; not every file system lets a directory be synced.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
