//! A whole LSTM layer (one or both directions, all time steps) as one Candle custom op, with
//! its own backpropagation through time.
//!
//! Candle's autograd would record dozens of small tensors per time step; here a step is one
//! `(rows × H)·(H × 4H)` product plus one fused element-wise pass into preallocated packed
//! buffers (see [`PackPlan`]), and the backward pass is written by hand: per step the gate
//! gradients and one product for `dh`, then `dW_hh` for the whole sequence as a single product.
//!
//! Inputs: `xp` (B × T × D·4H), the input projections `x·W_ihᵀ + b_ih + b_hh` of every token
//! for each of the D directions (done outside with one ordinary matrix product, so candle's
//! autograd gives `dW_ih`, the biases and `dx` from the `dxp` this op returns); and `w_hh`
//! (D × 4H × H). Gate order is PyTorch's: i, f, g, o. Output: the hidden state at each row's
//! last valid step (B × D·H), or every step's hidden state (B × T × D·H, zeros in padding).
//! The D directions are independent and run on separate threads when more than one is allowed.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use super::activation::{self, BackwardBlock, ForwardBlock, Real};
use super::gemm::{matmul, Op};
pub use super::packing::Direction;
use super::packing::PackPlan;

/// What the op returns for each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LstmOutput {
    /// The hidden state after the row's last valid token (for the reverse direction, after
    /// token 0): B × D·H.
    Last,
    /// The hidden state at every position: B × T × D·H, zero in padding (input of a stacked
    /// layer).
    Sequence,
}

/// One application of a fused LSTM layer. Build a fresh one per forward pass: it keeps the
/// activations of its forward pass for its backward pass.
pub struct FusedLstm {
    plan: Arc<PackPlan>,
    directions: Vec<Direction>,
    hidden: usize,
    output: LstmOutput,
    parallel: bool,
    record: bool,
    trace: Mutex<Option<Traces>>,
}

/// What the forward pass keeps for the backward pass, per direction, packed.
struct Trace<T> {
    /// Gate activations (i, f, g, o), tokens × 4H.
    gates: Vec<T>,
    cells: Vec<T>,
    tanh_cells: Vec<T>,
    hidden: Vec<T>,
}

enum Traces {
    F32(Vec<Trace<f32>>),
    F64(Vec<Trace<f64>>),
}

/// The per-dtype plumbing between candle's storage enums and the generic kernels.
trait Element: Real {
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn wrap(traces: Vec<Trace<Self>>) -> Traces;
    fn unwrap(traces: &Traces) -> Option<&[Trace<Self>]>;
}

impl Element for f32 {
    fn slice(storage: &CpuStorage) -> Option<&[f32]> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(traces: Vec<Trace<f32>>) -> Traces {
        Traces::F32(traces)
    }
    fn unwrap(traces: &Traces) -> Option<&[Trace<f32>]> {
        match traces {
            Traces::F32(t) => Some(t),
            Traces::F64(_) => None,
        }
    }
}

impl Element for f64 {
    fn slice(storage: &CpuStorage) -> Option<&[f64]> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(traces: Vec<Trace<f64>>) -> Traces {
        Traces::F64(traces)
    }
    fn unwrap(traces: &Traces) -> Option<&[Trace<f64>]> {
        match traces {
            Traces::F64(t) => Some(t),
            Traces::F32(_) => None,
        }
    }
}

impl FusedLstm {
    /// A layer of `hidden` units walking each of `directions` over the batch `plan` describes.
    /// `parallel` runs the directions on two threads; `record` keeps what backward needs
    /// (training), otherwise the buffers are dropped at the end of the forward pass.
    pub fn new(
        plan: Arc<PackPlan>,
        directions: &[Direction],
        hidden: usize,
        output: LstmOutput,
        parallel: bool,
        record: bool,
    ) -> Self {
        Self {
            plan,
            directions: directions.to_vec(),
            hidden,
            output,
            parallel,
            record,
            trace: Mutex::new(None),
        }
    }

