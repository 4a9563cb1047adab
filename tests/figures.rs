//! Figures that agree: macro-F1 over every class of the model (the PyTorch references'
//! definition) beside macro-F1 over the classes present (scikit-learn's), and a warning when
//! the evaluation data lacks a class the model was trained on.

use smalltext_tests::{coordinator, json, stderr, stdout, trec_slice};

#[test]
fn a_test_set_without_some_classes_is_named_and_scored_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 400);
    // Only the questions labelled HUM or LOC of the first 200 test rows.
    let text = std::fs::read_to_string(trec_slice(dir.path(), "test.tsv", 0, 200)).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HUM\t") || l.starts_with("LOC\t"))
        .collect();
    let test = dir.path().join("two-classes.tsv");
    std::fs::write(&test, lines.join("\n") + "\n").unwrap();
    let run = dir.path().join("run");
    let o = coordinator(&[
        "--workers",
        "1",
        "--epochs",
        "2",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("test set: no example of classes") && err.contains("macro_f1_present"),
        "{err}"
    );
    // The run's own test evaluation reads a finished model.
    assert!(!err.contains("has not finished"), "{err}");
    let summary = json(&run.join("summary.json"));
    let (all, present) = (
        summary["macro_f1"].as_f64().unwrap(),
        summary["macro_f1_present"].as_f64().unwrap(),
    );
    assert!(
        present > all,
        "{all} over every class, {present} over those present"
    );

    let o = coordinator(&[
        "evaluate",
        "--model",
        run.join("model").to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no example of classes"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["macro_f1"], summary["macro_f1"]);
    assert_eq!(v["macro_f1_present"], summary["macro_f1_present"]);
}
