//! Layer normalisation, a linear layer, softmax and GELU for the trainable encoder, each
//! one pass forward and one pass backward on the CPU, in f32 and f64.
//!
//! Composed from candle's element-wise ops (as the trainable encoder first wrote them, and as
//! it still does on other devices), each is five to ten full passes over its tensor forward
//! and as many again backward, with a tensor allocated for each: about a third of a
//! fine-tuning step. Their backward passes are the textbook ones, checked here against the
//! composed ops' autograd and, through the encoder, against f64 finite differences.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use num_traits::Float;
use rayon::prelude::*;

use super::gelu;

/// Rows per parallel task: enough that the split pays for itself.
const MIN_PARALLEL: usize = 1 << 15;

/// Layer normalisation over the last dimension: (x − mean) / √(biased variance + eps) · w + b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

/// `x wᵀ + b`, a linear layer (`w` as stored, out × in) over the rows of `x`, as one op: the
/// product is candle's own CPU matmul and the bias is added in place, so the values are those
/// of `x.matmul(&w.t())` and then the bias, bit for bit, but the graph keeps only `x` for the
/// backward pass, not also the product before its bias.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    attention_softmax(x, 1.0, None)
}

/// Attention's probabilities from its raw scores `x` (n × heads × queries × keys): softmax over
/// the keys of `x · scale`, where the keys of example b past `lengths[b]` (padding) get the
/// lowest f32 added, as an additive mask does. The same values, bit for bit, as the scaling,
/// the mask's addition and the softmax as three ops, but one tensor kept for the backward pass
/// instead of three, and no gradient made for the mask.
pub fn attention_softmax(x: &Tensor, scale: f64, lengths: Option<&[usize]>) -> Result<Tensor> {
    let lengths = match lengths {
        Some(l) => {
            let (n, _, _, keys) = x.dims4()?;
            if l.len() != n || l.iter().any(|&l| l > keys) {
                candle_core::bail!("attention-softmax: lengths {l:?} for scores {:?}", x.dims());
            }
            Some(std::sync::Arc::from(l))
        }
        None => None,
    };
    x.contiguous()?.apply_op1(Softmax { scale, lengths })
}

/// `0.5 x (1 + erf(x / √2))`; in f32, erf is [`gelu::erf`] (within 1e-6), and the forward
/// pass is the frozen encoder's vectorised kernel.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Whether `x` can take the fused ops: a CPU tensor of f32 or f64.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// erf and GELU in the precision at hand.
trait Erf:
    Float + candle_core::WithDType + std::ops::AddAssign + std::ops::MulAssign + Send + Sync + 'static
{
    fn erf_of(self) -> Self;
    fn cast(x: f64) -> Self;

    /// `dst = 0.5 x (1 + erf(x / √2))`.
    fn gelu(dst: &mut [Self], src: &[Self]) {
        let (half, r2) = (Self::cast(0.5), Self::cast(std::f64::consts::FRAC_1_SQRT_2));
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = half * v * (Self::one() + (v * r2).erf_of());
        }
    }
}

impl Erf for f32 {
    fn erf_of(self) -> Self {
        gelu::erf(self)
    }
    fn cast(x: f64) -> Self {
        x as f32
    }
    /// The frozen encoder's kernel, compiled for the machine's vector width.
    fn gelu(dst: &mut [Self], src: &[Self]) {
        gelu::gelu_block((dst, src));
    }
}

impl Erf for f64 {
    fn erf_of(self) -> Self {
        libm::erf(self)
    }
    fn cast(x: f64) -> Self {
        x
    }
}

/// The contiguous values of one operand.
fn values<'a, T: candle_core::WithDType>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: contiguous input only"),
    }
}

/// Runs `f` on each row (the last dimension) of `dst` with the matching rows of `srcs`, in
/// parallel when there is enough work.
fn rows<T: Send + Sync, const N: usize>(
    dst: &mut [T],
    srcs: [&[T]; N],
    width: usize,
    f: impl Fn(&mut [T], [&[T]; N]) + Send + Sync,
) {
    rows_at(dst, srcs, width, |_, d, s| f(d, s));
}

