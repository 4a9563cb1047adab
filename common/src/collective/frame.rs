//! The wire format of the ring: every message, handshake included, is one frame — a fixed
//! 28-byte header followed by at most [`MAX_PAYLOAD`] bytes of payload. This module encodes
//! and decodes frames and nothing else; it never trusts a length it has not checked, so a
//! peer sending garbage produces a [`ProtocolError`], never a panic or a huge allocation.

use std::fmt;
use std::io::{self, Read};

use thiserror::Error;

/// Identifies a ring frame; anything else on the socket is rejected before its length is used.
pub const MAGIC: [u8; 4] = *b"STXR";
/// Bumped whenever the frame layout or the collective schedules change incompatibly.
pub const VERSION: u16 = 1;
/// Header size in bytes: magic (4), version (2), kind (1), flags (1), step (8), shape (8), length (4).
pub const HEADER_LEN: usize = 28;
/// Hard limit on one frame's payload. Data is cut into segments well below this, so a length
/// above it can only come from a corrupt or hostile peer.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// What a frame carries; the receiver always knows which kind it expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Acceptor → dialer: a 32-byte random nonce.
    Challenge = 1,
    /// Dialer → acceptor: its rank, world size, HMAC over the acceptor's nonce, its own nonce.
    Response = 2,
    /// Acceptor → dialer: its rank, world size, HMAC over the dialer's nonce.
    Accept = 3,
    /// Acceptor → dialer: authentication failed; the acceptor closes the connection.
    Reject = 4,
    /// A segment of a partially reduced chunk (reduce-scatter phase).
    ReduceScatter = 16,
    /// A segment of a fully reduced chunk (all-gather phase).
    AllGather = 17,
    /// Announces one rank's sparse contribution: origin rank and id count.
    SparseMeta = 18,
    /// A piece of a sparse contribution's bytes (ids, then rows).
    SparseData = 19,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Challenge,
            2 => Self::Response,
            3 => Self::Accept,
            4 => Self::Reject,
            16 => Self::ReduceScatter,
            17 => Self::AllGather,
            18 => Self::SparseMeta,
            19 => Self::SparseData,
            _ => return None,
        })
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    /// The collective call this frame belongs to (0 during the handshake), so a rank that
    /// skipped or repeated a call is caught instead of silently mixing steps.
    pub step: u64,
    /// The shape both sides must agree on: element count for dense, row length for sparse.
    pub shape: u64,
    /// Payload length in bytes, at most [`MAX_PAYLOAD`].
    pub len: u32,
}

/// Anything a peer sent that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("bad magic {0:02x?}: not a ring frame")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {got} (this build speaks version {ours})")]
    Version { got: u16, ours: u16 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame flags must be 0, got {0:#04x}")]
    Flags(u8),
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    Oversize { len: u64, max: u32 },
    #[error("truncated frame: {got} bytes, need {need}")]
    Truncated { got: usize, need: usize },
    #[error("expected a {expected} frame, got {got}")]
    UnexpectedKind { expected: FrameKind, got: FrameKind },
    #[error(
        "frame belongs to step {got}, this rank is at step {expected} (ranks out of lock step)"
    )]
    StepMismatch { expected: u64, got: u64 },
    #[error("{what}: expected {expected} bytes, got {got}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("shape mismatch between ranks: {what} is {theirs} there but {ours} here")]
    ShapeMismatch {
        what: &'static str,
        ours: u64,
        theirs: u64,
    },
    #[error("{0}")]
    Malformed(String),
}

impl FrameHeader {
    /// Validates a raw header; the payload length is checked against [`MAX_PAYLOAD`] here so
    /// that no caller can allocate on an unchecked length.
    pub fn decode(raw: &[u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let magic = [raw[0], raw[1], raw[2], raw[3]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([raw[4], raw[5]]);
        if version != VERSION {
            return Err(ProtocolError::Version {
                got: version,
                ours: VERSION,
            });
        }
        let kind = FrameKind::from_u8(raw[6]).ok_or(ProtocolError::UnknownKind(raw[6]))?;
        if raw[7] != 0 {
            return Err(ProtocolError::Flags(raw[7]));
        }
        let step = u64::from_le_bytes(array8(&raw[8..16]));
        let shape = u64::from_le_bytes(array8(&raw[16..24]));
        let len = u32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]);
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::Oversize {
                len: len.into(),
                max: MAX_PAYLOAD,
            });
        }
        Ok(Self {
            kind,
            step,
            shape,
            len,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(&MAGIC);
        raw[4..6].copy_from_slice(&VERSION.to_le_bytes());
        raw[6] = self.kind as u8;
        raw[8..16].copy_from_slice(&self.step.to_le_bytes());
        raw[16..24].copy_from_slice(&self.shape.to_le_bytes());
        raw[24..28].copy_from_slice(&self.len.to_le_bytes());
        raw
    }

    pub fn payload_len(&self) -> usize {
        self.len as usize
    }
}

fn array8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

