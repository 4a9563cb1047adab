//! A whole LSTM layer (one or both directions, all time steps) as one Candle custom op, with
//! its own backpropagation through time.
//!
//! Candle's autograd would record dozens of small tensors per time step; this op is one node
//! in the graph, and inside it the work is a few large products and one fused element-wise
//! pass per step into preallocated packed buffers (see [`lstm_direction`] and [`PackPlan`]).
//!
//! Inputs: `x` (B × T × E, right-padded; padding is never read), `w_ih` (D·4H × (E + 1):
//! each direction's `W_ih` with `b_ih` as an extra column) and `w_hh` (D × 4H × (H + 1): `W_hh`
//! with `b_hh` as an extra column); biases ride along as columns so that the op's three inputs
//! are the layer's parameters themselves, with no candle ops to split or join them. Gate order
//! is PyTorch's: i, f, g, o; direction 0 is forward, 1 reverse. Output: the hidden state at each row's last step (B × D·H) or at every position
//! (B × T × D·H, zeros in padding). Directions are independent and, when more than one thread
//! is allowed, run on two threads.
//!
//! [`lstm_direction`]: super::lstm_direction

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::activation::Real;
use super::lstm_direction::{self as direction, DirectionInput, Injection, Trace, WeightGrads};
pub use super::packing::Direction;
use super::packing::PackPlan;

/// What the op returns for each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LstmOutput {
    /// The hidden state after the row's last valid token (for the reverse direction, after
    /// token 0): B × D·H.
    Last,
    /// The hidden state at every position: B × T × D·H, zero in padding (the input of a
    /// stacked layer).
    Sequence,
}

/// One application of a fused LSTM layer. Build a fresh one per forward pass: it keeps the
/// activations of its forward pass for its (single) backward pass.
pub struct FusedLstm {
    plan: Arc<PackPlan>,
    directions: Vec<Direction>,
    hidden: usize,
    output: LstmOutput,
    parallel: bool,
    record: bool,
    trace: Mutex<Option<Traces>>,
}

enum Traces {
    F32(Vec<Trace<f32>>),
    F64(Vec<Trace<f64>>),
}

/// The per-dtype plumbing between candle's storage enums and the generic kernels.
trait Element: Real {
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn wrap(traces: Vec<Trace<Self>>) -> Traces;
    fn unwrap(traces: Traces) -> Option<Vec<Trace<Self>>>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            fn slice(storage: &CpuStorage) -> Option<&[$t]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(traces: Vec<Trace<$t>>) -> Traces {
                Traces::$variant(traces)
            }
            fn unwrap(traces: Traces) -> Option<Vec<Trace<$t>>> {
                match traces {
                    Traces::$variant(t) => Some(t),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32);
element!(f64, F64);

/// The contiguous data of a CPU tensor argument, as `T`.
fn cpu_slice<'a, T: Element>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let Some(data) = T::slice(s) else {
        bail!("fused_lstm: all inputs must be {:?}", T::DTYPE)
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused_lstm: inputs must be contiguous"),
    }
}

