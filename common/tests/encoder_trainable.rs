//! The trainable encoder (issue #24): its gradients against f64 finite differences, gradients
//! reaching the lowest block (candle-nn's LayerNorm would stop them), its evaluation pass
//! against the frozen encoder's, and keyed dropout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_transformers::models::bert::Config;
use common::encoder::trainable::{DropoutProbs, TrainableBert};
use common::encoder::{Encoder, EncoderMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_config_json() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 30,
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 16,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "model_type": "bert"
    })
}

fn tiny_config() -> Config {
    serde_json::from_value(tiny_config_json()).expect("a BERT configuration")
}

/// Weights named as the model names them, drawn large enough that attention is far from
/// uniform and GELU far from linear (BERT's initialisation, N(0, 0.02), would make both
/// nearly trivial and the gradient check weak).
fn random_tensors(config: &Config, seed: u64) -> Result<HashMap<String, Tensor>> {
    let shapes = TrainableBert::random(config, DropoutProbs::NONE, 0, DType::F32, &Device::Cpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, var) in shapes.named_vars() {
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with("LayerNorm.weight") {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.5..0.5)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.gen_range(-0.5..0.5)).collect()
        } else {
            (0..n).map(|_| rng.gen_range(-0.8..0.8)).collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(values, var.dims(), &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Ids (n × T, zero-padded) and mask of `rows`.
fn batch(rows: &[&[u32]]) -> Result<(Tensor, Tensor)> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; rows.len() * t];
    let mut mask = vec![0u32; rows.len() * t];
    for (k, r) in rows.iter().enumerate() {
        ids[k * t..k * t + r.len()].copy_from_slice(r);
        mask[k * t..k * t + r.len()].fill(1);
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), t), &Device::Cpu)?,
        Tensor::from_vec(mask, (rows.len(), t), &Device::Cpu)?,
    ))
}

/// Row `k`'s first `len` token vectors, flattened, in f64.
fn row(out: &Tensor, k: usize, len: usize) -> Result<Vec<f64>> {
    Ok(out
        .get(k)?
        .narrow(0, 0, len)?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1()?)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn var<'a>(model: &'a TrainableBert, name: &str) -> Result<&'a Var> {
    model
        .named_vars()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .with_context(|| format!("no parameter {name}"))
}

/// A scalar of every output: a fixed random projection, summed.
fn projection_loss(out: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r: Vec<f64> = (0..out.elem_count())
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let r = Tensor::from_vec(r, out.shape(), out.device())?.to_dtype(out.dtype())?;
    Ok((out * r)?.sum_all()?)
}

#[test]
fn gradients_match_f64_finite_differences() -> Result<()> {
    let config = tiny_config();
    let model = TrainableBert::from_tensors(
        &random_tensors(&config, 1)?,
        &config,
        DropoutProbs::NONE,
        0,
        DType::F64,
        &Device::Cpu,
    )?;
    // Row 1 is padded: the mask's path is differentiated too.
    let rows: [&[u32]; 2] = [&[2, 7, 19, 4, 3], &[2, 11, 3]];
    let (ids, mask) = batch(&rows)?;
    let loss = || -> Result<f64> {
        let out = model.forward(&ids, Some(&mask), false, None)?;
        Ok(projection_loss(&out, 5)?.to_scalar::<f64>()?)
    };
    let grads = projection_loss(&model.forward(&ids, Some(&mask), false, None)?, 5)?.backward()?;

    let used: Vec<usize> = rows.concat().iter().map(|&i| i as usize).collect();
    let width = config.hidden_size;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut worst_rel, mut worst_abs, mut checked, mut sizeable) = (0f64, 0f64, 0, 0);
    let h = 1e-4;
    for (name, v) in model.named_vars() {
        let n = v.elem_count();
        // Entries whose gradient is not trivially zero: rows of the table the batch reads.
        let pick = |rng: &mut ChaCha8Rng| -> usize {
            match name.as_str() {
                "embeddings.word_embeddings.weight" => {
                    used[rng.gen_range(0..used.len())] * width + rng.gen_range(0..width)
                }
                "embeddings.position_embeddings.weight" => rng.gen_range(0..rows[0].len() * width),
                "embeddings.token_type_embeddings.weight" => rng.gen_range(0..width),
                _ => rng.gen_range(0..n),
            }
        };
        let samples = if name.contains("word_embeddings")
            || name.contains("layer.0.attention.self.query")
            || name.contains("LayerNorm")
            || name.contains("intermediate")
        {
            8
        } else {
            3
        };
        let grad = grads
            .get(v)
            .with_context(|| format!("no gradient for {name}"))?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let original = v.as_tensor().copy()?;
        let base = original.flatten_all()?.to_vec1::<f64>()?;
        for _ in 0..samples {
            let i = pick(&mut rng);
            let at = |delta: f64| -> Result<f64> {
                let mut w = base.clone();
                w[i] += delta;
                v.set(&Tensor::from_vec(w, v.shape(), &Device::Cpu)?)?;
                loss()
            };
            // Fourth-order differences: the two-point formula's truncation error (h² f'''/6)
            // is about as large as the tolerance.
            let numeric = (8.0 * (at(h)? - at(-h)?) - (at(2.0 * h)? - at(-2.0 * h)?)) / (12.0 * h);
            v.set(&original)?;
            let analytic = grad[i];
            let abs = (analytic - numeric).abs();
            // Relative, except for gradients under 1e-3, which may be off by 1e-9.
            let rel = abs / analytic.abs().max(numeric.abs()).max(1e-3);
            ensure!(
                rel <= 1e-6,
                "{name}[{i}]: autograd {analytic:e}, finite differences {numeric:e}"
            );
            worst_rel = worst_rel.max(rel);
            worst_abs = worst_abs.max(abs);
            checked += 1;
            if numeric.abs() > 1e-3 {
                sizeable += 1;
            }
        }
    }
    println!(
        "{checked} gradient entries checked ({sizeable} above 1e-3): largest relative error \
         {worst_rel:.2e}, largest absolute {worst_abs:.2e}"
    );
    // A check that compares zeros with zeros proves nothing.
    ensure!(
        sizeable * 10 >= checked * 9,
        "only {sizeable} of {checked} gradients are sizeable"
    );
    Ok(())
}

