//! `coordinator --resume`: a coordinator killed mid-run continues from its last checkpoint
//! and reaches the weights of an uninterrupted run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use smalltext_tests::{
    coordinator, json, kill_after_epochs, max_weight_diff, start, stderr, trec_slice,
};

/// 2 local workers on `train`, a tenth held out for validation, dropout on (its masks are
/// drawn per example, so a resumed run draws the same ones), into `run`, plus `extra`.
fn run_args(train: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--workers",
        "2",
        "--threads",
        "1",
        "--data",
        train.to_str().unwrap(),
        "--eval-split",
        "0.1",
        "--heartbeat-timeout",
        "2",
        "--dropout",
        "0.3",
        "--run-dir",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the coordinator on `args` to the end: the undisturbed run the others are held to.
fn run_to_end(args: &[String]) {
    let o = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The epoch of each line of the run's `metrics.jsonl`, in order.
fn metric_epochs(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_killed_coordinator_resumes_and_reaches_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 400);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // On a linear schedule: the resumed run must continue it where the checkpoint left it.
    let args = |run: &Path| {
        run_args(
            &train,
            run,
            &["--epochs", "5", "--seed", "3", "--lr-schedule", "linear"],
        )
    };
    run_to_end(&args(&a));

    // The same run, killed once two epochs are checkpointed.
    kill_after_epochs(&args(&b), &b, 2);
    assert!(!b.join("summary.json").exists());

    // A damaged checkpoint file is refused, by name, before anything trains on it.
    let optimizer = b.join("checkpoint/optimizer.safetensors");
    let good = std::fs::read(&optimizer).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    std::fs::write(&optimizer, &bad).unwrap();
    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("optimizer.safetensors: its SHA-256 is")
            && stderr(&o).contains("changed or damaged"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&optimizer, &good).unwrap();

    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let after: u64 = err
        .split("after epoch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {err}"));
    assert!((2..5).contains(&after), "resumed after epoch {after}");
    let diff = max_weight_diff(
        &a.join("checkpoint/weights.safetensors"),
        &b.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-5, "resumed weights differ by {diff}");
    let (sa, sb) = (json(&a.join("summary.json")), json(&b.join("summary.json")));
    assert_eq!(sa["accuracy"], sb["accuracy"]);
    assert_eq!(sb["epochs"], 5);
    let log = sb["epoch_log"].as_array().unwrap();
    assert_eq!(log.len(), 5);
    for e in log {
        assert_eq!(e["examples_planned"], e["examples_trained"], "{e}");
    }
    assert_eq!(
        metric_epochs(&b),
        [1, 2, 3, 4, 5],
        "one metrics line per epoch"
    );

    // A finished run is not resumed; nor is a directory that never held one.
    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("finished run"), "{}", stderr(&o));
    let o = coordinator(&["--resume", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a resumable run directory"),
        "{}",
        stderr(&o)
    );
}

/// With `--checkpoint-every 3` a run killed inside an epoch resumes at the checkpointed step
/// (not at the epoch's start) and still reaches the uninterrupted run's weights.
#[test]
fn a_run_killed_inside_an_epoch_resumes_at_its_last_step_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 400, 400);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = |run: &Path| {
        run_args(
            &train,
            run,
            &["--epochs", "3", "--seed", "4", "--checkpoint-every", "3"],
        )
    };
    run_to_end(&args(&a));

    let mut child = start(&args(&b));
    let pid = child.id().to_string();
    let signal = |s: &str| {
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    let state = b.join("checkpoint/state.json");
    let inside = || {
        std::fs::read(&state)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .is_some_and(|s| s["step"].as_u64().unwrap_or(0) > 0)
    };
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint inside an epoch"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        if inside() {
            // Stopped, so no newer checkpoint replaces the one just seen before the kill.
            signal("-STOP");
            if inside() {
                break;
            }
            signal("-CONT");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let steps: u64 = err
        .split(" steps of the next")
        .next()
        .and_then(|before| before.rsplit(" and ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {err}"));
    assert!(steps > 0, "{err}");
    let diff = max_weight_diff(
        &a.join("checkpoint/weights.safetensors"),
        &b.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-5, "resumed weights differ by {diff}");
    let sb = json(&b.join("summary.json"));
    for e in sb["epoch_log"].as_array().unwrap() {
        assert_eq!(e["examples_planned"], e["examples_trained"], "{e}");
    }
}

/// A run is resumed only on the data it started with: a training file edited in between is
/// named and the resume refused before any worker starts (it used to fail inside the worker
/// with a shape mismatch of the embedding table).
#[test]
fn a_resume_after_the_data_changed_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 800, 400);
    let run = dir.path().join("run");
    let args = run_args(&train, &run, &["--epochs", "200"]);
    kill_after_epochs(&args, &run, 1);

    let original = std::fs::read_to_string(&train).unwrap();
    std::fs::write(&train, format!("{original}HUM\twho edited this file ?\n")).unwrap();
    let o = coordinator(&["--resume", run.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{} changed since the run started",
            train.display()
        )),
        "{err}"
    );
    assert!(!err.contains("worker rank 0 joined"), "{err}");
}

/// The same command started again on the run directory of its unfinished run (a coordinator
/// pod that Kubernetes restarts) continues it; another command is refused instead of starting
/// over on top of the checkpoint.
#[test]
fn the_same_command_again_continues_its_unfinished_run_and_another_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 1200, 400);
    let run = dir.path().join("run");
    let args = |epochs: &str| run_args(&train, &run, &["--epochs", epochs, "--seed", "5"]);
    kill_after_epochs(&args("6"), &run, 2);
    let state = std::fs::read(run.join("checkpoint/state.json")).unwrap();

    let other = args("7");
    let o = coordinator(&other.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("holds an unfinished run started with other options")
            && err.contains(&format!("coordinator --resume {}", run.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint/state.json")).unwrap(),
        state,
        "the refused run touched the checkpoint"
    );

    let same = args("6");
    let o = coordinator(&same.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("continuing it from its checkpoint"), "{err}");
    assert_eq!(metric_epochs(&run), [1, 2, 3, 4, 5, 6], "{err}");
}

/// A run killed before its first checkpoint has nothing to continue from: `--resume` starts it
/// again from its beginning, with its saved command, and reaches the uninterrupted weights.
#[test]
fn a_run_killed_before_its_first_checkpoint_resumes_from_its_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 400);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = |run: &Path| run_args(&train, run, &["--epochs", "2", "--seed", "6"]);
    run_to_end(&args(&a));

    let mut child = start(&args(&b));
    let start = Instant::now();
    while !b.join("command.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no command.json");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("checkpoint").exists(),
        "killed too late for this test"
    );

    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("starting the run from its beginning"),
        "{}",
        stderr(&o)
    );
    let diff = max_weight_diff(
        &a.join("model/weights.safetensors"),
        &b.join("model/weights.safetensors"),
    );
    assert_eq!(diff, 0.0, "the same run, from the same start");
    assert_eq!(json(&b.join("summary.json"))["epochs"], 2);
}
