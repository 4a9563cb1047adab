//! A model's weights and optimizer state over gRPC, in chunks: a [`pb::StateHeader`] announces
//! their sizes and SHA-256, and [`pb::StateChunk`] messages of at most [`CHUNK_BYTES`] carry the
//! weights followed by the optimizer state. No message then grows with the model (the weights
//! and Adam state of a 22M-parameter encoder are 272 MB, more than a gRPC message may hold).
//!
//! The sender takes the header of an [`Outgoing`] state and its chunks
//! ([`Outgoing::send_chunks`]; a [`ModelState`] in memory gives one with
//! [`ModelState::outgoing`]). The receiver feeds the chunks to a [`Reassembly`] made from the
//! header, which keeps no more than the announced bytes (in memory, or in files: its
//! [`Part`]s say where) and refuses a transfer that brings more or fewer, an oversized chunk,
//! or bytes whose hash is not the announced one, with an error and never a panic. The join
//! reply announces a run's initial state (fetched with `FetchInitialState`), an epoch report or
//! a checkpoint upload announces the state whose chunks follow it in the same client stream.

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use tokio_stream::{Stream, StreamExt};

use crate::model::Piece;
use crate::pb;

/// Largest chunk of a state transfer, in bytes: what senders send and receivers accept.
pub const CHUNK_BYTES: usize = 4 << 20;

/// HTTP/2 flow-control windows (bytes a peer may send before the receiver acknowledges them)
/// of the coordinator's server and the worker's client, per stream and per connection. With
/// hyper's default of 64 KiB, a 312 MB checkpoint took 3.7 to 5.3 s to upload over loopback;
/// with these, 0.85 s.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// Weights (safetensors) and optimizer state (safetensors, empty for a fresh optimizer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelState {
    pub weights: Vec<u8>,
    pub optimizer: Vec<u8>,
}

impl ModelState {
    pub fn new(weights: Vec<u8>, optimizer: Vec<u8>) -> Self {
        ModelState { weights, optimizer }
    }

    /// Nothing to send: neither weights nor optimizer state.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.optimizer.is_empty()
    }

    /// Bytes of weights and optimizer state together.
    pub fn len(&self) -> u64 {
        self.weights.len() as u64 + self.optimizer.len() as u64
    }

    /// The header that announces this state (one pass over its bytes for the hash).
    pub fn header(&self) -> pb::StateHeader {
        self.outgoing().header()
    }

    /// The state to send, its bytes borrowed.
    pub fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            weights: vec![Piece::Bytes(Cow::Borrowed(&self.weights))],
            optimizer: vec![Piece::Bytes(Cow::Borrowed(&self.optimizer))],
        }
    }
}

/// A state to send from where it lies: the pieces of its weights file and of its optimizer
/// file ([`crate::model::Classifier::to_pieces`], [`crate::train::Adam::to_pieces`]). Sending
/// it copies one tensor and one chunk at a time, where a [`ModelState`] first holds every byte
/// (for a fine-tuned encoder, 270 MB at every epoch's end).
pub struct Outgoing<'a> {
    pub weights: Vec<Piece<'a>>,
    pub optimizer: Vec<Piece<'a>>,
}

