//! A state a worker sends (an epoch's weights and optimizer state, or a checkpoint's), kept in
//! files of the run directory as its chunks arrive instead of in the coordinator's memory: a
//! fine-tuned encoder's state is 270 MB at every epoch's end. The files are unnamed, so a
//! coordinator that dies leaves nothing behind; saving copies them into the model directory
//! and the checkpoint ([`SpoolFile::copy_to`]), and [`crate::model_dir::verify`] reads them
//! once for the hashes' check and the non-finite values'.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::pb;
use common::state_transfer::{Part, Reassembly, TransferError};
use sha2::{Digest, Sha256};

/// Bytes read or copied at a time.
const BLOCK: usize = 1 << 20;

/// One part of a received state (weights, or optimizer state) in an unnamed file.
#[derive(Clone, Debug, Default)]
pub struct SpoolFile {
    /// Where the file is made when the first byte arrives (nothing for an empty part).
    dir: PathBuf,
    file: Option<Arc<std::fs::File>>,
    /// Why a byte could not be kept (a full disk, say): the bytes are counted and hashed on,
    /// and the error is told where they are used ([`SpoolFile::copy_to`]).
    error: Option<Arc<std::io::Error>>,
    len: u64,
    /// Of the bytes kept so far.
    sha256: Sha256,
}

impl SpoolFile {
    fn new(dir: &Path) -> Self {
        SpoolFile {
            dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some bytes could not be kept.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The SHA-256 of the bytes, in hex.
    pub fn sha256(&self) -> String {
        hex::encode(self.sha256.clone().finalize())
    }

    /// A reader of the bytes from the start (each part's reader is independent of the others).
    pub fn reader(&self) -> SpoolReader<'_> {
        SpoolReader { spool: self, at: 0 }
    }

    /// Writes every byte to `w`, a block at a time.
    pub fn copy_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        std::io::copy(&mut self.reader(), w).map(|_| ())
    }
}

impl Part for SpoolFile {
    fn kept(&self) -> u64 {
        self.len
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            let written = match &self.file {
                Some(f) => Ok(f.clone()),
                None => tempfile::tempfile_in(&self.dir).map(Arc::new),
            }
            .and_then(|f| f.write_all_at(bytes, self.len).map(|()| f));
            match written {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.error = Some(Arc::new(std::io::Error::new(
                        e.kind(),
                        format!(
                            "keeping the state a worker sent in {}: {e}",
                            self.dir.display()
                        ),
                    )));
                    self.file = None;
                }
            }
        }
        self.len += bytes.len() as u64;
        self.sha256.update(bytes);
    }
}

/// Reads a [`SpoolFile`] from its start.
pub struct SpoolReader<'a> {
    spool: &'a SpoolFile,
    at: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.spool.error {
            return Err(std::io::Error::new(e.kind(), e.to_string()));
        }
        let left = self.spool.len - self.at;
        let n = (buf.len() as u64).min(left).min(BLOCK as u64) as usize;
        let Some(file) = &self.spool.file else {
            return Ok(0);
        };
        if n == 0 {
            return Ok(0);
        }
        file.read_exact_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A worker's weights and optimizer state, each in a [`SpoolFile`] (both empty when the
/// worker sent none).
#[derive(Clone, Debug, Default)]
pub struct SpooledState {
    pub weights: SpoolFile,
    pub optimizer: SpoolFile,
}

impl SpooledState {
    /// Ready to receive the state `header` announces into files made in `dir`.
    pub fn reassembly(
        header: &pb::StateHeader,
        dir: &Path,
    ) -> Result<Reassembly<SpoolFile>, TransferError> {
        Reassembly::into_parts(header, SpoolFile::new(dir), SpoolFile::new(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::state_transfer::ModelState;

    /// The chunks of a state land in two files that read back as the bytes sent, with their
    /// hashes; a state that is not the announced one is refused as in memory.
    #[test]
    fn a_state_received_into_files_reads_back_as_sent() {
        let dir = tempfile::tempdir().unwrap();
        let weights: Vec<u8> = (0..3_000_000u32).map(|i| ((i * 7) >> 3) as u8).collect();
        let optimizer: Vec<u8> = (0..1_234_567u32).map(|i| ((i * 13) >> 5) as u8).collect();
        let state = ModelState::new(weights.clone(), optimizer.clone());
        let mut r = SpooledState::reassembly(&state.header(), dir.path()).unwrap();
        state.outgoing().send_chunks(1 << 20, |c| {
            r.push(&c.data).unwrap();
            true
        });
        let (w, o) = r.finish_parts().unwrap();
        let back = |f: &SpoolFile| {
            let mut out = Vec::new();
            f.copy_to(&mut out).unwrap();
            out
        };
        assert_eq!(back(&w), weights);
        assert_eq!(back(&o), optimizer);
        assert_eq!(w.sha256(), hex::encode(Sha256::digest(&weights)));
        assert_eq!(o.sha256(), hex::encode(Sha256::digest(&optimizer)));
        // Unnamed: the run directory shows nothing of them.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut bad = SpooledState::reassembly(&state.header(), dir.path()).unwrap();
        bad.push(&weights[..100]).unwrap();
        assert!(matches!(
            bad.finish_parts(),
            Err(TransferError::Truncated { .. })
        ));
        let empty = SpooledState::reassembly(&ModelState::default().header(), dir.path())
            .unwrap()
            .finish_parts()
            .unwrap();
        assert!(empty.0.is_empty() && empty.1.is_empty() && empty.0.file.is_none());
    }
}
