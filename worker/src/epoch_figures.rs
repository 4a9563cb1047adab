//! What a worker has trained of its current epoch: the figures it reports when the epoch ends
//! (the `pb::EpochReport` is made only then, at the edge) and hands, with its weights, to the
//! survivors that adopt them after a regroup.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use common::pb;
use common::train::{GroupTotals, StepTimings};
use prost::Message;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochFigures {
    /// Examples, summed loss and right answers of every applied step's whole global batch
    /// (the step's tally sums them across the workers), so every worker's figures hold those
    /// of a worker lost later too.
    pub trained: GroupTotals,
    /// The same per training source.
    pub sources: BTreeMap<u32, GroupTotals>,
    pub steps: u64,
    /// Wall time of the steps, and its parts: forward and backward, all-reduce, update.
    pub train_seconds: f64,
    pub compute_seconds: f64,
    pub allreduce_seconds: f64,
    pub update_seconds: f64,
    /// A non-finite loss was seen: the run must stop.
    pub diverged: bool,
    /// With an encoder: sentences run through it, those its cache answered, and the seconds.
    pub encoded: u64,
    pub encode_cached: u64,
    pub encode_seconds: f64,
}

impl EpochFigures {
    /// Books one applied step (a step lost with its ring is trained again or adopted, so it
    /// is counted only here): its figures per source, its timings and its wall time.
    /// `local_loss_finite`: this worker's own examples had a finite loss.
    pub fn add_step(
        &mut self,
        per_source: &[GroupTotals],
        timings: &StepTimings,
        wall: Duration,
        local_loss_finite: bool,
    ) {
        self.compute_seconds += timings.compute.as_secs_f64();
        self.allreduce_seconds += timings.all_reduce.as_secs_f64();
        self.update_seconds += timings.update.as_secs_f64();
        let mut loss = 0.0;
        for (source, t) in per_source.iter().enumerate() {
            if t.examples == 0 {
                continue;
            }
            self.sources.entry(source as u32).or_default().add(t);
            self.trained.examples += t.examples;
            self.trained.correct += t.correct;
            loss += t.loss_sum;
        }
        self.trained.loss_sum += loss;
        self.train_seconds += wall.as_secs_f64();
        self.steps += 1;
        if !loss.is_finite() || !local_loss_finite {
            self.diverged = true;
        }
    }

    /// The figures that go with the weights in a regroup's state broadcast: what was trained.
    pub fn trained_bytes(&self) -> Vec<u8> {
        pb::EpochReport {
            examples: self.trained.examples,
            loss_sum: self.trained.loss_sum,
            correct: self.trained.correct,
            sources: self.source_stats(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Takes what the worker whose weights this one adopts had trained.
    pub fn adopt_trained(&mut self, bytes: &[u8]) -> Result<()> {
        let f = pb::EpochReport::decode(bytes).context("the broadcast figures are malformed")?;
        self.trained = GroupTotals {
            examples: f.examples,
            loss_sum: f.loss_sum,
            correct: f.correct,
        };
        self.sources = f.sources.iter().map(GroupTotals::from_pb).collect();
        Ok(())
    }

    /// The report of these figures; the caller adds who reports, the validation part, the
    /// bytes sent, memory and weights.
    pub fn to_report(&self) -> pb::EpochReport {
        pb::EpochReport {
            examples: self.trained.examples,
            loss_sum: self.trained.loss_sum,
            correct: self.trained.correct,
            train_seconds: self.train_seconds,
            allreduce_seconds: self.allreduce_seconds,
            steps: self.steps,
            diverged: self.diverged,
            sources: self.source_stats(),
            encoded: self.encoded,
            encode_cached: self.encode_cached,
            encode_seconds: self.encode_seconds,
            compute_seconds: self.compute_seconds,
            update_seconds: self.update_seconds,
            ..Default::default()
        }
    }

    /// Sorted by source, as the coordinator reads them.
    fn source_stats(&self) -> Vec<pb::SourceStats> {
        self.sources
            .iter()
            .map(|(&source, t)| t.to_pb(source))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(examples: u64, loss_sum: f64, correct: u64) -> GroupTotals {
        GroupTotals {
            examples,
            loss_sum,
            correct,
        }
    }

    #[test]
    fn steps_add_up_per_source_and_survive_the_broadcast() {
        let mut f = EpochFigures::default();
        let timings = StepTimings {
            compute: Duration::from_millis(3),
            all_reduce: Duration::from_millis(2),
            update: Duration::from_millis(1),
        };
        let wall = Duration::from_millis(7);
        f.add_step(
            &[totals(4, 2.0, 3), totals(0, 0.0, 0), totals(2, 1.5, 1)],
            &timings,
            wall,
            true,
        );
        f.add_step(&[totals(1, 0.5, 1)], &timings, wall, true);
        assert_eq!(f.trained, totals(7, 4.0, 5));
        assert_eq!(f.sources.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(f.sources[&0], totals(5, 2.5, 4));
        assert_eq!(f.steps, 2);
        assert!(!f.diverged);
        let report = f.to_report();
        assert_eq!((report.examples, report.correct, report.steps), (7, 5, 2));
        assert_eq!(
            report.sources.iter().map(|s| s.source).collect::<Vec<_>>(),
            [0, 2]
        );
        assert!((report.train_seconds - 0.014).abs() < 1e-12);

        let mut other = EpochFigures {
            steps: 9,
            ..Default::default()
        };
        other.adopt_trained(&f.trained_bytes()).unwrap();
        assert_eq!((other.trained, &other.sources), (f.trained, &f.sources));
        assert_eq!(other.steps, 9, "only what was trained is adopted");
        assert!(other.adopt_trained(&[0xff, 0xff]).is_err());

        f.add_step(&[totals(1, f64::NAN, 0)], &timings, wall, true);
        assert!(f.diverged);
        let mut g = EpochFigures::default();
        g.add_step(&[totals(1, 0.1, 0)], &timings, wall, false);
        assert!(g.diverged, "a non-finite local loss diverges the run too");
    }
}
