//! Options and inputs that would run but do something other than what was asked are refused
//! or named: --min-workers above the workers, --freeze-embeddings with nothing pretrained, a
//! directory as --data, an --eval-split that leaves less to train on than to validate; and
//! predict's output keeps one line and three fields a sentence, and names sentences it
//! cannot read.

use std::path::Path;

use smalltext_tests::{coordinator, stderr, stdout, trec_slice};

fn refused(args: &[&str], says: &[&str]) {
    let o = coordinator(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} ran: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: no {s:?} in {err}");
    }
}

#[test]
fn options_that_cannot_do_what_they_say_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 100);
    let train = train.to_str().unwrap();
    let run = |name: &str| dir.path().join(name).display().to_string();
    refused(
        &[
            "--workers",
            "2",
            "--min-workers",
            "3",
            "--data",
            train,
            "--run-dir",
            &run("a"),
        ],
        &["--min-workers 3", "2 workers"],
    );
    refused(
        &[
            "--workers",
            "1",
            "--freeze-embeddings",
            "--data",
            train,
            "--run-dir",
            &run("b"),
        ],
        &["--freeze-embeddings", "random vectors", "--init-embeddings"],
    );
    let data_dir = dir.path().join("corpus");
    std::fs::create_dir(&data_dir).unwrap();
    refused(
        &[
            "--workers",
            "1",
            "--data",
            data_dir.to_str().unwrap(),
            "--run-dir",
            &run("c"),
        ],
        &["is a directory, not a data file"],
    );
    refused(
        &[
            "--workers",
            "1",
            "--warmup",
            "0.2",
            "--data",
            train,
            "--run-dir",
            &run("d"),
        ],
        &["--warmup 0.2 applies to --lr-schedule linear"],
    );
}

#[test]
fn a_split_that_trains_on_less_than_it_validates_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 200);
    let run = dir.path().join("run");
    let o = coordinator(&[
        "--workers",
        "1",
        "--epochs",
        "1",
        "--eval-split",
        "0.8",
        "--data",
        train.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("--eval-split 0.8") && err.contains("fewer to learn from than to check on"),
        "{err}"
    );
}

fn trained(dir: &Path) -> String {
    let train = trec_slice(dir, "train.tsv", 0, 150);
    let run = dir.join("run");
    let o = coordinator(&[
        "--workers",
        "1",
        "--epochs",
        "1",
        "--data",
        train.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    run.join("model").display().to_string()
}

#[test]
fn predict_keeps_three_fields_a_line_and_names_sentences_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained(dir.path());
    let o = coordinator(&[
        "predict",
        "--model",
        &model,
        "what is\tthe capital of Peru ?",
        "zzqx vvbrk qqlmn",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert_eq!(line.split('\t').count(), 3, "{line:?}");
    }
    assert!(
        lines[0].ends_with("what is\\tthe capital of Peru ?"),
        "{out}"
    );
    let err = stderr(&o);
    assert!(
        err.contains("sentence 2: 100% of its tokens are not in the model's vocabulary"),
        "{err}"
    );
    assert!(!err.contains("sentence 1:"), "{err}");
    let o = coordinator(&["predict", "--model", &model, "--json", "zzqx what"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["unknown_fraction"], 0.5, "{v}");
}

/// `predict` and `evaluate` compute where `--device` says: the CPU gives the default's
/// answers, and a GPU asked of a CPU build is refused with the way to a GPU build.
#[test]
fn predict_and_evaluate_take_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained(dir.path());
    let test = trec_slice(dir.path(), "test.tsv", 150, 60);
    let test = test.to_str().unwrap();
    let texts = ["what is the capital of Peru ?", "who wrote Hamlet ?"];
    let mut default = vec!["predict", "--model", &model];
    default.extend(texts);
    let o = coordinator(&default);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut on_cpu = vec!["predict", "--device", "cpu", "--model", &model];
    on_cpu.extend(texts);
    let p = coordinator(&on_cpu);
    assert!(p.status.success(), "{}", stderr(&p));
    assert_eq!(stdout(&p), stdout(&o));
    let e = coordinator(&[
        "evaluate", "--device", "cpu", "--model", &model, "--data", test,
    ]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(stdout(&e).contains("accuracy"), "{}", stdout(&e));
    // The tests run the CPU build.
    for args in [
        vec!["predict", "--device", "cuda", "--model", &model, "who ?"],
        vec![
            "evaluate", "--device", "cuda:0", "--model", &model, "--data", test,
        ],
    ] {
        let o = coordinator(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("built without GPU support") && err.contains("gpu/build.sh"),
            "{err}"
        );
    }
}

/// Where a worker holds its training state is `SMALLTEXT_HOLD=host|device`; anything else stops
/// the worker, and the run, with the variable named.
#[test]
fn a_worker_refuses_a_place_to_hold_its_state_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 100);
    let o = std::process::Command::new(smalltext_tests::bin("coordinator"))
        .args(["--workers", "1", "--epochs", "1", "--data"])
        .arg(&train)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .env("SMALLTEXT_HOLD", "gpu")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "it ran: {err}");
    assert!(
        err.contains("SMALLTEXT_HOLD=gpu: expected `host` or `device`"),
        "{err}"
    );
}
