//! The global plan of an epoch: length-bucketed global batches, each split as evenly as
//! possible across the workers, in count and in tokens. Every example of the epoch is in
//! exactly one worker's part of exactly one step; nothing is padded by repetition.

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

/// The examples of a global batch that `rank` of `world` trains on: every world-th, starting
/// at its rank, so the first `len % world` ranks get one more, as with [`part`]. A bucketed
/// batch is sorted by length, and a contiguous cut would hand the longest sentences to the
/// last rank every step, which the others would then wait for at every all-reduce (TREC, 2
/// workers: 10% more tokens on rank 1); dealt out like cards, the ranks' token counts differ
/// by less than one sentence's.
pub fn deal(batch: &[usize], world: usize, rank: usize) -> Vec<usize> {
    batch
        .iter()
        .skip(rank)
        .step_by(world.max(1))
        .copied()
        .collect()
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
    fn dealt_parts_have_even_sizes_and_tokens_and_cover_the_batch() {
        for (n, w) in [(32, 3), (0, 2), (1, 3), (5, 5), (7, 2), (100, 7)] {
            let batch: Vec<usize> = (0..n).map(|i| 1000 + i).collect();
            let parts: Vec<Vec<usize>> = (0..w).map(|r| deal(&batch, w, r)).collect();
            for (r, p) in parts.iter().enumerate() {
                assert_eq!(p.len(), part(n, w, r).len(), "{n} over {w}, rank {r}");
            }
            let mut all: Vec<usize> = parts.concat();
            all.sort_unstable();
            assert_eq!(all, batch);
        }
        // A batch sorted by length, as bucketing makes it: lengths 8..=11.
        let lengths: Vec<usize> = (0..32).map(|i| 8 + i / 8).collect();
        let batch: Vec<usize> = (0..32).collect();
        let tokens = |p: Vec<usize>| p.iter().map(|&i| lengths[i]).sum::<usize>();
        let (dealt0, dealt1) = (tokens(deal(&batch, 2, 0)), tokens(deal(&batch, 2, 1)));
        let (cut0, cut1) = (
            tokens(batch[part(32, 2, 0)].to_vec()),
            tokens(batch[part(32, 2, 1)].to_vec()),
        );
        assert_eq!((dealt0, dealt1), (152, 152));
        assert_eq!((cut0, cut1), (136, 168));
    }

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