/// Decodes one complete frame held in `bytes` (header and exactly its payload). The ring
/// reads frames from a stream with [`read_frame`]; this is the same check on a byte slice.
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), ProtocolError> {
    let raw: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProtocolError::Truncated {
            got: bytes.len(),
            need: HEADER_LEN,
        })?;
    let header = FrameHeader::decode(raw)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != header.payload_len() {
        return Err(ProtocolError::WrongLength {
            what: "frame payload",
            expected: header.payload_len(),
            got: payload.len(),
        });
    }
    Ok((header, payload))
}

/// Appends a whole frame (header and payload) to `out`.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    step: u64,
    shape: u64,
    payload: &[u8],
) {
    debug_assert!(payload.len() <= MAX_PAYLOAD as usize);
    let header = FrameHeader {
        kind,
        step,
        shape,
        len: payload.len() as u32,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

/// Starts a frame in `out` whose payload the caller appends next, then [`finish_frame`] fixes
/// the length; this lets f32 segments be written straight into the send buffer.
pub fn begin_frame(out: &mut Vec<u8>, kind: FrameKind, step: u64, shape: u64) {
    out.clear();
    let header = FrameHeader {
        kind,
        step,
        shape,
        len: 0,
    };
    out.extend_from_slice(&header.encode());
}

/// Writes the payload length of a frame started by [`begin_frame`].
pub fn finish_frame(out: &mut [u8]) {
    let len = (out.len() - HEADER_LEN) as u32;
    debug_assert!(len <= MAX_PAYLOAD);
    out[24..28].copy_from_slice(&len.to_le_bytes());
}

/// Why reading a frame failed: the transport, or the bytes themselves.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Protocol(ProtocolError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

/// Reads one frame into `buf` (header followed by payload, so the frame can be forwarded
/// verbatim) and returns its header; the payload is `buf[HEADER_LEN..]`.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<FrameHeader, ReadError> {
    let mut raw = [0u8; HEADER_LEN];
    reader.read_exact(&mut raw)?;
    let header = FrameHeader::decode(&raw)?;
    buf.clear();
    buf.extend_from_slice(&raw);
    // The length was bounded by decode, so this resize is at most MAX_PAYLOAD bytes.
    buf.resize(HEADER_LEN + header.payload_len(), 0);
    reader.read_exact(&mut buf[HEADER_LEN..])?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, FrameKind::AllGather, 7, 1000, &[1, 2, 3]);
        let (h, p) = decode_frame(&out).expect("valid frame");
        assert_eq!(h.kind, FrameKind::AllGather);
        assert_eq!((h.step, h.shape, h.len), (7, 1000, 3));
        assert_eq!(p, &[1, 2, 3]);
    }

    #[test]
    fn begin_finish_matches_encode() {
        let mut a = Vec::new();
        encode_frame_into(&mut a, FrameKind::ReduceScatter, 3, 9, &[9; 12]);
        let mut b = Vec::new();
        begin_frame(&mut b, FrameKind::ReduceScatter, 3, 9);
        b.extend_from_slice(&[9; 12]);
        finish_frame(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_oversize_before_reading_payload() {
        let mut raw = FrameHeader {
            kind: FrameKind::AllGather,
            step: 1,
            shape: 1,
            len: 0,
        }
        .encode();
        raw[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame(&mut Cursor::new(raw.to_vec()), &mut Vec::new());
        assert!(matches!(
            err,
            Err(ReadError::Protocol(ProtocolError::Oversize { .. }))
        ));
    }

    #[test]
    fn rejects_bad_magic_version_kind_flags() {
        let good = FrameHeader {
            kind: FrameKind::Challenge,
            step: 0,
            shape: 0,
            len: 0,
        }
        .encode();
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut bad = good;
        bad[4] = 99;
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(ProtocolError::Version { .. })
        ));
        let mut bad = good;
        bad[6] = 200;
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(ProtocolError::UnknownKind(200))
        ));
        let mut bad = good;
        bad[7] = 1;
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(ProtocolError::Flags(1))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
            let _ = read_frame(&mut Cursor::new(&bytes), &mut Vec::new());
        }

        // Garbage behind a valid magic and version reaches the deeper checks.
        #[test]
        fn arbitrary_bytes_after_magic_never_panic(
            kind in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.push(kind);
            bytes.extend_from_slice(&rest);
            let _ = decode_frame(&bytes);
            let mut buf = Vec::new();
            let mut cursor = Cursor::new(&bytes);
            // A stream of frames: keep reading until the bytes run out or go bad.
            while read_frame(&mut cursor, &mut buf).is_ok() {}
        }

        #[test]
        fn encode_decode_round_trips(
            step in any::<u64>(),
            shape in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut out = Vec::new();
            encode_frame_into(&mut out, FrameKind::SparseData, step, shape, &payload);
            let (h, p) = decode_frame(&out).expect("own encoding decodes");
            prop_assert_eq!((h.kind, h.step, h.shape), (FrameKind::SparseData, step, shape));
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
