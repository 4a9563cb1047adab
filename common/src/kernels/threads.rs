//! How many compute threads the model uses.
//!
//! Three parties decide: candle's CPU matrix products, which read `RAYON_NUM_THREADS` on every
//! call (`candle_core::utils::get_num_threads`) and run on rayon's global pool; candle's
//! element-wise ops, which above 64k elements fan out to a pool of its own sized once from
//! `CANDLE_NUM_THREADS`; and the fused LSTM op and Adam, which split their work in two on
//! rayon's global pool when more than one thread is allowed (see [`join`]).
//!
//! Candle's element-wise pool spins for a long while (25,000 pause instructions, about a
//! millisecond) after each job before it sleeps. Between our two busy direction threads on a
//! two-core machine that spinning took a core away and made two threads slower than one. The
//! element-wise work left in our graph is small, so [`set_threads`] gives that pool no threads
//! at all (`CANDLE_NUM_THREADS=1`): all parallelism is ours.
//!
//! Call [`set_threads`] once at start-up, before any other thread exists and before the first
//! tensor operation (it writes environment variables that candle reads once). It also tunes
//! the allocator for the training loop (see [`super::malloc`]).

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
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    super::malloc::keep_freed_memory();
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

/// Runs `a` and `b` at the same time on rayon's pool.
///
/// Measured against a scoped thread spawned per call (TREC, 2 threads, machine to ourselves):
/// 3,690 against 3,400 samples/s. On a machine busy with other work the pool's idle threads
/// spin a little before sleeping, which costs more there, but a training pod has its cores.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    RA: Send,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    rayon::join(a, b)
}