/// Runs `f` on a CPU tensor's data as `T`.
fn with_cpu<T: Element, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_slice::<T>(cpu, layout)?),
        _ => bail!("fused_lstm: only the CPU backend is implemented"),
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

    /// Applies the layer to `x` (B × T × E) with `w_ih` (D·4H × (E + 1)) and `w_hh`
    /// (D × 4H × (H + 1)); with `record`, autograd can differentiate through it.
    pub fn apply(self, x: &Tensor, w_ih: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
        let (x, w_ih, w_hh) = (x.contiguous()?, w_ih.contiguous()?, w_hh.contiguous()?);
        if self.record {
            x.apply_op3(&w_ih, &w_hh, self)
        } else {
            x.apply_op3_no_bwd(&w_ih, &w_hh, &self)
        }
    }

    /// (B, T, D, E, H)
    fn dims(&self, x: &Layout) -> (usize, usize, usize, usize, usize) {
        let e = x.dims().get(2).copied().unwrap_or(0);
        let (b, t) = (self.plan.batch(), self.plan.steps());
        (b, t, self.directions.len(), e, self.hidden)
    }

    fn check(&self, x: &Layout, w_ih: &Layout, w_hh: &Layout) -> candle_core::Result<()> {
        let (b, t, d, e, h) = self.dims(x);
        if x.dims() != [b, t, e] {
            bail!(
                "fused_lstm: x is {:?}, the batch plan is [{b}, {t}, _]",
                x.dims()
            )
        }
        if w_ih.dims() != [d * 4 * h, e + 1] {
            bail!(
                "fused_lstm: w_ih is {:?}, expected [{}, {}]",
                w_ih.dims(),
                d * 4 * h,
                e + 1
            )
        }
        if w_hh.dims() != [d, 4 * h, h + 1] {
            bail!(
                "fused_lstm: w_hh is {:?}, expected [{d}, {}, {}]",
                w_hh.dims(),
                4 * h,
                h + 1
            )
        }
        Ok(())
    }

    /// Direction `k`'s view of the inputs.
    fn input<'a, T>(
        &'a self,
        k: usize,
        x: &'a [T],
        e: usize,
        w_ih: &'a [T],
        w_hh: &'a [T],
    ) -> DirectionInput<'a, T> {
        let (g4, h) = (4 * self.hidden, self.hidden);
        DirectionInput {
            plan: &self.plan,
            dir: self.directions[k],
            x,
            input: e,
            hidden: self.hidden,
            w_ih: &w_ih[k * g4 * (e + 1)..(k + 1) * g4 * (e + 1)],
            w_hh: &w_hh[k * g4 * (h + 1)..(k + 1) * g4 * (h + 1)],
        }
    }

    /// Runs `f(k, states[k])` for every direction `k`, on two threads when allowed.
    fn each_direction<S: Send, R: Send>(
        &self,
        mut states: Vec<S>,
        f: impl Fn(usize, S) -> R + Sync,
    ) -> Vec<R> {
        if self.parallel && states.len() == 2 {
            if let (Some(b), Some(a)) = (states.pop(), states.pop()) {
                let (ra, rb) = crate::kernels::threads::join(|| f(0, a), || f(1, b));
                return vec![ra, rb];
            }
        }
        states
            .into_iter()
            .enumerate()
            .map(|(k, s)| f(k, s))
            .collect()
    }

    fn forward<T: Element>(
        &self,
        e: usize,
        x: &[T],
        w_ih: &[T],
        w_hh: &[T],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let plan = &self.plan;
        let (b, t, d, h) = (
            plan.batch(),
            plan.steps(),
            self.directions.len(),
            self.hidden,
        );
        let runs = self.each_direction(vec![(); d], |k, ()| {
            direction::forward(&self.input(k, x, e, w_ih, w_hh))
        });
        let (out, shape) = match self.output {
            LstmOutput::Last => {
                let mut out = vec![T::zero(); b * d * h];
                for (k, run) in runs.iter().enumerate() {
                    for (i, &row) in plan.order().iter().enumerate() {
                        let len = plan.lengths()[row];
                        if len == 0 {
                            continue;
                        }
                        let src = (plan.offset(len - 1) + i) * h;
                        let dst = row * d * h + k * h;
                        out[dst..dst + h].copy_from_slice(&run.hidden[src..src + h]);
                    }
                }
                (out, Shape::from((b, d * h)))
            }
            LstmOutput::Sequence => {
                let mut out = vec![T::zero(); b * t * d * h];
                for (k, run) in runs.iter().enumerate() {
                    plan.for_each_token(self.directions[k], |p, row, pos| {
                        let dst = (row * t + pos) * d * h + k * h;
                        out[dst..dst + h].copy_from_slice(&run.hidden[p * h..(p + 1) * h]);
                    });
                }
                (out, Shape::from((b, t, d * h)))
            }
        };
        if self.record {
            let traces = runs.into_iter().map(|run| run.trace).collect();
            *self.trace.lock().map_err(|_| poisoned())? = Some(T::wrap(traces));
        }
        Ok((T::to_cpu_storage_owned(out), shape))
    }

    fn backward<T: Element>(
        &self,
        e: usize,
        (x, w_ih, w_hh): (&[T], &[T], &[T]),
        grad: &[T],
        want_dx: bool,
    ) -> candle_core::Result<InputAndWeightGrads<T>> {
        let plan = &self.plan;
        let (b, t, d, h) = (
            plan.batch(),
            plan.steps(),
            self.directions.len(),
            self.hidden,
        );
        // Backward consumes the trace (its buffers become gradient buffers): candle runs it
        // once per forward pass.
        let taken = self.trace.lock().map_err(|_| poisoned())?.take();
        let Some(traces) = taken.and_then(T::unwrap) else {
            bail!("fused_lstm: backward without a recorded forward pass (or a second backward)")
        };
        // Each direction writes its own rows of the weight gradients.
        let g4 = 4 * h;
        let mut dw_ih = vec![T::zero(); d * g4 * (e + 1)];
        let mut dw_hh = vec![T::zero(); d * g4 * (h + 1)];
        let states: Vec<_> = traces
            .into_iter()
            .zip(dw_ih.chunks_mut(g4 * (e + 1)))
            .zip(dw_hh.chunks_mut(g4 * (h + 1)))
            .map(|((trace, dwi), dwh)| {
                (
                    trace,
                    WeightGrads {
                        w_ih: dwi,
                        w_hh: dwh,
                    },
                )
            })
            .collect();
        let dxs = self.each_direction(states, |k, (trace, out)| {
            let inject = Injection {
                sequence: self.output == LstmOutput::Sequence,
                grad,
                stride: d * h,
                col: k * h,
            };
            direction::backward(
                &self.input(k, x, e, w_ih, w_hh),
                trace,
                inject,
                out,
                want_dx,
            )
        });
        if !want_dx {
            return Ok((None, dw_ih, dw_hh));
        }
        let mut dx = vec![T::zero(); b * t * e];
        for (k, dxk) in dxs.iter().enumerate() {
            let Some(dxk) = dxk else { continue };
            plan.for_each_token(self.directions[k], |p, row, pos| {
                let dst = (row * t + pos) * e;
                for (a, &v) in dx[dst..dst + e].iter_mut().zip(&dxk[p * e..(p + 1) * e]) {
                    *a += v;
                }
            });
        }
        Ok((Some(dx), dw_ih, dw_hh))
    }

    fn bwd_typed<T: Element>(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
        let e = x.dims().get(2).copied().unwrap_or(0);
        // An input nobody differentiates (a frozen encoder's vectors) needs no dX: a fifth of
        // backward's products with the encoder's 384-wide input.
        let want_dx = x.track_op();
        let (dx, dwi, dwh) = with_cpu::<T, _>(x, |x| {
            with_cpu::<T, _>(w_ih, |wa| {
                with_cpu::<T, _>(w_hh, |wh| {
                    with_cpu::<T, _>(grad, |g| self.backward(e, (x, wa, wh), g, want_dx))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?,
            Tensor::from_vec(dwi, w_ih.shape(), dev)?,
            Tensor::from_vec(dwh, w_hh.shape(), dev)?,
        ))
    }
}

/// dX (when wanted), `[dW_ih | db]` and `[dW_hh | db]`, flat.
type InputAndWeightGrads<T> = (Option<Vec<T>>, Vec<T>, Vec<T>);

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("fused_lstm: trace lock poisoned by a panic".into())
}

impl CustomOp3 for FusedLstm {
    fn name(&self) -> &'static str {
        "fused_lstm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let e = self.dims(l1).3;
        match s1 {
            CpuStorage::F32(_) => self.forward::<f32>(
                e,
                cpu_slice(s1, l1)?,
                cpu_slice(s2, l2)?,
                cpu_slice(s3, l3)?,
            ),
            CpuStorage::F64(_) => self.forward::<f64>(
                e,
                cpu_slice(s1, l1)?,
                cpu_slice(s2, l2)?,
                cpu_slice(s3, l3)?,
            ),
            _ => bail!("fused_lstm: f32 or f64 only"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (dx, dwi, dwh) = match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, w_ih, w_hh, &grad)?,
            DType::F64 => self.bwd_typed::<f64>(x, w_ih, w_hh, &grad)?,
            other => bail!("fused_lstm: f32 or f64 only, got {other:?}"),
        };
        Ok((dx, Some(dwi), Some(dwh)))
    }
}
