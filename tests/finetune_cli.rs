//! Fine-tuning the encoder (`--encoder-mode finetune`, issue #24) through the binaries: N
//! workers compute the update of one, a killed run resumes to the uninterrupted weights, the
//! model directory needs nothing else and exports the encoder, what stays frozen stays, and
//! (on the real all-MiniLM-L6-v2) fine-tuning beats the frozen encoder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use smalltext_tests::{
    coordinator, json, jsonl, kill_after_epochs, max_weight_diff, root, stderr, stdout,
    tensor_diff, tiny_encoder, trec_slice,
};

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("a safetensors file")
}

/// The options of a fine-tuning run on `encoder` and `data`, into `run`.
fn finetune(encoder: &Path, data: &Path, run: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--encoder",
        encoder.to_str().unwrap(),
        "--encoder-mode",
        "finetune",
        "--data",
        data.to_str().unwrap(),
        "--threads",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) -> String {
    let o = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// Ten steps of 16 (176 rows, one epoch, dropout on as the encoder's configuration says): two
/// workers reach the weights of one, and the lowest block's query weights moved (a gradient
/// that stopped at a layer norm would leave them).
#[test]
fn two_workers_compute_the_same_finetune_update_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 176);
    let weights = |workers: &str| {
        let run = dir.path().join(format!("run{workers}"));
        let log = run_ok(&finetune(
            &encoder,
            &data,
            &run,
            &["--workers", workers, "--epochs", "1"],
        ));
        assert!(log.contains("not cached"), "{log}");
        run.join("model/weights.safetensors")
    };
    let (one, two) = (weights("1"), weights("2"));
    let d = max_weight_diff(&one, &two);
    assert!(d <= 1e-5, "2 workers differ from 1 by {d}");

    let trained = tensors(&one);
    let initial = tensors(&encoder.join("model.safetensors"));
    let query = "encoder.layer.0.attention.self.query.weight";
    let moved = tensor_diff(&trained[&format!("encoder.{query}")], &initial[query]);
    assert!(
        moved > 1e-6,
        "block 0's query weights did not move ({moved})"
    );
}

/// Killed after 2 of 4 epochs and resumed: the weights of the run that was never stopped,
/// the schedule's position and the encoder's moments included.
#[test]
fn a_killed_finetune_run_resumes_to_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 300);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let more = ["--workers", "2", "--epochs", "4", "--eval-split", "0.1"];
    run_ok(&finetune(&encoder, &data, &a, &more));
    kill_after_epochs(&finetune(&encoder, &data, &b, &more), &b, 2);
    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = max_weight_diff(
        &a.join("checkpoint/weights.safetensors"),
        &b.join("checkpoint/weights.safetensors"),
    );
    assert!(d <= 1e-5, "resumed weights differ by {d}");
    let (la, lb) = (
        jsonl(&a.join("metrics.jsonl")),
        jsonl(&b.join("metrics.jsonl")),
    );
    assert_eq!(lb.len(), 4);
    for (x, y) in la.iter().zip(&lb) {
        let (x, y) = (x["train_loss"].as_f64(), y["train_loss"].as_f64());
        assert!((x.unwrap() - y.unwrap()).abs() < 1e-5, "{x:?} vs {y:?}");
    }
}

