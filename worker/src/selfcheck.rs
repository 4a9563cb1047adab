//! `worker --self-check --device cuda:N`: what gpu/check.sh runs on a GPU machine before it
//! trains. Each check compares the device against this build's CPU path, prints one line, and
//! fails the command when the difference is beyond its tolerance.
//!
//! 1. The LSTM layer of the default model's size: the device's composed layer against the
//!    CPU's fused op, output and every gradient (f32: |a − b| ≤ tol · (1e-3 + max(|a|, |b|))).
//! 2. Ten training steps of the classifier through [`Replica`] on the device against the same
//!    steps on the CPU: the losses, the weights at the end, and the copies of training state
//!    between host and device the steps made (none: the state is held on the device).
//! 3. With NCCL: a one-rank communicator's dense and sparse all-reduce from host memory, and
//!    its in-place sum of a GPU buffer, as the step sums its buckets (a machine with one GPU
//!    cannot form a bigger one).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use common::collective::Local;
use common::model::lstm_composed::{composed_layer, StepCell};
use common::model::{Batch, Direction, FlatConfig, FusedLstm, LstmOutput, PackPlan};
use common::train::{train_step, transfers_counted, Adam, AdamConfig, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::device::DeviceSpec;

const BATCH: usize = 32;
const STEPS: usize = 24;
const INPUT: usize = 100;
const HIDDEN: usize = 200;

pub fn run(spec: DeviceSpec) -> Result<()> {
    let device = spec.open()?;
    println!("self-check on {spec} against the CPU");
    let mut failed = Vec::new();
    let mut check = |name: &str, ok: bool| {
        if !ok {
            failed.push(name.to_string());
        }
    };
    check("lstm", lstm(&device, spec)?);
    check("training", training(&device, spec)?);
    #[cfg(feature = "nccl")]
    if let DeviceSpec::Cuda(ordinal) = spec {
        check("nccl", nccl(ordinal)?);
    }
    if failed.is_empty() {
        println!("self-check passed");
        Ok(())
    } else {
        bail!("self-check failed: {}", failed.join(", "))
    }
}

/// The worst `|a − b| / (floor + max(|a|, |b|))`.
fn worst_error(a: &[f32], b: &[f32], floor: f32) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (floor + x.abs().max(y.abs())))
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?)
}

fn random(shape: &[usize], rng: &mut ChaCha8Rng, scale: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Output and gradients of one layer on `device` (composed) and on the CPU (fused).
fn lstm(device: &Device, spec: DeviceSpec) -> Result<bool> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let lengths: Vec<usize> = (0..BATCH).map(|_| rng.gen_range(1..=STEPS)).collect();
    let g = 4 * HIDDEN;
    let x = random(&[BATCH, STEPS, INPUT], &mut rng, 1.0)?;
    let w_ih = random(&[2 * g, INPUT + 1], &mut rng, 0.07)?;
    let w_hh = random(&[2, g, HIDDEN + 1], &mut rng, 0.07)?;
    let probe = random(&[BATCH, 2 * HIDDEN], &mut rng, 1.0)?;

    let run_cpu = || -> Result<Vec<Vec<f32>>> {
        let vars = [&x, &w_ih, &w_hh]
            .map(|t| Var::from_tensor(t).context("a CPU variable"))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let plan = Arc::new(PackPlan::new(&lengths, STEPS)?);
        let dirs = [Direction::Forward, Direction::Reverse];
        let op = FusedLstm::new(plan, &dirs, HIDDEN, LstmOutput::Last, true, true);
        let out = op.apply(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        )?;
        let grads = (&out * &probe)?.sum_all()?.backward()?;
        let mut all = vec![flat(&out)?];
        for v in &vars {
            all.push(flat(grads.get(v).context("a missing CPU gradient")?)?);
        }
        Ok(all)
    };
    let run_device = |cell: StepCell| -> Result<Vec<Vec<f32>>> {
        let vars = [&x, &w_ih, &w_hh]
            .map(|t| {
                t.to_device(device)
                    .and_then(|t| Var::from_tensor(&t))
                    .context("a device variable")
            })
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let out = composed_layer(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &lengths,
            HIDDEN,
            LstmOutput::Last,
            cell,
        )?;
        let grads = (&out * &probe.to_device(device)?)?.sum_all()?.backward()?;
        let mut all = vec![flat(&out)?];
        for v in &vars {
            all.push(flat(grads.get(v).context("a missing device gradient")?)?);
        }
        Ok(all)
    };
    let cpu = run_cpu()?;
    let tol = 1e-3;
    let mut ok = true;
    // Both ways of doing a step's cell on the device: Candle ops, and the fused cell kernels.
    let cells = [StepCell::Ops, StepCell::Fused];
    for cell in cells {
        let dev = run_device(cell)?;
        for (k, name) in ["output", "dx", "dW_ih", "dW_hh"].iter().enumerate() {
            let err = worst_error(&dev[k], &cpu[k], 1e-3);
            ok &= err <= tol;
            println!(
                "lstm {name:<6} {spec} composed ({cell:?} cell) vs cpu fused: worst error \
                 {err:.2e} (tolerance {tol:.0e})"
            );
        }
    }
    let time = |f: &dyn Fn() -> Result<Vec<Vec<f32>>>| -> Result<f64> {
        let reps = 20;
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(reps))
    };
    println!(
        "lstm forward+backward, batch {BATCH}×{STEPS}: {spec} composed with the Ops cell {:.2} \
         ms, with the Fused cell {:.2} ms; cpu fused ({} threads) {:.2} ms",
        time(&|| run_device(StepCell::Ops))?,
        time(&|| run_device(StepCell::Fused))?,
        common::kernels::threads(),
        time(&run_cpu)?
    );
    Ok(ok)
}

