//! Mutual authentication of one ring link with an HMAC-SHA256 challenge keyed by the join
//! token, so only workers admitted to this run can inject gradients into the ring.
//!
//! The acceptor challenges first and answers only after the dialer has proven itself, so an
//! unauthenticated caller never gets a MAC computed for it. The exchange authenticates; it
//! does not encrypt, and it cannot stop someone who sits on the path and relays both sides.

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

use super::frame::{
    encode_frame_into, read_frame, FrameKind, ProtocolError, ReadError, HEADER_LEN,
};

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 32;
/// Response payload: dialer rank (4), world size (4), tag (32), dialer nonce (32).
const RESPONSE_LEN: usize = 4 + 4 + TAG_LEN + NONCE_LEN;
/// Accept payload: acceptor rank (4), world size (4), tag (32).
const ACCEPT_LEN: usize = 4 + 4 + TAG_LEN;

/// The shared secret of one training run: the join token every admitted worker holds, and
/// the run id, so a token reused across runs cannot splice a worker into the wrong ring.
#[derive(Clone)]
pub struct RingAuth {
    token: Vec<u8>,
    run_id: u64,
}

impl fmt::Debug for RingAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingAuth")
            .field("token", &"<redacted>")
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl RingAuth {
    pub fn new(token: &[u8], run_id: u64) -> Self {
        if token.is_empty() {
            tracing::warn!("ring join token is empty: ring links are not really authenticated");
        }
        Self {
            token: token.to_vec(),
            run_id,
        }
    }

    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// HMAC(token, nonce ‖ run_id ‖ rank ‖ world_size), integers little-endian.
    fn keyed(&self, nonce: &[u8], rank: u32, world: u32) -> HmacSha256 {
        // HMAC accepts keys of any length (long ones are hashed), so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.token)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(nonce);
        mac.update(&self.run_id.to_le_bytes());
        mac.update(&rank.to_le_bytes());
        mac.update(&world.to_le_bytes());
        mac
    }

    fn tag(&self, nonce: &[u8], rank: u32, world: u32) -> [u8; TAG_LEN] {
        self.keyed(nonce, rank, world)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time comparison (`verify_slice` uses `subtle` underneath), so the time taken
    /// leaks nothing about how many bytes of a forged tag were right.
    fn verify(&self, nonce: &[u8], rank: u32, world: u32, tag: &[u8]) -> bool {
        self.keyed(nonce, rank, world).verify_slice(tag).is_ok()
    }
}

/// Why a handshake failed, before the ring layer attaches the peer's identity.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Io(io::Error),
    Protocol(ProtocolError),
    Auth(String),
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Protocol(e) => Self::Protocol(e),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut n);
    n
}

fn send(stream: &TcpStream, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame_into(&mut frame, kind, 0, 0, payload);
    let mut w = stream;
    w.write_all(&frame)?;
    w.flush()
}

