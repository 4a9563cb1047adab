//! Dropout with its own seeded generator, so that a training run is reproducible (candle's
//! CPU random numbers cannot be seeded).
//!
//! Given one key per example (the distributed trainer sends them: epoch and index in the
//! epoch's plan), each example's mask comes from a generator seeded by (seed, key), drawn in
//! position order. So the mask of an example is the same whichever worker trains it, in
//! whatever batch, and after a resume: N workers compute one worker's update and a resumed run
//! reaches the uninterrupted one's weights, dropout on. Without keys, masks come from one
//! running stream.

use std::sync::Mutex;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::{ModelError, Result};
use super::mode::Mode;
use crate::rng::{stream, tag};

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1-p)`.
pub struct Dropout {
    p: f32,
    seed: u64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        Self {
            p,
            seed,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Applies dropout in [`Mode::Train`]; with `keys` (one per row of `x`'s first dimension)
    /// each row's mask is drawn from its own key, else all from the running stream.
    pub fn forward_keyed(&self, x: &Tensor, mode: Mode, keys: Option<&[u64]>) -> Result<Tensor> {
        if mode == Mode::Eval || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
        let draw = |rng: &mut ChaCha8Rng| if rng.gen::<f32>() < keep { scale } else { 0.0 };
        let mask: Vec<f32> = match keys {
            Some(keys) => {
                let rows = x.dims().first().copied().unwrap_or(0);
                if keys.len() != rows {
                    return Err(ModelError::Batch(format!(
                        "{} dropout keys for {rows} rows",
                        keys.len()
                    )));
                }
                let per_row = x.elem_count() / rows.max(1);
                let mut mask = Vec::with_capacity(x.elem_count());
                for &key in keys {
                    let mut rng = stream(&[tag::DROPOUT, self.seed, key]);
                    mask.extend((0..per_row).map(|_| draw(&mut rng)));
                }
                mask
            }
            None => {
                // A poisoned lock only means another thread panicked mid-draw; the generator
                // is still a valid generator.
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                (0..x.elem_count()).map(|_| draw(&mut rng)).collect()
            }
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.flatten_from(1).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn a_keyed_mask_depends_on_the_example_not_its_batch() {
        let d = Dropout::new(0.5, 9);
        let x = Tensor::ones((4, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let all = rows(
            &d.forward_keyed(&x, Mode::Train, Some(&[10, 11, 12, 13]))
                .unwrap(),
        );
        // Rows 12 and 10 again, in another batch, in another order, after other draws.
        let _ = d.forward_keyed(&x, Mode::Train, None).unwrap();
        let two = x.narrow(0, 0, 2).unwrap();
        let again = rows(&d.forward_keyed(&two, Mode::Train, Some(&[12, 10])).unwrap());
        assert_eq!(again[0], all[2]);
        assert_eq!(again[1], all[0]);
        assert_ne!(all[0], all[1]);
        let kept = all.concat().iter().filter(|&&v| v > 0.0).count();
        assert!((32..=64).contains(&kept), "{kept} of 96 kept at p = 0.5");
        assert!(all.concat().iter().all(|&v| v == 0.0 || v == 2.0));
        // A longer row (more padding steps) starts with the same mask.
        let long = Tensor::ones((1, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let l = rows(&d.forward_keyed(&long, Mode::Train, Some(&[11])).unwrap());
        assert_eq!(l[0][..24], all[1][..]);
        assert!(d.forward_keyed(&x, Mode::Train, Some(&[1])).is_err());
    }
}
