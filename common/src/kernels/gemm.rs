//! Single-threaded matrix products on row-major slices, straight on the `gemm` crate.
//!
//! Inside the fused op each direction runs on its own thread, so its products must not fan
//! out again (`Parallelism::None`); and they read and write the op's own buffers in place,
//! which candle's matmul (allocating its result) cannot.

/// The element types the products run on (f32, and f64 for gradient checks).
pub trait Element: num_traits::Float + 'static {}
impl<T: num_traits::Float + 'static> Element for T {}

/// How an operand is stored: as the matrix itself, or as its transpose (both row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// A row-major operand: `data` holds it (or its transpose, under [`Op::T`]) with rows `ld`
/// elements apart, so that a block of columns of a wider matrix can be used in place.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub op: Op,
    pub ld: usize,
}

impl<'a, T> Mat<'a, T> {
    /// `data` as the whole matrix with `cols` columns as stored.
    pub fn n(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            op: Op::N,
            ld: cols,
        }
    }

    /// `data` as the transpose of the matrix stored with `cols` columns.
    pub fn t(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            op: Op::T,
            ld: cols,
        }
    }

    /// (row stride, column stride) of the `rows × cols` matrix this operand stands for, after
    /// checking that `data` holds all of it.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        let (stored_rows, stored_cols, rs, cs) = match self.op {
            Op::N => (rows, cols, self.ld, 1),
            Op::T => (cols, rows, 1, self.ld),
        };
        assert!(
            stored_cols <= self.ld && self.data.len() >= (stored_rows - 1) * self.ld + stored_cols
        );
        (rs as isize, cs as isize)
    }
}

/// `dst (m×n, rows dst_ld apart) = [dst +] lhs (m×k) · rhs (k×n)`.
///
/// Panics if a slice is shorter than its matrix: that is a bug in the caller, never input.
pub fn matmul_into<T: Element>(
    dst: &mut [T],
    dst_ld: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_ld && dst.len() >= (m - 1) * dst_ld + n);
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_ld).take(m) {
                row[..n].iter_mut().for_each(|x| *x = T::zero());
            }
        }
        return;
    }
    let (lhs_rs, lhs_cs) = lhs.strides(m, k);
    let (rhs_rs, rhs_cs) = rhs.strides(k, n);
    // SAFETY: `strides` and the assertion above keep every index the strides reach inside
    // the slices, and `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
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
        for (l, r) in [
            (Mat::n(&a, k), Mat::n(&b, n)),
            (Mat::t(&at, m), Mat::n(&b, n)),
            (Mat::n(&a, k), Mat::t(&bt, k)),
            (Mat::t(&at, m), Mat::t(&bt, k)),
        ] {
            let mut c = vec![1.0; m * n];
            matmul_into(&mut c, n, (m, n, k), l, r, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 1.0 - y).abs() < 1e-12);
            }
            matmul_into(&mut c, n, (m, n, k), l, r, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn strided_operands_use_only_their_columns() {
        // lhs is columns 1..4 of a 2×5 matrix, dst columns 0..2 of a 2×3 one.
        let wide = [9.0, 1.0, 2.0, 3.0, 9.0, 9.0, 4.0, 5.0, 6.0, 9.0];
        let rhs = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut dst = [0.0, 0.0, 7.0, 0.0, 0.0, 7.0];
        let lhs = Mat {
            data: &wide[1..],
            op: Op::N,
            ld: 5,
        };
        matmul_into(&mut dst, 3, (2, 2, 3), lhs, Mat::n(&rhs, 2), false);
        assert_eq!(dst, [4.0, 5.0, 7.0, 10.0, 11.0, 7.0]);
    }
}