    /// Apply to `xp` (B × T × D·4H) and `w_hh` (D × 4H × H); records a backward step when
    /// either is tracked by autograd and the op was built with `record`.
    pub fn apply(self, xp: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
        let xp = xp.contiguous()?;
        let w_hh = w_hh.contiguous()?;
        if self.record {
            xp.apply_op2(&w_hh, self)
        } else {
            xp.apply_op2_no_bwd(&w_hh, &self)
        }
    }

    fn dims(&self) -> (usize, usize, usize, usize) {
        (
            self.plan.batch(),
            self.plan.steps(),
            self.directions.len(),
            self.hidden,
        )
    }

    fn check_inputs(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<()> {
        let (b, t, d, h) = self.dims();
        if l1.dims() != [b, t, d * 4 * h] {
            bail!(
                "fused_lstm: xp is {:?}, expected [{b}, {t}, {}]",
                l1.dims(),
                d * 4 * h
            )
        }
        if l2.dims() != [d, 4 * h, h] {
            bail!(
                "fused_lstm: w_hh is {:?}, expected [{d}, {}, {h}]",
                l2.dims(),
                4 * h
            )
        }
        Ok(())
    }

    /// Runs `f` for every direction, on two threads when allowed.
    fn each_direction<R: Send>(&self, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
        if self.parallel && self.directions.len() == 2 {
            let (a, b) = rayon::join(|| f(0), || f(1));
            vec![a, b]
        } else {
            (0..self.directions.len()).map(f).collect()
        }
    }

    fn forward<T: Element>(
        &self,
        xp: &[T],
        w_hh: &[T],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, d, h) = self.dims();
        let traces = self.each_direction(|k| {
            let w = &w_hh[k * 4 * h * h..(k + 1) * 4 * h * h];
            forward_direction(
                &self.plan,
                self.directions[k],
                xp,
                (d * 4 * h, k * 4 * h),
                w,
                h,
            )
        });
        let plan = &self.plan;
        let (out, shape) = match self.output {
            LstmOutput::Last => {
                let mut out = vec![T::zero(); b * d * h];
                for (k, tr) in traces.iter().enumerate() {
                    for (i, &row) in plan.order().iter().enumerate() {
                        let len = plan.lengths()[row];
                        if len == 0 {
                            continue;
                        }
                        let src = (plan.offset(len - 1) + i) * h;
                        let dst = row * d * h + k * h;
                        out[dst..dst + h].copy_from_slice(&tr.hidden[src..src + h]);
                    }
                }
                (out, Shape::from((b, d * h)))
            }
            LstmOutput::Sequence => {
                let mut out = vec![T::zero(); b * t * d * h];
                for (k, tr) in traces.iter().enumerate() {
                    for_each_packed(plan, self.directions[k], |packed, row, pos| {
                        let dst = (row * t + pos) * d * h + k * h;
                        out[dst..dst + h].copy_from_slice(&tr.hidden[packed * h..(packed + 1) * h]);
                    });
                }
                (out, Shape::from((b, t, d * h)))
            }
        };
        if self.record {
            *self.trace.lock().map_err(|_| poisoned())? = Some(T::wrap(traces));
        }
        Ok((T::to_cpu_storage_owned(out), shape))
    }

