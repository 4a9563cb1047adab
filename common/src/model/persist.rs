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

/// A vector to save as it is.
pub enum Vector<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

impl Vector<'_> {
    fn view(
        &self,
    ) -> std::result::Result<safetensors::tensor::TensorView<'_>, safetensors::SafeTensorError>
    {
        // SAFETY: f32 and i64 have no padding and every byte pattern is a valid u8; the bytes
        // borrow the slice for no longer than it lives.
        let (dtype, len, bytes) = unsafe {
            match self {
                Vector::F32(v) => (
                    safetensors::Dtype::F32,
                    v.len(),
                    std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 4 * v.len()),
                ),
                Vector::I64(v) => (
                    safetensors::Dtype::I64,
                    v.len(),
                    std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 8 * v.len()),
                ),
            }
        };
        safetensors::tensor::TensorView::new(dtype, vec![len], bytes)
    }
}

/// Named vectors as safetensors bytes, each a 1-D tensor, serialised from the slices as they
/// are: no tensor is made of them first (for a fine-tuned encoder's optimizer moments, 180 MB
/// of copies fewer each time its state is saved or sent).
pub fn vectors_to_safetensors<'a>(
    vectors: impl IntoIterator<Item = (&'a str, Vector<'a>)>,
) -> Result<Vec<u8>> {
    let vectors: Vec<(&str, Vector)> = vectors.into_iter().collect();
    let views = vectors
        .iter()
        .map(|(name, v)| {
            v.view()
                .map(|view| (*name, view))
                .map_err(|e| ModelError::Config(format!("serialising {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None)
        .map_err(|e| ModelError::Config(format!("serialising tensors: {e}")))
}

/// `bytes` written to `path` atomically (see [`crate::fsutil::write_atomic`]).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}
