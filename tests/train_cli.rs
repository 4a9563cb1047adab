//! Training as a user runs it: the coordinator starts real worker processes on loopback, and
//! the run directory, `evaluate` and `predict` are checked on the result. TREC slices keep it
//! fast.

use smalltext_tests::{
    alive, coordinator, json, max_weight_diff, stderr, stdout, train, trec_slice, worker_pids,
};

/// The coordinator's log names `n` worker processes, and none of them is left running.
fn assert_workers_gone(log: &str, n: usize) {
    let pids = worker_pids(log);
    assert_eq!(pids.len(), n, "{log}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "workers left behind: {pids:?}"
    );
}

#[test]
fn one_worker_run_writes_its_record_and_evaluate_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 600);
    let test_file = trec_slice(dir.path(), "test.tsv", 0, 200);
    let run = dir.path().join("run");
    let log = train(
        &run,
        &[
            "--workers",
            "1",
            "--threads",
            "1",
            "--epochs",
            "2",
            "--data",
            train_file.to_str().unwrap(),
            "--test",
            test_file.to_str().unwrap(),
        ],
    );
    let summary = json(&run.join("summary.json"));
    for key in [
        "accuracy",
        "macro_f1",
        "best_epoch",
        "selected_on",
        "epochs",
        "workers",
        "samples_per_s",
        "config",
        "seed",
        "version",
        "data_files",
    ] {
        assert!(!summary[key].is_null(), "summary.json lacks {key}");
    }
    assert_eq!(summary["selected_on"], "last");
    assert!(summary["train_by_source"].is_null(), "one source, no split");
    assert_eq!(summary["epochs"], 2);
    assert_eq!(summary["workers"], 1);
    let rss = summary["peak_rss_mb"]["workers"].as_array().unwrap();
    assert_eq!(rss.len(), 1, "one worker's peak memory: {rss:?}");
    assert!(rss[0].as_f64().unwrap() > 1.0, "{rss:?}");
    // GPU workers report their peak device memory; a CPU worker has none to report.
    assert!(summary.get("peak_gpu_mb").is_none(), "{summary}");
    assert_eq!(
        json(&run.join("model/model.json"))["training"]["workers"],
        1
    );
    let acc = summary["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(
        acc > 0.35,
        "two epochs on 600 questions beat the majority class: {acc}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    for f in [
        "model/weights.safetensors",
        "model/model.json",
        "model/optimizer.safetensors",
        "checkpoint/weights.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // A finished run is never overwritten.
    let o = coordinator(&[
        "--run-dir",
        run.to_str().unwrap(),
        "--data",
        train_file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already holds a finished run"),
        "{}",
        stderr(&o)
    );
    // Every worker process is gone when the coordinator returns.
    let pids = worker_pids(&log);
    assert_eq!(pids.len(), 1, "{log}");
    assert!(pids.iter().all(|&p| !alive(p)));

    // evaluate reproduces the summary's test accuracy from the saved model.
    let model = run.join("model");
    let o = coordinator(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test_file.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), acc);
    assert_eq!(eval["macro_f1"], summary["macro_f1"]);

    // A label the model never saw: an error that says how to leave such examples out, and
    // with --unknown-labels skip the rest is evaluated.
    let extra = dir.path().join("extra.tsv");
    std::fs::write(
        &extra,
        "XYZ\twhat is this ?\nLOC\twhere is paris ?\nHUM\twho wrote hamlet ?\n",
    )
    .unwrap();
    let evaluate_extra = |more: &[&str]| {
        let mut args = vec!["evaluate", "--model", model.to_str().unwrap()];
        args.extend_from_slice(&["--data", extra.to_str().unwrap(), "--json"]);
        args.extend_from_slice(more);
        coordinator(&args)
    };
    let o = evaluate_extra(&[]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("XYZ") && said.contains("--unknown-labels skip"),
        "{said}"
    );
    let o = evaluate_extra(&["--unknown-labels", "skip"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped 1 examples"), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(eval["examples"], 2);

    // predict: a label and probability per sentence, the same on every load.
    let q = ["what is the capital of peru ?", "who wrote hamlet ?"];
    let o1 = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        q[0],
        q[1],
    ]);
    let o2 = coordinator(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        q[0],
        q[1],
    ]);
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert_eq!(stdout(&o1), stdout(&o2));
    let lines: Vec<serde_json::Value> = stdout(&o1)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let p = l["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0 && l["label"].is_string());
    }

    // From a file: one output line per input line, a blank one unlabelled, in order; the
    // byte order mark an editor may put first is not part of the first sentence.
    let input = dir.path().join("questions.txt");
    std::fs::write(&input, format!("\u{feff}{}\n\n   \n{}\n", q[0], q[1])).unwrap();
    let predict_file = |args: &[&str]| {
        let mut all = vec!["predict", "--model", model.to_str().unwrap()];
        all.extend_from_slice(&["--input", input.to_str().unwrap()]);
        all.extend_from_slice(args);
        coordinator(&all)
    };
    let o = predict_file(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 4, "{}", stdout(&o));
    assert_eq!(got[0], lines[0]);
    assert_eq!(got[3], lines[1]);
    for blank in &got[1..3] {
        assert!(
            blank["label"].is_null() && blank["probability"].is_null(),
            "{blank}"
        );
    }
    let o = predict_file(&[]);
    let tsv = stdout(&o);
    let tsv: Vec<&str> = tsv.lines().collect();
    assert_eq!(tsv.len(), 4);
    assert_eq!(tsv[1], "\t\t");
    // A line that is not UTF-8 is named by file and line.
    std::fs::write(&input, b"who wrote hamlet ?\n\xff\xfe\n").unwrap();
    let o = predict_file(&[]);
    assert!(!o.status.success());
    let want = format!("{}:2", input.display());
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // The run directory instead of its model: pointed at the model.
    let o = coordinator(&["predict", "--model", run.to_str().unwrap(), "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is a run directory; its model is"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mixed_sources_get_their_own_training_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 300);
    let b = trec_slice(dir.path(), "train.tsv", 1000, 150);
    let run = dir.path().join("run");
    let log = train(
        &run,
        &[
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "1",
            "--data",
            a.to_str().unwrap(),
            "--data",
            b.to_str().unwrap(),
        ],
    );
    // What the coordinator announces is what the workers formed.
    assert!(
        log.contains("all-reduce between workers: ring through shared memory")
            && log.contains("transport=\"shared memory\""),
        "{log}"
    );
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let sources = line["sources"].as_array().expect("per-source metrics");
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(names, [a.to_str().unwrap(), b.to_str().unwrap()]);
    // Both workers' shares are summed: every example of the epoch is counted once, under its
    // source (300 and 150 rows, no augmentation).
    let examples: Vec<u64> = sources
        .iter()
        .map(|s| s["examples"].as_u64().unwrap())
        .collect();
    assert_eq!(examples, [300, 150]);
    assert_eq!(line["examples"].as_u64().unwrap(), 450);
    let mut loss = 0.0;
    for s in sources {
        let acc = s["train_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        loss += s["train_loss"].as_f64().unwrap() * s["examples"].as_f64().unwrap();
    }
    let total = line["train_loss"].as_f64().unwrap() * 450.0;
    assert!((loss - total).abs() < 1e-6 * total, "{loss} vs {total}");
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["train_by_source"], line["sources"]);
}