#[test]
fn gradients_reach_every_weight_in_f32() -> Result<()> {
    let config = tiny_config();
    for model in [
        TrainableBert::from_tensors(
            &random_tensors(&config, 2)?,
            &config,
            DropoutProbs::NONE,
            0,
            DType::F32,
            &Device::Cpu,
        )?,
        // BERT's own initialisation: small weights, but the gradient must still arrive.
        TrainableBert::random(&config, DropoutProbs::NONE, 4, DType::F32, &Device::Cpu)?,
    ] {
        let (ids, mask) = batch(&[&[2, 5, 9, 3], &[2, 6, 3]])?;
        let out = model.forward(&ids, Some(&mask), true, Some(&[1, 2]))?;
        let grads = projection_loss(&out, 9)?.backward()?;
        let query = var(&model, "encoder.layer.0.attention.self.query.weight")?;
        let g = grads
            .get(query)
            .context("no gradient for block 0's query weight")?;
        let largest = g.abs()?.max_all()?.to_scalar::<f32>()?;
        ensure!(largest > 1e-6, "block 0's query weight has a zero gradient");
        for (name, v) in model.named_vars() {
            let g = grads
                .get(v)
                .with_context(|| format!("no gradient for {name}"))?;
            let largest = g.abs()?.max_all()?.to_scalar::<f32>()?;
            ensure!(largest > 0.0, "{name} has a zero gradient");
        }
    }
    Ok(())
}

/// A model directory the frozen encoder can load: the tiny configuration, `tensors`, and a
/// tokenizer over its 30 ids (never used to tokenize here, but the encoder needs one).
fn tiny_model_dir(tensors: &HashMap<String, Tensor>) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&tiny_config_json())?,
    )?;
    candle_core::safetensors::save(tensors, dir.path().join("model.safetensors"))?;
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for (i, c) in ('a'..='z').enumerate() {
        vocab.insert(c.to_string(), (4 + i).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab}
    });
    std::fs::write(
        dir.path().join("tokenizer.json"),
        serde_json::to_string(&tokenizer)?,
    )?;
    Ok(dir)
}

/// The largest difference between the trainable model in evaluation and the frozen encoder
/// over `rows` (one padded batch for the first, the frozen encoder's own batching for the
/// second), real tokens only.
fn eval_vs_frozen(model: &TrainableBert, frozen: &Encoder, rows: &[&[u32]]) -> Result<f64> {
    let (ids, mask) = batch(rows)?;
    let out = model.forward(&ids, Some(&mask), false, None)?;
    let want = frozen.encode_ids(rows)?;
    let mut worst = 0f64;
    for (k, (r, w)) in rows.iter().zip(&want).enumerate() {
        let w: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        worst = worst.max(max_diff(&row(&out, k, r.len())?, &w));
    }
    Ok(worst)
}