/// Ten steps of the default-size classifier on `device` and on the CPU from the same seed.
fn training(device: &Device, spec: DeviceSpec) -> Result<bool> {
    let config = FlatConfig {
        vocab_size: 2_000,
        num_classes: 6,
        ..FlatConfig::default()
    }
    .parts();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let batches = (0..10)
        .map(|_| {
            let seqs: Vec<Vec<u32>> = (0..BATCH)
                .map(|_| {
                    let len = rng.gen_range(3..=20);
                    (0..len).map(|_| rng.gen_range(2..2_000)).collect()
                })
                .collect();
            let labels: Vec<u32> = (0..BATCH).map(|_| rng.gen_range(0..6)).collect();
            let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            Batch::new(&refs, &labels).context("a check batch")
        })
        .collect::<Result<Vec<_>>>()?;
    let train = |on: &Device| -> Result<(Vec<f64>, Vec<f32>, f64, u64)> {
        let replica = Replica::new(&config, 11, on)?;
        let mut opt = replica.hold(Adam::new(replica.model().groups(), AdamConfig::default()))?;
        let mut losses = Vec::new();
        let copies = transfers_counted().total();
        let start = Instant::now();
        for batch in &batches {
            let step = train_step(
                &replica,
                &mut opt,
                &mut Local,
                Some(batch),
                batch.len(),
                None,
                None,
            )?;
            losses.push(step.loss_sum() / batch.len() as f64);
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / batches.len() as f64;
        let copies = transfers_counted().total() - copies;
        let first = replica
            .model()
            .param("lstm.l0.w_ih")
            .context("the model has no lstm.l0.w_ih")?;
        Ok((losses, flat(first.as_tensor())?, ms, copies))
    };
    let (cpu_losses, cpu_w, cpu_ms, _) = train(&Device::Cpu)?;
    let (dev_losses, dev_w, dev_ms, copies) = train(device)?;
    let loss_err = cpu_losses
        .iter()
        .zip(&dev_losses)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1e-3))
        .fold(0.0, f64::max);
    // Adam's first steps move each weight by about the learning rate whatever the gradient's
    // size, so rounding differences show up in the weights at that scale, not below.
    let weight_diff = cpu_w
        .iter()
        .zip(&dev_w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let ok = loss_err <= 1e-3 && weight_diff <= 2e-3 && copies == 0;
    let shown: Vec<String> = dev_losses.iter().map(|l| format!("{l:.4}")).collect();
    println!("training losses on {spec}: {}", shown.join(" "));
    println!(
        "training 10 steps {spec} vs cpu: worst loss error {loss_err:.2e} (tolerance 1e-3), \
         largest weight difference {weight_diff:.2e} (tolerance 2e-3); {dev_ms:.1} ms/step on \
         {spec}, {cpu_ms:.1} ms/step on the cpu; {copies} copies of weights, gradients or \
         optimizer state between host and device in {} steps (expected 0)",
        batches.len()
    );
    Ok(ok)
}

#[cfg(feature = "nccl")]
fn nccl(ordinal: usize) -> Result<bool> {
    use common::collective::nccl::{new_unique_id, NcclAllReduce};
    use common::collective::Collective;
    let id = new_unique_id()?;
    let mut comm = NcclAllReduce::new(ordinal, 0, 1, &id)?;
    let dense: Vec<f32> = (0..500_000).map(|i| i as f32 * 0.5).collect();
    let mut buf = dense.clone();
    let start = Instant::now();
    comm.all_reduce_sum(&mut buf)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut ids = vec![3, 8, 9];
    let mut rows: Vec<f32> = (0..6).map(|i| i as f32).collect();
    comm.all_reduce_sparse_rows(&mut ids, &mut rows, 2)?;
    let ok = buf == dense && ids == [3, 8, 9] && rows == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    println!(
        "nccl one-rank all-reduce on cuda:{ordinal}: dense 500000 floats {ms:.2} ms, sparse rows \
         {}",
        if ok { "unchanged (ok)" } else { "CHANGED" }
    );
    // The step's way: a bucket summed in place in GPU memory, in a few sizes.
    let gpu = Device::new_cuda(ordinal)?;
    let mut in_place = true;
    let mut shown = Vec::new();
    for n in [1usize, 4_096, 500_000, 11_000_000] {
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.25).collect();
        let bucket = Tensor::from_slice(&values, n, &gpu)?;
        let start = Instant::now();
        comm.all_reduce_on_device(&bucket)?;
        gpu.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        in_place &= bucket.to_vec1::<f32>()? == values;
        shown.push(format!("{n} floats {ms:.2} ms"));
    }
    println!(
        "nccl one-rank all-reduce of GPU buffers in place on cuda:{ordinal}: {} ({})",
        shown.join(", "),
        if in_place {
            "unchanged (ok)"
        } else {
            "CHANGED"
        }
    );
    Ok(ok && in_place)
}
