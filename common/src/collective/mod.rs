//! Collective operations between the data-parallel workers: the [`Collective`] trait the
//! training step calls to sum gradients, a world-size-1 [`Local`] backend, and
//! [`RingAllReduce`], a ring all-reduce over authenticated TCP. The protocol is described in
//! prose in `README.md` beside this file.

mod auth;
mod frame;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ring;
mod sparse;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

pub use auth::RingAuth;
pub use frame::{FrameKind, ProtocolError, MAX_PAYLOAD};
pub use ring::{RingAbort, RingAllReduce, RingOptions};

/// The decoders of what ring peers send, for the fuzz targets in `fuzz/`: they must turn any
/// bytes into a value or a [`ProtocolError`], never a panic.
pub mod wire {
    pub use super::frame::{decode_frame, read_frame, FrameHeader};

    /// Decodes one sparse contribution of `count` ids; its number of ids.
    pub fn decode_sparse(blob: &[u8], count: usize) -> Result<usize, super::ProtocolError> {
        super::sparse::decode(blob, count, 0).map(|c| c.ids.len())
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
    #[error("ring I/O with {peer} failed while {during}: {source}")]
    Io {
        peer: Peer,
        during: &'static str,
        #[source]
        source: io::Error,
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
    #[error("ring protocol error from {peer}: {source}")]
    Protocol {
        peer: Peer,
        #[source]
        source: ProtocolError,
    },
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