/// Runs `f` on each row of `y`, in place, in parallel when there is enough work.
fn rows_in_place<T: Send + Sync>(y: &mut [T], width: usize, f: impl Fn(&mut [T]) + Send + Sync) {
    let width = width.max(1);
    if crate::kernels::threads() > 1 && y.len() >= MIN_PARALLEL {
        let per_task = (MIN_PARALLEL / 4).div_ceil(width) * width;
        y.par_chunks_mut(per_task)
            .for_each(|chunk| chunk.chunks_mut(width).for_each(&f));
    } else {
        y.chunks_mut(width).for_each(f);
    }
}

/// As [`rows`], `f` told each row's index.
fn rows_at<T: Send + Sync, const N: usize>(
    dst: &mut [T],
    srcs: [&[T]; N],
    width: usize,
    f: impl Fn(usize, &mut [T], [&[T]; N]) + Send + Sync,
) {
    let width = width.max(1);
    let run = |(i, d): (usize, &mut [T])| {
        let start = i * width;
        f(i, d, srcs.map(|s| &s[start..start + d.len()]));
    };
    if crate::kernels::threads() > 1 && dst.len() >= MIN_PARALLEL {
        let per_task = (MIN_PARALLEL / 4).div_ceil(width) * width;
        dst.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(k, chunk)| {
                for (i, d) in chunk.chunks_mut(width).enumerate() {
                    run((k * per_task / width + i, d));
                }
            });
    } else {
        dst.chunks_mut(width).enumerate().for_each(run);
    }
}

/// Dispatches a generic kernel `$f::<T>(args…)` over f32 and f64 storage.
macro_rules! by_dtype {
    ($op:expr, $storage:expr, $f:ident($($arg:expr),*)) => {
        match $storage {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => candle_core::bail!("{}: f32 or f64 only", $op),
        }
    };
}

fn mean_and_inv_std<T: Erf>(x: &[T], eps: f64) -> (T, T) {
    let n = T::cast(x.len() as f64);
    let mean = x.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = x
        .iter()
        .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
        / n;
    (mean, T::one() / (var + T::cast(eps)).sqrt())
}

struct LayerNorm {
    eps: f64,
}

fn layer_norm_fwd<T: Erf>(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let width = xl.dims().last().copied().unwrap_or(1);
    let x = values::<T>("layer-norm", xs, xl)?;
    let (w, b) = (
        values::<T>("layer-norm", ws, wl)?,
        values::<T>("layer-norm", bs, bl)?,
    );
    if w.len() != width || b.len() != width {
        candle_core::bail!("layer-norm: weights of {} for rows of {width}", w.len());
    }
    let mut out = vec![T::zero(); x.len()];
    rows(&mut out, [x], width, |d, [x]| {
        let (mean, inv) = mean_and_inv_std(x, eps);
        for (((d, &v), &w), &b) in d.iter_mut().zip(x).zip(w).zip(b) {
            *d = (v - mean) * inv * w + b;
        }
    });
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

/// dx = (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)) / σ with ĝ = g·w, x̂ and σ recomputed from x.
fn layer_norm_dx<T: Erf>(
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let width = xl.dims().last().copied().unwrap_or(1);
    let x = values::<T>("layer-norm-backward", xs, xl)?;
    let g = values::<T>("layer-norm-backward", gs, gl)?;
    let w = values::<T>("layer-norm-backward", ws, wl)?;
    let mut out = vec![T::zero(); x.len()];
    rows(&mut out, [x, g], width, |d, [x, g]| {
        let (mean, inv) = mean_and_inv_std(x, eps);
        let n = T::cast(x.len() as f64);
        let (mut sg, mut sgy) = (T::zero(), T::zero());
        for ((&v, &g), &w) in x.iter().zip(g).zip(w) {
            sg += g * w;
            sgy += g * w * (v - mean) * inv;
        }
        let (mg, mgy) = (sg / n, sgy / n);
        for (((d, &v), &g), &w) in d.iter_mut().zip(x).zip(g).zip(w) {
            *d = (g * w - mg - (v - mean) * inv * mgy) * inv;
        }
    });
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

/// The gradients of w and b (2 × width): the column sums of g·x̂ and of g.
fn layer_norm_dwb<T: Erf>(
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let width = xl.dims().last().copied().unwrap_or(1);
    let x = values::<T>("layer-norm-backward", xs, xl)?;
    let g = values::<T>("layer-norm-backward", gs, gl)?;
    let mut out = vec![T::zero(); 2 * width];
    let (dw, db) = out.split_at_mut(width);
    for (x, g) in x.chunks(width).zip(g.chunks(width)) {
        let (mean, inv) = mean_and_inv_std(x, eps);
        for (((dw, db), &v), &g) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(g) {
            *dw += g * (v - mean) * inv;
            *db += g;
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from((2, width))))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            xs,
            layer_norm_fwd((xs, xl), (ws, wl), (bs, bl), self.eps)
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(&g, w, &LayerNormDx { eps: self.eps })?;
        let dwb = x.apply_op2_no_bwd(&g, &LayerNormDwb { eps: self.eps })?;
        Ok((Some(dx), Some(dwb.get(0)?), Some(dwb.get(1)?)))
    }
}

struct LayerNormDx {
    eps: f64,
}

impl CustomOp3 for LayerNormDx {
    fn name(&self) -> &'static str {
        "layer-norm-dx"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            xs,
            layer_norm_dx((xs, xl), (gs, gl), (ws, wl), self.eps)
        )
    }
}

