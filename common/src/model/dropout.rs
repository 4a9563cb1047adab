//! Dropout with its own seeded generator, so that a training run is reproducible (candle's
//! CPU random numbers cannot be seeded).

use std::sync::Mutex;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::classifier::Mode;
use super::error::Result;

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1-p)`.
pub struct Dropout {
    p: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        Self {
            p,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    pub fn forward_t(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
        let mask: Vec<f32> = {
            // A poisoned lock only means another thread panicked mid-draw; the generator is
            // still a valid generator.
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count())
                .map(|_| if rng.gen::<f32>() < keep { scale } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}
