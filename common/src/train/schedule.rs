//! The learning rate's schedule over a run: constant, or Hugging Face's
//! `get_linear_schedule_with_warmup` (linear warm-up from 0 over the first steps, then linear
//! decay to 0 at the last planned step), which the fine-tuning reference uses. The position in
//! the schedule is the optimizer's step count, so it travels with the optimizer's state: in
//! checkpoints, `--resume` and a recovering or joining worker's state.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// Warm-up over `warmup_steps`, then decay to 0 at `total_steps`.
    Linear { warmup_steps: u64, total_steps: u64 },
}

impl LrSchedule {
    pub fn is_constant(&self) -> bool {
        *self == LrSchedule::Constant
    }

    /// What the learning rate is multiplied by in the optimizer's `step`-th update (1-based),
    /// as PyTorch's scheduler gives it: its first update uses the factor of position 0.
    pub fn factor(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear {
                warmup_steps,
                total_steps,
            } => {
                let at = step.saturating_sub(1);
                if at < warmup_steps {
                    at as f64 / warmup_steps.max(1) as f64
                } else {
                    let left = total_steps.saturating_sub(at) as f64;
                    (left / total_steps.saturating_sub(warmup_steps).max(1) as f64).max(0.0)
                }
            }
        }
    }

    /// The linear schedule over `total_steps`, warming up over `warmup` of them (a fraction,
    /// rounded down as the reference's `int(0.1 * steps)`).
    pub fn linear(total_steps: u64, warmup: f64) -> Self {
        LrSchedule::Linear {
            warmup_steps: (warmup * total_steps as f64) as u64,
            total_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_is_hugging_faces_schedule() {
        // transformers.get_linear_schedule_with_warmup(opt, 2, 10): the lr of updates 1..=11
        // is base × [0, 0.5, 1, 7/8, 6/8, 5/8, 4/8, 3/8, 2/8, 1/8, 0].
        let s = LrSchedule::linear(10, 0.2);
        assert_eq!(
            s,
            LrSchedule::Linear {
                warmup_steps: 2,
                total_steps: 10
            }
        );
        let got: Vec<f64> = (1..=12).map(|k| s.factor(k)).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0,
        ];
        assert_eq!(got, want);
        assert_eq!(LrSchedule::Constant.factor(7), 1.0);
        // No warm-up: the first update at the full rate.
        assert_eq!(LrSchedule::linear(4, 0.0).factor(1), 1.0);
        assert_eq!(LrSchedule::linear(4, 0.0).factor(4), 0.25);
    }
}
