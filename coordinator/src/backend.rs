//! The coordinator's one choice of collective backend (see [`Backend`]), made the same way for
//! the ring of the rendezvous and for every regrouped ring.

use common::collective::Backend;

/// What a worker brings to the choice.
pub struct Offer<'a> {
    /// Its host name: a shared-memory ring needs every worker on one host.
    pub host: &'a str,
    /// A fresh NCCL unique id; empty when the worker cannot all-reduce with NCCL.
    pub nccl_id: &'a [u8],
}

/// The backend of a ring of `offers`, in ring-rank order: NCCL only when every worker can (one
/// CPU worker keeps the whole run on the ring), with ring rank 0's id, since an id serves one
/// communicator; else the shared-memory ring when the run allows it (`--ring-transport auto`)
/// and every worker is on one host; else the TCP ring.
pub fn choose(offers: &[Offer<'_>], shared_memory: bool) -> Backend {
    let first = match offers {
        [] | [_] => return Backend::Local,
        [first, ..] => first,
    };
    if offers.iter().all(|o| !o.nccl_id.is_empty()) {
        return Backend::Nccl {
            unique_id: first.nccl_id.to_vec(),
        };
    }
    if shared_memory && offers.iter().all(|o| o.host == first.host) {
        Backend::SharedMemoryRing
    } else {
        Backend::TcpRing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer<'a>(host: &'a str, nccl_id: &'a [u8]) -> Offer<'a> {
        Offer { host, nccl_id }
    }

    #[test]
    fn nccl_needs_every_worker_then_one_host_needs_shared_memory_allowed() {
        let (a, b) = ([1u8; 128], [2u8; 128]);
        assert_eq!(choose(&[], true), Backend::Local);
        assert_eq!(choose(&[offer("h", &a)], true), Backend::Local);
        assert_eq!(
            choose(&[offer("h", &a), offer("g", &b)], false),
            Backend::Nccl {
                unique_id: a.to_vec()
            }
        );
        assert_eq!(
            choose(&[offer("h", &a), offer("h", &[])], true),
            Backend::SharedMemoryRing
        );
        assert_eq!(
            choose(&[offer("h", &[]), offer("h", &[])], false),
            Backend::TcpRing
        );
        assert_eq!(
            choose(&[offer("h", &[]), offer("g", &[])], true),
            Backend::TcpRing
        );
    }
}
