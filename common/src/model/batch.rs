//! A batch of token-id sequences, right-padded with PAD (0), with their lengths and labels.

use super::error::{ModelError, Result};

/// Token id of padding.
pub const PAD: u32 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    ids: Vec<u32>,
    lengths: Vec<usize>,
    labels: Vec<u32>,
    steps: usize,
    /// Which rows are augmentations (empty: none), for the encoder's cache.
    augmented: Vec<bool>,
    /// One dropout key per row (empty: none), see [`Batch::with_keys`].
    keys: Vec<u64>,
    /// The model's head that scores this batch (see [`Batch::with_head`]).
    head: usize,
}

impl Batch {
    /// A labelled batch; every sequence must have at least one token.
    pub fn new(seqs: &[&[u32]], labels: &[u32]) -> Result<Self> {
        if seqs.len() != labels.len() {
            return Err(ModelError::Batch(format!(
                "{} sequences but {} labels",
                seqs.len(),
                labels.len()
            )));
        }
        let mut batch = Self::unlabeled(seqs)?;
        batch.labels = labels.to_vec();
        Ok(batch)
    }

    /// A batch without labels, for prediction.
    pub fn unlabeled(seqs: &[&[u32]]) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::Batch("empty batch".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::Batch(format!("sequence {i} has no tokens")));
        }
        let steps = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = vec![PAD; seqs.len() * steps];
        for (row, s) in ids.chunks_exact_mut(steps).zip(seqs) {
            row[..s.len()].copy_from_slice(s);
        }
        Ok(Self {
            ids,
            lengths: seqs.iter().map(|s| s.len()).collect(),
            labels: Vec::new(),
            steps,
            augmented: Vec::new(),
            keys: Vec::new(),
            head: 0,
        })
    }

    /// Marks which rows are augmentations of a training sentence (one flag per row).
    pub fn with_augmented(mut self, flags: &[bool]) -> Result<Self> {
        if flags.len() != self.len() {
            return Err(ModelError::Batch(format!(
                "{} augmentation flags for {} rows",
                flags.len(),
                self.len()
            )));
        }
        self.augmented = flags.to_vec();
        Ok(self)
    }

    /// Gives every row a key from which dropout draws that row's mask, so that the mask
    /// depends on the example alone, not on the batch it is in or what was drawn before.
    pub fn with_keys(mut self, keys: &[u64]) -> Result<Self> {
        if keys.len() != self.len() {
            return Err(ModelError::Batch(format!(
                "{} dropout keys for {} rows",
                keys.len(),
                self.len()
            )));
        }
        self.keys = keys.to_vec();
        Ok(self)
    }

    /// Scores the batch with the model's head `head` (default 0, the first).
    pub fn with_head(mut self, head: usize) -> Self {
        self.head = head;
        self
    }

    pub fn head(&self) -> usize {
        self.head
    }

    /// The tokens of row `i`, without padding.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.steps..i * self.steps + self.lengths[i]]
    }

    /// The rows' dropout keys, if the batch has them.
    pub fn keys(&self) -> Option<&[u64]> {
        (!self.keys.is_empty()).then_some(self.keys.as_slice())
    }

    /// Whether row `i` is an augmentation (false when the batch does not say).
    pub fn augmented(&self, i: usize) -> bool {
        self.augmented.get(i).copied().unwrap_or(false)
    }

    /// Padded ids, B × T row-major.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Empty for an unlabelled batch.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Rows (B).
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Never true: a batch has at least one row.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The padded length (T).
    pub fn steps(&self) -> usize {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_on_the_right() -> Result<()> {
        let b = Batch::new(&[&[5, 6, 7], &[8]], &[1, 0])?;
        assert_eq!(b.ids(), &[5, 6, 7, 8, 0, 0]);
        assert_eq!(b.lengths(), &[3, 1]);
        assert_eq!(b.steps(), 3);
        Ok(())
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Batch::new(&[&[1]], &[]).is_err());
        assert!(Batch::new(&[&[1], &[]], &[0, 0]).is_err());
        assert!(Batch::unlabeled(&[]).is_err());
    }
}