impl Outgoing<'_> {
    fn pieces(&self) -> impl Iterator<Item = &Piece<'_>> {
        self.weights.iter().chain(&self.optimizer)
    }

    /// The header that announces this state: one pass over its bytes for the sizes and hash,
    /// the same header a [`ModelState`] of these bytes gives.
    pub fn header(&self) -> pb::StateHeader {
        let mut hasher = Sha256::new();
        let mut len = |pieces: &[Piece<'_>]| {
            let mut n = 0u64;
            for p in pieces {
                p.with_bytes(|b| {
                    hasher.update(b);
                    n += b.len() as u64;
                });
            }
            n
        };
        let weights_bytes = len(&self.weights);
        let optimizer_bytes = len(&self.optimizer);
        pb::StateHeader {
            weights_bytes,
            optimizer_bytes,
            sha256: hasher.finalize().to_vec(),
        }
    }

    /// Hands `send` the state's chunks of `size` bytes (clamped to 1..=[`CHUNK_BYTES`]; the
    /// last may be shorter), in order, each made when its turn comes; stops early when `send`
    /// returns false (the receiver is gone).
    pub fn send_chunks(&self, size: usize, mut send: impl FnMut(pb::StateChunk) -> bool) {
        let size = size.clamp(1, CHUNK_BYTES);
        let mut data = Vec::with_capacity(size);
        let mut open = true;
        for piece in self.pieces() {
            piece.with_bytes(|mut bytes| {
                while open && !bytes.is_empty() {
                    let take = bytes.len().min(size - data.len());
                    data.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if data.len() == size {
                        let full = std::mem::replace(&mut data, Vec::with_capacity(size));
                        open = send(pb::StateChunk { data: full });
                    }
                }
            });
        }
        if open && !data.is_empty() {
            send(pb::StateChunk { data });
        }
    }
}

/// Why a state transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the announced state's checksum has {0} bytes, not the 32 of a SHA-256")]
    BadChecksum(usize),
    #[error("the announced state of {0} bytes is more than this process can hold")]
    TooLarge(u64),
    #[error("a state chunk of {len} bytes exceeds the {max}-byte limit")]
    ChunkTooLarge { len: usize, max: usize },
    #[error(
        "the state transfer brings more than the announced {announced} bytes \
         ({received} received before this chunk of {chunk})"
    )]
    Overrun {
        announced: u64,
        received: u64,
        chunk: usize,
    },
    #[error(
        "the state transfer was truncated: {received} of the announced {announced} bytes arrived"
    )]
    Truncated { received: u64, announced: u64 },
    #[error("the state's SHA-256 is not the announced one: it was corrupted on the way")]
    Corrupt,
}

/// Where a [`Reassembly`] keeps one part of a state (the weights, or the optimizer state) as
/// its bytes arrive: in memory (`Vec<u8>`), or in a file (the coordinator's spool).
pub trait Part {
    /// Bytes kept so far.
    fn kept(&self) -> u64;
    /// Keeps `bytes` after those already kept. A part that can fail (a file on a full disk)
    /// keeps its error for whoever uses the bytes, where the failure can be named.
    fn keep(&mut self, bytes: &[u8]);
}

