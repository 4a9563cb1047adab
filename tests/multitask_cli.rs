//! Multi-task training as a user runs it: two tasks (TREC's questions and the bundled SUBJ
//! slice), two worker processes, one head per task. `predict --task` answers with each head,
//! `evaluate --task` reproduces the summary's figures, the per-task metrics add up to the
//! epoch's, two workers compute the update of one, and what cannot be meant is refused.

use std::path::{Path, PathBuf};

use smalltext_tests::{
    coordinator, json, jsonl, kill_after_epochs, max_weight_diff, root, stderr, stdout, train,
    trec_slice,
};

fn subj(name: &str) -> PathBuf {
    root().join("data/subj").join(name)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn two_tasks_on_two_workers_predict_and_evaluate_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let trec_train = trec_slice(dir.path(), "train.tsv", 0, 600);
    let trec_test = trec_slice(dir.path(), "test.tsv", 0, 200);
    let run = dir.path().join("run");
    let trec_task = format!("trec={}:0.5", trec_train.display());
    let subj_task = format!("subj={}", subj("train.tsv").display());
    let trec_test_arg = format!("trec={}", trec_test.display());
    train(
        &run,
        &[
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "3",
            "--task",
            &trec_task,
            "--task",
            &subj_task,
            "--target",
            "subj",
            "--eval-split",
            "0.1",
            "--balance",
            "oversample",
            "--test",
            subj("test.tsv").to_str().unwrap(),
            "--task-test",
            &trec_test_arg,
        ],
    );
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["workers"], 2);
    assert_eq!(
        summary["labels"],
        serde_json::json!(["objective", "subjective"])
    );
    let tasks = &summary["tasks"];
    assert_eq!(tasks["subj"]["target"], true);
    assert_eq!(tasks["trec"]["target"], false);
    assert_eq!(tasks["subj"]["test_examples"], 100);
    assert_eq!(tasks["trec"]["test_examples"], 200);
    // The headline is the target's.
    assert_eq!(summary["accuracy"], tasks["subj"]["accuracy"]);
    assert_eq!(summary["macro_f1"], tasks["subj"]["macro_f1"]);

    // Per-task metrics add up to the epoch's, and the target's validation is the headline's.
    for line in jsonl(&run.join("metrics.jsonl")) {
        let t = &line["tasks"];
        let (subj_n, trec_n) = (
            t["subj"]["examples"].as_u64().unwrap(),
            t["trec"]["examples"].as_u64().unwrap(),
        );
        assert_eq!(
            subj_n + trec_n,
            line["examples"].as_u64().unwrap(),
            "{line}"
        );
        assert!(subj_n > 0 && trec_n > 0, "{line}");
        let loss =
            |k: &str| t[k]["train_loss"].as_f64().unwrap() * t[k]["examples"].as_f64().unwrap();
        let total = line["train_loss"].as_f64().unwrap() * line["examples"].as_f64().unwrap();
        assert!(
            (loss("subj") + loss("trec") - total).abs() < 1e-6 * total,
            "{line}"
        );
        let right =
            |k: &str| t[k]["train_accuracy"].as_f64().unwrap() * t[k]["examples"].as_f64().unwrap();
        let all_right =
            line["train_accuracy"].as_f64().unwrap() * line["examples"].as_f64().unwrap();
        assert!(
            (right("subj") + right("trec") - all_right).abs() < 1e-6,
            "{line}"
        );
        assert_eq!(t["subj"]["eval_examples"], 30, "{line}");
        assert!(t["trec"]["eval_examples"].as_u64().unwrap() > 50, "{line}");
        assert_eq!(line["eval_loss"], t["subj"]["eval_loss"], "{line}");
        assert_eq!(line["eval_accuracy"], t["subj"]["eval_accuracy"], "{line}");
    }

    // evaluate --task reproduces the summary's figures for each task.
    let model = run.join("model");
    for (task, data) in [("subj", subj("test.tsv")), ("trec", trec_test.clone())] {
        let o = coordinator(&[
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--task",
            task,
            "--data",
            data.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(e["task"], task);
        assert!(close(
            e["accuracy"].as_f64().unwrap(),
            tasks[task]["accuracy"].as_f64().unwrap()
        ));
        assert!(close(
            e["macro_f1"].as_f64().unwrap(),
            tasks[task]["macro_f1"].as_f64().unwrap()
        ));
        assert_eq!(e["labels"], tasks[task]["labels"]);
    }
    // Without --task, the target.
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        subj("test.tsv").to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(close(
        e["accuracy"].as_f64().unwrap(),
        summary["accuracy"].as_f64().unwrap()
    ));

    // predict --task answers with that task's labels; all answers with every head.
    let question = "what is the capital of france ?";
    let ask = |task: &str| {
        let o = coordinator(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--task",
            task,
            "--json",
            question,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(stdout(&o).trim()).unwrap()
    };
    let label = |v: &serde_json::Value| v["label"].as_str().unwrap().to_string();
    let trec_labels = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"];
    assert!(trec_labels.contains(&label(&ask("trec")).as_str()));
    assert!(["objective", "subjective"].contains(&label(&ask("subj")).as_str()));
    let all = ask("all");
    assert_eq!(all["tasks"]["trec"]["label"], ask("trec")["label"]);
    assert_eq!(all["tasks"]["subj"]["label"], ask("subj")["label"]);
    let o = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "all",
        question,
    ]);
    let plain = stdout(&o);
    assert!(
        plain.starts_with("subj=") && plain.contains("\ttrec="),
        "{plain}"
    );
    let o = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "sst2",
        question,
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--task sst2: the model has no such task; its tasks are subj, trec"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn two_workers_compute_the_same_multitask_update_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let trec_train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let trec_task = format!("trec={}", trec_train.display());
    let subj_task = format!("subj={}:0.4", subj("train.tsv").display());
    let run = |workers: &str| {
        let run = dir.path().join(format!("run{workers}"));
        train(
            &run,
            &[
                "--workers",
                workers,
                "--threads",
                "1",
                "--epochs",
                "1",
                "--dropout",
                "0.3",
                "--task",
                &trec_task,
                "--task",
                &subj_task,
            ],
        );
        run.join("model/weights.safetensors")
    };
    let (one, two) = (run("1"), run("2"));
    let diff = max_weight_diff(&one, &two);
    assert!(diff <= 1e-4, "2 workers differ from 1 by {diff}");
}