/// Reads the next handshake frame, which must be one of `kinds` and, unless it is a
/// `Reject`, carry exactly `len` payload bytes.
fn expect_frame(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    kinds: &[FrameKind],
    len: usize,
) -> Result<FrameKind, HandshakeError> {
    let mut r = stream;
    let header = read_frame(&mut r, buf)?;
    if !kinds.contains(&header.kind) {
        return Err(HandshakeError::Protocol(ProtocolError::UnexpectedKind {
            expected: kinds[0],
            got: header.kind,
        }));
    }
    if header.kind == FrameKind::Reject {
        return Ok(header.kind);
    }
    if header.step != 0 {
        return Err(HandshakeError::Protocol(ProtocolError::StepMismatch {
            expected: 0,
            got: header.step,
        }));
    }
    if header.payload_len() != len {
        return Err(HandshakeError::Protocol(ProtocolError::WrongLength {
            what: "handshake frame",
            expected: len,
            got: header.payload_len(),
        }));
    }
    Ok(header.kind)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The dialing side: answer the acceptor's challenge, then check the acceptor's answer to ours.
pub(crate) fn dial(
    stream: &TcpStream,
    auth: &RingAuth,
    my_rank: u32,
    peer_rank: u32,
    world: u32,
) -> Result<(), HandshakeError> {
    let mut buf = Vec::new();
    expect_frame(stream, &mut buf, &[FrameKind::Challenge], NONCE_LEN)?;
    let their_nonce = &buf[HEADER_LEN..];

    let my_nonce = nonce();
    let mut payload = Vec::with_capacity(RESPONSE_LEN);
    payload.extend_from_slice(&my_rank.to_le_bytes());
    payload.extend_from_slice(&world.to_le_bytes());
    payload.extend_from_slice(&auth.tag(their_nonce, my_rank, world));
    payload.extend_from_slice(&my_nonce);
    send(stream, FrameKind::Response, &payload)?;

    let kind = expect_frame(
        stream,
        &mut buf,
        &[FrameKind::Accept, FrameKind::Reject],
        ACCEPT_LEN,
    )?;
    if kind == FrameKind::Reject {
        return Err(HandshakeError::Auth(
            "the peer rejected this worker's answer (different join token, run id, rank or world size)"
                .into(),
        ));
    }
    let p = &buf[HEADER_LEN..];
    let (their_rank, their_world) = (u32_at(p, 0), u32_at(p, 4));
    if their_rank != peer_rank || their_world != world {
        return Err(HandshakeError::Auth(format!(
            "the peer claims rank {their_rank} of {their_world}, expected rank {peer_rank} of {world}"
        )));
    }
    if !auth.verify(&my_nonce, their_rank, their_world, &p[8..8 + TAG_LEN]) {
        return Err(HandshakeError::Auth(
            "the peer's answer does not verify: it does not hold this run's join token".into(),
        ));
    }
    Ok(())
}

/// The accepting side: challenge the dialer, check its answer and claimed rank, then prove
/// ourselves. On failure the dialer is told so (best effort) before the caller closes the link.
pub(crate) fn accept(
    stream: &TcpStream,
    auth: &RingAuth,
    my_rank: u32,
    expected_rank: u32,
    world: u32,
) -> Result<(), HandshakeError> {
    let my_nonce = nonce();
    send(stream, FrameKind::Challenge, &my_nonce)?;

    let mut buf = Vec::new();
    expect_frame(stream, &mut buf, &[FrameKind::Response], RESPONSE_LEN)?;
    let p = &buf[HEADER_LEN..];
    let (their_rank, their_world) = (u32_at(p, 0), u32_at(p, 4));
    let their_tag = &p[8..8 + TAG_LEN];
    let their_nonce = &p[8 + TAG_LEN..];

    let failure = if !auth.verify(&my_nonce, their_rank, their_world, their_tag) {
        Some("the dialer's answer does not verify: it does not hold this run's join token".into())
    } else if their_rank != expected_rank || their_world != world {
        Some(format!(
            "the dialer claims rank {their_rank} of {their_world}, expected rank {expected_rank} of {world}"
        ))
    } else {
        None
    };
    if let Some(reason) = failure {
        // Best effort: the link is dropped either way, this only gives the dialer a clear error.
        let _ = send(stream, FrameKind::Reject, &[]);
        return Err(HandshakeError::Auth(reason));
    }

    let mut payload = Vec::with_capacity(ACCEPT_LEN);
    payload.extend_from_slice(&my_rank.to_le_bytes());
    payload.extend_from_slice(&world.to_le_bytes());
    payload.extend_from_slice(&auth.tag(their_nonce, my_rank, world));
    send(stream, FrameKind::Accept, &payload)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_binds_token_run_rank_and_world() {
        let a = RingAuth::new(b"secret", 7);
        let n = [3u8; NONCE_LEN];
        let t = a.tag(&n, 1, 4);
        assert!(a.verify(&n, 1, 4, &t));
        assert!(!a.verify(&n, 2, 4, &t));
        assert!(!a.verify(&n, 1, 3, &t));
        assert!(!a.verify(&[4u8; NONCE_LEN], 1, 4, &t));
        assert!(!RingAuth::new(b"secret", 8).verify(&n, 1, 4, &t));
        assert!(!RingAuth::new(b"Secret", 7).verify(&n, 1, 4, &t));
        assert!(!a.verify(&n, 1, 4, &t[..31]));
    }

    #[test]
    fn debug_hides_token() {
        let s = format!("{:?}", RingAuth::new(b"hunter2", 1));
        assert!(!s.contains("hunter2"), "{s}");
    }
}
