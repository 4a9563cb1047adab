//! One step of an LSTM cell as a single op, for the composed (GPU) layer of
//! [`lstm_composed`](super::lstm_composed): from the step's gate pre-activations (i, f, g, o)
//! and the previous cell, the new hidden state and cell in one pass, and in backward the
//! gradients of both inputs in one more.
//!
//! Composed from Candle ops the same step is seven launches forward (a sigmoid, two tanh,
//! three products, a sum) and more in autograd's backward, each a pass over memory; at
//! B × H = 32 × 200 elements a GPU should spend more on launching them than on the arithmetic
//! (not yet measured: `gpu/check.sh` times both). The CUDA kernels (`lstm_cell.cu`, compiled to PTX by
//! `build.rs` under the `cuda` feature) and the CPU loops here compute the same thing; the
//! CPU loops are what the tests check against the fused CPU op, `worker --self-check`
//! checks the kernels against the CPU on a GPU.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::activation::Real;
use super::error::{ModelError, Result};

/// `(h, c)` of one step: `gates` is B × 4H (pre-activations, bias included), `c_prev` B × H.
pub fn lstm_cell(gates: &Tensor, c_prev: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, hidden) = c_prev.dims2()?;
    if gates.dims2()? != (rows, 4 * hidden) {
        return Err(ModelError::Config(format!(
            "LSTM cell gates {:?} for a cell of {:?}",
            gates.dims(),
            c_prev.dims()
        )));
    }
    // The op reads its inputs as contiguous rows; `contiguous` is free when they already are.
    let out = gates.contiguous()?.apply_op2(&c_prev.contiguous()?, Cell)?;
    let n = rows * hidden;
    let h = out.narrow(0, 0, n)?.reshape((rows, hidden))?;
    let c = out.narrow(0, n, n)?.reshape((rows, hidden))?;
    Ok((h, c))
}

/// Forward: `[h | c]`, each B × H, flat.
struct Cell;

/// Backward: from `gates`, `c_prev` and the gradient of `[h | c]`, `[d_gates | d_c_prev]`
/// (B × 4H then B × H), flat.
struct CellGrad;

/// Rows and hidden size of a step, after checking that both inputs are contiguous and fit.
fn step_dims(gates: &Layout, c_prev: &Layout) -> candle_core::Result<(usize, usize)> {
    let (rows, hidden) = c_prev.shape().dims2()?;
    if gates.shape().dims2()? != (rows, 4 * hidden) {
        candle_core::bail!(
            "lstm_cell: gates {:?} for a cell of {:?}",
            gates.shape(),
            c_prev.shape()
        )
    }
    if gates.contiguous_offsets().is_none() || c_prev.contiguous_offsets().is_none() {
        candle_core::bail!("lstm_cell: inputs must be contiguous")
    }
    Ok((rows, hidden))
}

/// The four gate activations of element `j` of a row's pre-activations `a` (4H wide).
#[inline(always)]
fn activations<T: Real>(a: &[T], hidden: usize, j: usize) -> [T; 4] {
    [
        T::act_sigmoid(a[j]),
        T::act_sigmoid(a[hidden + j]),
        T::act_tanh(a[2 * hidden + j]),
        T::act_sigmoid(a[3 * hidden + j]),
    ]
}

fn forward<T: Real>(gates: &[T], c_prev: &[T], hidden: usize) -> Vec<T> {
    let n = c_prev.len();
    let mut out = vec![T::zero(); 2 * n];
    let (hs, cs) = out.split_at_mut(n);
    for (k, (h, c)) in hs.iter_mut().zip(cs.iter_mut()).enumerate() {
        let (b, j) = (k / hidden, k % hidden);
        let [i, f, g, o] = activations(&gates[b * 4 * hidden..], hidden, j);
        *c = f * c_prev[k] + i * g;
        *h = o * T::act_tanh(*c);
    }
    out
}

fn backward<T: Real>(gates: &[T], c_prev: &[T], grad: &[T], hidden: usize) -> Vec<T> {
    let n = c_prev.len();
    let one = T::one();
    let mut out = vec![T::zero(); 5 * n];
    let (d_gates, d_c_prev) = out.split_at_mut(4 * n);
    for k in 0..n {
        let (b, j) = (k / hidden, k % hidden);
        let row = b * 4 * hidden;
        let [i, f, g, o] = activations(&gates[row..], hidden, j);
        let tc = T::act_tanh(f * c_prev[k] + i * g);
        let (dh, dc_in) = (grad[k], grad[n + k]);
        let dc = dc_in + dh * o * (one - tc * tc);
        d_gates[row + j] = dc * g * i * (one - i);
        d_gates[row + hidden + j] = dc * c_prev[k] * f * (one - f);
        d_gates[row + 2 * hidden + j] = dc * i * (one - g * g);
        d_gates[row + 3 * hidden + j] = dh * tc * o * (one - o);
        d_c_prev[k] = dc * f;
    }
    out
}

