//! The fused LSTM op against the same layer composed from ordinary candle ops (forward values
//! and every gradient), and against central finite differences in f64; with variable lengths
//! and garbage in the padding, which must change nothing.

use crate::support;

use std::error::Error;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::model::bilstm::bilstm;
use common::model::lstm_composed::{composed_layer, StepCell};
use common::model::{Direction, FusedLstm, LstmOutput, Mode, PackPlan};
use support::{assert_close, flat, random_fused, random_var, reference_layer, rng, LayerParams};

type TestResult = Result<(), Box<dyn Error>>;

const LENGTHS: [usize; 4] = [5, 2, 4, 1];
const STEPS: usize = 5;
const INPUT: usize = 3;
const HIDDEN: usize = 4;
/// A hidden size that is a whole number of gemm's vector lanes: backward's step product then
/// takes the recurrent weights as they are, where [`HIDDEN`] takes a zero-padded copy.
const HIDDEN_UNPADDED: usize = 16;

/// The fused op over `x` with inputs `[W_ih | b_ih]`, `[W_hh | b_hh]`.
fn fused_layer(
    x: &Tensor,
    (w_ih, w_hh): (&Tensor, &Tensor),
    lengths: &[usize],
    output: LstmOutput,
    parallel: bool,
    record: bool,
) -> Result<Tensor, Box<dyn Error>> {
    let h = w_hh.dims()[2] - 1;
    let plan = Arc::new(PackPlan::new(lengths, x.dims()[1])?);
    let dirs = [Direction::Forward, Direction::Reverse];
    let op = FusedLstm::new(plan, &dirs, h, output, parallel, record);
    Ok(op.apply(x, w_ih, w_hh)?)
}

fn compare_with_composed(
    dtype: DType,
    tol: f64,
    output: LstmOutput,
    parallel: bool,
    hidden: usize,
) -> TestResult {
    let mut r = rng(11);
    let x = random_var(&[LENGTHS.len(), STEPS, INPUT], dtype, &mut r)?;
    let (w_ih, w_hh) = random_fused(INPUT, hidden, dtype, &mut r)?;
    let sequence = output == LstmOutput::Sequence;
    let ours = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, output, parallel, true)?;
    let p = LayerParams::from_fused(&w_ih, &w_hh)?;
    let theirs = reference_layer(&x, &p, &LENGTHS, hidden, sequence)?;
    assert_eq!(ours.dims(), theirs.dims());
    let w = random_var(ours.dims(), dtype, &mut r)?;
    let what = format!("{dtype:?} {output:?} parallel={parallel} hidden={hidden}");
    assert_close(
        &format!("{what} output"),
        &flat(&ours)?,
        &flat(&theirs)?,
        tol,
        1e-3,
    );
    let g_ours = (ours * w.as_tensor())?.sum_all()?.backward()?;
    let g_theirs = (theirs * w.as_tensor())?.sum_all()?.backward()?;
    for (name, var) in [("x", &x), ("w_ih", &w_ih), ("w_hh", &w_hh)] {
        let a = g_ours.get(var).ok_or("no gradient from the fused op")?;
        let b = g_theirs.get(var).ok_or("no gradient from the reference")?;
        assert_close(&format!("{what} d{name}"), &flat(a)?, &flat(b)?, tol, 1e-3);
    }
    // Padding positions of x never reach the output.
    let dx = flat(g_ours.get(&x).ok_or("no dx")?)?;
    for (row, &len) in LENGTHS.iter().enumerate() {
        for t in len..STEPS {
            let at = (row * STEPS + t) * INPUT;
            assert!(dx[at..at + INPUT].iter().all(|&v| v == 0.0));
        }
    }
    Ok(())
}

#[test]
fn fused_op_matches_composed_candle_ops_f64() -> TestResult {
    for output in [LstmOutput::Last, LstmOutput::Sequence] {
        for parallel in [false, true] {
            for hidden in [HIDDEN, HIDDEN_UNPADDED] {
                compare_with_composed(DType::F64, 1e-10, output, parallel, hidden)?;
            }
        }
    }
    Ok(())
}

#[test]
fn fused_op_matches_composed_candle_ops_f32() -> TestResult {
    for output in [LstmOutput::Last, LstmOutput::Sequence] {
        compare_with_composed(DType::F32, 2e-5, output, true, HIDDEN)?;
    }
    Ok(())
}

/// The batched composition the GPU runs (`lstm_composed`) against the fused op, on the CPU:
/// outputs and every gradient, with garbage in the padding.
#[test]
fn gpu_path_composed_layer_matches_fused_op() -> TestResult {
    for (output, cell) in [LstmOutput::Last, LstmOutput::Sequence]
        .into_iter()
        .flat_map(|o| [(o, StepCell::Ops), (o, StepCell::Fused)])
    {
        let mut r = rng(17);
        let x = random_var(&[LENGTHS.len(), STEPS, INPUT], DType::F64, &mut r)?;
        let (w_ih, w_hh) = random_fused(INPUT, HIDDEN, DType::F64, &mut r)?;
        let ours = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, output, false, true)?;
        let theirs = composed_layer(&x, &w_ih, &w_hh, &LENGTHS, HIDDEN, output, cell)?;
        assert_eq!(ours.dims(), theirs.dims());
        assert_close(
            &format!("composed {output:?} {cell:?} output"),
            &flat(&ours)?,
            &flat(&theirs)?,
            1e-10,
            1e-3,
        );
        let w = random_var(ours.dims(), DType::F64, &mut r)?;
        let g_ours = (ours * w.as_tensor())?.sum_all()?.backward()?;
        let g_theirs = (theirs * w.as_tensor())?.sum_all()?.backward()?;
        for var in [&x, &w_ih, &w_hh] {
            let a = flat(g_ours.get(var).ok_or("no gradient (fused)")?)?;
            let b = flat(g_theirs.get(var).ok_or("no gradient (composed)")?)?;
            assert_close(
                &format!("composed {output:?} {cell:?} gradient"),
                &a,
                &b,
                1e-10,
                1e-3,
            );
        }
    }
    Ok(())
}