#[test]
fn evaluation_matches_the_frozen_encoder_on_a_tiny_model() -> Result<()> {
    let config = tiny_config();
    let tensors = random_tensors(&config, 7)?;
    let dir = tiny_model_dir(&tensors)?;
    let frozen = Encoder::load(dir.path(), EncoderMode::Features, &Device::Cpu, 1 << 20)?;
    let model = TrainableBert::load(dir.path(), 0, DType::F32, &Device::Cpu)?;
    let rows: [&[u32]; 5] = [
        &[2, 8, 9, 10, 3],
        &[2, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 3],
        &[2, 3],
        &[2, 4, 4, 4, 4, 4, 3],
        &[2, 12, 13, 3],
    ];
    let worst = eval_vs_frozen(&model, &frozen, &rows)?;
    println!("tiny model: evaluation vs frozen encoder, largest difference {worst:.2e}");
    ensure!(worst <= 1e-5, "differs from the frozen encoder by {worst}");
    // And in training the dropout is on, so they differ: the comparison can fail.
    let (ids, mask) = batch(&rows)?;
    let train = model.forward(&ids, Some(&mask), true, Some(&[1, 2, 3, 4, 5]))?;
    let eval = model.forward(&ids, Some(&mask), false, None)?;
    ensure!(max_diff(&row(&train, 1, 16)?, &row(&eval, 1, 16)?) > 1e-3);
    Ok(())
}

fn minilm_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(common::encoder::DEFAULT_MODEL_DIR);
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        println!(
            "skipped: {} is missing (models/fetch.sh puts it there)",
            dir.display()
        );
        None
    }
}

#[test]
fn evaluation_matches_the_frozen_encoder_on_minilm() -> Result<()> {
    let Some(dir) = minilm_dir() else {
        return Ok(());
    };
    let frozen = Encoder::load(&dir, EncoderMode::Features, &Device::Cpu, 1 << 20)?;
    let model = TrainableBert::load(&dir, 0, DType::F32, &Device::Cpu)?;
    assert_eq!(model.hidden(), 384);
    let ids: Vec<Vec<u32>> = [
        "how far is it from denver to aspen ?",
        "a gorgeous , witty , seductive movie .",
        "what is the capital of france ?",
        "it 's a charming and often affecting journey .",
    ]
    .iter()
    .map(|s| frozen.wordpiece().encode(s))
    .collect::<Result<_, _>>()?;
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let worst = eval_vs_frozen(&model, &frozen, &rows)?;
    println!("all-MiniLM-L6-v2: evaluation vs frozen encoder, largest difference {worst:.2e}");
    ensure!(worst <= 1e-4, "differs from the frozen encoder by {worst}");

    // The trap this model exists to avoid, on the real weights.
    let (ids, mask) = batch(&rows)?;
    let out = model.forward(&ids, Some(&mask), true, Some(&[0, 1, 2, 3]))?;
    let grads = projection_loss(&out, 1)?.backward()?;
    let query = var(&model, "encoder.layer.0.attention.self.query.weight")?;
    let largest = grads
        .get(query)
        .context("no gradient for block 0's query weight")?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    ensure!(largest > 0.0, "block 0's query weight has a zero gradient");
    Ok(())
}

