//! How a buffer is cut among the ranks: the ring's reduce-scatter and the shared-memory path
//! must cut it the same way, so both take the cut from here.

use std::ops::Range;

/// The index range of chunk `c` when `len` elements are cut into `n` near-equal chunks.
pub(super) fn chunk_range(len: usize, n: usize, c: usize) -> Range<usize> {
    let (base, rem) = (len / n, len % n);
    let start = c * base + c.min(rem);
    start..start + base + usize::from(c < rem)
}
