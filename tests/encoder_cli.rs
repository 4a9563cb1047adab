//! `--encoder`: a frozen pretrained encoder (all-MiniLM-L6-v2, put in models/ by
//! models/fetch.sh, which .ci/run calls) under the BiLSTM, as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use smalltext_tests::{bin, coordinator, free_port, json, jsonl, root, stderr, stdout, trec_slice};

fn encoder_dir() -> PathBuf {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run models/fetch.sh",
        dir.display()
    );
    dir
}

/// A copy of the encoder with one byte of its tokenizer file different (still valid JSON).
fn altered_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("altered-encoder");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(encoder_dir().join(name), copy.join(name)).unwrap();
    }
    let mut tok = std::fs::read(encoder_dir().join("tokenizer.json")).unwrap();
    tok.push(b'\n');
    std::fs::write(copy.join("tokenizer.json"), tok).unwrap();
    copy
}

#[test]
fn the_encoder_condition_beats_the_baseline_and_its_model_needs_the_same_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 1000);
    let test = trec_slice(dir.path(), "test.tsv", 0, 250);
    let out = dir.path().join("exp");
    let enc = encoder_dir();
    let o = coordinator(&[
        "experiment",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--sizes",
        "300",
        "--conditions",
        "baseline,encoder",
        "--encoder",
        enc.to_str().unwrap(),
        "--seeds",
        "1",
        "--max-epochs",
        "4",
        "--workers",
        "2",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cells = jsonl(&out.join("results.jsonl"));
    let acc = |c: &str| {
        cells
            .iter()
            .find(|x| x["condition"] == c)
            .and_then(|x| x["accuracy"].as_f64())
            .unwrap_or_else(|| panic!("no {c} cell in {cells:?}"))
    };
    let (baseline, encoder) = (acc("baseline"), acc("encoder"));
    assert!(
        encoder >= baseline + 0.15 && encoder >= 0.7,
        "encoder {encoder} vs baseline {baseline} on 300 TREC sentences"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("encoder"), "{report}");

    // The run records the encoder and how much encoding it did.
    let run = out.join("runs/300-encoder-seed0");
    let summary = json(&run.join("summary.json"));
    let e = &summary["encoder"];
    assert_eq!(e["name"], "all-MiniLM-L6-v2");
    assert_eq!(e["mode"], "features");
    assert_eq!(e["sha256"].as_str().unwrap().len(), 64);
    assert!(e["encode_seconds"].as_f64().unwrap() > 0.0);
    let epochs = jsonl(&run.join("metrics.jsonl"));
    let first = &epochs[0];
    let seen = first["encoded"].as_u64().unwrap() + first["encode_cached"].as_u64().unwrap();
    // 300 rows less the 10% validation split, plus the validation rows evaluated.
    assert!((250..=300).contains(&seen), "{first}");
    if let Some(second) = epochs.get(1) {
        assert!(second["encode_cached"].as_u64().unwrap() > 0, "{second}");
    }

    // predict and evaluate find the encoder where it was, and refuse another one.
    let model = run.join("model");
    let o = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "what is the capital of france ?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(eval["accuracy"].as_f64(), Some(encoder));

    let altered = altered_copy(dir.path());
    let o = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--encoder",
        altered.to_str().unwrap(),
        "what is the capital of france ?",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("was trained with the encoder all-MiniLM-L6-v2") && err.contains("hash"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let missing = dir.path().join("no-such-encoder");
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--encoder",
        missing.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn a_worker_without_the_encoder_receives_it_from_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 120);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-for-the-encoder\n").unwrap();
    let port = free_port();
    let run = dir.path().join("run");
    // A relative --encoder path: the coordinator (in the repository) has it, the worker (in
    // an empty directory) does not.
    let coord = Command::new(bin("coordinator"))
        .current_dir(root())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--expect-workers",
            "1",
        ])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--encoder", "models/all-MiniLM-L6-v2"])
        .args(["--data", train.to_str().unwrap(), "--epochs", "1"])
        .args(["--run-dir", run.to_str().unwrap(), "--join-timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let worker = Command::new(bin("worker"))
        .current_dir(&elsewhere)
        .env("SMALLTEXT_CACHE", &cache)
        .args(["--coordinator", &format!("http://127.0.0.1:{port}")])
        .args(["--token-file", token.to_str().unwrap(), "--threads", "2"])
        .output()
        .unwrap();
    let coord = coord.wait_with_output().unwrap();
    assert!(worker.status.success(), "{}", stderr(&worker));
    assert!(coord.status.success(), "{}", stderr(&coord));
    assert!(
        stderr(&worker).contains("downloading it from the coordinator"),
        "{}",
        stderr(&worker)
    );
    let sha = json(&run.join("summary.json"))["encoder"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = cache.join("smalltext-encoders").join(&sha);
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(copy.join(name)).unwrap(),
            std::fs::read(encoder_dir().join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn embeddings_mode_starts_from_the_encoder_table_and_freezing_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 150);
    let run = dir.path().join("run");
    let o = coordinator(&[
        "--workers",
        "1",
        "--encoder",
        encoder_dir().to_str().unwrap(),
        "--encoder-mode",
        "embeddings",
        "--freeze-embeddings",
        "--data",
        train.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = json(&run.join("model/model.json"));
    assert_eq!(meta["encoder"]["mode"], "embeddings");
    assert_eq!(meta["model"]["input"]["kind"], "embedding");
    assert_eq!(meta["model"]["input"]["frozen"], true);
    let dev = candle_core::Device::Cpu;
    let ours = candle_core::safetensors::load(run.join("model/weights.safetensors"), &dev).unwrap();
    let theirs =
        candle_core::safetensors::load(encoder_dir().join("model.safetensors"), &dev).unwrap();
    let table = &ours["embedding.weight"];
    assert_eq!(table.dims(), &[30522, 384]);
    let want = &theirs["embeddings.word_embeddings.weight"];
    // "what" (2054) is in every TREC question: trained on, yet frozen.
    for id in [101u32, 2054, 1029] {
        let a = table.get(id as usize).unwrap().to_vec1::<f32>().unwrap();
        let b = want.get(id as usize).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "row {id}");
    }
}