#[test]
fn dropout_depends_only_on_each_rows_key() -> Result<()> {
    let config = tiny_config();
    let probs = DropoutProbs::from_config_json(&tiny_config_json().to_string())
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        probs,
        DropoutProbs {
            hidden: 0.1,
            attention: 0.1
        }
    );
    // f64, so that "the same vector" can be asked almost exactly of batches of other shapes.
    let model = TrainableBert::from_tensors(
        &random_tensors(&config, 11)?,
        &config,
        probs,
        42,
        DType::F64,
        &Device::Cpu,
    )?;
    let r0: &[u32] = &[2, 7, 8, 9, 3];
    let r1: &[u32] = &[2, 10, 11, 12, 13, 14, 3];
    let r2: &[u32] = &[2, 15, 3];
    let r3: &[u32] = &[2, 16, 17, 18, 19, 20, 21, 22, 23, 3];
    let run = |rows: &[&[u32]], train: bool, keys: Option<&[u64]>| -> Result<Tensor> {
        let (ids, mask) = batch(rows)?;
        Ok(model.forward(&ids, Some(&mask), train, keys)?)
    };
    let a = run(&[r0, r1, r2], true, Some(&[10, 11, 12]))?;
    // Rows 2 and 0 again, in another order, beside another row, padded further.
    let b = run(&[r2, r0, r3], true, Some(&[12, 10, 13]))?;
    let same_2 = max_diff(&row(&a, 2, r2.len())?, &row(&b, 0, r2.len())?);
    let same_0 = max_diff(&row(&a, 0, r0.len())?, &row(&b, 1, r0.len())?);
    println!("same row, same key, other batch: differences {same_0:.1e}, {same_2:.1e}");
    ensure!(
        same_0 <= 1e-12 && same_2 <= 1e-12,
        "a row's output depends on its batch"
    );
    // Alone, without padding or mask.
    let alone = model.forward(
        &Tensor::from_slice(r0, (1, r0.len()), &Device::Cpu)?,
        None,
        true,
        Some(&[10]),
    )?;
    ensure!(max_diff(&row(&a, 0, r0.len())?, &row(&alone, 0, r0.len())?) <= 1e-12);

    // Another key, another mask; evaluation, no mask at all.
    let other = run(&[r0, r1, r2], true, Some(&[20, 21, 22]))?;
    let eval = run(&[r0, r1, r2], false, Some(&[10, 11, 12]))?;
    let eval_again = run(&[r0, r1, r2], false, None)?;
    for (k, r) in [r0, r1, r2].iter().enumerate() {
        let train = row(&a, k, r.len())?;
        let by_other_key = max_diff(&train, &row(&other, k, r.len())?);
        let by_eval = max_diff(&train, &row(&eval, k, r.len())?);
        ensure!(by_other_key > 1e-3, "row {k}: another key changes nothing");
        ensure!(by_eval > 1e-3, "row {k}: training equals evaluation");
        ensure!(row(&eval, k, r.len())? == row(&eval_again, k, r.len())?);
    }
    // Without keys: a running stream, so two calls differ.
    let s1 = run(&[r0], true, None)?;
    let s2 = run(&[r0], true, None)?;
    ensure!(max_diff(&row(&s1, 0, r0.len())?, &row(&s2, 0, r0.len())?) > 1e-3);
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let config = tiny_config();
    let model = TrainableBert::random(&config, DropoutProbs::NONE, 0, DType::F32, &Device::Cpu)?;
    let names: Vec<&str> = model.named_vars().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 5 + 16 * config.num_hidden_layers);
    for want in [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.attention.output.LayerNorm.weight",
        "encoder.layer.1.intermediate.dense.weight",
        "encoder.layer.1.output.dense.bias",
    ] {
        assert!(names.contains(&want), "no parameter {want}");
    }
    let cpu = &Device::Cpu;
    let ok = Tensor::from_slice(&[2u32, 5, 3], (1, 3), cpu)?;
    assert!(model.forward(&ok, None, true, Some(&[1])).is_ok());
    let too_big = Tensor::from_slice(&[2u32, 30, 3], (1, 3), cpu)?;
    assert!(model.forward(&too_big, None, false, None).is_err());
    let negative = Tensor::from_slice(&[2i64, -1, 3], (1, 3), cpu)?;
    assert!(model.forward(&negative, None, false, None).is_err());
    let float = Tensor::from_slice(&[2f32, 1., 3.], (1, 3), cpu)?;
    assert!(model.forward(&float, None, false, None).is_err());
    let long = Tensor::zeros((1, 17), DType::U32, cpu)?;
    assert!(model.forward(&long, None, false, None).is_err());
    let empty = Tensor::zeros((0, 3), DType::U32, cpu)?;
    assert!(model.forward(&empty, None, false, None).is_err());
    let mask = Tensor::ones((1, 4), DType::U32, cpu)?;
    assert!(model.forward(&ok, Some(&mask), false, None).is_err());
    assert!(model.forward(&ok, None, true, Some(&[1, 2])).is_err());

    let mut tensors = random_tensors(&config, 0)?;
    tensors.insert(
        "encoder.layer.1.output.dense.weight".into(),
        Tensor::zeros((8, 8), DType::F32, cpu)?,
    );
    let wrong_shape =
        TrainableBert::from_tensors(&tensors, &config, DropoutProbs::NONE, 0, DType::F32, cpu);
    assert!(wrong_shape.is_err());
    tensors.remove("encoder.layer.1.output.dense.weight");
    let missing =
        TrainableBert::from_tensors(&tensors, &config, DropoutProbs::NONE, 0, DType::F32, cpu);
    assert!(missing.is_err());
    let bad_probs = DropoutProbs {
        hidden: 1.0,
        attention: 0.1,
    };
    assert!(TrainableBert::random(&config, bad_probs, 0, DType::F32, cpu).is_err());
    Ok(())
}
