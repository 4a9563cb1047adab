//! Models that are not what they seem are refused: weights changed since they were written
//! (their SHA-256 is in model.json), weights that are not finite, and a run that diverges,
//! which stops instead of saving what it diverged to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use smalltext_tests::{coordinator, root, stderr, trec_slice};

/// A finished one-epoch run on 120 TREC rows, small model.
fn small_run(dir: &Path, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let train = trec_slice(dir, "train.tsv", 0, 120);
    let run = dir.join("run");
    let mut args = vec![
        "--workers",
        "1",
        "--threads",
        "1",
        "--epochs",
        "1",
        "--embedding-dim",
        "8",
        "--hidden-dim",
        "4",
        "--data",
        train.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = coordinator(&args);
    (run, o)
}

/// Flips 64 bytes in the middle of `path`.
fn flip_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(path, bytes).unwrap();
}

fn predict(model: &Path) -> std::process::Output {
    coordinator(&["predict", "--model", model.to_str().unwrap(), "who is it ?"])
}

#[test]
fn weights_changed_since_they_were_written_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (run, o) = small_run(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = run.join("model");
    assert!(predict(&model).status.success());
    flip_bytes(&model.join("weights.safetensors"));
    let o = predict(&model);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("weights.safetensors") && err.contains("SHA-256"),
        "{err}"
    );
    // The checkpoint's files are checked when a run continues from them.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    flip_bytes(&run.join("checkpoint/optimizer.safetensors"));
    let o = coordinator(&["--resume", run.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("checkpoint/optimizer.safetensors") && err.contains("SHA-256"),
        "{err}"
    );
}

#[test]
fn weights_that_are_not_finite_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    // A model of format 1 records no hash: only the values can tell.
    let fixture = root().join("tests/fixtures/model-format1");
    std::fs::copy(fixture.join("model.json"), model.join("model.json")).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(fixture.join("weights.safetensors"), &dev).unwrap();
    let bias = &tensors["fc.bias"];
    let nan = candle_core::Tensor::full(f32::NAN, bias.shape(), &dev).unwrap();
    tensors.insert("fc.bias".into(), nan);
    candle_core::safetensors::save(&tensors, model.join("weights.safetensors")).unwrap();
    let o = predict(&model);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("fc.bias") && err.contains("not finite"),
        "{err}"
    );
    let data = fixture.join("labelled.tsv");
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not finite"), "{}", stderr(&o));
}

#[test]
fn a_diverging_run_stops_and_saves_nothing_it_diverged_to() {
    let dir = tempfile::tempdir().unwrap();
    let (run, o) = small_run(dir.path(), &["--lr", "1e30"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("training diverged in epoch 1") && err.contains("no checkpoint to keep"),
        "{err}"
    );
    assert!(!run.join("model/weights.safetensors").exists());
    assert!(!run.join("summary.json").exists());
}
