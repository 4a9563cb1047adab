//! A worker's call to Regroup and its answer, as the run's membership code sees them: the
//! service converts the wire messages at its edge.

use common::collective::Backend;
use common::pb;

/// A survivor (or a late joiner) asking for its place in the next ring.
#[derive(Clone, Debug)]
pub struct RegroupAsk {
    /// The worker's id for the run.
    pub rank: u32,
    /// The epoch whose steps its weights are in, how many of them it applied, and the examples
    /// in their global batches.
    pub epoch: u64,
    pub steps_done: u64,
    pub applied_examples: u64,
    /// Why it left its ring, for the log.
    pub reason: String,
    /// A fresh NCCL id, from a worker that can all-reduce with NCCL.
    pub nccl_id: Vec<u8>,
}

impl From<pb::RegroupRequest> for RegroupAsk {
    fn from(r: pb::RegroupRequest) -> Self {
        RegroupAsk {
            rank: r.rank,
            epoch: r.epoch,
            steps_done: r.steps_done,
            applied_examples: r.applied_examples,
            reason: r.reason,
            nccl_id: r.nccl_id,
        }
    }
}

/// The answer to a [`RegroupAsk`].
#[derive(Clone, Debug)]
pub enum RegroupAnswer {
    /// The worker's place in the new ring.
    Ring(NewRing),
    /// The run ended before the worker was admitted: it exits.
    Finished,
}

/// A place in a new ring, and where the epoch goes on.
#[derive(Clone, Debug)]
pub struct NewRing {
    pub generation: u64,
    pub ring_rank: u32,
    pub world_size: u32,
    /// Ring addresses by ring rank.
    pub peers: Vec<String>,
    /// The epoch goes on at this step, with the examples of the steps before it.
    pub epoch: u64,
    pub resume_step: u64,
    pub applied_examples: u64,
    /// The ring rank whose weights and optimizer state every rank adopts.
    pub state_source: u32,
    pub backend: Backend,
}

impl From<RegroupAnswer> for pb::RegroupReply {
    fn from(answer: RegroupAnswer) -> Self {
        match answer {
            RegroupAnswer::Finished => pb::RegroupReply {
                finished: true,
                ..Default::default()
            },
            RegroupAnswer::Ring(r) => pb::RegroupReply {
                generation: r.generation,
                ring_rank: r.ring_rank,
                world_size: r.world_size,
                peers: r.peers,
                epoch: r.epoch,
                resume_step: r.resume_step,
                applied_examples: r.applied_examples,
                state_source: r.state_source,
                finished: false,
                backend: Some(r.backend.into()),
            },
        }
    }
}
