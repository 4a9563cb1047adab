//! Model directories of format 1 (the flat record of the seed's classifier) still load, and
//! predict and evaluate exactly as the build that wrote them did; new ones are format 2.

use smalltext_tests::*;

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures/model-format1")
        .join(name)
        .display()
        .to_string()
}

/// Equal, but for floats within 1e-6 relative: the fixture was written on a machine whose
/// matrix kernels (AVX-512) sum in another order than an AVX2 machine's, which moves the
/// last bits of a probability.
fn same(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (got, want) {
        (Value::Number(g), Value::Number(w)) if w.is_f64() => {
            let (g, w) = (
                g.as_f64().unwrap_or(f64::NAN),
                w.as_f64().unwrap_or(f64::NAN),
            );
            (g - w).abs() <= 1e-6 * w.abs().max(1e-6)
        }
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(g, w)| same(g, w))
        }
        (Value::Object(g), Value::Object(w)) => {
            w.iter().all(|(k, w)| g.get(k).is_some_and(|g| same(g, w)))
        }
        _ => got == want,
    }
}

#[test]
fn a_format_1_model_predicts_as_the_build_that_wrote_it() {
    let o = coordinator(&[
        "predict",
        "--model",
        &fixture(""),
        "--json",
        "--input",
        &fixture("sentences.txt"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = std::fs::read_to_string(fixture("predictions.jsonl")).unwrap();
    assert_eq!(want.lines().count(), 40);
    for (got, want) in stdout(&o).lines().zip(want.lines()) {
        let (got, want): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(got).unwrap(),
            serde_json::from_str(want).unwrap(),
        );
        // What that build printed; later builds may add fields.
        assert!(same(&got, &want), "{got} against {want}");
    }
    assert_eq!(stdout(&o).lines().count(), 40);

    let o = coordinator(&[
        "evaluate",
        "--model",
        &fixture(""),
        "--data",
        &fixture("labelled.tsv"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let want = json(std::path::Path::new(&fixture("evaluation.json")));
    assert!(same(&got, &want), "{got} against {want}");
}

#[test]
fn a_new_model_is_format_2_with_its_parts_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = trec_slice(dir.path(), "train.tsv", 0, 80);
    let run = dir.path().join("run");
    let o = coordinator(&[
        "--workers",
        "1",
        "--epochs",
        "1",
        "--embedding-dim",
        "8",
        "--hidden-dim",
        "4",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = json(&run.join("model/model.json"));
    assert_eq!(meta["format"], 2);
    let model = &meta["model"];
    assert_eq!(model["input"]["kind"], "embedding");
    assert_eq!(model["input"]["dim"], 8);
    assert_eq!(model["sequence"]["kind"], "bilstm");
    assert_eq!(model["sequence"]["hidden_dim"], 4);
    assert_eq!(model["heads"].as_array().unwrap().len(), 1);
    let labels = meta["labels"].as_array().unwrap().len();
    assert_eq!(model["heads"][0]["num_classes"], labels as u64);
    // The weights keep the names format 1 gave them.
    let tensors = candle_core::safetensors::load(
        run.join("model/weights.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "embedding.weight",
            "fc.bias",
            "fc.weight",
            "lstm.l0.w_hh",
            "lstm.l0.w_ih"
        ]
    );
}

#[test]
fn an_unknown_model_format_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["weights.safetensors", "model.json"] {
        std::fs::copy(fixture(f), model.join(f)).unwrap();
    }
    let meta = std::fs::read_to_string(model.join("model.json")).unwrap();
    std::fs::write(
        model.join("model.json"),
        meta.replacen("\"format\": 1", "\"format\": 9", 1),
    )
    .unwrap();
    let o = coordinator(&["predict", "--model", model.to_str().unwrap(), "what ?"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("model.json") && err.contains("model format 9"),
        "{err}"
    );
}
