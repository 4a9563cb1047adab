//! Classification metrics from a confusion matrix: accuracy, macro-F1, per-class precision,
//! recall and F1. Counts add up exactly across shards, so sharded evaluation equals
//! single-process evaluation.

use serde::{Deserialize, Serialize};

/// Row = true class, column = predicted class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// From a row-major matrix; `None` if its size is not `classes²`.
    pub fn from_counts(classes: usize, counts: Vec<u64>) -> Option<Self> {
        (counts.len() == classes * classes).then_some(Confusion { classes, counts })
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        if truth < self.classes && predicted < self.classes {
            self.counts[truth * self.classes + predicted] += 1;
        }
    }

    /// Adds another shard's counts; false (and nothing added) if the shapes differ.
    pub fn merge(&mut self, other: &Confusion) -> bool {
        if other.classes != self.classes {
            return false;
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        true
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The square block of classes `start..start + len`: one task's own confusion when a
    /// multi-task model's labels are one list (its examples are only ever predicted within it).
    pub fn block(&self, start: usize, len: usize) -> Confusion {
        let mut c = Confusion::new(len);
        for t in 0..len.min(self.classes.saturating_sub(start)) {
            for p in 0..len.min(self.classes - start) {
                c.counts[t * len + p] = self.cell(start + t, start + p);
            }
        }
        c
    }

    fn cell(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.classes + p]
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.cell(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Per class; F1 = 2tp / (2tp + fp + fn), 0 for a class never predicted right.
    pub fn per_class(&self, labels: &[String]) -> Vec<ClassMetrics> {
        (0..self.classes)
            .map(|c| {
                let tp = self.cell(c, c);
                let predicted: u64 = (0..self.classes).map(|t| self.cell(t, c)).sum();
                let support: u64 = (0..self.classes).map(|p| self.cell(c, p)).sum();
                ClassMetrics {
                    label: labels.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, predicted + support),
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 over all classes (as the PyTorch reference).
    pub fn macro_f1(&self) -> f64 {
        if self.classes == 0 {
            return 0.0;
        }
        let labels: Vec<String> = Vec::new();
        self.per_class(&labels).iter().map(|m| m.f1).sum::<f64>() / self.classes as f64
    }

    /// The classes that have no example in the truth (support 0), in order.
    pub fn absent(&self) -> Vec<usize> {
        (0..self.classes)
            .filter(|&c| (0..self.classes).all(|p| self.cell(c, p) == 0))
            .collect()
    }

    /// What to tell a user whose evaluation data lacks some of the model's classes, if it
    /// does: macro-F1 counts each as 0.
    pub fn absent_note(&self, labels: &[String]) -> Option<String> {
        let absent = self.absent();
        if absent.is_empty() {
            return None;
        }
        let names: Vec<&str> = absent
            .iter()
            .map(|&c| labels.get(c).map_or("?", String::as_str))
            .collect();
        Some(format!(
            "no example of {} {}: macro_f1 counts {} as 0 (macro_f1_present, over the classes \
             present, leaves {} out)",
            if names.len() == 1 { "class" } else { "classes" },
            names.join(", "),
            if names.len() == 1 { "it" } else { "each" },
            if names.len() == 1 { "it" } else { "them" },
        ))
    }

    /// Mean F1 over the classes present in the truth or the predictions, as scikit-learn's
    /// `f1_score(average="macro")` computes it: [`Confusion::macro_f1`] counts a class absent
    /// from both as 0.
    pub fn macro_f1_present(&self) -> f64 {
        let labels: Vec<String> = Vec::new();
        let present: Vec<f64> = self
            .per_class(&labels)
            .iter()
            .enumerate()
            .filter(|(c, m)| m.support > 0 || (0..self.classes).any(|t| self.cell(t, *c) > 0))
            .map(|(_, m)| m.f1)
            .collect();
        present.iter().sum::<f64>() / present.len().max(1) as f64
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_small_matrix() {
        // truth 0: predicted 0 twice, 1 once; truth 1: predicted 1 once.
        let mut c = Confusion::new(2);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1)] {
            c.add(t, p);
        }
        assert!((c.accuracy() - 0.75).abs() < 1e-12);
        let m = c.per_class(&["a".into(), "b".into()]);
        assert!((m[0].precision - 1.0).abs() < 1e-12 && (m[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m[1].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.macro_f1() - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn macro_f1_over_the_classes_present_leaves_out_a_class_seen_nowhere() {
        // Three classes; class 2 is neither in the truth nor predicted.
        let mut c = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1)] {
            c.add(t, p);
        }
        let two = (0.8 + 2.0 / 3.0) / 2.0;
        assert!((c.macro_f1() - two * 2.0 / 3.0).abs() < 1e-12);
        assert!((c.macro_f1_present() - two).abs() < 1e-12);
        assert_eq!(c.absent(), [2]);
        // Predicted but absent from the truth: present, with F1 0.
        c.add(1, 2);
        assert_eq!(c.absent(), [2]);
        let f1: Vec<f64> = c.per_class(&[]).iter().map(|m| m.f1).collect();
        assert!((c.macro_f1_present() - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    }

    #[test]
    fn shards_add_up_to_the_whole() {
        let pairs = [(0, 1), (1, 1), (2, 0), (2, 2), (1, 0)];
        let mut whole = Confusion::new(3);
        let (mut a, mut b) = (Confusion::new(3), Confusion::new(3));
        for (i, &(t, p)) in pairs.iter().enumerate() {
            whole.add(t, p);
            if i % 2 == 0 {
                a.add(t, p)
            } else {
                b.add(t, p)
            }
        }
        assert!(a.merge(&b));
        assert_eq!(a, whole);
        assert!(!a.merge(&Confusion::new(2)));
    }
}