impl Part for Vec<u8> {
    fn kept(&self) -> u64 {
        self.len() as u64
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A state being received: the chunks of one [`pb::StateHeader`], in order, kept in two
/// [`Part`]s.
pub struct Reassembly<P = Vec<u8>> {
    weights: P,
    optimizer: P,
    weights_len: u64,
    optimizer_len: u64,
    sha256: [u8; 32],
    hasher: Sha256,
}

impl Reassembly {
    /// Ready for the chunks `header` announces, in memory; room for exactly the announced
    /// bytes is reserved now, so a size this process cannot hold is refused before anything
    /// arrives.
    pub fn new(header: &pb::StateHeader) -> Result<Self, TransferError> {
        let total = header.weights_bytes.saturating_add(header.optimizer_bytes);
        let too_large = || TransferError::TooLarge(total);
        let buffer = |len: u64| -> Result<Vec<u8>, TransferError> {
            let len = usize::try_from(len).map_err(|_| too_large())?;
            let mut buf = Vec::new();
            buf.try_reserve_exact(len).map_err(|_| too_large())?;
            Ok(buf)
        };
        Self::into_parts(
            header,
            buffer(header.weights_bytes)?,
            buffer(header.optimizer_bytes)?,
        )
    }

    /// The state, once every announced byte has arrived and their hash is the announced one.
    pub fn finish(self) -> Result<ModelState, TransferError> {
        let (weights, optimizer) = self.finish_parts()?;
        Ok(ModelState { weights, optimizer })
    }
}

impl<P: Part> Reassembly<P> {
    /// Ready for the chunks `header` announces, kept in `weights` and `optimizer` (both empty).
    pub fn into_parts(
        header: &pb::StateHeader,
        weights: P,
        optimizer: P,
    ) -> Result<Self, TransferError> {
        let sha256: [u8; 32] = header
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| TransferError::BadChecksum(header.sha256.len()))?;
        if header
            .weights_bytes
            .checked_add(header.optimizer_bytes)
            .is_none()
        {
            return Err(TransferError::TooLarge(u64::MAX));
        }
        Ok(Reassembly {
            weights,
            optimizer,
            weights_len: header.weights_bytes,
            optimizer_len: header.optimizer_bytes,
            sha256,
            hasher: Sha256::new(),
        })
    }

    /// Bytes announced.
    pub fn announced(&self) -> u64 {
        self.weights_len + self.optimizer_len
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.weights.kept() + self.optimizer.kept()
    }

    /// Takes the next chunk; refused (and nothing of it kept) when it is over [`CHUNK_BYTES`] or
    /// would bring more than the announced bytes.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TransferError> {
        if data.len() > CHUNK_BYTES {
            return Err(TransferError::ChunkTooLarge {
                len: data.len(),
                max: CHUNK_BYTES,
            });
        }
        if self.received() + data.len() as u64 > self.announced() {
            return Err(TransferError::Overrun {
                announced: self.announced(),
                received: self.received(),
                chunk: data.len(),
            });
        }
        let room = self.weights_len - self.weights.kept();
        let into_weights = (data.len() as u64).min(room) as usize;
        let (w, o) = data.split_at(into_weights);
        for (part, bytes) in [(&mut self.weights, w), (&mut self.optimizer, o)] {
            if !bytes.is_empty() {
                part.keep(bytes);
            }
        }
        self.hasher.update(data);
        Ok(())
    }

    /// The weights and optimizer state, once every announced byte has arrived and their hash is
    /// the announced one.
    pub fn finish_parts(self) -> Result<(P, P), TransferError> {
        if self.received() < self.announced() {
            return Err(TransferError::Truncated {
                received: self.received(),
                announced: self.announced(),
            });
        }
        if self.hasher.finalize().as_slice() != self.sha256 {
            return Err(TransferError::Corrupt);
        }
        Ok((self.weights, self.optimizer))
    }
}

/// Why receiving a state from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The transfer is not the announced one.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The stream itself failed (the peer went away, a message over the size limit).
    #[error("the state transfer broke off: {}", .0.message())]
    Stream(tonic::Status),
    #[error("the state transfer holds a message that is not a chunk")]
    NotAChunk,
}

/// Receives the state `header` announces from the rest of `parts`, whose every item must be a
/// chunk (`chunk_of` says which part holds which), up to the end of the stream.
pub async fn receive<M, S>(
    header: &pb::StateHeader,
    parts: &mut S,
    chunk_of: impl Fn(M) -> Option<pb::StateChunk>,
) -> Result<ModelState, ReceiveError>
where
    S: Stream<Item = Result<M, tonic::Status>> + Unpin,
{
    let (weights, optimizer) = receive_into(Reassembly::new(header)?, parts, chunk_of).await?;
    Ok(ModelState { weights, optimizer })
}

