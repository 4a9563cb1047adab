//! Collective operations between the data-parallel workers: the [`Collective`] trait the
//! training step calls to sum gradients, a world-size-1 [`Local`] backend, and
//! [`RingAllReduce`], a ring all-reduce over authenticated TCP. The protocol is described in
//! prose in `README.md` beside this file.

mod auth;
mod backend;
mod chunk;
#[cfg(any(test, feature = "nccl"))]
mod deadline;
mod frame;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ring;
mod shm;
mod slots;
mod sparse;

#[cfg(test)]
mod shm_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

pub use auth::RingAuth;
pub use backend::{Backend, UnknownBackend};
pub use frame::{FrameKind, ProtocolError, MAX_PAYLOAD};
pub use ring::{RingAbort, RingAllReduce, RingOptions};
pub use slots::{all_reduce_dense_slots, all_reduce_sparse_slots};

/// The decoders of what ring peers send, for the fuzz targets in `fuzz/`: they must turn any
/// bytes into a value or a [`ProtocolError`], never a panic.
pub mod wire {
    pub use super::frame::{decode_frame, read_frame, FrameHeader};

    /// Decodes one sparse contribution of `count` ids; its number of ids.
    pub fn decode_sparse(blob: &[u8], count: usize) -> Result<usize, super::ProtocolError> {
        super::sparse::decode(blob, count, 0).map(|c| c.ids.len())
    }
}

/// Stops a collective from another thread: the call blocked in it fails at once, and so does
/// every later one (the caller forms a new collective). The worker's heartbeat task holds one
/// to leave its ring when the coordinator announces a new membership.
pub trait Abort: Send + Sync {
    fn abort(&self);
}

impl Abort for RingAbort {
    fn abort(&self) {
        RingAbort::abort(self);
    }
}

/// Sums gradients across the workers of one training run. Every rank must make the same
/// sequence of calls with the same shapes; a mismatch is reported, not papered over.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum across all ranks, in place; every rank ends with the same values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// Sparse rows (e.g. the embedding gradient: only the rows a batch touched): each rank gives
    /// sorted unique row ids and their rows (ids.len() × row_len values); every rank ends with
    /// the union of ids (sorted) and the summed rows. Never densifies the full table.
    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError>;
    /// Bytes this rank sent since the last call (for benchmarks: bytes per step).
    fn take_bytes_sent(&mut self) -> u64;

    /// Whether its calls may run on a thread of their own while the training step's thread
    /// computes: the step then sums each bucket of the gradient as soon as the backward pass
    /// has completed it, and the sums overlap the rest of the pass.
    fn overlaps(&self) -> bool {
        true
    }

    /// Whether [`Collective::all_reduce_on_device`] sums device buffers where they lie. Where it
    /// does not, a step holding its training state on a device copies each bucket to the host
    /// and back around [`Collective::all_reduce_sum`].
    fn sums_on_device(&self) -> bool {
        false
    }

    /// Element-wise sum across all ranks of `buf`, a contiguous f32 tensor on the training
    /// device, in place (NCCL). Refused by collectives that sum host memory only.
    fn all_reduce_on_device(&mut self, buf: &candle_core::Tensor) -> Result<(), CollectiveError> {
        let _ = buf;
        Err(CollectiveError::InvalidInput(
            "this collective sums host buffers only".into(),
        ))
    }

    /// Replaces `bytes` on every rank with `root`'s (e.g. the weights and optimizer state of
    /// the survivor that got furthest, after a regroup). Rare and a few MB, so it rides on
    /// `all_reduce_sum`: every 16 bits of `root`'s bytes become one f32 that the other ranks
    /// add 0.0 to, which is exact, so the bytes arrive unchanged whatever they encode.
    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        let world = self.world_size();
        if root >= world {
            return Err(CollectiveError::InvalidInput(format!(
                "broadcast root {root} is not in a world of {world}"
            )));
        }
        if world == 1 {
            return Ok(());
        }
        let mine = self.rank() == root;
        let len = if mine { bytes.len() as u64 } else { 0 };
        let mut head: Vec<f32> = (0..4)
            .map(|i| ((len >> (16 * i)) & 0xffff) as f32)
            .collect();
        self.all_reduce_sum(&mut head)?;
        let mut len = 0u64;
        for (i, &v) in head.iter().enumerate() {
            len |= u64::from(piece(v)?) << (16 * i);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= MAX_BROADCAST)
            .ok_or_else(|| {
                CollectiveError::InvalidInput(format!("broadcast of {len} bytes is too large"))
            })?;
        let mut buf = vec![0f32; len.div_ceil(2)];
        if mine {
            for (v, pair) in buf.iter_mut().zip(bytes.chunks(2)) {
                *v = f32::from(u16::from_le_bytes([
                    pair[0],
                    pair.get(1).copied().unwrap_or(0),
                ]));
            }
        }
        self.all_reduce_sum(&mut buf)?;
        if !mine {
            bytes.clear();
            bytes.reserve(len + 1);
            for &v in &buf {
                bytes.extend_from_slice(&piece(v)?.to_le_bytes());
            }
            bytes.truncate(len);
        }
        Ok(())
    }
}