/// The model directory holds the fine-tuned encoder with its configuration and tokenizer:
/// with the encoder's own directory gone, `evaluate` reproduces the run's test accuracy and
/// `predict` answers; `export-encoder` writes a Hugging Face directory with the trained
/// weights under the encoder's own names.
#[test]
fn the_model_directory_alone_suffices_and_exports_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 300);
    let test = trec_slice(dir.path(), "test.tsv", 0, 100);
    let run = dir.path().join("run");
    run_ok(&finetune(
        &encoder,
        &data,
        &run,
        &["--epochs", "2", "--test", test.to_str().unwrap()],
    ));
    let accuracy = json(&run.join("summary.json"))["accuracy"]
        .as_f64()
        .unwrap();
    let initial = tensors(&encoder.join("model.safetensors"));
    let gone = dir.path().join("moved-away");
    std::fs::rename(&encoder, &gone).unwrap();

    let model = run.join("model");
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = stdout(&o) + &stderr(&o);
    assert!(
        report.contains(&format!("{accuracy:.4}")),
        "evaluate does not reproduce the run's accuracy {accuracy:.4}:\n{report}"
    );
    let o = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "what is the capital of peru ?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));

    let hf = dir.path().join("hf");
    let o = coordinator(&[
        "export-encoder",
        "--model",
        model.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(hf.join(f).is_file(), "no {f} in the export");
    }
    let exported = tensors(&hf.join("model.safetensors"));
    let trained = tensors(&model.join("weights.safetensors"));
    let mut names: Vec<&String> = exported.keys().collect();
    names.sort();
    let mut want: Vec<&String> = initial.keys().collect();
    want.sort();
    assert_eq!(names, want, "the export's tensors are not the encoder's");
    let words = "embeddings.word_embeddings.weight";
    assert_eq!(
        tensor_diff(&exported[words], &trained["embedding.weight"]),
        0.0
    );
    let query = "encoder.layer.1.attention.self.query.weight";
    assert_eq!(
        tensor_diff(&exported[query], &trained[&format!("encoder.{query}")]),
        0.0
    );
    assert!(tensor_diff(&exported[query], &initial[query]) > 0.0);

    let o = coordinator(&[
        "export-encoder",
        "--model",
        model.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "an export over an existing directory was accepted"
    );
}

/// `--finetune-layers 1` trains the top block and the head only: the embeddings and block 0
/// stay as they were. `--freeze-embeddings` keeps the word table and trains the rest.
#[test]
fn what_is_frozen_stays_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 160);
    let initial = tensors(&encoder.join("model.safetensors"));
    let trained = |name: &str, more: &[&str]| {
        let run = dir.path().join(name);
        let mut args = vec!["--epochs", "1"];
        args.extend_from_slice(more);
        run_ok(&finetune(&encoder, &data, &run, &args));
        tensors(&run.join("model/weights.safetensors"))
    };
    let moved = |t: &HashMap<String, Tensor>, hf: &str| {
        let ours = match hf {
            "embeddings.word_embeddings.weight" => "embedding.weight".to_string(),
            _ => format!("encoder.{hf}"),
        };
        tensor_diff(&t[&ours], &initial[hf])
    };
    let top = trained("top", &["--finetune-layers", "1"]);
    for hf in [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.output.dense.bias",
    ] {
        assert_eq!(moved(&top, hf), 0.0, "{hf} moved under --finetune-layers 1");
    }
    assert!(moved(&top, "encoder.layer.1.attention.self.query.weight") > 0.0);

    let frozen = trained("frozen", &["--freeze-embeddings"]);
    assert_eq!(moved(&frozen, "embeddings.word_embeddings.weight"), 0.0);
    assert!(moved(&frozen, "embeddings.position_embeddings.weight") > 0.0);
    assert!(moved(&frozen, "encoder.layer.0.attention.self.query.weight") > 0.0);
}

#[test]
fn fine_tuning_flags_that_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 50);
    let run = dir.path().join("run");
    let refused = |args: Vec<String>, says: &str| {
        let o = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    };
    let mut features = finetune(&encoder, &data, &run, &["--encoder-lr", "1e-4"]);
    let at = features.iter().position(|a| a == "finetune").unwrap();
    features[at] = "features".into();
    refused(
        features,
        "--encoder-lr applies to --encoder DIR --encoder-mode finetune",
    );
    refused(
        finetune(&encoder, &data, &run, &["--finetune-layers", "3"]),
        "has 2 transformer blocks",
    );
}

