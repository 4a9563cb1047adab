//! GELU's kernel with the exact (erf) form BERT uses, fast on the CPU: candle's `gelu_erf`
//! calls a scalar `erff` per element, a fifth of the encoder's time on this machine. Here erf
//! is the rational approximation of Eigen and XLA for f32 (only multiplications and additions,
//! so the loop vectorises), within 1e-6 of the true function. The op around it, with its
//! backward, is [`super::fused::gelu_erf`].

/// erf for f32 (Eigen's `generic_fast_erf_float`): odd rational function on [−4, 4], ±1
/// beyond, where erf differs from ±1 by less than 2e-8.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_5e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

#[inline(always)]
fn gelu_kernel((dst, src): (&mut [f32], &[f32])) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

crate::kernels::simd::multiversion!(pub(crate) fn gelu_block(io: (&mut [f32], &[f32])) => gelu_kernel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_a_millionth_of_the_true_function() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f64 * 1e-4;
            let want = libm::erf(x);
            worst = worst.max((f64::from(erf(x as f32)) - want).abs());
        }
        assert!(worst < 1e-6, "worst error {worst}");
    }
}