#[test]
fn what_cannot_be_meant_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let one_class = dir.path().join("one.tsv");
    std::fs::write(&one_class, "yes\ta sentence\nyes\tanother one\n").unwrap();
    let subj_task = format!("subj={}", subj("train.tsv").display());
    let odd = format!("odd={}", one_class.display());
    let refused = |args: &[&str], says: &str| {
        let mut all = vec![
            "--run-dir",
            dir.path().join("run").to_str().unwrap().to_string().leak() as &str,
        ];
        all.extend_from_slice(args);
        let o = coordinator(&all);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    };
    refused(&["--task", &subj_task, "--task", &odd], "task odd");
    refused(
        &["--task", &subj_task, "--target", "cr"],
        "--target cr is not a task; the tasks are subj",
    );
    refused(
        &["--task", &subj_task, "--task", &subj_task],
        "two tasks are called subj",
    );
    refused(
        &[
            "--task",
            &subj_task,
            "--data",
            subj("train.tsv").to_str().unwrap(),
        ],
        "--task and --data exclude each other",
    );
    refused(
        &["--task", &subj_task, "--task-test", "trec=x.tsv"],
        "trec is not a task",
    );
}

#[test]
fn a_killed_multitask_run_resumes_to_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let trec_train = trec_slice(dir.path(), "train.tsv", 0, 400);
    let trec_task = format!("trec={}", trec_train.display());
    let subj_task = format!("subj={}:0.4", subj("train.tsv").display());
    let args = |run: &Path| -> Vec<String> {
        [
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "4",
            "--dropout",
            "0.3",
            "--eval-split",
            "0.1",
            "--task",
            &trec_task,
            "--task",
            &subj_task,
            "--run-dir",
            run.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let whole = coordinator(&args(&a).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(whole.status.success(), "{}", stderr(&whole));

    kill_after_epochs(&args(&b), &b, 2);
    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let diff = max_weight_diff(
        &a.join("checkpoint/weights.safetensors"),
        &b.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-5, "resumed weights differ by {diff}");
    let (la, lb) = (
        jsonl(&a.join("metrics.jsonl")),
        jsonl(&b.join("metrics.jsonl")),
    );
    assert_eq!(lb.len(), 4);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(
            x["tasks"]["subj"]["examples"],
            y["tasks"]["subj"]["examples"]
        );
        assert_eq!(
            x["tasks"]["trec"]["eval_examples"],
            y["tasks"]["trec"]["eval_examples"]
        );
    }
    assert_eq!(
        json(&b.join("model/model.json"))["tasks"][1]["name"],
        "subj"
    );
}
