//! The packed-sequence layout the fused LSTM works in.
//!
//! Rows of a right-padded batch are ordered by decreasing length, so that at step `s` the rows
//! still running are a prefix `0..active[s]` of that order. The per-step buffers of the op
//! (gates, cells, hidden states) are then stored block after block, `active[s]` rows each, with
//! no padding at all: padding never enters a product and can never change a result. The
//! reverse direction uses the same blocks, reading each row's valid tokens back to front.

use super::error::{ModelError, Result};

/// Which way a recurrence walks through each sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Tokens `0, 1, …, len-1`.
    Forward,
    /// Tokens `len-1, …, 1, 0` of the valid part of each row.
    Reverse,
}

/// Where each row of a padded batch lives in the packed per-step blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPlan {
    steps: usize,
    lengths: Vec<usize>,
    order: Vec<usize>,
    active: Vec<usize>,
    offsets: Vec<usize>,
}

impl PackPlan {
    /// A plan for a batch padded to `steps` tokens whose row `b` has `lengths[b]` valid ones.
    pub fn new(lengths: &[usize], steps: usize) -> Result<Self> {
        if let Some(&bad) = lengths.iter().find(|&&l| l > steps) {
            return Err(ModelError::Batch(format!(
                "sequence length {bad} exceeds the padded length {steps}"
            )));
        }
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        // Stable, so that equal lengths keep batch order and results are reproducible.
        order.sort_by_key(|&b| std::cmp::Reverse(lengths[b]));
        let active: Vec<usize> = (0..steps)
            .map(|s| lengths.iter().filter(|&&l| l > s).count())
            .collect();
        let mut offsets = Vec::with_capacity(steps + 1);
        offsets.push(0);
        for &n in &active {
            offsets.push(offsets[offsets.len() - 1] + n);
        }
        Ok(Self {
            steps,
            lengths: lengths.to_vec(),
            order,
            active,
            offsets,
        })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// The padded length `T`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Valid tokens of row `b`.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Rows by decreasing length: packed row `i` of any step is batch row `order()[i]`.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Rows still running at step `s`.
    pub fn active(&self, s: usize) -> usize {
        self.active.get(s).copied().unwrap_or(0)
    }

    /// First packed row of step `s` (`s == steps()` gives the total).
    pub fn offset(&self, s: usize) -> usize {
        self.offsets[s]
    }

    /// Valid tokens in the whole batch: the number of packed rows.
    pub fn tokens(&self) -> usize {
        self.offsets[self.steps]
    }

    /// The token position that packed row `i` of step `s` reads, walking in `dir`.
    pub fn position(&self, dir: Direction, s: usize, i: usize) -> usize {
        match dir {
            Direction::Forward => s,
            Direction::Reverse => self.lengths[self.order[i]] - 1 - s,
        }
    }

    /// Calls `f(packed_row, batch_row, position)` for every valid token, in packed order,
    /// walking in `dir`.
    pub fn for_each_token(&self, dir: Direction, mut f: impl FnMut(usize, usize, usize)) {
        for s in 0..self.steps {
            let base = self.offsets[s];
            for i in 0..self.active[s] {
                f(base + i, self.order[i], self.position(dir, s, i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_shrink_as_rows_end() -> Result<()> {
        let plan = PackPlan::new(&[2, 4, 1, 4], 4)?;
        assert_eq!(plan.order(), &[1, 3, 0, 2]);
        assert_eq!(
            (0..4).map(|s| plan.active(s)).collect::<Vec<_>>(),
            [4, 3, 2, 2]
        );
        assert_eq!(plan.tokens(), 11);
        assert_eq!(plan.offset(2), 7);
        // Row 0 (length 2) is packed row 2; reading backwards it starts at token 1.
        assert_eq!(plan.position(Direction::Reverse, 0, 2), 1);
        assert_eq!(plan.position(Direction::Reverse, 1, 2), 0);
        Ok(())
    }

    #[test]
    fn rejects_lengths_beyond_padding() {
        assert!(PackPlan::new(&[3, 5], 4).is_err());
    }
}
