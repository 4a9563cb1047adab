//! `coordinator experiment` as a user runs it, on TREC slices: every cell trained and tested
//! once, the outputs written, and a rerun with more conditions trains only the new cells.

use smalltext_tests::{coordinator, jsonl, stderr, stdout, trec_slice};

#[test]
fn experiment_writes_every_cell_and_a_rerun_only_adds_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 250);
    let test = trec_slice(dir.path(), "test.tsv", 0, 150);
    let out = dir.path().join("exp");
    let other = trec_slice(dir.path(), "train.tsv", 2000, 100);
    let run = |conditions: &str| {
        let o = coordinator(&[
            "experiment",
            "--mix",
            &format!("{}:0.3", other.display()),
            "--data",
            train.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--sizes",
            "60,full",
            "--conditions",
            conditions,
            "--seeds",
            "1",
            "--max-epochs",
            "2",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let first = run("baseline");
    let cells = jsonl(&out.join("results.jsonl"));
    assert_eq!(cells.len(), 2);
    let rows: Vec<u64> = cells.iter().map(|c| c["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, [60, 250]);
    for c in &cells {
        let acc = c["accuracy"].as_f64().unwrap();
        let f1 = c["macro_f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc) && (0.0..=1.0).contains(&f1));
        assert!(c["epochs"].as_u64().unwrap() <= 2);
    }
    // The subsample is the size asked for, its labels in the file's proportions.
    let sample = std::fs::read_to_string(out.join("data/60-seed0.tsv")).unwrap();
    assert_eq!(sample.lines().count(), 60);
    assert!(
        stdout(&first).contains("| 60 (60 rows) |"),
        "{}",
        stdout(&first)
    );

    run("baseline,eda,mix,augment-balance");
    let again = jsonl(&out.join("results.jsonl"));
    assert_eq!(again.len(), 8);
    assert_eq!(
        again[..2],
        cells[..],
        "cells already done are kept, not retrained"
    );
    let new: Vec<&str> = again[2..]
        .iter()
        .map(|c| c["condition"].as_str().unwrap())
        .collect();
    assert_eq!(
        new,
        [
            "eda",
            "mix",
            "augment-balance",
            "eda",
            "mix",
            "augment-balance"
        ]
    );
    // The mix cell trained on both sources.
    let mixed = std::fs::read_to_string(out.join("runs/60-mix-seed0/summary.json")).unwrap();
    assert!(mixed.contains("train-2000-100"), "{mixed}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| size | baseline | eda | mix | augment-balance |")
            && report.contains("**")
    );
    let png = std::fs::read(out.join("learning-curve.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Refused before anything trains: the experiment's flags plus one option.
    let refused = |flag: &str, value: &str| {
        let o = coordinator(&[
            "experiment",
            "--data",
            train.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            flag,
            value,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        stderr(&o)
    };
    let said = refused("--conditions", "baseline,magic");
    assert!(said.contains("unknown condition \"magic\""), "{said}");
    for (flag, list, twice) in [
        ("--sizes", "100,full,100", "100"),
        ("--conditions", "eda,baseline,eda", "eda"),
    ] {
        let said = refused(flag, list);
        assert!(
            said.contains(&format!("{flag} lists {twice} twice")),
            "{said}"
        );
    }
}