#[test]
fn weighted_sources_are_announced_with_their_share_and_each_epoch_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 300);
    let b = trec_slice(dir.path(), "train.tsv", 1000, 150);
    let run = dir.path().join("run");
    // Weights that add up to 1.2: they are proportions, scaled to add up to 1.
    let log = train(
        &run,
        &[
            "--epochs",
            "1",
            "--data",
            &format!("{}:0.9", a.display()),
            "--data",
            &format!("{}:0.3", b.display()),
        ],
    );
    let want = format!(
        "mixing 2 sources by weight: {} 0.750, {} 0.250 of the draws (the weights add up to \
         1.2: scaled to add up to 1); an epoch ends when one source runs out (--mix-stop \
         first-exhausted)",
        a.display(),
        b.display()
    );
    assert!(log.contains(&want), "{log}");
    // The first source (300 rows, 3/4 of the draws) runs out after about 400 draws.
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let n = line["examples"].as_u64().unwrap();
    assert!((300..450).contains(&n), "{n}");
    assert!(
        log.contains(&format!("epoch 1/1: {n} examples, loss ")),
        "{log}"
    );
}

#[test]
fn two_workers_compute_the_same_update_as_one() {
    let dir = tempfile::tempdir().unwrap();
    // 640 distinct questions: one epoch is 20 steps of 32.
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 660);
    let run = |workers: &str, transport: &str, dropout: &str| {
        let run = dir.path().join(format!("run{workers}{transport}{dropout}"));
        let log = train(
            &run,
            &[
                "--workers",
                workers,
                "--threads",
                "1",
                "--epochs",
                "1",
                "--ring-transport",
                transport,
                "--dropout",
                dropout,
                "--data",
                train_file.to_str().unwrap(),
            ],
        );
        let m = json(&run.join("summary.json"));
        assert_eq!(m["workers"].as_u64().unwrap().to_string(), workers);
        (run.join("model/weights.safetensors"), log)
    };
    // Two local workers sum through shared memory unless told to use TCP; either way the
    // update is one worker's.
    let (plain, _) = run("1", "auto", "0");
    for (transport, says) in [
        ("auto", "transport=\"shared memory\""),
        ("tcp", "transport=\"tcp\""),
    ] {
        let (two, log) = run("2", transport, "0");
        assert_eq!(log.matches(says).count(), 2, "{log}");
        let diff = max_weight_diff(&plain, &two);
        assert!(
            diff <= 1e-4,
            "2 workers ({transport}) differ from 1 by {diff}"
        );
    }
    // Dropout masks are drawn per example, so they do not depend on who trains it.
    let (one, _) = run("1", "auto", "0.3");
    let (two, _) = run("2", "auto", "0.3");
    let diff = max_weight_diff(&one, &two);
    assert!(
        diff <= 1e-4,
        "with dropout, 2 workers differ from 1 by {diff}"
    );
    assert!(
        max_weight_diff(&one, &plain) > 1e-3,
        "dropout changed nothing"
    );
}

