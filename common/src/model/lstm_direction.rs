//! One direction of an LSTM layer over a packed batch (see [`PackPlan`]): the forward
//! recurrence, keeping what backward needs, and backpropagation through time.
//!
//! Everything a direction does is here and single-threaded, so that the two directions of a
//! layer can run side by side with nothing shared but read-only inputs:
//! - forward: gather the direction's tokens, one product for the input projection of all of
//!   them, then per step one `(rows × H)·(H × 4H)` product and the fused cell update;
//! - backward: per step the fused gate derivatives and one `(rows × 4H)·(4H × H)` product for
//!   `dh`; then `[dW_ih | dW_hh]` as one product over all tokens, and `dx` as another.
//!
//! Each token's input and the hidden state it was combined with (zero at the first step) sit
//! side by side in one packed row, `[x_t | h_{t-1}]`: the step products read the `h` half in
//! place, and both weight gradients come from a single product with that matrix.

use super::activation::{self, BackwardBlock, ForwardBlock, Real};
use super::packing::{Direction, PackPlan};
use crate::kernels::gemm::{matmul_into, Mat, Op};

/// The read-only inputs of one direction.
pub struct DirectionInput<'a, T> {
    pub plan: &'a PackPlan,
    pub dir: Direction,
    /// The layer input, B × T × E.
    pub x: &'a [T],
    /// E.
    pub input: usize,
    /// H.
    pub hidden: usize,
    /// This direction's input weights and bias: 4H rows of `[W_ih | b_ih]`, E + 1 wide.
    pub w_ih: &'a [T],
    /// This direction's recurrent weights and bias: 4H rows of `[W_hh | b_hh]`, H + 1 wide.
    pub w_hh: &'a [T],
}

/// What the forward pass keeps for the backward pass, packed (one row per valid token).
pub struct Trace<T> {
    /// `[x_t | h_{t-1}]` in this direction's packed order, tokens × (E + H).
    pub xh: Vec<T>,
    /// Gate activations (i, f, g, o), tokens × 4H; backward turns them into gate gradients.
    pub gates: Vec<T>,
    pub cells: Vec<T>,
    pub tanh_cells: Vec<T>,
}

/// One direction's forward pass: what backward needs, and the hidden states (tokens × H),
/// which only the op's output needs.
pub struct Forward<T> {
    pub trace: Trace<T>,
    pub hidden: Vec<T>,
}

/// Where one direction's weight gradients go: its rows of the op's outputs.
pub struct WeightGrads<'a, T> {
    /// `[dW_ih | db_ih]`, 4H × (E + 1).
    pub w_ih: &'a mut [T],
    /// `[dW_hh | db_hh]`, 4H × (H + 1).
    pub w_hh: &'a mut [T],
}

/// Where the gradient of the layer's output enters this direction's recurrence.
pub struct Injection<'a, T> {
    /// The output gradient is per position (B × T × stride) rather than per row
    /// (B × stride, at each row's last step).
    pub sequence: bool,
    pub grad: &'a [T],
    pub stride: usize,
    /// This direction's H columns start here.
    pub col: usize,
}

impl<'a, T: Real> DirectionInput<'a, T> {
    /// `W_ih` (4H × E) in place, skipping the bias column.
    fn w_ih(&self) -> Mat<'a, T> {
        Mat {
            data: self.w_ih,
            op: Op::N,
            ld: self.input + 1,
        }
    }

    /// `W_hh` (4H × H) in place, skipping the bias column.
    fn w_hh(&self) -> Mat<'a, T> {
        Mat {
            data: self.w_hh,
            op: Op::N,
            ld: self.hidden + 1,
        }
    }

    /// `b_ih + b_hh`.
    fn bias(&self) -> Vec<T> {
        let (e, h) = (self.input, self.hidden);
        let b_ih = self.w_ih.chunks_exact(e + 1).map(|row| row[e]);
        let b_hh = self.w_hh.chunks_exact(h + 1).map(|row| row[h]);
        b_ih.zip(b_hh).map(|(a, b)| a + b).collect()
    }
}

/// Rows per vector register of the widest kernel gemm runs (16 f32 lanes under AVX-512).
const GEMM_LANES: usize = 16;

/// Backward's per-step `dh = dgates · W_hh`, for an `H` that is not a multiple of
/// [`GEMM_LANES`]: then gemm repacks all of the 4H × H weights at every call (its left
/// operand, after it transposes the row-major problem, has `H` rows), which at 16 rows per
/// step costs about half as much as the product itself. Zero columns padding `W_hh` to a
/// multiple of the lanes avoid the repacking: measured at H = 200, 4H = 800 on one thread,
/// 68 → 45 µs at 16 rows, 110 → 79-105 µs at 32. The padded columns of `dh` are dropped.
struct StepProduct<T> {
    /// `W_hh` with its columns padded with zeros to a multiple of the lanes, and one step's
    /// `dh` as wide; `None` when `H` needs no padding.
    padded: Option<(Vec<T>, Vec<T>)>,
}