struct LayerNormDwb {
    eps: f64,
}

impl CustomOp2 for LayerNormDwb {
    fn name(&self) -> &'static str {
        "layer-norm-dwb"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(
            self.name(),
            xs,
            layer_norm_dwb((xs, xl), (gs, gl), self.eps)
        )
    }
}

struct Linear;

/// Adds `b` to each row of `y`, in place.
fn add_bias<T: Erf>(y: &mut [T], bs: &CpuStorage, bl: &Layout) -> Result<()> {
    let b = values::<T>("linear", bs, bl)?;
    rows_in_place(y, b.len(), |row| {
        for (y, &b) in row.iter_mut().zip(b) {
            *y += b;
        }
    });
    Ok(())
}

fn column_sum<T: Erf>(storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
    let width = layout.dims().last().copied().unwrap_or(1);
    let g = values::<T>("column-sum", storage, layout)?;
    let mut out = vec![T::zero(); width];
    for row in g.chunks(width) {
        for (o, &g) in out.iter_mut().zip(row) {
            *o += g;
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from(width)))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (&[m, k], &[n, k2], &[nb]) = (xl.dims(), wl.dims(), bl.dims()) else {
            candle_core::bail!(
                "linear: rows {:?}, weights {:?}, bias {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        };
        if k != k2 || n != nb {
            candle_core::bail!("linear: rows of {k} for weights {n} × {k2} and a bias of {nb}");
        }
        // What Tensor::matmul hands the storage for x · wᵀ.
        let mut y = xs.matmul(ws, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        match &mut y {
            CpuStorage::F32(y) => add_bias(y, bs, bl)?,
            CpuStorage::F64(y) => add_bias(y, bs, bl)?,
            _ => candle_core::bail!("linear: f32 or f64 only"),
        }
        Ok((y, Shape::from((m, n))))
    }

    /// As candle's backward passes of the product, of `wᵀ` and of the bias.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let db = g.apply_op1_no_bwd(&ColumnSum)?;
        // Detached: made from the weights and the activations, these would otherwise record
        // how, and the weights' gradients would keep every layer's incoming gradient alive
        // until the step ends.
        let dx = g.matmul(w)?.detach();
        let dw = x.t()?.matmul(&g)?.t()?.detach();
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), storage, column_sum(storage, layout))
    }
}

