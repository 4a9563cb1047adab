//! The library every binary of the project shares: the data pipeline (load, mix, augment,
//! balance), the model and its training step, and the collective operations between workers.

pub mod augment;
pub mod collective;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod mix;
pub mod model;
pub mod pb;
pub mod pipeline;
pub mod resample;
pub mod rng;
pub mod train;

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