/// As [`receive`], into the parts of `state`.
pub async fn receive_into<P: Part, M, S>(
    mut state: Reassembly<P>,
    parts: &mut S,
    chunk_of: impl Fn(M) -> Option<pb::StateChunk>,
) -> Result<(P, P), ReceiveError>
where
    S: Stream<Item = Result<M, tonic::Status>> + Unpin,
{
    while let Some(part) = parts.next().await {
        let chunk = chunk_of(part.map_err(ReceiveError::Stream)?).ok_or(ReceiveError::NotAChunk)?;
        state.push(&chunk.data)?;
    }
    Ok(state.finish_parts()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model's tensors and an optimizer's vectors sent as pieces: the bytes the `safetensors`
    /// crate writes for them, the header of those bytes, in chunks of any size; a receiver that
    /// is gone stops the sending.
    #[test]
    fn outgoing_pieces_are_the_safetensors_bytes_in_chunks_of_any_size() {
        use crate::model::persist::{concat, tensor_pieces, vector_pieces, Vector};
        use candle_core::{DType, Device, Tensor};
        let dev = Device::Cpu;
        let tensors = vec![
            (
                "b.weight".to_string(),
                Tensor::arange(0f32, 10.0, &dev)
                    .unwrap()
                    .reshape((2, 5))
                    .unwrap(),
            ),
            (
                "a.bias".to_string(),
                Tensor::ones(7, DType::F32, &dev).unwrap(),
            ),
        ];
        let m: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let weights = tensor_pieces(tensors.clone()).unwrap();
        let optimizer =
            vector_pieces([("m", Vector::F32(&m)), ("step", Vector::I64(vec![3]))]).unwrap();
        let crate_bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
        assert_eq!(concat(&weights), crate_bytes);
        let whole = ModelState::new(concat(&weights), concat(&optimizer));
        let loaded = candle_core::safetensors::load_buffer(&whole.optimizer, &dev).unwrap();
        assert_eq!(loaded["m"].to_vec1::<f32>().unwrap(), m);
        assert_eq!(loaded["step"].to_vec1::<i64>().unwrap(), vec![3]);

        let out = Outgoing { weights, optimizer };
        assert_eq!(out.header(), whole.header());
        let all = [whole.weights.as_slice(), whole.optimizer.as_slice()].concat();
        for size in [1, 7, 100, 4096, CHUNK_BYTES] {
            let mut sent = Vec::new();
            out.send_chunks(size, |c| {
                sent.push(c.data);
                true
            });
            assert!(
                sent.iter().all(|c| !c.is_empty() && c.len() <= size),
                "{size}"
            );
            assert!(
                sent[..sent.len() - 1].iter().all(|c| c.len() == size),
                "{size}"
            );
            assert_eq!(sent.concat(), all, "chunks of {size}");
        }
        let mut calls = 0;
        out.send_chunks(100, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1);
    }

    fn state(weights: usize, optimizer: usize) -> ModelState {
        let bytes = |n: usize, k: u32| {
            (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(k) >> 13) as u8)
                .collect()
        };
        ModelState::new(bytes(weights, 1), bytes(optimizer, 7))
    }

    /// `state`'s chunks of `size` bytes, as a sender sends them.
    fn chunks(state: &ModelState, size: usize) -> Vec<pb::StateChunk> {
        let mut out = Vec::new();
        state.outgoing().send_chunks(size, |c| {
            out.push(c);
            true
        });
        out
    }

    fn reassemble(
        header: &pb::StateHeader,
        chunks: impl IntoIterator<Item = pb::StateChunk>,
    ) -> Result<ModelState, TransferError> {
        let mut r = Reassembly::new(header)?;
        for c in chunks {
            r.push(&c.data)?;
        }
        r.finish()
    }

    #[test]
    fn any_chunk_size_reassembles_the_state_across_the_weights_boundary() {
        for (w, o) in [(0, 0), (10, 0), (0, 10), (1000, 3000), (4097, 1)] {
            let s = state(w, o);
            for size in [1, 3, 7, 1000, 4096, CHUNK_BYTES, usize::MAX] {
                let chunks = chunks(&s, size);
                assert!(chunks.iter().all(|c| c.data.len() <= size.min(CHUNK_BYTES)));
                assert_eq!(chunks.len(), (w + o).div_ceil(size.min(CHUNK_BYTES)));
                assert_eq!(
                    reassemble(&s.header(), chunks).unwrap(),
                    s,
                    "{w}+{o} by {size}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_transfer_is_refused() {
        let s = state(100, 200);
        let mut chunks = chunks(&s, 64);
        chunks.pop();
        assert_eq!(
            reassemble(&s.header(), chunks),
            Err(TransferError::Truncated {
                received: 256,
                announced: 300
            })
        );
        assert!(matches!(
            reassemble(&s.header(), []),
            Err(TransferError::Truncated { received: 0, .. })
        ));
    }

    #[test]
    fn bytes_beyond_the_announced_size_are_refused_and_not_kept() {
        let s = state(100, 200);
        let mut r = Reassembly::new(&s.header()).unwrap();
        r.push(&[0; 250]).unwrap();
        let err = r.push(&[0; 51]).unwrap_err();
        assert_eq!(
            err,
            TransferError::Overrun {
                announced: 300,
                received: 250,
                chunk: 51
            }
        );
        assert!(err
            .to_string()
            .contains("more than the announced 300 bytes"));
        assert_eq!(r.received(), 250);
        // The whole state and one more chunk.
        let mut chunks = chunks(&s, 64);
        chunks.push(pb::StateChunk { data: vec![1] });
        assert!(matches!(
            reassemble(&s.header(), chunks),
            Err(TransferError::Overrun { received: 300, .. })
        ));
    }

    #[test]
    fn a_chunk_over_the_limit_is_refused() {
        let s = state(CHUNK_BYTES + 1, 0);
        let mut r = Reassembly::new(&s.header()).unwrap();
        assert_eq!(
            r.push(&s.weights),
            Err(TransferError::ChunkTooLarge {
                len: CHUNK_BYTES + 1,
                max: CHUNK_BYTES
            })
        );
        assert_eq!(r.received(), 0);
    }

    #[test]
    fn corrupted_bytes_and_bad_headers_are_refused() {
        let s = state(100, 100);
        let mut bad = chunks(&s, 64);
        bad[1].data[5] ^= 1;
        assert_eq!(reassemble(&s.header(), bad), Err(TransferError::Corrupt));
        let short = pb::StateHeader {
            sha256: vec![0; 31],
            ..s.header()
        };
        assert_eq!(
            Reassembly::new(&short).err(),
            Some(TransferError::BadChecksum(31))
        );
        for (w, o) in [(u64::MAX, 1), (u64::MAX / 2, 0), (1, u64::MAX - 1)] {
            let huge = pb::StateHeader {
                weights_bytes: w,
                optimizer_bytes: o,
                ..s.header()
            };
            assert!(
                matches!(Reassembly::new(&huge), Err(TransferError::TooLarge(_))),
                "{w} + {o}"
            );
        }
    }

    #[tokio::test]
    async fn receive_takes_chunks_to_the_end_of_the_stream() {
        let s = state(300, 500);
        let parts = |extra: Vec<Result<Option<pb::StateChunk>, tonic::Status>>| {
            let chunks = chunks(&s, 128).into_iter().map(|c| Ok(Some(c)));
            tokio_stream::iter(chunks.chain(extra).collect::<Vec<_>>())
        };
        let header = s.header();
        let got = receive(&header, &mut parts(vec![]), |c| c).await.unwrap();
        assert_eq!(got, s);
        let err = receive(&header, &mut parts(vec![Ok(None)]), |c| c)
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::NotAChunk), "{err}");
        let broken = vec![Err(tonic::Status::cancelled("gone"))];
        let err = receive(&header, &mut parts(broken), |c| c)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("broke off: gone"), "{err}");
        let mut truncated =
            tokio_stream::iter(chunks(&s, 128).into_iter().take(3).map(|c| Ok(Some(c))));
        let err = receive(&header, &mut truncated, |c| c).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("truncated: 384 of the announced 800"),
            "{err}"
        );
    }
}