/// Largest [`Collective::broadcast_bytes`] payload (weights and optimizer state of a model).
pub const MAX_BROADCAST: usize = 4 << 30;

/// One 16-bit piece of a broadcast: only the root contributes, so anything else is a peer's bug.
fn piece(v: f32) -> Result<u16, CollectiveError> {
    if v.fract() == 0.0 && (0.0..65536.0).contains(&v) {
        Ok(v as u16)
    } else {
        Err(CollectiveError::InvalidInput(format!(
            "a broadcast piece summed to {v}: more than one rank contributed"
        )))
    }
}

/// The other end of a ring link, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub rank: usize,
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} at {}", self.rank, self.addr)
    }
}

/// Why a collective failed. After any error other than [`CollectiveError::InvalidInput`] the
/// ring is unusable (its streams may be mid-frame): drop it and form a new one.
#[derive(Debug, Error)]
pub enum CollectiveError {
    #[error("ring I/O with {peer} failed while {during}: {cause}")]
    Io {
        peer: Peer,
        during: &'static str,
        cause: io::Error,
    },
    #[error(
        "timed out after {after:?} while {during} ({peer}): the peer is dead, hung or far behind"
    )]
    Timeout {
        peer: Peer,
        during: &'static str,
        after: Duration,
    },
    #[error("ring authentication failed with {peer}: {reason}")]
    Auth { peer: Peer, reason: String },
    #[error("ring protocol error from {peer}: {cause}")]
    Protocol { peer: Peer, cause: ProtocolError },
    #[error("the collective was aborted by a shutdown of the ring")]
    Aborted,
    #[error("the ring is broken by an earlier failure ({0}); form a new one")]
    Broken(String),
    #[error("{0}")]
    Backend(String),
    #[error("invalid collective input: {0}")]
    InvalidInput(String),
}

/// The collective of a single worker: every sum is already complete.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError> {
        // Validated here too, so a caller bug shows up on one worker, not only on a cluster.
        check_sparse_input(ids, rows, row_len)
    }

    fn take_bytes_sent(&mut self) -> u64 {
        0
    }
}

/// The caller's half of the sparse contract: strictly increasing ids and one row per id.
pub(crate) fn check_sparse_input(
    ids: &[u32],
    rows: &[f32],
    row_len: usize,
) -> Result<(), CollectiveError> {
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        return Err(CollectiveError::InvalidInput(format!(
            "sparse row ids must be sorted and unique, found {} then {}",
            w[0], w[1]
        )));
    }
    let expected = ids.len().checked_mul(row_len);
    if expected != Some(rows.len()) {
        return Err(CollectiveError::InvalidInput(format!(
            "{} ids × row length {row_len} does not match {} row values",
            ids.len(),
            rows.len()
        )));
    }
    Ok(())
}