/// The contiguous data of a CPU input as `T`, if it holds `T`.
fn cpu_slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("lstm_cell: inputs must be contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// Runs `f32s` or `f64s` on the inputs' data, whichever type they all hold.
fn on_cpu<const N: usize>(
    inputs: [(&CpuStorage, &Layout); N],
    f32s: impl FnOnce([&[f32]; N]) -> Vec<f32>,
    f64s: impl FnOnce([&[f64]; N]) -> Vec<f64>,
) -> candle_core::Result<CpuStorage> {
    fn slices<'a, T: Real, const N: usize>(
        inputs: [(&'a CpuStorage, &Layout); N],
    ) -> candle_core::Result<[&'a [T]; N]> {
        let mut out: [&[T]; N] = [&[]; N];
        for (o, (s, l)) in out.iter_mut().zip(inputs) {
            *o = cpu_slice(s, l)?;
        }
        Ok(out)
    }
    match inputs[0].0 {
        CpuStorage::F32(_) => Ok(CpuStorage::F32(f32s(slices(inputs)?))),
        CpuStorage::F64(_) => Ok(CpuStorage::F64(f64s(slices(inputs)?))),
        _ => candle_core::bail!("lstm_cell: f32 or f64 inputs"),
    }
}

/// Rows and hidden size of a backward step, after checking the gradient of `[h | c]` too.
fn grad_dims(
    gates: &Layout,
    c_prev: &Layout,
    grad: &Layout,
) -> candle_core::Result<(usize, usize)> {
    let (rows, hidden) = step_dims(gates, c_prev)?;
    if grad.shape().elem_count() != 2 * rows * hidden || grad.contiguous_offsets().is_none() {
        candle_core::bail!(
            "lstm_cell_grad: gradient {:?} for {rows} × {hidden}",
            grad.shape()
        )
    }
    Ok((rows, hidden))
}

impl CustomOp2 for Cell {
    fn name(&self) -> &'static str {
        "lstm_cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, hidden) = step_dims(l1, l2)?;
        let out = on_cpu(
            [(s1, l1), (s2, l2)],
            |[g, c]| forward(g, c, hidden),
            |[g, c]| forward(g, c, hidden),
        )?;
        Ok((out, Shape::from(2 * rows * hidden)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hidden) = step_dims(l1, l2)?;
        let out = cuda::launch("lstm_cell_fwd", [(s1, l1), (s2, l2)], 2, rows, hidden)?;
        Ok((out, Shape::from(2 * rows * hidden)))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c_prev: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, hidden) = c_prev.dims2()?;
        let n = rows * hidden;
        let grads = gates.apply_op3_no_bwd(c_prev, &grad_res.contiguous()?, &CellGrad)?;
        let d_gates = grads.narrow(0, 0, 4 * n)?.reshape((rows, 4 * hidden))?;
        let d_c_prev = grads.narrow(0, 4 * n, n)?.reshape((rows, hidden))?;
        Ok((Some(d_gates), Some(d_c_prev)))
    }
}

impl CustomOp3 for CellGrad {
    fn name(&self) -> &'static str {
        "lstm_cell_grad"
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
        let (rows, hidden) = grad_dims(l1, l2, l3)?;
        let out = on_cpu(
            [(s1, l1), (s2, l2), (s3, l3)],
            |[g, c, d]| backward(g, c, d, hidden),
            |[g, c, d]| backward(g, c, d, hidden),
        )?;
        Ok((out, Shape::from(5 * rows * hidden)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hidden) = grad_dims(l1, l2, l3)?;
        let out = cuda::launch(
            "lstm_cell_bwd",
            [(s1, l1), (s2, l2), (s3, l3)],
            5,
            rows,
            hidden,
        )?;
        Ok((out, Shape::from(5 * rows * hidden)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lstm_cell.ptx"));
    const MODULE: &str = "smalltext_lstm_cell";

    /// Runs kernel `{name}_{f32|f64}` over `rows × hidden` elements with the inputs' contiguous
    /// data and an output of `out_per_element × rows × hidden` values, then two `u32`s: rows
    /// and hidden.
    pub fn launch<const N: usize>(
        name: &str,
        inputs: [(&CudaStorage, &Layout); N],
        out_per_element: usize,
        rows: usize,
        hidden: usize,
    ) -> candle_core::Result<CudaStorage> {
        let dev = inputs[0].0.device().clone();
        let n = rows * hidden;
        let dims = (
            u32::try_from(rows)
                .map_err(|_| candle_core::Error::Msg("lstm_cell: too many rows".into()))?,
            u32::try_from(hidden)
                .map_err(|_| candle_core::Error::Msg("lstm_cell: hidden too large".into()))?,
        );
        let slice = match &inputs[0].0.slice {
            CudaStorageSlice::F32(_) => CudaStorageSlice::F32(run::<f32, N>(
                &dev,
                &format!("{name}_f32"),
                &inputs,
                out_per_element * n,
                dims,
            )?),
            CudaStorageSlice::F64(_) => CudaStorageSlice::F64(run::<f64, N>(
                &dev,
                &format!("{name}_f64"),
                &inputs,
                out_per_element * n,
                dims,
            )?),
            _ => candle_core::bail!("{name}: f32 or f64 inputs"),
        };
        Ok(CudaStorage { slice, device: dev })
    }

    fn run<T, const N: usize>(
        dev: &CudaDevice,
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout); N],
        out_len: usize,
        (rows, hidden): (u32, u32),
    ) -> candle_core::Result<CudaSlice<T>>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        let mut views = Vec::with_capacity(N);
        for (s, l) in inputs {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("{kernel}: inputs must be contiguous")
            };
            views.push(s.as_cuda_slice::<T>()?.slice(start..end));
        }
        let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel before anything reads it.
        let out = unsafe { dev.alloc::<T>(out_len)? };
        let mut b = func.builder();
        for v in &views {
            b.arg(v);
        }
        b.arg(&out);
        b.arg(&rows);
        b.arg(&hidden);
        let cfg = LaunchConfig::for_num_elems(rows * hidden);
        // SAFETY: the kernel's parameters are N device pointers, the output and two u32s, as
        // pushed above, and it touches no element past `rows × hidden` of each.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    }
}
