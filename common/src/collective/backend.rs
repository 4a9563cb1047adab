//! Which collective the workers of one ring generation all-reduce with: the coordinator
//! chooses it and names it in its join and regroup replies, and every worker forms what it
//! names. A new backend is a [`Collective`](super::Collective) implementation, a variant
//! here, and one match arm on each side.

use std::fmt;

use crate::pb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A world of one: nothing to reduce with.
    Local,
    /// The TCP ring.
    TcpRing,
    /// The ring, summing through a shared-memory segment: every worker is on one host (the
    /// ring stays on TCP if they cannot share a segment after all).
    SharedMemoryRing,
    /// An NCCL communicator, formed with ring rank 0's unique id.
    Nccl { unique_id: Vec<u8> },
}

/// A reply that names no backend, or one this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("the coordinator named no collective backend this worker knows")]
pub struct UnknownBackend;

impl From<Backend> for pb::Backend {
    fn from(b: Backend) -> Self {
        use pb::backend::{Kind, Local, Nccl, SharedMemoryRing, TcpRing};
        let kind = match b {
            Backend::Local => Kind::Local(Local {}),
            Backend::TcpRing => Kind::TcpRing(TcpRing {}),
            Backend::SharedMemoryRing => Kind::SharedMemoryRing(SharedMemoryRing {}),
            Backend::Nccl { unique_id } => Kind::Nccl(Nccl { unique_id }),
        };
        pb::Backend { kind: Some(kind) }
    }
}

impl TryFrom<Option<pb::Backend>> for Backend {
    type Error = UnknownBackend;

    fn try_from(b: Option<pb::Backend>) -> Result<Self, UnknownBackend> {
        use pb::backend::Kind;
        Ok(match b.and_then(|b| b.kind).ok_or(UnknownBackend)? {
            Kind::Local(_) => Backend::Local,
            Kind::TcpRing(_) => Backend::TcpRing,
            Kind::SharedMemoryRing(_) => Backend::SharedMemoryRing,
            Kind::Nccl(n) => Backend::Nccl {
                unique_id: n.unique_id,
            },
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "none (one worker)",
            Backend::TcpRing => "TCP ring",
            Backend::SharedMemoryRing => {
                "ring through shared memory (every worker on one host; TCP if they cannot share a segment)"
            }
            Backend::Nccl { .. } => "NCCL",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_crosses_the_wire_unchanged_and_a_missing_one_is_an_error() {
        for b in [
            Backend::Local,
            Backend::TcpRing,
            Backend::SharedMemoryRing,
            Backend::Nccl {
                unique_id: vec![7; 128],
            },
        ] {
            let wire = pb::Backend::from(b.clone());
            assert_eq!(Backend::try_from(Some(wire)).unwrap(), b);
        }
        assert!(Backend::try_from(None).is_err());
        assert!(Backend::try_from(Some(pb::Backend { kind: None })).is_err());
    }
}
