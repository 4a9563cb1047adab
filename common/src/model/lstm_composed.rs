//! The LSTM layer of [`FusedLstm`](super::FusedLstm) composed from ordinary Candle ops, so it
//! runs on any backend with Candle's autograd doing the backpropagation through time. This is
//! the GPU path (the fused op's kernels are CPU code) and the path of a replica held on the
//! device (see `train::Replica`); on the CPU it is slower than the fused op and used only to
//! check the device path.
//!
//! Same inputs, layout and result: `x` (B × T × E, right-padded), `w_ih` (2·4H × (E + 1)),
//! `w_hh` (2 × 4H × (H + 1)), gates i, f, g, o; forward direction first. The whole batch,
//! both directions, steps together; a row's state is frozen (forward) or still zero (reverse)
//! outside its length, which is what reading the forward state at the true last token and
//! starting the reverse direction there means.

use candle_core::Tensor;

use super::error::{ModelError, Result};
use super::lstm_cell::lstm_cell;
use super::lstm_op::LstmOutput;

/// How the composed layer does a step's cell arithmetic (gate activations, new cell and state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepCell {
    /// Candle ops: seven launches a step on a GPU, more in backward.
    Ops,
    /// The [`lstm_cell`] op: one launch forward and one backward.
    Fused,
}

impl StepCell {
    /// What the GPU path uses: `SMALLTEXT_GPU_CELL=fused|ops`. `fused` by default (one launch
    /// a step each way instead of seven or more); `ops` switches back to Candle's ops.
    /// `gpu/check.sh` checks both against the CPU and trains with both.
    pub fn from_env() -> Result<Self> {
        match std::env::var("SMALLTEXT_GPU_CELL").as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("fused") => Ok(Self::Fused),
            Ok("ops") => Ok(Self::Ops),
            Ok(other) => Err(ModelError::Config(format!(
                "SMALLTEXT_GPU_CELL={other}: expected `ops` or `fused`"
            ))),
            Err(e) => Err(ModelError::Config(format!("SMALLTEXT_GPU_CELL: {e}"))),
        }
    }
}

