//! Encoder outputs kept for reuse. The original sentences come back every epoch, so their
//! vectors are kept for the whole run; augmented sentences are new every epoch, so theirs go
//! in a bounded first-in-first-out pool (`--encoder-cache-mb`): a sentence repeated within an
//! epoch (balancing copies) or across a few epochs is encoded once, without memory growing
//! with the number of epochs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Vectors of one sentence: tokens × width, row-major.
pub type Vectors = Arc<[f32]>;

pub struct FeatureCache {
    kept: HashMap<Box<[u32]>, Vectors>,
    pool: HashMap<Box<[u32]>, Vectors>,
    order: VecDeque<Box<[u32]>>,
    pool_bytes: usize,
    budget: usize,
}

impl FeatureCache {
    /// A cache whose pool of augmented sentences holds at most `budget` bytes of vectors.
    pub fn new(budget: usize) -> Self {
        Self {
            kept: HashMap::new(),
            pool: HashMap::new(),
            order: VecDeque::new(),
            pool_bytes: 0,
            budget,
        }
    }

    pub fn get(&self, ids: &[u32]) -> Option<Vectors> {
        self.kept.get(ids).or_else(|| self.pool.get(ids)).cloned()
    }

    /// Stores the vectors of `ids`; `keep` for an original sentence.
    pub fn insert(&mut self, ids: &[u32], vectors: Vectors, keep: bool) {
        if keep {
            if self.pool.remove(ids).is_some() {
                self.order.retain(|k| &**k != ids);
                self.pool_bytes -= bytes(&vectors);
            }
            self.kept.insert(ids.into(), vectors);
            return;
        }
        if self.kept.contains_key(ids) || self.pool.contains_key(ids) {
            return;
        }
        let size = bytes(&vectors);
        if size > self.budget {
            return;
        }
        while self.pool_bytes + size > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.pool.remove(&old) {
                self.pool_bytes -= bytes(&v);
            }
        }
        self.pool_bytes += size;
        self.order.push_back(ids.into());
        self.pool.insert(ids.into(), vectors);
    }

    /// Bytes of vectors held: (kept, pooled).
    pub fn bytes(&self) -> (usize, usize) {
        (self.kept.values().map(|v| bytes(v)).sum(), self.pool_bytes)
    }
}

fn bytes(v: &[f32]) -> usize {
    std::mem::size_of_val(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize) -> Vectors {
        vec![1.0; n].into()
    }

    #[test]
    fn the_pool_stays_within_its_budget_and_originals_stay() {
        let mut c = FeatureCache::new(3 * 4 * 10);
        c.insert(&[1], vectors(10), true);
        for i in 0..10u32 {
            c.insert(&[100 + i], vectors(10), false);
        }
        assert_eq!(c.bytes(), (40, 120));
        assert!(c.get(&[1]).is_some(), "an original is never evicted");
        assert!(
            c.get(&[100]).is_none(),
            "the oldest augmentation went first"
        );
        assert!(c.get(&[109]).is_some());
        c.insert(&[109], vectors(10), true);
        assert_eq!(c.bytes(), (80, 80), "promoted out of the pool");
        c.insert(&[7], vectors(1000), false);
        assert!(c.get(&[7]).is_none(), "larger than the whole budget");
    }
}
