//! The bidirectional, optionally stacked, LSTM encoder: B × T × E token vectors in, one
//! B × 2H vector per sequence out (the forward direction's state after the last valid token
//! beside the reverse direction's state after token 0), padding ignored.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::dropout::Dropout;
use super::error::{ModelError, Result};
use super::lstm_composed::{composed_layer, StepCell};
use super::lstm_op::{Direction, FusedLstm, LstmOutput};
use super::mode::Mode;
use super::packing::PackPlan;
use crate::kernels::threads;

const DIRECTIONS: [Direction; 2] = [Direction::Forward, Direction::Reverse];

/// One bidirectional layer; both directions' weights are stacked (forward first), each bias
/// stored as the last column of its weight matrix, the layout the fused op takes. The two
/// biases stay separate parameters (not one sum) because Adam moves each by its own step, as
/// PyTorch does.
struct Layer {
    /// `[W_ih | b_ih]`: 2·4H × (input + 1)
    w_ih: Tensor,
    /// `[W_hh | b_hh]`: 2 × 4H × (H + 1)
    w_hh: Tensor,
}

pub struct BiLstm {
    layers: Vec<Layer>,
    between: Vec<Dropout>,
    hidden: usize,
    /// Composes Candle ops on the CPU too, as on other devices (see
    /// `Classifier::use_portable_ops`).
    portable: bool,
}

/// Parameter names (under the builder's prefix) and shapes of a BiLSTM, in the fixed order of
/// the flat gradient vector.
pub fn bilstm_params(input: usize, hidden: usize, layers: usize) -> Vec<(String, Vec<usize>)> {
    let g = 4 * hidden;
    (0..layers)
        .flat_map(|l| {
            let inp = if l == 0 { input } else { 2 * hidden };
            [
                (format!("l{l}.w_ih"), vec![2 * g, inp + 1]),
                (format!("l{l}.w_hh"), vec![2, g, hidden + 1]),
            ]
        })
        .collect()
}

/// A BiLSTM over `input`-wide vectors with `hidden` units per direction and `layers` layers,
/// dropout `dropout` between layers, its parameters read from `vb`. `seed` seeds the dropout.
pub fn bilstm(
    input: usize,
    hidden: usize,
    layers: usize,
    dropout: f32,
    seed: u64,
    vb: VarBuilder,
) -> Result<BiLstm> {
    if layers == 0 || hidden == 0 {
        return Err(ModelError::Config(
            "a BiLSTM needs layers ≥ 1 and hidden ≥ 1".into(),
        ));
    }
    let mut params = bilstm_params(input, hidden, layers).into_iter();
    let mut next = || -> Result<Tensor> {
        let (name, shape) = params
            .next()
            .ok_or_else(|| ModelError::Config("parameter list too short".into()))?;
        Ok(vb.get(shape, &name)?)
    };
    let mut stack = Vec::with_capacity(layers);
    for _ in 0..layers {
        stack.push(Layer {
            w_ih: next()?,
            w_hh: next()?,
        });
    }
    let between = (1..layers)
        .map(|l| Dropout::new(dropout, seed.wrapping_add(l as u64)))
        .collect();
    Ok(BiLstm {
        layers: stack,
        between,
        hidden,
        portable: false,
    })
}

impl BiLstm {
    /// Runs the ops every device has, on the CPU too, instead of the CPU's fused op.
    pub(crate) fn use_portable_ops(&mut self) {
        self.portable = true;
    }

    /// Units per direction.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Encodes `x` (B × T × E, rows right-padded, row b valid for `lengths[b]` steps) into
    /// B × 2H, in inference mode.
    pub fn forward(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        self.forward_t(x, lengths, Mode::Eval)
    }

    /// As [`BiLstm::forward`]; in [`Mode::Train`] it records what backward needs and applies
    /// dropout between layers.
    pub fn forward_t(&self, x: &Tensor, lengths: &[usize], mode: Mode) -> Result<Tensor> {
        self.forward_keyed(x, lengths, mode, None)
    }

    /// As [`BiLstm::forward_t`], with the rows' dropout keys (see [`Dropout::forward_keyed`]).
    pub fn forward_keyed(
        &self,
        x: &Tensor,
        lengths: &[usize],
        mode: Mode,
        keys: Option<&[u64]>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if lengths.len() != b {
            return Err(ModelError::Batch(format!(
                "{} lengths for a batch of {b} rows",
                lengths.len()
            )));
        }
        let plan = Arc::new(PackPlan::new(lengths, t)?);
        let mut input = x.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let last = l + 1 == self.layers.len();
            let output = if last {
                LstmOutput::Last
            } else {
                LstmOutput::Sequence
            };
            let y = self.layer_forward(layer, &input, &plan, output, mode)?;
            if last {
                return Ok(y);
            }
            input = self.between[l].forward_keyed(&y, mode, keys)?;
        }
        Err(ModelError::Config(
            "a BiLSTM needs at least one layer".into(),
        ))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        plan: &Arc<PackPlan>,
        output: LstmOutput,
        mode: Mode,
    ) -> Result<Tensor> {
        let p = |w: &Tensor| match mode {
            Mode::Train => w.clone(),
            // Inference must not build an autograd graph over the parameters.
            Mode::Eval => w.detach(),
        };
        if self.portable || !x.device().is_cpu() {
            // The fused op's kernels are CPU code; other devices compose Candle ops.
            return composed_layer(
                x,
                &p(&layer.w_ih),
                &p(&layer.w_hh),
                plan.lengths(),
                self.hidden,
                output,
                StepCell::from_env()?,
            );
        }
        let op = FusedLstm::new(
            plan.clone(),
            &DIRECTIONS,
            self.hidden,
            output,
            threads() > 1,
            mode == Mode::Train,
        );
        Ok(op.apply(x, &p(&layer.w_ih), &p(&layer.w_hh))?)
    }
}