/// The workers read the pretrained weights from the encoder's files themselves; the
/// coordinator reads only the file's header, and refuses before any worker starts a file that
/// lacks a weight the configuration needs or holds one in another shape.
#[test]
fn an_encoder_file_that_lacks_a_weight_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let data = trec_slice(dir.path(), "train.tsv", 0, 50);
    let weights = encoder.join("model.safetensors");
    let mut all = tensors(&weights);
    let refused = |all: &HashMap<String, Tensor>, says: &str| {
        candle_core::safetensors::save(all, &weights).unwrap();
        let run = dir.path().join("run");
        let _ = std::fs::remove_dir_all(&run);
        let o = coordinator(
            &finetune(&encoder, &data, &run, &["--epochs", "1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let log = stderr(&o);
        assert!(!o.status.success(), "a damaged encoder was used: {log}");
        assert!(log.contains("model.safetensors"), "{log}");
        assert!(log.contains(says), "{log}");
        assert!(!log.contains("[worker"), "workers started: {log}");
    };
    let bias = "encoder.layer.1.output.dense.bias";
    let kept = all.remove(bias).unwrap();
    refused(&all, &format!("no tensor {bias}"));
    all.insert(
        bias.into(),
        Tensor::zeros(7, kept.dtype(), &Device::Cpu).unwrap(),
    );
    refused(&all, &format!("tensor {bias} is [7]"));
}

/// A fine-tuned MiniLM's weights and optimizer state are 270 MB at every epoch's end; the
/// coordinator keeps what rank 0 sends in files as it arrives, and never holds the pretrained
/// weights (the workers read them), so its memory stays far below that.
#[test]
fn the_coordinator_holds_no_fine_tuned_state_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = trec_slice(dir.path(), "train.tsv", 0, 40);
    let run = dir.path().join("run");
    run_ok(&finetune(
        &minilm(),
        &data,
        &run,
        &["--epochs", "2", "--head", "mean"],
    ));
    assert!(
        std::fs::metadata(run.join("checkpoint/optimizer.safetensors"))
            .unwrap()
            .len()
            > 150 << 20
    );
    let summary = json(&run.join("summary.json"));
    let coordinator = summary["peak_rss_mb"]["coordinator"].as_f64().unwrap();
    assert!(
        coordinator < 120.0,
        "the coordinator's peak RSS is {coordinator} MB"
    );
    let model = tensors(&run.join("model/weights.safetensors"));
    assert!(model.contains_key("encoder.encoder.layer.5.output.dense.weight"));
}

fn minilm() -> PathBuf {
    root().join("models/all-MiniLM-L6-v2")
}

/// The accuracy check on the real all-MiniLM-L6-v2: an `experiment` cell that fine-tunes it on
/// 300 TREC rows (10 epochs, the mode's defaults, seed 0) beats the frozen encoder's cell by at
/// least 3 points.
#[test]
fn fine_tuning_minilm_beats_the_frozen_encoder_on_300_trec_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = trec_slice(dir.path(), "train.tsv", 0, 300);
    let test = trec_slice(dir.path(), "test.tsv", 0, 300);
    let out = dir.path().join("exp");
    let o = coordinator(&[
        "experiment",
        "--data",
        data.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--sizes",
        "full",
        "--seeds",
        "1",
        "--conditions",
        "encoder,finetune",
        "--encoder",
        minilm().to_str().unwrap(),
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cells = jsonl(&out.join("results.jsonl"));
    let accuracy = |c: &str| {
        cells
            .iter()
            .find(|x| x["condition"] == c)
            .and_then(|x| x["accuracy"].as_f64())
            .unwrap()
    };
    let (frozen, tuned) = (accuracy("encoder"), accuracy("finetune"));
    assert!(
        tuned >= frozen + 0.03,
        "fine-tuned {tuned:.3} against frozen {frozen:.3}"
    );
    // A recorded cell keeps its model, not its 0.3 GB of optimizer state.
    let run = out.join("runs/full-finetune-seed0");
    assert!(run.join("model/weights.safetensors").is_file());
    assert!(!run.join("model/optimizer.safetensors").exists());
    assert!(!run.join("checkpoint").exists());
}

/// `--encoder-random-init` (for speed checks on a GPU machine that carries no weights): the
/// encoder's directory needs only its configuration and tokenizer, every worker draws the same
/// weights from the seed, and the model directory says the encoder was not pretrained.
#[test]
fn an_encoder_without_weights_fine_tunes_from_a_random_start_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    std::fs::remove_file(encoder.join("model.safetensors")).unwrap();
    let data = trec_slice(dir.path(), "train.tsv", 0, 100);
    let run = dir.path().join("run");

    let o = coordinator(
        &finetune(&encoder, &data, &run, &["--epochs", "1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!o.status.success(), "an encoder without weights was used");
    assert!(stderr(&o).contains("model.safetensors"), "{}", stderr(&o));

    let log = run_ok(&finetune(
        &encoder,
        &data,
        &run,
        &[
            "--epochs",
            "1",
            "--workers",
            "2",
            "--encoder-random-init",
            "--run-dir-force",
        ],
    ));
    assert!(log.contains("learns from scratch"), "{log}");
    let meta = json(&run.join("model/model.json"));
    assert_eq!(meta["encoder"]["random_init"], true, "{meta}");
    let o = coordinator(&[
        "predict",
        "--model",
        run.join("model").to_str().unwrap(),
        "what is the capital of peru ?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut features = finetune(&encoder, &data, &run, &["--encoder-random-init"]);
    let at = features.iter().position(|a| a == "finetune").unwrap();
    features[at] = "features".into();
    let o = coordinator(&features.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("--encoder-random-init applies to --encoder DIR --encoder-mode finetune"),
        "{}",
        stderr(&o)
    );
}