/// One bidirectional LSTM layer over `x`, rows valid for `lengths`, `hidden` units a direction.
pub fn composed_layer(
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    lengths: &[usize],
    hidden: usize,
    output: LstmOutput,
    step_cell: StepCell,
) -> Result<Tensor> {
    let (b, t, e) = x.dims3()?;
    let h = hidden;
    let g = 4 * h;
    if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
        return Err(ModelError::Batch(format!(
            "lengths {lengths:?} for a batch of {b} rows of {t} steps"
        )));
    }
    if w_ih.dims() != [2 * g, e + 1] || w_hh.dims() != [2, g, h + 1] {
        return Err(ModelError::Config(format!(
            "LSTM weights {:?} and {:?} for input {e} and hidden {h}",
            w_ih.dims(),
            w_hh.dims()
        )));
    }
    let device = x.device();
    // keep[s]: B × 1, 1 where step s is inside the row.
    let keep: Vec<f32> = (0..t)
        .flat_map(|s| lengths.iter().map(move |&l| f32::from(u8::from(s < l))))
        .collect();
    let keep = Tensor::from_vec(keep, (t, b, 1), device)?.to_dtype(x.dtype())?;
    let shortest = lengths.iter().copied().min().unwrap_or(t);
    let flat = x.reshape((b * t, e))?;

    // The input projection of every step at once, a direction at a time; the recurrent
    // weights of both directions as one 2 × H × 4H batch.
    let mut projected = Vec::with_capacity(2);
    let mut recurrent = Vec::with_capacity(2);
    for d in 0..2 {
        let w = w_ih.narrow(0, d * g, g)?;
        let r = w_hh.get(d)?;
        let bias = (w.narrow(1, e, 1)? + r.narrow(1, h, 1)?)?.squeeze(1)?;
        // Candle's CUDA matmul takes a transposed operand only when it is a plain transpose
        // of a contiguous matrix, so the weight columns are made contiguous first.
        let p = flat
            .matmul(&w.narrow(1, 0, e)?.contiguous()?.t()?)?
            .broadcast_add(&bias)?
            .reshape((b, t, g))?
            .transpose(0, 1)?
            .contiguous()?;
        projected.push(p);
        recurrent.push(r.narrow(1, 0, h)?.t()?);
    }
    // Step k runs the forward direction at time k and the reverse one at time T − 1 − k, as
    // one batch of two: each step's product, cell and masking are one launch for both.
    let reversed: Vec<u32> = (0..t as u32).rev().collect();
    let reversed = Tensor::from_vec(reversed, t, device)?;
    let inputs = Tensor::stack(
        &[&projected[0], &projected[1].index_select(&reversed, 0)?],
        1,
    )?
    .contiguous()?;
    let r_t = Tensor::stack(&recurrent, 0)?.contiguous()?;
    // The reverse direction only has to keep rows at zero until they start: a multiplication
    // by `keep` at its time, and by one for the forward direction, at steps past the shortest
    // row.
    let ones = Tensor::ones((t, b, 1), x.dtype(), device)?;
    let masks = Tensor::stack(&[&ones, &keep.index_select(&reversed, 0)?], 1)?.contiguous()?;
    let mut state = Tensor::zeros((2, b, h), x.dtype(), device)?;
    let mut cell = state.clone();
    let mut forward = Vec::with_capacity(t);
    let mut reverse = vec![None; t];
    // Each step is a launch per op on a GPU, so the step does as few as it can: one
    // sigmoid over all four gates, and no masking where none is needed. The forward
    // direction runs every row to the end unmasked (what comes after a row's last token
    // never reaches its earlier states) and reads each row's state at its last token
    // afterwards.
    for k in 0..t {
        let gates = (inputs.get(k)? + state.matmul(&r_t)?)?;
        match step_cell {
            StepCell::Ops => {
                let act = candle_nn::ops::sigmoid(&gates)?;
                let c = gates.narrow(2, 2 * h, h)?.tanh()?;
                cell = ((act.narrow(2, h, h)? * &cell)? + (act.narrow(2, 0, h)? * c)?)?;
                state = (act.narrow(2, 3 * h, h)? * cell.tanh()?)?;
            }
            StepCell::Fused => {
                let (hs, cs) = lstm_cell(&gates.reshape((2 * b, g))?, &cell.reshape((2 * b, h))?)?;
                state = hs.reshape((2, b, h))?;
                cell = cs.reshape((2, b, h))?;
            }
        }
        if t - 1 - k >= shortest {
            let m = masks.get(k)?;
            cell = cell.broadcast_mul(&m)?;
            state = state.broadcast_mul(&m)?;
        }
        forward.push(state.get(0)?);
        reverse[t - 1 - k] = Some(state.get(1)?);
    }
    let reverse: Vec<Tensor> = reverse.into_iter().flatten().collect();
    let mut per_direction = Vec::with_capacity(2);
    for (d, states) in [forward, reverse].iter().enumerate() {
        let stacked = || Tensor::stack(states, 1);
        per_direction.push(match (output, d) {
            (LstmOutput::Last, 0) => {
                let last: Vec<u32> = lengths
                    .iter()
                    .flat_map(|&l| std::iter::repeat_n(l as u32 - 1, h))
                    .collect();
                let last = Tensor::from_vec(last, (b, 1, h), device)?;
                stacked()?.gather(&last, 1)?.squeeze(1)?
            }
            // The reverse direction ends at time 0.
            (LstmOutput::Last, _) => states[0].clone(),
            // Zero in padding, as the fused op.
            (LstmOutput::Sequence, _) => {
                stacked()?.broadcast_mul(&keep.transpose(0, 1)?.contiguous()?)?
            }
        });
    }
    let dim = per_direction[0].rank() - 1;
    Ok(Tensor::cat(&per_direction, dim)?)
}
