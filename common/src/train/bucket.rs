//! The batch plan of an epoch: random, but with sequences of similar length together.
//!
//! Padding is free inside the fused LSTM (it works on packed sequences) but not in the input
//! projection, which runs over the padded B × T tokens. So: shuffle everything, sort each run
//! of `BUCKET_BATCHES` batches' worth of examples by length, cut it into batches, and shuffle
//! the batches. Each example is in exactly one batch; only the last may be short.

use rand::seq::SliceRandom;
use rand::Rng;

/// Batches' worth of examples sorted together: large enough that batches are nearly uniform
/// in length, small enough that which examples share a batch stays random.
pub const BUCKET_BATCHES: usize = 16;

/// Indices into `lengths`, grouped into batches of `batch_size`.
pub fn bucket_batches(lengths: &[usize], batch_size: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    for run in order.chunks_mut(batch_size * BUCKET_BATCHES) {
        run.sort_by_key(|&i| lengths[i]);
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    batches.shuffle(rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_example_once_and_little_padding() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let lengths: Vec<usize> = (0..1000).map(|_| rng.gen_range(1..40)).collect();
        let batches = bucket_batches(&lengths, 32, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(batches.iter().filter(|b| b.len() != 32).count(), 1);
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
            .sum();
        let real: usize = lengths.iter().sum();
        assert!((padded as f64) < 1.15 * real as f64, "{padded} vs {real}");
        // Same seed, same plan.
        let again = bucket_batches(&lengths, 32, &mut ChaCha8Rng::seed_from_u64(7));
        assert_ne!(again, batches); // the generator above had advanced
        let a = bucket_batches(&lengths, 32, &mut ChaCha8Rng::seed_from_u64(1));
        let b = bucket_batches(&lengths, 32, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, b);
    }
}
