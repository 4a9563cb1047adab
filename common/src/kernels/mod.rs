//! The compute kernels the model and the encoder share: loops compiled for the processor they
//! run on, the thread budget and the pool they split work on, the allocator's tuning for the
//! training loop, and single-threaded matrix products in place.

pub mod gemm;
pub mod malloc;
pub(crate) mod simd;
pub mod threads;

pub use threads::{set_threads, threads};
