//! The library every binary of the project shares: the data pipeline (load, mix, augment,
//! balance), the model and its training step, the compute kernels under both, and the collective
//! operations between workers.

pub mod augment;
pub mod balance_augment;
pub mod collective;
pub mod data;
pub mod device;
pub mod encoder;
pub mod error;
pub mod fsutil;
pub mod idle;
pub mod kernels;
pub mod memory;
pub mod metrics;
pub mod mix;
pub mod model;
pub mod pb;
pub mod pipeline;
pub mod resample;
pub mod rng;
pub mod shutdown;
pub mod state_transfer;
pub mod tls;
pub mod train;
pub mod values;

pub use error::DataError;

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes; 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Memory in use on `device` as its driver reports it (the allocations, and what the allocator
/// keeps for reuse; on a GPU shared with other processes, theirs too), in bytes; `None` on the
/// CPU.
pub fn device_memory_in_use(device: &candle_core::Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, total)| total.saturating_sub(free) as u64),
        _ => None,
    }
}

/// This machine's host name (Linux), or `unknown`: how workers and run locks name their host.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Compares secrets (join tokens) without an early exit, so timing does not reveal how much
/// matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

/// Why no join token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("the token file {0} is empty")]
    Empty(String),
    #[error("no join token: give --token-file FILE or set SMALLTEXT_TOKEN")]
    Missing,
    #[error("SMALLTEXT_TOKEN is empty: set it to the join token, or give --token-file FILE")]
    EmptyVariable,
    #[error(
        "the join token ({from}) is {len} bytes; it needs at least {MIN_TOKEN_BYTES}, or it can \
         be guessed: make one with `head -c 32 /dev/urandom | base64 > FILE`"
    )]
    TooShort { from: String, len: usize },
}

/// The shortest join token accepted: 16 bytes, 128 bits when random.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Why the permissions of a token file are too open, if they are: anyone but its owner and
/// the reading process's own group may read it, or anyone but its owner may change it. The
/// group exception is Kubernetes': a Secret volume under `fsGroup` is group-readable by the
/// pod's own group whatever `defaultMode` says.
pub fn token_file_too_open(meta: &std::fs::Metadata, own_group: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    let others = mode & 0o007 != 0;
    let group_writes = mode & 0o020 != 0;
    let foreign_group_reads = mode & 0o040 != 0 && meta.gid() != own_group;
    (others || group_writes || foreign_group_reads).then(|| format!("{mode:04o}"))
}

/// The join token: from `file` (a trailing newline ignored), else from `SMALLTEXT_TOKEN`;
/// never empty.
pub fn read_token(file: Option<&std::path::Path>) -> Result<String, TokenError> {
    let Some(path) = file else {
        return match std::env::var("SMALLTEXT_TOKEN") {
            Ok(token) if token.is_empty() => Err(TokenError::EmptyVariable),
            Ok(token) => long_enough(token, "SMALLTEXT_TOKEN"),
            Err(_) => Err(TokenError::Missing),
        };
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
        path: shown.clone(),
        cause: source,
    })?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.is_empty() {
        return Err(TokenError::Empty(shown));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        // SAFETY: getegid has no preconditions and cannot fail.
        let own_group = unsafe { libc::getegid() };
        if let Some(mode) = token_file_too_open(&meta, own_group) {
            tracing::warn!(
                "the token file {shown} has mode {mode}: others than its owner can read or \
                 change the join token; `chmod 600 {shown}`"
            );
        }
    }
    long_enough(token, &shown)
}

fn long_enough(token: String, from: &str) -> Result<String, TokenError> {
    if token.len() < MIN_TOKEN_BYTES {
        return Err(TokenError::TooShort {
            from: from.to_string(),
            len: token.len(),
        });
    }
    Ok(token)
}
