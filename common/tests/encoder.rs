//! The frozen encoder against PyTorch/transformers on the same model (all-MiniLM-L6-v2, put in
//! models/ by models/fetch.sh, which .ci/run calls).

use std::path::PathBuf;

use candle_core::Device;
use common::encoder::{Encoder, EncoderMode};

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(common::encoder::DEFAULT_MODEL_DIR);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run models/fetch.sh",
        dir.display()
    );
    dir
}

fn encoder() -> Encoder {
    Encoder::load(&model_dir(), EncoderMode::Features, &Device::Cpu, 1 << 20).expect("loading")
}

/// Produced with transformers 5.24.0, torch CPU:
///
/// ```python
/// tok = AutoTokenizer.from_pretrained(d); enc = AutoModel.from_pretrained(d).eval()
/// b = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
/// h = enc(**b).last_hidden_state
/// for j, t in enumerate(texts):
///     n = int(b["attention_mask"][j].sum()); print(b["input_ids"][j, :n].tolist())
///     for pos in (0, n // 2, n - 1):
///         print(pos, h[j, pos, [0, 1, 100, 383]].tolist(), float(h[j, pos].sum()))
/// ```
#[allow(clippy::type_complexity)]
const PYTORCH: [(&str, &[u32], [(usize, [f32; 4], f32); 3]); 3] = [
    (
        "how far is it from denver to aspen ?",
        &[
            101, 2129, 2521, 2003, 2009, 2013, 7573, 2000, 18567, 1029, 102,
        ],
        [
            (0, [0.511082, -0.187684, -0.18246, -0.296157], 2.70106),
            (5, [0.705269, -0.199076, -0.086989, 0.144988], -3.84839),
            (10, [0.866082, -0.162247, -0.306504, -0.182211], 3.50104),
        ],
    ),
    (
        "a gorgeous , witty , seductive movie .",
        &[101, 1037, 9882, 1010, 25591, 1010, 23182, 3185, 1012, 102],
        [
            (0, [-0.272414, -0.36749, -0.192198, -0.14772], 1.24414),
            (5, [-0.477201, -0.355353, -0.02067, 0.114112], -8.18797),
            (9, [-0.702161, -0.212418, 0.090905, 0.170673], -2.00064),
        ],
    ),
    (
        "what is the capital of france ?",
        &[101, 2054, 2003, 1996, 3007, 1997, 2605, 1029, 102],
        [
            (0, [0.317781, 0.075845, -0.282909, -0.29283], 0.1752),
            (4, [1.425912, 0.105224, 0.586735, -0.038987], 3.75281),
            (8, [0.376513, 0.149384, -0.204407, -0.122562], 4.40771),
        ],
    ),
];

#[test]
fn token_vectors_match_pytorch_transformers() {
    let enc = encoder();
    assert_eq!(enc.hidden(), 384);
    let ids: Vec<Vec<u32>> = PYTORCH
        .iter()
        .map(|(text, _, _)| enc.wordpiece().encode(text).expect("tokenizing"))
        .collect();
    for ((text, want, _), got) in PYTORCH.iter().zip(&ids) {
        assert_eq!(got.as_slice(), *want, "WordPiece ids of {text:?}");
    }
    // Encoded together, padded to the longest, as transformers did.
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let out = enc.encode_ids(&rows).expect("encoding");
    let h = enc.hidden();
    for ((text, _, points), v) in PYTORCH.iter().zip(&out) {
        for (pos, values, sum) in points {
            let vec = &v[pos * h..(pos + 1) * h];
            for (k, want) in [0, 1, 100, 383].iter().zip(values) {
                let got = vec[*k];
                assert!(
                    (got - want).abs() <= 1e-4,
                    "{text:?} token {pos} dim {k}: {got} vs PyTorch {want}"
                );
            }
            let got: f32 = vec.iter().sum();
            assert!(
                (got - sum).abs() <= 1e-3,
                "{text:?} token {pos}: sum {got} vs PyTorch {sum}"
            );
        }
    }
}

#[test]
fn features_do_not_depend_on_the_batch_and_come_from_the_cache() {
    let enc = encoder();
    let short = enc.wordpiece().encode("what is it ?").expect("tokenizing");
    let long = enc
        .wordpiece()
        .encode("what is the name of the longest river in the whole wide world ?")
        .expect("tokenizing");
    let alone = enc.encode_ids(&[&short]).expect("encoding").remove(0);
    let rows: [&[u32]; 2] = [&long, &short];
    let features = || enc.features(&rows, &[false, true], long.len(), &Device::Cpu);
    let x = features().expect("features");
    assert_eq!(x.dims(), &[2, long.len(), 384]);
    let values = x.to_vec3::<f32>().expect("values");
    for (t, got) in values[1].iter().enumerate() {
        if t < short.len() {
            let want = &alone[t * 384..(t + 1) * 384];
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= 1e-5,
                "token {t} differs by {diff} when padded in a batch"
            );
        } else {
            assert!(got.iter().all(|&v| v == 0.0), "padding is zero");
        }
    }
    let first = enc.take_stats();
    assert_eq!((first.encoded, first.cached), (2, 0));
    let again = features().expect("features");
    let stats = enc.take_stats();
    assert_eq!((stats.encoded, stats.cached), (0, 2));
    assert_eq!(again.to_vec3::<f32>().expect("values"), values);
    let (kept, pooled) = enc.cache_bytes();
    assert_eq!(kept, long.len() * 384 * 4, "the original is kept");
    assert_eq!(pooled, short.len() * 384 * 4, "the augmentation is pooled");
}

#[test]
fn a_directory_without_a_model_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), "{}").expect("write");
    let err = Encoder::load(dir.path(), EncoderMode::Features, &Device::Cpu, 0)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("tokenizer.json is missing"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

/// Our forward pass restates candle-transformers' `BertModel` for speed: same results.
#[test]
fn the_fast_forward_pass_equals_candle_transformers_bert() {
    use candle_transformers::models::bert::{BertModel, Config};
    let dir = model_dir();
    let enc = encoder();
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    let reference = BertModel::load(vb, &config).unwrap();
    let texts = [
        "what is the name of the longest river in the world ?",
        "how many",
        "an utterly charming and hilarious film that reminded me why i love movies .",
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| enc.wordpiece().encode(t).unwrap())
        .collect();
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let ours = enc.encode_ids(&rows).unwrap();
    for (r, v) in rows.iter().zip(&ours) {
        let input = candle_core::Tensor::new(*r, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let types = input.zeros_like().unwrap();
        let want = reference
            .forward(&input, &types, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(want.len(), v.len());
        let worst = want
            .iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{} pieces: differs by {worst}", r.len());
    }
}
