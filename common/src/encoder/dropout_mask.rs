//! Dropout as one op whose mask is kept as bits, for the trainable encoder on the CPU.
//!
//! Written as `x · mask`, with the mask a tensor of scales and zeros, dropout keeps that mask
//! (a float per element) for the backward pass, and candle's backward pass also computes a
//! gradient for the mask, which nothing reads and nothing frees until the step ends: three
//! tensors of the input's size per site, eighteen sites in MiniLM. Here the op holds one bit
//! per element, and the values are the same, bit for bit.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Which elements dropout keeps, one bit each.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    words: Vec<u64>,
    len: usize,
}

impl Keep {
    pub fn with_capacity(len: usize) -> Self {
        Keep {
            words: Vec::with_capacity(len.div_ceil(64)),
            len: 0,
        }
    }

    pub fn push(&mut self, keep: bool) {
        if self.len == self.words.len() * 64 {
            self.words.push(0);
        }
        if keep {
            self.words[self.len / 64] |= 1 << (self.len % 64);
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }
}

/// `x · m`, m being `scale` where `keep` has a bit and 0 elsewhere; `scale` is the f32 that a
/// mask tensor of `x`'s type would hold. The backward pass multiplies by the same m.
pub fn dropout(x: &Tensor, keep: Keep, scale: f32) -> Result<Tensor> {
    if keep.len() != x.elem_count() {
        candle_core::bail!(
            "dropout: a mask of {} for {:?} values",
            keep.len(),
            x.dims()
        );
    }
    x.contiguous()?.apply_op1(Dropout {
        keep: Arc::new(keep),
        scale,
    })
}

struct Dropout {
    keep: Arc<Keep>,
    scale: f32,
}

/// Elements per parallel task: a multiple of 64, so that each task starts at a word.
const PER_TASK: usize = 1 << 14;

fn masked<T: candle_core::WithDType + num_traits::Zero>(
    op: &Dropout,
    storage: &CpuStorage,
    layout: &Layout,
    scale: T,
) -> Result<(CpuStorage, Shape)> {
    let data = storage.as_slice::<T>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("dropout: contiguous input only");
    };
    let x = &data[start..end];
    let mut out = vec![T::zero(); x.len()];
    // A word of the mask at a time, the select branch-free, so that it vectorises.
    let run = |(k, d): (usize, &mut [T])| {
        let first = k * PER_TASK;
        for (w, (d, x)) in d.chunks_mut(64).zip(x[first..].chunks(64)).enumerate() {
            let word = op.keep.words[first / 64 + w];
            for (j, (d, &v)) in d.iter_mut().zip(x).enumerate() {
                let m = match word >> j & 1 {
                    1 => scale,
                    _ => T::zero(),
                };
                *d = v * m;
            }
        }
    };
    if crate::kernels::threads() > 1 && x.len() > PER_TASK {
        out.par_chunks_mut(PER_TASK).enumerate().for_each(run);
    } else {
        out.chunks_mut(PER_TASK).enumerate().for_each(run);
    }
    Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(_) => masked::<f32>(self, storage, layout, self.scale),
            CpuStorage::F64(_) => masked::<f64>(self, storage, layout, f64::from(self.scale)),
            _ => candle_core::bail!("dropout: f32 or f64 only"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The op and `x · mask` give the same values and the same input gradient, bit for bit, in
    /// f32 and f64.
    #[test]
    fn bits_give_what_a_mask_tensor_gives() -> Result<()> {
        let n = 3 * 70 + 5;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let weights: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let scale = (1.0 / 0.9f64) as f32;
        let mut keep = Keep::with_capacity(n);
        let mut mask = Vec::with_capacity(n);
        for i in 0..n {
            let k = (i * 7919) % 10 != 3;
            keep.push(k);
            mask.push(if k { scale } else { 0.0 });
        }
        for dtype in [DType::F32, DType::F64] {
            let dev = Device::Cpu;
            let w = Tensor::from_vec(weights.clone(), n, &dev)?.to_dtype(dtype)?;
            let run = |fused: bool| -> Result<(Vec<f64>, Vec<f64>)> {
                let x =
                    Var::from_tensor(&Tensor::from_vec(values.clone(), n, &dev)?.to_dtype(dtype)?)?;
                let y = match fused {
                    true => dropout(x.as_tensor(), keep.clone(), scale)?,
                    false => {
                        let m = Tensor::from_vec(mask.clone(), n, &dev)?.to_dtype(dtype)?;
                        x.as_tensor().mul(&m)?
                    }
                };
                let g = y.mul(&w)?.sum_all()?.backward()?;
                let f = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
                Ok((f(&y)?, f(g.get(&x).expect("a gradient"))?))
            };
            let (a, b) = (run(true)?, run(false)?);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.0), bits(&b.0), "{dtype:?} values");
            assert_eq!(bits(&a.1), bits(&b.1), "{dtype:?} gradients");
        }
        assert!(dropout(
            &Tensor::zeros(5, DType::F32, &Device::Cpu)?,
            Keep::default(),
            1.0
        )
        .is_err());
        Ok(())
    }
}