#[test]
fn sharded_evaluation_equals_single_process_evaluation_and_shards_cover_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 500);
    let eval_file = trec_slice(dir.path(), "train.tsv", 3000, 157);
    let run = dir.path().join("run");
    train(
        &run,
        &[
            "--workers",
            "3",
            "--threads",
            "1",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--data",
            train_file.to_str().unwrap(),
            "--eval",
            eval_file.to_str().unwrap(),
        ],
    );
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["selected_on"], "eval");
    // The selected model, evaluated in one process, scores what the 3 shards added up to.
    let o = coordinator(&[
        "evaluate",
        "--model",
        run.join("model").to_str().unwrap(),
        "--data",
        eval_file.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let single: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(single["accuracy"], summary["eval_accuracy"]);
    assert_eq!(single["examples"], 157);
    // Every example of every epoch was trained exactly once across the workers.
    // The epoch is the training file's distinct (label, text) rows whose text is not in the
    // validation file; the workers' counts must add up to exactly that.
    let eval_texts: std::collections::HashSet<String> = std::fs::read_to_string(&eval_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, t)| t.trim().to_string()))
        .collect();
    let rows = std::fs::read_to_string(&train_file)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('\t')
                .map(|(a, t)| (a.trim().to_string(), t.trim().to_string()))
        })
        .filter(|(_, t)| !eval_texts.contains(t))
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = m["examples"].as_u64().unwrap();
        assert_eq!(n, rows, "examples trained in an epoch");
    }
}

