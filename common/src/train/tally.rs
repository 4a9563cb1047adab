//! A step's figures summed across the workers: the examples, loss and correct predictions of
//! the whole global batch, per group (a run's sources). Every replica then holds the figures
//! of every applied step, so an epoch that loses a worker still reports the whole epoch, and
//! not only what the survivors trained themselves.

use crate::collective::{Collective, CollectiveError};
use crate::model::ModelError;
use crate::pb;

/// How to count a step's local examples: `group_of[i]` is example i's group, of `groups`.
#[derive(Clone, Copy, Debug)]
pub struct Tally<'a> {
    pub group_of: &'a [u32],
    pub groups: usize,
}

/// One group's figures over a global batch (or an epoch of them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupTotals {
    pub examples: u64,
    pub loss_sum: f64,
    pub correct: u64,
}

impl GroupTotals {
    pub fn add(&mut self, other: &GroupTotals) {
        self.examples += other.examples;
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
    }

    /// A source's figures as the epoch report carries them (the wire's edge).
    pub fn to_pb(&self, source: u32) -> pb::SourceStats {
        pb::SourceStats {
            source,
            examples: self.examples,
            loss_sum: self.loss_sum,
            correct: self.correct,
        }
    }

    /// The source and its figures of a report's entry.
    pub fn from_pb(s: &pb::SourceStats) -> (u32, GroupTotals) {
        let t = GroupTotals {
            examples: s.examples,
            loss_sum: s.loss_sum,
            correct: s.correct,
        };
        (s.source, t)
    }
}

/// Errors of [`sum`]: the local examples did not match the tally, or the all-reduce failed.
pub(super) enum TallyError {
    Model(ModelError),
    Collective(CollectiveError),
}

/// The local examples' (loss, correct) figures per group, summed across the workers by `collective`: three
/// floats per group in one small all-reduce, every worker taking part (with no example too).
pub(super) fn sum(
    collective: &mut dyn Collective,
    tally: &Tally<'_>,
    outcomes: &[(f32, bool)],
) -> Result<Vec<GroupTotals>, TallyError> {
    if tally.group_of.len() != outcomes.len() {
        return Err(TallyError::Model(ModelError::Batch(format!(
            "{} groups for {} examples",
            tally.group_of.len(),
            outcomes.len()
        ))));
    }
    let mut sums = vec![0f32; 3 * tally.groups];
    for (&g, &(loss, correct)) in tally.group_of.iter().zip(outcomes) {
        let g = g as usize;
        if g >= tally.groups {
            return Err(TallyError::Model(ModelError::Batch(format!(
                "an example of group {g}, of {}",
                tally.groups
            ))));
        }
        sums[3 * g] += 1.0;
        sums[3 * g + 1] += loss;
        sums[3 * g + 2] += f32::from(u8::from(correct));
    }
    collective
        .all_reduce_sum(&mut sums)
        .map_err(TallyError::Collective)?;
    Ok(sums
        .chunks_exact(3)
        .map(|c| GroupTotals {
            // Counts are whole numbers well below 2^24 per step: exact in f32.
            examples: c[0].round() as u64,
            loss_sum: f64::from(c[1]),
            correct: c[2].round() as u64,
        })
        .collect())
}
