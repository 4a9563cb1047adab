//! Where a training step's time goes, piece by piece, at TREC-like sizes (B = 32, T = 11,
//! E = 100, H = 200): the products a step is made of in the layouts the op uses, the fused
//! op forward and backward alone (input projection included), a whole `compute_gradients`,
//! and the Adam update.
//!
//! ```text
//! cargo run --release -p common --example bench_op -- [threads]
//! BIG_GEMM=1 cargo run --release -p common --example bench_op -- 2   # do 2 threads scale?
//! BATCH=16 cargo run --release -p common --example bench_op            # half a batch (2 workers)
//! PROBE=2 cargo run --release -p common --example bench_op             # 2 s of a step's products
//! ```
//! On a machine shared with other work, `chrt -f 10` in front gives steadier figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use common::kernels::set_threads;
use common::model::{Batch, Classifier, Direction, FlatConfig, FusedLstm, LstmOutput, PackPlan};
use common::train::{compute_gradients, Adam, AdamConfig};

/// Median milliseconds of `f` over `reps` runs, after a warm-up run.
fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `dst (m×n) += op(lhs) (m×k) · op(rhs)` with gemm; `lhs_t`: lhs is stored k×m, `rhs_t`:
/// rhs is stored n×k.
fn gemm_probe(m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool) -> f64 {
    gemm_probe_ld(m, n, k, lhs_t, rhs_t, 0)
}

/// As [`gemm_probe`], with `pad` extra elements at the end of each stored rhs row.
fn gemm_probe_ld(m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool, pad: usize) -> f64 {
    let lhs = vec![0.5f32; m * k];
    let rhs = vec![0.25f32; (k + pad) * (n + pad)];
    let mut dst = vec![0.0f32; m * n];
    let (rhs_rs, rhs_cs) = if rhs_t { (1, k + pad) } else { (n + pad, 1) };
    let (lhs_rs, lhs_cs) = if lhs_t { (1, m) } else { (k, 1) };
    // SAFETY: the slices are as long as the shapes and strides below require.
    let ms = time_ms(200, || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    });
    black_box(&dst);
    2.0 * (m * n * k) as f64 / ms / 1e6
}

