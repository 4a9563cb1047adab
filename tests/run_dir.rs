//! A run directory belongs to one run at a time: a second run there is refused while the
//! first lives, naming it; a directory of other files is refused unless asked; the model of a
//! run that has not finished says so when used. (That a killed run's lock is released and the
//! same command continues it is `resume.rs`'s `the_same_command_again_…` test.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smalltext_tests::{bin, coordinator, stderr, trec_slice};

/// Starts the coordinator on `args` and returns once `ready` holds (within `limit` seconds),
/// the process still running.
fn start_and_wait(args: &[&str], limit: u64, ready: impl Fn() -> bool) -> Child {
    let mut child = Command::new(bin("coordinator"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(limit), "not ready");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// As [`start_and_wait`], until `run` has its first epoch's metrics.
fn start_and_wait_for_an_epoch(args: &[&str], run: &Path) -> Child {
    start_and_wait(args, 120, || {
        std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|t| !t.is_empty())
    })
}

#[test]
fn a_second_run_on_a_busy_run_dir_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let run = dir.path().join("run");
    let args = |epochs: &'static str| {
        vec![
            "--workers".to_string(),
            "1".into(),
            "--threads".into(),
            "1".into(),
            "--epochs".into(),
            epochs.into(),
            "--data".into(),
            train.display().to_string(),
            "--run-dir".into(),
            run.display().to_string(),
        ]
    };
    let first = args("200");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut child = start_and_wait_for_an_epoch(&first, &run);
    let pid = child.id();
    // The same command, and another: both would have written beside the first.
    for epochs in ["200", "2"] {
        let second = args(epochs);
        let o = coordinator(&second.iter().map(String::as_str).collect::<Vec<_>>());
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("is in use by another run") && err.contains(&format!("process {pid} ")),
            "{err}"
        );
    }
    // Its model so far is usable, and says it is not a finished run's.
    let o = coordinator(&[
        "predict",
        "--model",
        run.join("model").to_str().unwrap(),
        "what is the capital of Peru ?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("has not finished"), "{}", stderr(&o));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first run was disturbed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_directory_of_other_files_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 120);
    let run = dir.path().join("photos");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("holiday.jpg"), "not a run").unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--workers",
            "1",
            "--epochs",
            "1",
            "--data",
            train.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        coordinator(&a)
    };
    let o = args(&[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("holds files and no run") && err.contains("--run-dir-force"),
        "{err}"
    );
    assert!(
        !run.join("command.json").exists(),
        "the refused run wrote there"
    );
    let o = args(&["--run-dir-force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run.join("summary.json").exists() && run.join("holiday.jpg").exists());
    // A finished run's model does not warn.
    let o = coordinator(&[
        "predict",
        "--model",
        run.join("model").to_str().unwrap(),
        "why ?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("has not finished"), "{}", stderr(&o));
}

#[test]
fn a_second_experiment_on_a_busy_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 600);
    let test = trec_slice(dir.path(), "test.tsv", 0, 100);
    let out = dir.path().join("exp");
    let args = [
        "experiment",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--sizes",
        "400",
        "--conditions",
        "baseline",
        "--seeds",
        "1",
        "--max-epochs",
        "200",
        "--patience",
        "200",
        "--workers",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    let mut child = start_and_wait(&args, 60, || out.join(".holder.json").exists());
    let o = coordinator(&args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("the experiment directory") && err.contains("is in use by another run"),
        "{err}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