/// Softmax of `x · scale` over the last dimension, with `lengths` (one per example of
/// n × heads × queries × keys scores) masking the keys past them.
struct Softmax {
    scale: f64,
    lengths: Option<std::sync::Arc<[usize]>>,
}

fn softmax_fwd<T: Erf>(
    op: &Softmax,
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let width = layout.dims().last().copied().unwrap_or(1);
    let x = values::<T>("softmax", storage, layout)?;
    // Rows per example, for the mask.
    let per_example = match &op.lengths {
        Some(l) => x.len() / width.max(1) / l.len().max(1),
        None => 1,
    };
    // As candle's affine (x · scale + 0) and the f32 mask added after it, in T.
    let (scale, zero) = (T::cast(op.scale), T::zero());
    let masked = T::cast(f64::from(f32::MIN));
    let mut out = vec![T::zero(); x.len()];
    rows_at(&mut out, [x], width, |row, d, [x]| {
        let len = op
            .lengths
            .as_ref()
            .map_or(width, |l| l[row / per_example.max(1)]);
        for (j, (d, &v)) in d.iter_mut().zip(x).enumerate() {
            let scaled = v * scale + zero;
            *d = match op.lengths.is_some() {
                true if j < len => scaled + zero,
                true => scaled + masked,
                false => scaled,
            };
        }
        let max = d.iter().fold(T::neg_infinity(), |a, &v| Float::max(a, v));
        let mut sum = T::zero();
        for d in d.iter_mut() {
            *d = (*d - max).exp();
            sum += *d;
        }
        let inv = T::one() / sum;
        d.iter_mut().for_each(|d| *d *= inv);
    });
    Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
}

fn softmax_bwd<T: Erf>(
    ys: &CpuStorage,
    yl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let width = yl.dims().last().copied().unwrap_or(1);
    let y = values::<T>("softmax-backward", ys, yl)?;
    let g = values::<T>("softmax-backward", gs, gl)?;
    let mut out = vec![T::zero(); y.len()];
    rows(&mut out, [y, g], width, |d, [y, g]| {
        let dot = y.iter().zip(g).fold(T::zero(), |a, (&y, &g)| a + y * g);
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d = y * (g - dot);
        }
    });
    Ok((T::to_cpu_storage_owned(out), yl.shape().clone()))
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), storage, softmax_fwd(self, storage, layout))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let dx = res.contiguous()?.apply_op2_no_bwd(&g, &SoftmaxBackward)?;
        // The mask's addition passes the gradient on; the scaling is candle's affine backward.
        Ok(Some(match self.scale == 1.0 {
            true => dx,
            false => dx.affine(self.scale, 0.0)?,
        }))
    }
}

/// dx = y · (g − Σ g·y).
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), ys, softmax_bwd(ys, yl, gs, gl))
    }
}

/// Elements per parallel task of the element-wise GELU.
const GELU_ROW: usize = 4096;

struct Gelu;

fn gelu_fwd<T: Erf>(storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = values::<T>("gelu-erf", storage, layout)?;
    let mut out = vec![T::zero(); x.len()];
    rows(&mut out, [x], GELU_ROW, |d, [x]| T::gelu(d, x));
    Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
}

fn gelu_bwd<T: Erf>(
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let x = values::<T>("gelu-erf-backward", xs, xl)?;
    let g = values::<T>("gelu-erf-backward", gs, gl)?;
    let mut out = vec![T::zero(); x.len()];
    let (half, r2) = (T::cast(0.5), T::cast(std::f64::consts::FRAC_1_SQRT_2));
    let r2pi = T::cast(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    rows(&mut out, [x, g], GELU_ROW, |d, [x, g]| {
        for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
            let cdf = half * (T::one() + (v * r2).erf_of());
            let pdf = r2pi * (-half * v * v).exp();
            *d = g * (cdf + v * pdf);
        }
    });
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), storage, gelu_fwd(storage, layout))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeluBackward)?))
    }
}

