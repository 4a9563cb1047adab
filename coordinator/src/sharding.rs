//! The global plan of an epoch: length-bucketed global batches, each split as evenly as
//! possible across the workers. Every example of the epoch is in exactly one worker's part of
//! exactly one step; nothing is padded by repetition.

use std::ops::Range;

use common::data::Example;
use common::rng::{stream, tag};
use common::train::bucket_batches;

/// Global batches of `batch_size` examples (indices into `examples`); the last may be smaller.
pub fn global_batches(
    examples: &[Example],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
    bucket_batches(
        &lengths,
        batch_size.max(1),
        &mut stream(&[seed, tag::SHUFFLE, epoch, 1]),
    )
}

/// The part of `n` items that `rank` of `world` gets: the first `n % world` ranks one more.
pub fn part(n: usize, world: usize, rank: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..(start + len).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_even_and_cover_everything() {
        let sizes: Vec<usize> = (0..3).map(|r| part(32, 3, r).len()).collect();
        assert_eq!(sizes, vec![11, 11, 10]);
        for (n, w) in [(0, 2), (1, 3), (5, 5), (7, 2), (100, 7)] {
            let mut next = 0;
            for r in 0..w {
                let p = part(n, w, r);
                assert_eq!(p.start, next);
                next = p.end;
            }
            assert_eq!(next, n);
        }
    }
}