impl<T: Real> StepProduct<T> {
    fn new(inp: &DirectionInput<'_, T>, rows: usize) -> Self {
        let h = inp.hidden;
        let p = h.next_multiple_of(GEMM_LANES);
        if p == h {
            return Self { padded: None };
        }
        let mut w = vec![T::zero(); 4 * h * p];
        for (dst, src) in w.chunks_exact_mut(p).zip(inp.w_hh.chunks_exact(h + 1)) {
            dst[..h].copy_from_slice(&src[..h]);
        }
        Self {
            padded: Some((w, vec![T::zero(); rows * p])),
        }
    }

    /// `dh (n × H) = dgates (n × 4H) · W_hh`.
    fn dh(&mut self, inp: &DirectionInput<'_, T>, dgates: &[T], dh: &mut [T]) {
        let (h, g4) = (inp.hidden, 4 * inp.hidden);
        let n = dh.len() / h;
        let dg = Mat::n(dgates, g4);
        let Some((w, wide)) = &mut self.padded else {
            matmul_into(dh, h, (n, h, g4), dg, inp.w_hh(), false);
            return;
        };
        let p = w.len() / g4;
        let wide = &mut wide[..n * p];
        matmul_into(wide, p, (n, p, g4), dg, Mat::n(w, p), false);
        for (d, w) in dh.chunks_exact_mut(h).zip(wide.chunks_exact(p)) {
            d.copy_from_slice(&w[..h]);
        }
    }
}

/// Runs the recurrence; returns every step's state, packed.
pub fn forward<T: Real>(inp: &DirectionInput<'_, T>) -> Forward<T> {
    let (plan, e, h) = (inp.plan, inp.input, inp.hidden);
    let (tokens, g4, t_len, w) = (plan.tokens(), 4 * h, plan.steps(), e + h);
    let mut xh = vec![T::zero(); tokens * w];
    plan.for_each_token(inp.dir, |p, row, pos| {
        let src = (row * t_len + pos) * e;
        xh[p * w..p * w + e].copy_from_slice(&inp.x[src..src + e]);
    });
    let mut tr = Trace {
        gates: vec![T::zero(); tokens * g4],
        cells: vec![T::zero(); tokens * h],
        tanh_cells: vec![T::zero(); tokens * h],
        xh,
    };
    let mut hidden_all = vec![T::zero(); tokens * h];
    // The input projection of every token at once; the bias is added in the cell kernel.
    let x_part = Mat {
        data: &tr.xh,
        op: Op::N,
        ld: w,
    };
    let w_ih_t = Mat {
        op: Op::T,
        ..inp.w_ih()
    };
    matmul_into(&mut tr.gates, g4, (tokens, g4, e), x_part, w_ih_t, false);
    let bias = inp.bias();
    // W_hh transposed (H × 4H): gemm runs the step product ~1.5× faster with the 4H-wide
    // operand contiguous, far more than the transposition costs.
    let mut w_hh_t = vec![T::zero(); h * g4];
    transpose(inp.w_hh, (g4, h + 1, h), &mut w_hh_t);
    for s in 0..t_len {
        let n = plan.active(s);
        if n == 0 {
            break;
        }
        let base = plan.offset(s);
        let gates = &mut tr.gates[base * g4..(base + n) * g4];
        if s > 0 {
            let h_prev = Mat {
                data: &tr.xh[base * w + e..],
                op: Op::N,
                ld: w,
            };
            matmul_into(gates, g4, (n, g4, h), h_prev, Mat::n(&w_hh_t, g4), true);
        }
        let (done_cells, cells) = tr.cells.split_at_mut(base * h);
        let prev = (s > 0).then(|| plan.offset(s - 1) * h..(plan.offset(s - 1) + n) * h);
        let hidden = &mut hidden_all[base * h..(base + n) * h];
        activation::forward(ForwardBlock {
            hidden: h,
            bias: &bias,
            gates,
            c_prev: prev.map(|p| &done_cells[p]),
            cells: &mut cells[..n * h],
            tanh_cells: &mut tr.tanh_cells[base * h..(base + n) * h],
            h: hidden,
        });
        // Rows still running next step are a prefix of this step's rows.
        let next = base + n;
        for i in 0..plan.active(s + 1) {
            tr.xh[(next + i) * w + e..(next + i + 1) * w]
                .copy_from_slice(&hidden_all[(base + i) * h..(base + i + 1) * h]);
        }
    }
    Forward {
        trace: tr,
        hidden: hidden_all,
    }
}

