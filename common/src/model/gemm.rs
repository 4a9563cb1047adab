//! Single-threaded matrix products on row-major slices, straight on the `gemm` crate.
//!
//! Inside the fused op each direction runs on its own thread, so its products must not fan
//! out again (`Parallelism::None`); and they read and write the op's own buffers in place,
//! which candle's matmul (allocating its result) cannot.

use super::activation::Real;

/// How an operand is stored: as the matrix itself, or as its transpose (both row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `dst (m×n) = [dst +] op(lhs) (m×k) · op(rhs) (k×n)`, all row-major and contiguous.
///
/// Panics if a slice is shorter than its matrix: that is a bug in the caller, never input.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    lhs: &[T],
    lhs_op: Op,
    rhs: &[T],
    rhs_op: Op,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    let (lhs_rs, lhs_cs) = match lhs_op {
        Op::N => (k, 1),
        Op::T => (1, m),
    };
    let (rhs_rs, rhs_cs) = match rhs_op {
        Op::N => (n, 1),
        Op::T => (1, k),
    };
    // SAFETY: the assertion above keeps every index the strides reach inside the slices, and
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(rows: usize, cols: usize, a: &[f64]) -> Vec<f64> {
        let mut t = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn all_transpose_combinations_match_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|x| x as f64 * 0.3 - 1.0).collect();
        let b: Vec<f64> = (0..k * n).map(|x| (x as f64).sin()).collect();
        let want = naive(m, n, k, &a, &b);
        let at = transpose(m, k, &a);
        let bt = transpose(k, n, &b);
        for (l, lo, r, ro) in [
            (&a, Op::N, &b, Op::N),
            (&at, Op::T, &b, Op::N),
            (&a, Op::N, &bt, Op::T),
            (&at, Op::T, &bt, Op::T),
        ] {
            let mut c = vec![1.0; m * n];
            matmul(&mut c, (m, n, k), l, lo, r, ro, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 1.0 - y).abs() < 1e-12);
            }
            matmul(&mut c, (m, n, k), l, lo, r, ro, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12);
            }
        }
    }
}