/// GFLOP/s of a step's two kinds of product, a per-step `h·W` and a weight gradient over all
/// tokens, run in turn for `secs` seconds on one thread. Two copies at once against one alone
/// tell what this machine's second core adds right now (a shared host can give two busy
/// vCPUs the throughput of one).
fn probe(secs: f64, e: usize, h: usize) -> f64 {
    let start = Instant::now();
    let mut flops = 0.0;
    while start.elapsed().as_secs_f64() < secs {
        for (m, n, k, lt) in [(32, 4 * h, h, false), (4 * h, e, 326, true)] {
            // gemm_probe runs the product 201 times (a warm-up and 200 timed).
            black_box(gemm_probe(m, n, k, lt, false));
            flops += 2.0 * (m * n * k) as f64 * 201.0;
        }
    }
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    set_threads(threads);
    let b: usize = match std::env::var("BATCH") {
        Ok(v) => v.parse().map_err(|e| format!("BATCH={v}: {e}"))?,
        Err(_) => 32,
    };
    let (t, e, h) = (11usize, 100usize, 200usize);
    if let Ok(secs) = std::env::var("PROBE") {
        let secs: f64 = secs.parse().map_err(|e| format!("PROBE={secs}: {e}"))?;
        println!("probe {:.1} GFLOP/s", probe(secs, e, h));
        return Ok(());
    }
    println!("threads {threads}, batch {b}");
    if std::env::var_os("BIG_GEMM").is_some() {
        let n = 1024;
        let a = vec![0.5f32; n * n];
        let mut c = vec![0.0f32; n * n];
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: all three n×n matrices are n² long, as the strides below require.
        let ms = time_ms(10, || unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                a.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        });
        println!(
            "1024³ gemm: {:.1} GFLOP/s",
            2.0 * (n * n * n) as f64 / ms / 1e6
        );
        return Ok(());
    }
    let n_tok = 326;
    for (m, n, k, lt, rt, what) in [
        (
            32,
            4 * h,
            h,
            false,
            true,
            "step fwd: h·W_hhᵀ (W_hh stored 4H×H)",
        ),
        (32, 4 * h, h, false, false, "step fwd: h·W (W stored H×4H)"),
        (
            32,
            h,
            4 * h,
            false,
            false,
            "step bwd: dg·W_hh (stored 4H×H)",
        ),
        (32, h, 4 * h, false, true, "step bwd: dg·Wᵀ (W stored H×4H)"),
        (
            n_tok,
            4 * h,
            e,
            false,
            true,
            "proj: X·W_ihᵀ (W_ih stored 4H×E)",
        ),
        (n_tok, 4 * h, e, false, false, "proj: X·W (W stored E×4H)"),
        (n_tok, e, 4 * h, false, false, "dX = dG·W_ih (stored 4H×E)"),
        (4 * h, e, n_tok, true, false, "dW_ih = dGᵀ·X"),
        (e, 4 * h, n_tok, true, false, "dW_ihᵀ = Xᵀ·dG"),
        (4 * h, h, n_tok, true, false, "dW_hh = dGᵀ·Hprev"),
        (h, 4 * h, n_tok, true, false, "dW_hhᵀ = Hprevᵀ·dG"),
    ] {
        println!("{what:45} {:6.1} GFLOP/s", gemm_probe(m, n, k, lt, rt));
    }
    for (m, n, k, rt, what) in [
        (32, h, 4 * h, false, "step bwd: dg·W_hh (stored 4H×(H+1))"),
        (n_tok, 4 * h, e, true, "proj: X·W_ihᵀ (stored 4H×(E+1))"),
        (n_tok, e, 4 * h, false, "dX = dG·W_ih (stored 4H×(E+1))"),
    ] {
        println!(
            "{what:45} {:6.1} GFLOP/s",
            gemm_probe_ld(m, n, k, false, rt, 1)
        );
    }

    let dev = Device::Cpu;
    let lengths: Vec<usize> = (0..b).map(|i| t - i % 4).collect();
    let plan = Arc::new(PackPlan::new(&lengths, t)?);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, e), &dev)?)?;
    let w_ih = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (8 * h, e + 1), &dev)? * 0.05)?)?;
    let w_hh = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (2, 4 * h, h + 1), &dev)? * 0.05)?)?;
    let op = |record| {
        let dirs = [Direction::Forward, Direction::Reverse];
        FusedLstm::new(
            plan.clone(),
            &dirs,
            h,
            LstmOutput::Last,
            threads > 1,
            record,
        )
    };
    let tokens: usize = lengths.iter().sum();
    let flops = 2.0 * (tokens * 4 * h * (h + e) * 2) as f64;
    let fwd = time_ms(50, || {
        black_box(op(false).apply(&x, &w_ih, &w_hh).ok());
    });
    println!(
        "op forward (no trace)   {fwd:7.3} ms  {:6.1} GFLOP/s",
        flops / fwd / 1e6
    );
    let both = time_ms(50, || {
        let y = op(true)
            .apply(&x, &w_ih, &w_hh)
            .and_then(|y| y.sum_all()?.backward());
        black_box(y.ok());
    });
    println!(
        "op forward+backward     {both:7.3} ms  {:6.1} GFLOP/s",
        3.0 * flops / both / 1e6
    );

    let cfg = FlatConfig {
        num_classes: 6,
        ..FlatConfig::default()
    }
    .parts();
    let model = Classifier::new(&cfg, 0)?;
    let seqs: Vec<Vec<u32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            (0..l)
                .map(|j| (2 + i * 31 + j * 7) as u32 % 9_000 + 2)
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let labels: Vec<u32> = (0..b as u32).map(|i| i % 6).collect();
    let batch = Batch::new(&refs, &labels)?;
    let grads = time_ms(30, || {
        black_box(compute_gradients(&model, &batch).ok());
    });
    println!("compute_gradients       {grads:7.3} ms");
    let (g, _, _) = compute_gradients(&model, &batch)?;
    let mut opt = Adam::new(model.groups(), AdamConfig::default());
    let adam = time_ms(30, || {
        black_box(opt.step(model.groups(), &g).ok());
    });
    println!("adam step               {adam:7.3} ms");
    // In a run Adam's 18 MB of weights and moments (1.48 M parameters × 3 × 4 bytes) is often
    // out of cache when the step comes (the L3 is shared with the machine's other tenants).
    // Writing 512 MB before each step evicts it for certain: this line is the bound from
    // memory. Only the step itself is timed.
    let mut junk = vec![0u8; 512 << 20];
    let mut cold: Vec<f64> = (0..30)
        .map(|r| {
            junk.iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(r));
            black_box(&junk);
            let t = Instant::now();
            black_box(opt.step(model.groups(), &g).ok());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    cold.sort_by(f64::total_cmp);
    println!("adam step, cold caches  {:7.3} ms", cold[cold.len() / 2]);
    println!(
        "→ {:.0} samples/s if a step were just these",
        b as f64 / (grads + adam) * 1e3
    );
    Ok(())
}