/// A model trained with --label-map keeps the map: `evaluate` on a file with the aliased
/// spellings reproduces the run's test accuracy instead of refusing the labels.
#[test]
fn evaluate_applies_the_label_map_the_model_was_trained_with() {
    let dir = tempfile::tempdir().unwrap();
    let respell = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let out = path.with_extension("respelled.tsv");
        std::fs::write(&out, text.replace("LOC\t", "location\t")).unwrap();
        out
    };
    let data = respell(&trec_slice(dir.path(), "train.tsv", 0, 300));
    let test = respell(&trec_slice(dir.path(), "test.tsv", 0, 100));
    let map = dir.path().join("labels.tsv");
    std::fs::write(&map, "location\tLOC\n").unwrap();
    let run = dir.path().join("run");
    train(
        &run,
        &[
            "--epochs",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--label-map",
            map.to_str().unwrap(),
        ],
    );
    let summary = json(&run.join("summary.json"));
    assert!(summary["labels"]
        .as_array()
        .unwrap()
        .contains(&"LOC".into()));
    let o = coordinator(&[
        "evaluate",
        "--model",
        run.join("model").to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(eval["accuracy"], summary["accuracy"]);
}

/// A test set that shares sentences with the training data overstates accuracy: the run says
/// how many, in its log and its summary.
#[test]
fn test_sentences_also_in_training_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = trec_slice(dir.path(), "train.tsv", 0, 200);
    // 3 training sentences (one with other spacing and case, which tokenizes the same) among
    // 7 of TREC's test set.
    let rows: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(3)
        .map(str::to_string)
        .collect();
    let shouted = {
        let (label, text) = rows[2].split_once('\t').unwrap();
        format!("{label}\t  {}  ", text.to_uppercase())
    };
    let other = std::fs::read_to_string(trec_slice(dir.path(), "test.tsv", 0, 7)).unwrap();
    let test = dir.path().join("mixed-test.tsv");
    std::fs::write(
        &test,
        format!("{}\n{}\n{shouted}\n{other}", rows[0], rows[1]),
    )
    .unwrap();
    let run = dir.path().join("run");
    let log = train(
        &run,
        &[
            "--epochs",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
        ],
    );
    assert!(
        log.contains(&format!(
            "test set {}: 3 of its 10 sentences also occur in the training data",
            test.display()
        )),
        "{log}"
    );
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["test_examples"], 10);
    assert_eq!(summary["test_examples_in_training"], 3);
    // TREC's own test set shares no sentence with this slice.
    let run = dir.path().join("clean");
    let clean = trec_slice(dir.path(), "test.tsv", 0, 50);
    let log = train(
        &run,
        &[
            "--epochs",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--test",
            clean.to_str().unwrap(),
        ],
    );
    assert!(!log.contains("also occur in the training data"), "{log}");
    assert_eq!(
        json(&run.join("summary.json"))["test_examples_in_training"],
        0
    );
}