    fn backward<T: Element>(
        &self,
        w_hh: &[T],
        grad: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let (b, t, d, h) = self.dims();
        let guard = self.trace.lock().map_err(|_| poisoned())?;
        let Some(traces) = guard.as_ref().and_then(T::unwrap) else {
            bail!("fused_lstm: backward without a recorded forward pass of this dtype")
        };
        let grads = self.each_direction(|k| {
            let w = &w_hh[k * 4 * h * h..(k + 1) * 4 * h * h];
            let inject = Injection {
                output: self.output,
                grad,
                stride: d * h,
                col: k * h,
            };
            backward_direction(&self.plan, self.directions[k], &traces[k], w, h, inject)
        });
        let mut dxp = vec![T::zero(); b * t * d * 4 * h];
        let mut dw_hh = Vec::with_capacity(d * 4 * h * h);
        for (k, (dgates, dw)) in grads.into_iter().enumerate() {
            for_each_packed(&self.plan, self.directions[k], |packed, row, pos| {
                let dst = (row * t + pos) * d * 4 * h + k * 4 * h;
                dxp[dst..dst + 4 * h]
                    .copy_from_slice(&dgates[packed * 4 * h..(packed + 1) * 4 * h]);
            });
            dw_hh.extend_from_slice(&dw);
        }
        Ok((dxp, dw_hh))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("fused_lstm: trace lock poisoned by a panic".into())
}

/// Calls `f(packed_row, batch_row, position)` for every valid token, walking in `dir`.
fn for_each_packed(plan: &PackPlan, dir: Direction, mut f: impl FnMut(usize, usize, usize)) {
    for s in 0..plan.steps() {
        let base = plan.offset(s);
        for i in 0..plan.active(s) {
            f(base + i, plan.order()[i], plan.position(dir, s, i));
        }
    }
}

/// The forward recurrence of one direction. `xp` is the whole input, whose rows are `stride`
/// wide, with this direction's 4H gates starting at column `col`.
fn forward_direction<T: Real>(
    plan: &PackPlan,
    dir: Direction,
    xp: &[T],
    (stride, col): (usize, usize),
    w_hh: &[T],
    h: usize,
) -> Trace<T> {
    let tokens = plan.tokens();
    let g4 = 4 * h;
    let mut tr = Trace {
        gates: vec![T::zero(); tokens * g4],
        cells: vec![T::zero(); tokens * h],
        tanh_cells: vec![T::zero(); tokens * h],
        hidden: vec![T::zero(); tokens * h],
    };
    let t_len = plan.steps();
    for s in 0..t_len {
        let n = plan.active(s);
        if n == 0 {
            break;
        }
        let base = plan.offset(s);
        let gates = &mut tr.gates[base * g4..(base + n) * g4];
        for (i, dst) in gates.chunks_exact_mut(g4).enumerate() {
            let src = (plan.order()[i] * t_len + plan.position(dir, s, i)) * stride + col;
            dst.copy_from_slice(&xp[src..src + g4]);
        }
        let (done_cells, cells) = tr.cells.split_at_mut(base * h);
        let (done_hidden, hidden) = tr.hidden.split_at_mut(base * h);
        let prev = (s > 0).then(|| plan.offset(s - 1) * h..(plan.offset(s - 1) + n) * h);
        if let Some(prev) = prev.clone() {
            matmul(
                gates,
                (n, g4, h),
                &done_hidden[prev],
                Op::N,
                w_hh,
                Op::T,
                true,
            );
        }
        activation::forward(ForwardBlock {
            hidden: h,
            gates,
            c_prev: prev.map(|p| &done_cells[p]),
            cells: &mut cells[..n * h],
            tanh_cells: &mut tr.tanh_cells[base * h..(base + n) * h],
            h: &mut hidden[..n * h],
        });
    }
    tr
}

/// Where the gradient of the op's output enters the recurrence of one direction.
struct Injection<'a, T> {
    output: LstmOutput,
    grad: &'a [T],
    stride: usize,
    col: usize,
}

