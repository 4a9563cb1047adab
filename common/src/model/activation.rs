//! The element-wise half of an LSTM step, fused: gate non-linearities, cell and hidden update
//! (forward), and their derivatives (backward), for a whole block of rows at once.
//!
//! These loops run once per time step on every gate of every row, so in f32 they use a
//! branch-free exponential that the compiler vectorises, compiled for AVX-512 or AVX2 when the
//! processor has them (chosen at run time, so the binary stays portable). f64 uses the
//! standard library's functions: it exists for gradient checks, where accuracy is the point.

use num_traits::Float;

use crate::kernels::simd::multiversion;

/// The element types the fused LSTM runs on.
pub trait Real:
    Float + std::ops::AddAssign + std::ops::MulAssign + candle_core::WithDType + Send + Sync + 'static
{
    fn act_sigmoid(x: Self) -> Self;
    fn act_tanh(x: Self) -> Self;
}

impl Real for f64 {
    #[inline(always)]
    fn act_sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    #[inline(always)]
    fn act_tanh(x: f64) -> f64 {
        x.tanh()
    }
}

impl Real for f32 {
    #[inline(always)]
    fn act_sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + fast_exp(-x))
    }
    #[inline(always)]
    fn act_tanh(x: f32) -> f32 {
        // Absolute error ~1e-7 near 0, which is what an LSTM state needs (relative error of
        // tiny values does not matter there).
        1.0 - 2.0 / (1.0 + fast_exp(2.0 * x))
    }
}

/// e^x within a couple of ulp (Cephes' polynomial), without branches or calls so that loops
/// over it vectorise. Inputs are clamped to ±87, where f32 saturates anyway for our uses.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer in the default mode.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 87.0 { 87.0 } else { x };
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    // The integer n also sits in k's low mantissa bits; reading it from there instead of
    // `n as i32` (saturating, NaN-checking) keeps the loop vectorised.
    let i = (k.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits((i.wrapping_add(127) << 23) as u32)
}

/// Forward of one step for `n` rows. `gates` holds the pre-activations less the bias (input
/// projection plus recurrent product, order i, f, g, o) and is overwritten with the
/// activations, which the backward pass reuses. `c_prev` is `None` at the first step (zero
/// state).
pub struct ForwardBlock<'a, T> {
    pub hidden: usize,
    /// 4H, added to every row.
    pub bias: &'a [T],
    pub gates: &'a mut [T],
    pub c_prev: Option<&'a [T]>,
    pub cells: &'a mut [T],
    pub tanh_cells: &'a mut [T],
    pub h: &'a mut [T],
}

/// Backward of one step for `n` rows: from `dh` (gradient reaching h_t) and the running `dc`
/// (gradient reaching c_t from step t+1, replaced by the one reaching c_{t-1}), the gradient of
/// the gate pre-activations, written over the gate activations in `gates` (each is read only
/// to compute its own gradient, and the trace is not needed again).
pub struct BackwardBlock<'a, T> {
    pub hidden: usize,
    pub gates: &'a mut [T],
    pub tanh_cells: &'a [T],
    pub c_prev: Option<&'a [T]>,
    pub dh: &'a [T],
    pub dc: &'a mut [T],
}

#[inline(always)]
fn forward_impl<T: Real>(b: ForwardBlock<'_, T>) {
    let hd = b.hidden;
    for (row, gates) in b.gates.chunks_exact_mut(4 * hd).enumerate() {
        let (if_gates, rest) = gates.split_at_mut(2 * hd);
        let (g_gate, o_gate) = rest.split_at_mut(hd);
        let (if_bias, rest) = b.bias.split_at(2 * hd);
        let (g_bias, o_bias) = rest.split_at(hd);
        for (x, &c) in if_gates.iter_mut().zip(if_bias) {
            *x = T::act_sigmoid(*x + c);
        }
        for (x, &c) in g_gate.iter_mut().zip(g_bias) {
            *x = T::act_tanh(*x + c);
        }
        for (x, &c) in o_gate.iter_mut().zip(o_bias) {
            *x = T::act_sigmoid(*x + c);
        }
        let (i_gate, f_gate) = if_gates.split_at(hd);
        let span = row * hd..(row + 1) * hd;
        let c = &mut b.cells[span.clone()];
        match b.c_prev {
            Some(prev) => {
                let prev = &prev[span.clone()];
                for k in 0..hd {
                    c[k] = f_gate[k] * prev[k] + i_gate[k] * g_gate[k];
                }
            }
            None => {
                for k in 0..hd {
                    c[k] = i_gate[k] * g_gate[k];
                }
            }
        }
        let tc = &mut b.tanh_cells[span.clone()];
        let h = &mut b.h[span];
        for k in 0..hd {
            tc[k] = T::act_tanh(c[k]);
            h[k] = o_gate[k] * tc[k];
        }
    }
}

#[inline(always)]
fn backward_impl<T: Real>(b: BackwardBlock<'_, T>) {
    let hd = b.hidden;
    let one = T::one();
    for (row, gates) in b.gates.chunks_exact_mut(4 * hd).enumerate() {
        // Activations in, gradients out, element by element.
        let (di, rest) = gates.split_at_mut(hd);
        let (df, rest) = rest.split_at_mut(hd);
        let (dg, dout) = rest.split_at_mut(hd);
        let span = row * hd..(row + 1) * hd;
        let tc = &b.tanh_cells[span.clone()];
        let dh = &b.dh[span.clone()];
        let dc = &mut b.dc[span.clone()];
        for k in 0..hd {
            let (i, f, g, o) = (di[k], df[k], dg[k], dout[k]);
            let dct = dc[k] + dh[k] * o * (one - tc[k] * tc[k]);
            dout[k] = dh[k] * tc[k] * o * (one - o);
            di[k] = dct * g * i * (one - i);
            dg[k] = dct * i * (one - g * g);
            dc[k] = dct * f;
            // df needs c_{t-1}; filled below so this loop has no branch.
            df[k] = dct * f * (one - f);
        }
        match b.c_prev {
            Some(prev) => {
                let prev = &prev[span];
                for k in 0..hd {
                    df[k] *= prev[k];
                }
            }
            None => df.iter_mut().for_each(|x| *x = T::zero()),
        }
    }
}

multiversion!(pub fn forward<T: Real>(b: ForwardBlock<'_, T>) => forward_impl);
multiversion!(pub fn backward<T: Real>(b: BackwardBlock<'_, T>) => backward_impl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_f32_functions_match_std() {
        let mut worst = (0.0f32, 0.0f32, 0.0f32);
        for k in -4000..=4000 {
            let x = k as f32 * 0.01;
            let e = (fast_exp(x) - x.exp()).abs() / x.exp();
            let s = (<f32 as Real>::act_sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs();
            let t = (<f32 as Real>::act_tanh(x) - x.tanh()).abs();
            worst = (worst.0.max(e), worst.1.max(s), worst.2.max(t));
        }
        assert!(worst.0 < 1e-6, "exp relative error {}", worst.0);
        assert!(worst.1 < 1e-6, "sigmoid error {}", worst.1);
        assert!(worst.2 < 1e-6, "tanh error {}", worst.2);
        assert_eq!(<f32 as Real>::act_tanh(200.0), 1.0);
        assert_eq!(<f32 as Real>::act_tanh(-200.0), -1.0);
        assert!(<f32 as Real>::act_sigmoid(-200.0) < 1e-30);
    }
}
