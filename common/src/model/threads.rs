//! How many compute threads the model uses.
//!
//! Two parties decide: candle's CPU matrix products, which read `RAYON_NUM_THREADS` on every
//! call (`candle_core::utils::get_num_threads`) and run on rayon's global pool; and the fused
//! LSTM op, which runs its two directions on two threads of that same pool when more than one
//! thread is allowed. [`set_threads`] sets both; call it once at start-up, before any other
//! thread exists (it writes an environment variable).

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Use `n` compute threads (at least one) for candle's products and the fused op.
///
/// The global rayon pool can only be sized once per process: if something already built it,
/// it is kept, and only the number of threads each operation asks for changes.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

/// The number of compute threads in use: what [`set_threads`] set, or else candle's default
/// (`RAYON_NUM_THREADS`, or the physical cores).
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => candle_core::utils::get_num_threads(),
        n => n,
    }
}