/// Backpropagation through time for one direction: the gate pre-activation gradients (packed,
/// tokens × 4H) and `dW_hh` (4H × H).
fn backward_direction<T: Real>(
    plan: &PackPlan,
    dir: Direction,
    tr: &Trace<T>,
    w_hh: &[T],
    h: usize,
    inject: Injection<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let g4 = 4 * h;
    let tokens = plan.tokens();
    let rows = plan.active(0);
    let t_len = plan.steps();
    let mut dh = vec![T::zero(); rows * h];
    let mut dc = vec![T::zero(); rows * h];
    let mut dgates = vec![T::zero(); tokens * g4];
    for s in (0..t_len).rev() {
        let n = plan.active(s);
        if n == 0 {
            continue;
        }
        let base = plan.offset(s);
        // Rows whose output gradient enters at this step: under `Last`, the rows ending here
        // (they are the tail of the active prefix); under `Sequence`, all of them.
        let first = match inject.output {
            LstmOutput::Last => plan.active(s + 1),
            LstmOutput::Sequence => 0,
        };
        for i in first..n {
            let row = plan.order()[i];
            let src = match inject.output {
                LstmOutput::Last => row * inject.stride + inject.col,
                LstmOutput::Sequence => {
                    (row * t_len + plan.position(dir, s, i)) * inject.stride + inject.col
                }
            };
            for (x, g) in dh[i * h..(i + 1) * h]
                .iter_mut()
                .zip(&inject.grad[src..src + h])
            {
                *x = *x + *g;
            }
        }
        let prev = (s > 0).then(|| plan.offset(s - 1) * h..(plan.offset(s - 1) + n) * h);
        let block = &mut dgates[base * g4..(base + n) * g4];
        activation::backward(BackwardBlock {
            hidden: h,
            gates: &tr.gates[base * g4..(base + n) * g4],
            tanh_cells: &tr.tanh_cells[base * h..(base + n) * h],
            c_prev: prev.map(|p| &tr.cells[p]),
            dh: &dh[..n * h],
            dc: &mut dc[..n * h],
            dgates: block,
        });
        if s > 0 {
            // Rows n.. of dh are still untouched zeros: those rows have not started yet
            // (walking backwards), which is exactly the state they must start from.
            matmul(
                &mut dh[..n * h],
                (n, h, g4),
                block,
                Op::N,
                w_hh,
                Op::N,
                false,
            );
        }
    }
    // dW_hh = Σ_t dgates_tᵀ · h_{t-1}: gather h_{t-1} beside each step's gate gradients and
    // do it as one product over all tokens after the first step.
    let mut dw_hh = vec![T::zero(); g4 * h];
    let later = tokens - rows;
    if later > 0 {
        let mut h_prev = vec![T::zero(); later * h];
        for s in 1..t_len {
            let n = plan.active(s);
            let src = plan.offset(s - 1) * h;
            let dst = (plan.offset(s) - rows) * h;
            h_prev[dst..dst + n * h].copy_from_slice(&tr.hidden[src..src + n * h]);
        }
        matmul(
            &mut dw_hh,
            (g4, h, later),
            &dgates[rows * g4..],
            Op::T,
            &h_prev,
            Op::N,
            false,
        );
    }
    (dgates, dw_hh)
}

/// The contiguous data of a CPU tensor argument, as `T`.
fn cpu_slice<'a, T: Element>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let Some(data) = T::slice(storage) else {
        bail!("fused_lstm: inputs must all be {:?}", T::DTYPE)
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused_lstm: inputs must be contiguous"),
    }
}

/// Reads a tensor's CPU data as `T` and hands it to `f`.
fn with_cpu<T: Element, R>(
    tensor: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_slice::<T>(cpu, layout)?),
        _ => bail!("fused_lstm: only the CPU backend is implemented"),
    }
}

impl CustomOp2 for FusedLstm {
    fn name(&self) -> &'static str {
        "fused_lstm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check_inputs(l1, l2)?;
        match s1 {
            CpuStorage::F32(_) => self.forward::<f32>(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?),
            CpuStorage::F64(_) => self.forward::<f64>(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?),
            _ => bail!("fused_lstm: f32 or f64 only"),
        }
    }

    fn bwd(
        &self,
        xp: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, d, h) = self.dims();
        let grad = grad_res.contiguous()?;
        let w_hh_c = w_hh.contiguous()?;
        let dev = xp.device();
        let (dxp, dw) = match xp.dtype() {
            candle_core::DType::F32 => {
                let (dxp, dw) = with_cpu::<f32, _>(&w_hh_c, |w| {
                    with_cpu::<f32, _>(&grad, |g| self.backward(w, g))
                })?;
                (
                    Tensor::from_vec(dxp, (b, t, d * 4 * h), dev)?,
                    Tensor::from_vec(dw, (d, 4 * h, h), dev)?,
                )
            }
            candle_core::DType::F64 => {
                let (dxp, dw) = with_cpu::<f64, _>(&w_hh_c, |w| {
                    with_cpu::<f64, _>(&grad, |g| self.backward(w, g))
                })?;
                (
                    Tensor::from_vec(dxp, (b, t, d * 4 * h), dev)?,
                    Tensor::from_vec(dw, (d, 4 * h, h), dev)?,
                )
            }
            other => bail!("fused_lstm: f32 or f64 only, got {other:?}"),
        };
        Ok((Some(dxp), Some(dw)))
    }
}