/// dx = g · (Φ(x) + x φ(x)).
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self.name(), xs, gelu_bwd(xs, xl, gs, gl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Weights and biases of the width of the test's rows.
    fn affine(dtype: DType) -> Result<(Var, Var)> {
        let w: Vec<f64> = (0..37).map(|i| 0.5 + (i % 7) as f64 / 5.0).collect();
        let b: Vec<f64> = (0..37).map(|i| (i % 5) as f64 / 4.0 - 0.5).collect();
        let var = |v: Vec<f64>| -> Result<Var> {
            Var::from_tensor(&Tensor::from_vec(v, 37, &Device::Cpu)?.to_dtype(dtype)?)
        };
        Ok((var(w)?, var(b)?))
    }

    fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    fn composed_softmax(x: &Tensor) -> Result<Tensor> {
        let e = x
            .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
            .exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    fn composed_gelu(x: &Tensor) -> Result<Tensor> {
        x.mul(&(((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)?)
    }

    /// The largest difference between the fused op and the composed one, forward and in the
    /// gradients (of the input and of `extra`) of a weighted sum, over a 3 × 5 × 37 input.
    fn worst(
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        composed: impl Fn(&Tensor) -> Result<Tensor>,
        extra: &[&Var],
        dtype: DType,
    ) -> Result<f64> {
        let n = 3 * 5 * 37;
        let values: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f64 / 250.0 - 2.0)
            .collect();
        let weights: Vec<f64> = (0..n)
            .map(|i| ((i * 104729) % 997) as f64 / 997.0)
            .collect();
        let w = Tensor::from_vec(weights, (3, 5, 37), &Device::Cpu)?.to_dtype(dtype)?;
        let mut out = Vec::new();
        for f in [&fused as &dyn Fn(&Tensor) -> Result<Tensor>, &composed] {
            let x = Var::from_tensor(
                &Tensor::from_vec(values.clone(), (3, 5, 37), &Device::Cpu)?.to_dtype(dtype)?,
            )?;
            let y = f(x.as_tensor())?;
            let grads = y.mul(&w)?.sum_all()?.backward()?;
            let flat = |t: &Tensor| -> Result<Vec<f64>> {
                t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
            };
            let mut all = flat(&y)?;
            for v in std::iter::once(&x).chain(extra.iter().copied()) {
                all.extend(flat(grads.get(v).expect("a gradient"))?);
            }
            out.push(all);
        }
        Ok(out[0]
            .iter()
            .zip(&out[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max))
    }

    /// The attention's softmax gives the values and input gradients of the three ops it
    /// replaces (scaling, the additive mask, softmax), bit for bit, padded or not.
    #[test]
    fn the_attention_softmax_is_the_three_ops_it_replaces() -> Result<()> {
        let (n, heads, t) = (3, 2, 7);
        let count = n * heads * t * t;
        let values: Vec<f64> = (0..count)
            .map(|i| ((i * 7919) % 1000) as f64 / 97.0 - 5.0)
            .collect();
        let weights: Vec<f64> = (0..count)
            .map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.3)
            .collect();
        let scale = 1.0 / 32f64.sqrt();
        for dtype in [DType::F32, DType::F64] {
            for lengths in [None, Some(vec![7, 3, 5])] {
                let dev = Device::Cpu;
                let w =
                    Tensor::from_vec(weights.clone(), (n, heads, t, t), &dev)?.to_dtype(dtype)?;
                let run = |fused: bool| -> Result<(Vec<u64>, Vec<u64>)> {
                    let x = Var::from_tensor(
                        &Tensor::from_vec(values.clone(), (n, heads, t, t), &dev)?
                            .to_dtype(dtype)?,
                    )?;
                    let y = match fused {
                        true => attention_softmax(x.as_tensor(), scale, lengths.as_deref())?,
                        false => {
                            let mut s = (x.as_tensor() * scale)?;
                            if let Some(l) = &lengths {
                                let b: Vec<f32> = l
                                    .iter()
                                    .flat_map(|&l| {
                                        (0..t).map(move |i| if i < l { 0.0 } else { f32::MIN })
                                    })
                                    .collect();
                                let b = Tensor::from_vec(b, (n, 1, 1, t), &dev)?.to_dtype(dtype)?;
                                s = s.broadcast_add(&b)?;
                            }
                            softmax(&s)?
                        }
                    };
                    let g = y.mul(&w)?.sum_all()?.backward()?;
                    let bits = |t: &Tensor| -> Result<Vec<u64>> {
                        Ok(t.to_dtype(DType::F64)?
                            .flatten_all()?
                            .to_vec1::<f64>()?
                            .iter()
                            .map(|v| v.to_bits())
                            .collect())
                    };
                    Ok((bits(&y)?, bits(g.get(&x).expect("a gradient"))?))
                };
                let (a, b) = (run(true)?, run(false)?);
                assert!(a.0 == b.0, "{dtype:?} {lengths:?}: values");
                assert!(a.1 == b.1, "{dtype:?} {lengths:?}: gradients");
            }
        }
        Ok(())
    }

    /// The largest difference between the linear op and `x.matmul(&w.t())` plus the bias, in
    /// the values and the gradients of x, w and b: none.
    fn linear_worst(dtype: DType) -> Result<f64> {
        let (rows, inner, out) = (45, 37, 29);
        let value = |n: usize, salt: usize| -> Vec<f64> {
            (0..n)
                .map(|i| ((i * 7919 + salt) % 1000) as f64 / 300.0 - 1.5)
                .collect()
        };
        let dev = Device::Cpu;
        let var = |v: Vec<f64>, shape: &[usize]| -> Result<Var> {
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)?)
        };
        let g = Tensor::from_vec(value(rows * out, 5), (rows, out), &dev)?.to_dtype(dtype)?;
        let mut all = Vec::new();
        for fused in [true, false] {
            let x = var(value(rows * inner, 1), &[rows, inner])?;
            let w = var(value(out * inner, 2), &[out, inner])?;
            let b = var(value(out, 3), &[out])?;
            let y = match fused {
                true => linear(x.as_tensor(), w.as_tensor(), b.as_tensor())?,
                false => x
                    .as_tensor()
                    .matmul(&w.as_tensor().t()?)?
                    .broadcast_add(b.as_tensor())?,
            };
            let grads = y.mul(&g)?.sum_all()?.backward()?;
            let flat = |t: &Tensor| -> Result<Vec<f64>> {
                t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
            };
            let mut v = flat(&y)?;
            for p in [&x, &w, &b] {
                v.extend(flat(grads.get(p).expect("a gradient"))?);
            }
            all.push(v);
        }
        Ok(all[0]
            .iter()
            .zip(&all[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max))
    }

    #[test]
    fn the_f32_gelu_matches_candles() -> Result<()> {
        let xs: Vec<f32> = (-5000..5000).map(|i| i as f32 * 1.7e-3).collect();
        let t = Tensor::from_vec(xs, 10_000, &Device::Cpu)?;
        let ours = gelu_erf(&t)?.to_vec1::<f32>()?;
        let theirs = t.gelu_erf()?.to_vec1::<f32>()?;
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "worst difference {worst}");
        Ok(())
    }

    #[test]
    fn the_fused_ops_match_the_composed_ones() -> Result<()> {
        for (dtype, bound) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let (w, b) = affine(dtype)?;
            let norm = worst(
                |x| layer_norm(x, &w, &b, 1e-12),
                |x| composed_layer_norm(x, &w, &b, 1e-12),
                &[&w, &b],
                dtype,
            )?;
            assert!(norm < bound, "layer norm {dtype:?}: {norm}");
            let lin = linear_worst(dtype)?;
            assert!(lin == 0.0, "linear {dtype:?}: {lin}");
            let soft = worst(softmax, composed_softmax, &[], dtype)?;
            assert!(soft < bound, "softmax {dtype:?}: {soft}");
            let gelu = worst(gelu_erf, composed_gelu, &[], dtype)?;
            assert!(gelu < bound, "gelu {dtype:?}: {gelu}");
        }
        Ok(())
    }
}