/// Backpropagation through time from the output gradient `inject`: writes the weight
/// gradients to `out` and returns the input gradient (packed like the trace, tokens × E) if
/// `want_dx`. Consumes the trace: its gate buffer becomes the gate gradients.
pub fn backward<T: Real>(
    inp: &DirectionInput<'_, T>,
    tr: Trace<T>,
    inject: Injection<'_, T>,
    out: WeightGrads<'_, T>,
    want_dx: bool,
) -> Option<Vec<T>> {
    let (plan, e, h) = (inp.plan, inp.input, inp.hidden);
    let (tokens, g4, t_len) = (plan.tokens(), 4 * h, plan.steps());
    let rows = plan.active(0);
    let Trace {
        xh,
        gates: mut dgates,
        cells,
        tanh_cells,
    } = tr;
    let mut dh = vec![T::zero(); rows * h];
    let mut dc = vec![T::zero(); rows * h];
    let mut step_product = StepProduct::new(inp, rows);
    for s in (0..t_len).rev() {
        let n = plan.active(s);
        if n == 0 {
            continue;
        }
        let base = plan.offset(s);
        // Per row, the output gradient enters at its last step (the tail of the active
        // prefix, rows that were not running a step later) or, for a sequence, at every step.
        let first = if inject.sequence {
            0
        } else {
            plan.active(s + 1)
        };
        for i in first..n {
            let row = plan.order()[i];
            let at = if inject.sequence {
                row * t_len + plan.position(inp.dir, s, i)
            } else {
                row
            };
            let src = at * inject.stride + inject.col;
            for (d, g) in dh[i * h..(i + 1) * h]
                .iter_mut()
                .zip(&inject.grad[src..src + h])
            {
                *d += *g;
            }
        }
        let prev = (s > 0).then(|| plan.offset(s - 1) * h..(plan.offset(s - 1) + n) * h);
        let block = &mut dgates[base * g4..(base + n) * g4];
        activation::backward(BackwardBlock {
            hidden: h,
            gates: block,
            tanh_cells: &tanh_cells[base * h..(base + n) * h],
            c_prev: prev.map(|p| &cells[p]),
            dh: &dh[..n * h],
            dc: &mut dc[..n * h],
        });
        if s > 0 {
            // Rows n.. of dh and dc are untouched zeros: walking backwards those rows have
            // not started yet, and zero is the state they start from.
            step_product.dh(inp, &*block, &mut dh[..n * h]);
        }
    }

    // [dW_ih | dW_hh] = Σ_t dgates_tᵀ · [x_t | h_{t-1}]: one product over all tokens.
    let w = e + h;
    let mut dw = vec![T::zero(); g4 * w];
    matmul_into(
        &mut dw,
        w,
        (g4, w, tokens),
        Mat::t(&dgates, g4),
        Mat::n(&xh, w),
        false,
    );
    let mut db = vec![T::zero(); g4];
    for row in dgates.chunks_exact(g4) {
        for (acc, &g) in db.iter_mut().zip(row) {
            *acc += g;
        }
    }
    // Both biases enter as the same sum, so both get db.
    let rows_ih = out.w_ih.chunks_exact_mut(e + 1);
    let rows_hh = out.w_hh.chunks_exact_mut(h + 1);
    for (((row, &b), dst_ih), dst_hh) in dw.chunks_exact(w).zip(&db).zip(rows_ih).zip(rows_hh) {
        dst_ih[..e].copy_from_slice(&row[..e]);
        dst_ih[e] = b;
        dst_hh[..h].copy_from_slice(&row[e..]);
        dst_hh[h] = b;
    }
    if !want_dx {
        return None;
    }
    let mut dx = vec![T::zero(); tokens * e];
    matmul_into(
        &mut dx,
        e,
        (tokens, e, g4),
        Mat::n(&dgates, g4),
        inp.w_ih(),
        false,
    );
    Some(dx)
}

/// `out (cols × rows) = a[.., ..cols]ᵀ` for `a` of `rows` rows `ld` apart, in tiles so that
/// both sides stay in cache.
fn transpose<T: Real>(a: &[T], (rows, ld, cols): (usize, usize, usize), out: &mut [T]) {
    const TILE: usize = 16;
    for i0 in (0..rows).step_by(TILE) {
        for j0 in (0..cols).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                let src = &a[i * ld + j0..i * ld + (j0 + TILE).min(cols)];
                for (j, &v) in (j0..).zip(src) {
                    out[j * rows + i] = v;
                }
            }
        }
    }
}