#[test]
fn parallel_and_sequential_directions_agree_exactly() -> TestResult {
    let mut r = rng(5);
    let x = random_var(&[LENGTHS.len(), STEPS, INPUT], DType::F32, &mut r)?;
    let (w_ih, w_hh) = random_fused(INPUT, HIDDEN, DType::F32, &mut r)?;
    let a = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, LstmOutput::Last, true, false)?;
    let b = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, LstmOutput::Last, false, false)?;
    assert_eq!(flat(&a)?, flat(&b)?);
    Ok(())
}

/// Loss Σ w ⊙ layer(θ) as a plain function of the three inputs, for finite differences.
fn loss_at(values: &[Vec<f64>], w: &Tensor, output: LstmOutput) -> Result<f64, Box<dyn Error>> {
    let dev = Device::Cpu;
    let t = |v: &Vec<f64>, shape: &[usize]| Tensor::from_vec(v.clone(), shape, &dev);
    let g = 4 * HIDDEN;
    let x = t(&values[0], &[LENGTHS.len(), STEPS, INPUT])?;
    let w_ih = t(&values[1], &[2 * g, INPUT + 1])?;
    let w_hh = t(&values[2], &[2, g, HIDDEN + 1])?;
    let out = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, output, false, false)?;
    Ok((out * w)?.sum_all()?.to_scalar::<f64>()?)
}

#[test]
fn fused_op_matches_finite_differences_f64() -> TestResult {
    for output in [LstmOutput::Last, LstmOutput::Sequence] {
        let mut r = rng(3);
        let x = random_var(&[LENGTHS.len(), STEPS, INPUT], DType::F64, &mut r)?;
        let (w_ih, w_hh) = random_fused(INPUT, HIDDEN, DType::F64, &mut r)?;
        let out = fused_layer(&x, (&w_ih, &w_hh), &LENGTHS, output, true, true)?;
        let w = random_var(out.dims(), DType::F64, &mut r)?
            .as_tensor()
            .clone();
        let grads = (out * &w)?.sum_all()?.backward()?;
        let vars = [&x, &w_ih, &w_hh];
        let mut values = vars
            .iter()
            .map(|v| flat(v))
            .collect::<Result<Vec<_>, _>>()?;
        let eps = 1e-6;
        for (k, var) in vars.iter().enumerate() {
            let analytic = flat(grads.get(var).ok_or("missing gradient")?)?;
            let mut numeric = Vec::with_capacity(analytic.len());
            for i in 0..values[k].len() {
                let orig = values[k][i];
                values[k][i] = orig + eps;
                let up = loss_at(&values, &w, output)?;
                values[k][i] = orig - eps;
                let down = loss_at(&values, &w, output)?;
                values[k][i] = orig;
                numeric.push((up - down) / (2.0 * eps));
            }
            assert_close(
                &format!("{output:?} input {k}"),
                &analytic,
                &numeric,
                1e-6,
                1e-3,
            );
        }
    }
    Ok(())
}

#[test]
fn stacked_bilstm_matches_composed_layers() -> TestResult {
    let mut r = rng(21);
    let dtype = DType::F64;
    let x = random_var(&[LENGTHS.len(), STEPS, INPUT], dtype, &mut r)?;
    let l0 = random_fused(INPUT, HIDDEN, dtype, &mut r)?;
    let l1 = random_fused(2 * HIDDEN, HIDDEN, dtype, &mut r)?;
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().map_err(|_| "poisoned")?;
        for (l, (w_ih, w_hh)) in [&l0, &l1].into_iter().enumerate() {
            vars.insert(format!("l{l}.w_ih"), w_ih.clone());
            vars.insert(format!("l{l}.w_hh"), w_hh.clone());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let model = bilstm(INPUT, HIDDEN, 2, 0.0, 0, vb)?;
    let ours = model.forward_t(&x, &LENGTHS, Mode::Train)?;
    let p0 = LayerParams::from_fused(&l0.0, &l0.1)?;
    let p1 = LayerParams::from_fused(&l1.0, &l1.1)?;
    let mid = reference_layer(&x, &p0, &LENGTHS, HIDDEN, true)?;
    let theirs = reference_layer(&mid, &p1, &LENGTHS, HIDDEN, false)?;
    assert_close(
        "stacked output",
        &flat(&ours)?,
        &flat(&theirs)?,
        1e-10,
        1e-3,
    );
    let w = random_var(ours.dims(), dtype, &mut r)?;
    let g_ours = (ours * w.as_tensor())?.sum_all()?.backward()?;
    let g_theirs = (theirs * w.as_tensor())?.sum_all()?.backward()?;
    for var in [&x, &l0.0, &l0.1, &l1.0, &l1.1] {
        let a = flat(g_ours.get(var).ok_or("no gradient (ours)")?)?;
        let b = flat(g_theirs.get(var).ok_or("no gradient (reference)")?)?;
        assert_close("stacked gradient", &a, &b, 1e-10, 1e-3);
    }
    Ok(())
}
