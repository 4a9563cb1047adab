//! Model and optimizer state as files: safetensors bytes, written so that a crash leaves either
//! the old file or the new one, never half of one.

use std::path::Path;

use candle_core::Tensor;

use super::error::{ModelError, Result};

/// Named tensors as safetensors bytes (what checkpoints hold and workers send).
pub fn to_safetensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    safetensors::serialize(tensors, None)
        .map_err(|e| ModelError::Config(format!("serialising tensors: {e}")))
}

/// `bytes` written to `path` atomically (see [`crate::fsutil::write_atomic`]).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}
