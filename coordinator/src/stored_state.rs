//! A run's initial state (the pretrained encoder's weights, or a resumed checkpoint's weights
//! and optimizer state) kept in a file rather than in memory. Workers fetch it in chunks, late
//! joiners too, at any time of the run; held in memory, a fine-tuned encoder's 90 to 270 MB
//! would stay resident in the coordinator from start to end.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use common::pb;
use common::state_transfer::ModelState;

use crate::model_dir::{self, ModelMeta};

pub struct StoredState {
    /// Unnamed (it has no path), so it goes with the process, even one killed with SIGKILL.
    file: std::fs::File,
    len: u64,
    /// What the join reply announces; None for no state.
    header: Option<pb::StateHeader>,
}

impl StoredState {
    /// `state`, written to an unnamed file in `dir` (the run directory); its memory is freed.
    pub fn new(state: ModelState, dir: &Path) -> Result<Self> {
        let header = (!state.is_empty()).then(|| state.header());
        let mut file = tempfile::tempfile_in(dir)
            .with_context(|| format!("making a file for the initial state in {}", dir.display()))?;
        file.write_all(&state.weights)
            .and_then(|()| file.write_all(&state.optimizer))
            .with_context(|| format!("writing the initial state in {}", dir.display()))?;
        Ok(Self {
            file,
            len: state.len(),
            header,
        })
    }

    /// The weights and optimizer state of the checkpoint in `checkpoint` (as `meta` describes
    /// it), copied a block at a time into an unnamed file in `dir` (the run directory), each
    /// checked against the hash `meta` records for it: a resumed run's coordinator never holds
    /// them in memory.
    pub fn from_checkpoint(checkpoint: &Path, meta: &ModelMeta, dir: &Path) -> Result<Self> {
        use sha2::Digest;
        let mut file = tempfile::tempfile_in(dir)
            .with_context(|| format!("making a file for the initial state in {}", dir.display()))?;
        let mut whole = sha2::Sha256::new();
        let mut copy = |name: &str, recorded: Option<&str>| {
            model_dir::copy_checked(checkpoint, name, recorded, &mut file, |b| whole.update(b))
        };
        let weights_bytes = copy(model_dir::WEIGHTS, meta.weights_sha256.as_deref())?;
        let optimizer_bytes = copy(model_dir::OPTIMIZER, meta.optimizer_sha256.as_deref())?;
        // The header a ModelState of these bytes gives.
        let header = pb::StateHeader {
            weights_bytes,
            optimizer_bytes,
            sha256: whole.finalize().to_vec(),
        };
        Ok(Self {
            file,
            len: weights_bytes + optimizer_bytes,
            header: Some(header),
        })
    }

    pub fn header(&self) -> Option<&pb::StateHeader> {
        self.header.as_ref()
    }

    /// Hands `send` the state's chunks of at most `size` bytes, in order, each read from the
    /// file when its turn comes; stops early when `send` returns false (the receiver is gone).
    pub fn send_chunks(
        &self,
        size: usize,
        mut send: impl FnMut(std::io::Result<pb::StateChunk>) -> bool,
    ) {
        let mut at = 0u64;
        while at < self.len {
            let n = (self.len - at).min(size.max(1) as u64) as usize;
            let mut data = vec![0u8; n];
            let read = self
                .file
                .read_exact_at(&mut data, at)
                .map(|()| pb::StateChunk { data });
            let failed = read.is_err();
            if !send(read) || failed {
                return;
            }
            at += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::state_transfer::Reassembly;

    #[test]
    fn the_stored_state_sends_what_the_state_in_memory_would() {
        let dir = tempfile::tempdir().unwrap();
        let state = ModelState::new(
            (0..10_000u32).map(|i| i as u8).collect(),
            (0..3_333u32).map(|i| (i * 7) as u8).collect(),
        );
        let mut in_memory = Vec::new();
        state.outgoing().send_chunks(1000, |c| {
            in_memory.push(c);
            true
        });
        let stored = StoredState::new(state.clone(), dir.path()).unwrap();
        assert_eq!(stored.header(), Some(&state.header()));
        // The file has no name: nothing is left in the run directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut sent = Vec::new();
        stored.send_chunks(1000, |c| {
            sent.push(c.unwrap());
            true
        });
        assert_eq!(sent, in_memory);
        let mut whole = Reassembly::new(&state.header()).unwrap();
        for c in &sent {
            whole.push(&c.data).unwrap();
        }
        assert_eq!(whole.finish().unwrap(), state);

        let empty = StoredState::new(ModelState::default(), dir.path()).unwrap();
        assert!(empty.header().is_none());
        let mut calls = 0;
        empty.send_chunks(1000, |_| {
            calls += 1;
            true
        });
        assert_eq!(calls, 0);
    }
}
