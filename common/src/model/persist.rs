//! Model and optimizer state as files: safetensors bytes, written so that a crash leaves either
//! the old file or the new one, never half of one.

use std::borrow::Cow;
use std::path::Path;

use candle_core::Tensor;

use super::error::{ModelError, Result};

/// Named tensors as safetensors bytes (what checkpoints hold and workers send).
pub fn to_safetensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    Ok(concat(&tensor_pieces(
        tensors.into_iter().map(|(n, t)| (n.to_string(), t.clone())),
    )?))
}

/// The header of the safetensors file that `file` reads (the tensors' names, types, shapes and
/// offsets), read alone: the data after it is left unread.
pub fn read_header(
    file: &mut impl std::io::Read,
) -> std::io::Result<safetensors::tensor::Metadata> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    // The safetensors crate's own bound on a header.
    if len > 100 << 20 {
        return Err(invalid(format!("a safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)?;
    serde_json::from_slice(&header).map_err(|e| invalid(format!("not a safetensors header: {e}")))
}

/// A part of a safetensors file, in the order of the file's bytes.
pub enum Piece<'a> {
    /// Bytes at hand: the header, or a vector that is already flat.
    Bytes(Cow<'a, [u8]>),
    /// A tensor, whose bytes are taken only when their turn comes: so sending a model's state
    /// copies one tensor at a time, not the whole file into one buffer first.
    Tensor(Tensor),
}

impl Piece<'_> {
    /// Its number of bytes, without taking them.
    pub fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Tensor(t) => safetensors::View::data_len(t),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with the piece's bytes.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Piece::Bytes(b) => f(b),
            Piece::Tensor(t) => f(&safetensors::View::data(t)),
        }
    }
}

/// What the header of a safetensors file needs of an entry: its type and shape, no data.
struct Announced {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl safetensors::View for &Announced {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// The pieces of the safetensors file of `entries` (name, what the header says of it, its
/// piece): the header as the `safetensors` crate writes it, then the data in its order (by
/// descending type, then name). [`concat`] of them is the crate's file, byte for byte.
fn pieces<'a>(
    entries: impl IntoIterator<Item = (String, Announced, Piece<'a>)>,
) -> Result<Vec<Piece<'a>>> {
    let mut entries: Vec<(String, Announced, Piece<'a>)> = entries.into_iter().collect();
    entries.sort_by(|(ln, l, _), (rn, r, _)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
    // With no data, the crate's bytes are the length and the header alone.
    let header = safetensors::serialize(entries.iter().map(|(n, a, _)| (n.as_str(), a)), None)
        .map_err(|e| ModelError::Config(format!("serialising tensors: {e}")))?;
    Ok(std::iter::once(Piece::Bytes(Cow::Owned(header)))
        .chain(entries.into_iter().map(|(_, _, p)| p))
        .collect())
}

/// Named tensors as the pieces of their safetensors file.
pub fn tensor_pieces(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<Vec<Piece<'static>>> {
    pieces(tensors.into_iter().map(|(name, t)| {
        let a = Announced {
            dtype: safetensors::View::dtype(&t),
            shape: t.dims().to_vec(),
            len: safetensors::View::data_len(&t),
        };
        (name, a, Piece::Tensor(t))
    }))
}

/// The bytes of `pieces`, in one buffer.
pub fn concat(pieces: &[Piece<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pieces.iter().map(Piece::len).sum());
    for p in pieces {
        p.with_bytes(|b| out.extend_from_slice(b));
    }
    out
}

/// A vector to save as it is.
pub enum Vector<'a> {
    F32(&'a [f32]),
    /// Small, so owned (an optimizer's step count).
    I64(Vec<i64>),
}

impl<'a> Vector<'a> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Vector::F32(_) => safetensors::Dtype::F32,
            Vector::I64(_) => safetensors::Dtype::I64,
        }
    }

    fn len(&self) -> usize {
        match self {
            Vector::F32(v) => v.len(),
            Vector::I64(v) => v.len(),
        }
    }

    /// The vector's bytes: borrowed from an f32 slice, copied from the small i64 vector.
    fn bytes(&self) -> Cow<'a, [u8]> {
        match self {
            // SAFETY: f32 has no padding and every byte pattern is a valid u8; the bytes
            // borrow the slice for no longer than it lives.
            Vector::F32(v) => Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 4 * v.len())
            }),
            Vector::I64(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
}

/// Named vectors as the pieces of their safetensors file, each a 1-D tensor, the data borrowed
/// from the slices as they are: no tensor is made of them, and no buffer holds them all (for
/// a fine-tuned encoder's optimizer moments, 180 MB).
pub fn vector_pieces<'n, 'a>(
    vectors: impl IntoIterator<Item = (&'n str, Vector<'a>)>,
) -> Result<Vec<Piece<'a>>> {
    pieces(vectors.into_iter().map(|(name, v)| {
        let bytes = v.bytes();
        let a = Announced {
            dtype: v.dtype(),
            shape: vec![v.len()],
            len: bytes.len(),
        };
        (name.to_string(), a, Piece::Bytes(bytes))
    }))
}

/// `bytes` written to `path` atomically (see [`crate::fsutil::write_atomic`]).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}