#[test]
fn bad_training_input_fails_cleanly_without_workers_left() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "A\tfine\nno tab\n").unwrap();
    let o = coordinator(&[
        "--workers",
        "2",
        "--data",
        bad.to_str().unwrap(),
        "--run-dir",
        dir.path().join("r").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.tsv:2"), "{}", stderr(&o));
    let o = coordinator(&["--workers", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--data"), "{}", stderr(&o));
    // A missing file: named, with the system's reason given once.
    let missing = dir.path().join("missing.tsv");
    let o = coordinator(&["--workers", "1", "--data", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(said.contains("missing.tsv: No such file"), "{said}");
    assert_eq!(said.matches("No such file").count(), 1, "{said}");
    // A worker that fails: the coordinator's own error says which and why (the worker is
    // built without the `cuda` feature here).
    let good = dir.path().join("good.tsv");
    std::fs::write(&good, "A\tfine\nB\tgood\n").unwrap();
    let o = coordinator(&[
        "--workers",
        "1",
        "--device",
        "cuda",
        "--data",
        good.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: worker 0 exited") && last.contains("without GPU support"),
        "{}",
        stderr(&o)
    );
    // A --min-freq no word reaches leaves nothing but UNK to learn from: refused, not trained.
    let o = coordinator(&[
        "--workers",
        "1",
        "--data",
        good.to_str().unwrap(),
        "--min-freq",
        "5",
        "--run-dir",
        dir.path().join("r2").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("the vocabulary holds no word") && said.contains("--min-freq 5"),
        "{said}"
    );
    assert!(!said.contains("joined"), "{said}");
    // Values an option cannot mean are refused before any worker starts, naming the flag.
    for (flag, value) in [
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--lr", "nan"),
        ("--lr", "-0.1"),
        ("--clip-norm", "0"),
        ("--dropout", "1"),
        ("--hidden-dim", "0"),
        ("--layers", "0"),
        ("--threads", "0"),
        ("--max-len", "0"),
        ("--max-vocab", "1"),
        ("--heartbeat-timeout", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let o = coordinator(&["--workers", "2", "--data", bad.to_str().unwrap(), &arg]);
        assert_eq!(o.status.code(), Some(2), "{arg}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{arg}: {}", stderr(&o));
        assert!(!stderr(&o).contains("joined"), "{arg}: {}", stderr(&o));
    }
}

/// Kubernetes stops a pod with SIGTERM: the coordinator stops its workers, keeps the last
/// checkpoint and exits non-zero saying so.
#[test]
fn sigterm_stops_the_run_and_its_workers_keeping_the_checkpoint() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 2000);
    let run = dir.path().join("run");
    let mut coord = Command::new(smalltext_tests::bin("coordinator"))
        .args([
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "200",
            "--data",
        ])
        .arg(&train_file)
        .arg("--run-dir")
        .arg(&run)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut lines = BufReader::new(coord.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("epoch 1/200") {
            break;
        }
    }
    assert!(log.contains("epoch 1/200"), "{log}");
    let status = Command::new("kill")
        .args(["-TERM", &coord.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let exit = coord.wait().unwrap();
    assert!(!exit.success(), "{log}");
    assert!(log.contains("interrupted"), "{log}");
    assert!(run.join("checkpoint/weights.safetensors").exists());
    assert_workers_gone(&log, 2);
}

/// A disk that takes no more. Here a file-size limit stands in for it: a write past it fails
/// with EFBIG where a full disk fails with ENOSPC, and it needs no privileges. The run fails
/// naming the file it could not write, and leaves no temporary file and no worker behind.
#[test]
fn a_file_the_run_cannot_write_fails_it_cleanly() {
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 300);
    let run = dir.path().join("run");
    // The weights (over 2 MB) do not fit under 1 MiB; the run's small files do.
    let o = Command::new("bash")
        .args(["-c", r#"trap "" XFSZ; ulimit -f 1024; exec "$@""#, "bash"])
        .arg(smalltext_tests::bin("coordinator"))
        .args([
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "1",
            "--data",
        ])
        .arg(&train_file)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    let log = stderr(&o);
    assert!(!o.status.success(), "{log}");
    assert!(log.contains("weights.safetensors"), "{log}");
    assert!(log.contains("File too large"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let mut entries = Vec::new();
    let mut dirs = vec![run.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p.clone());
            }
            entries.push(p);
        }
    }
    assert!(
        entries.iter().any(|f| f.ends_with("command.json")),
        "{entries:?}"
    );
    // Neither a temporary file nor a half-written `checkpoint.tmp/` directory.
    assert!(
        entries
            .iter()
            .filter_map(|f| f.file_name())
            .all(|name| !name.to_string_lossy().contains(".tmp")),
        "temporary files or directories left: {entries:?}"
    );
    assert_workers_gone(&log, 2);
}

/// `--init-embeddings`: the vocabulary's words start from the file's vectors (and move only
/// by training), the others from the seed; a file of the wrong width is refused.
#[test]
fn pretrained_word_vectors_initialise_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = trec_slice(dir.path(), "train.tsv", 0, 100);
    let words = ["what", "is", "the", "who", "zzzz-not-in-trec"];
    let vector =
        |k: usize| -> Vec<f32> { (0..8).map(|j| (k * 8 + j) as f32 * 0.1 - 2.0).collect() };
    let mut text = format!("{} 8\n", words.len());
    for (k, w) in words.iter().enumerate() {
        let v: Vec<String> = vector(k).iter().map(|x| x.to_string()).collect();
        text.push_str(&format!("{w} {}\n", v.join(" ")));
    }
    let vectors = dir.path().join("vectors.txt");
    std::fs::write(&vectors, text).unwrap();
    let run = dir.path().join("run");
    let log = train(
        &run,
        &[
            "--workers",
            "2",
            "--threads",
            "1",
            "--epochs",
            "1",
            "--embedding-dim",
            "8",
            "--hidden-dim",
            "16",
            "--init-embeddings",
            vectors.to_str().unwrap(),
            "--data",
            train_file.to_str().unwrap(),
        ],
    );
    assert!(log.contains("vectors for 4 of"), "{log}");
    let meta = json(&run.join("model/model.json"));
    let tokens: Vec<&str> = meta["vocab"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let weights = candle_core::safetensors::load(
        run.join("model/weights.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let table = weights["embedding.weight"].to_vec2::<f32>().unwrap();
    for (k, w) in words.iter().take(4).enumerate() {
        let id = tokens.iter().position(|t| t == w).expect("a TREC word");
        // Four Adam steps move a weight by at most about 4 × lr.
        let moved = table[id]
            .iter()
            .zip(vector(k))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moved < 0.01, "{w}: {moved}");
    }

    let o = coordinator(&[
        "--run-dir",
        dir.path().join("run2").to_str().unwrap(),
        "--init-embeddings",
        vectors.to_str().unwrap(),
        "--data",
        train_file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("add --embedding-dim 8"),
        "{}",
        stderr(&o)
    );
}
