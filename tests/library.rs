//! The coordinator as a library: a plan run in-process on a loopback listener, with real
//! worker processes, returns the summary it writes; a shutdown stops it, and the run
//! continues from its checkpoint.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use coordinator::cmd::command_line::Cli;
use coordinator::record::MetricsLine;
use coordinator::summary::{EvaluatedOn, SelectedOn};
use coordinator::{Summary, TrainPlan};
use smalltext_tests::{bin, trec_slice};

fn plan(argv: &[String]) -> TrainPlan {
    let cli = Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(argv.to_vec()))
        .expect("the flags parse");
    let mut args = cli.train;
    // As the binary saves its command line, so that --resume has one to check.
    args.command = argv.to_vec();
    let mut plan = TrainPlan::from_args(args).expect("a valid plan");
    plan.worker_program = Some(bin("worker"));
    plan
}

fn run(
    plan: TrainPlan,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let rt = coordinator::run::runtime().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let summary = rt.block_on(coordinator::run(plan, listener, shutdown));
    rt.shutdown_background();
    summary
}

fn args(dir: &Path, run_dir: &Path, epochs: u64) -> Vec<String> {
    let train = trec_slice(dir, "train.tsv", 0, 400);
    let test = trec_slice(dir, "test.tsv", 0, 100);
    [
        "--data",
        &train.to_string_lossy(),
        "--test",
        &test.to_string_lossy(),
        "--eval-split",
        "0.1",
        "--epochs",
        &epochs.to_string(),
        "--workers",
        "2",
        "--threads",
        "1",
        "--seed",
        "3",
        "--run-dir",
        &run_dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn metrics(run_dir: &Path) -> Vec<MetricsLine> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a metrics line"))
        .collect()
}

#[test]
fn a_plan_runs_in_process_and_returns_the_summary_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let summary =
        run(plan(&args(dir.path(), &run_dir, 2)), std::future::pending()).expect("the run ends");
    // The file is the returned summary, to the byte (keys sorted, as the run writes it).
    let written = std::fs::read_to_string(run_dir.join("summary.json")).unwrap();
    let returned = serde_json::to_string_pretty(&serde_json::to_value(&summary).unwrap()).unwrap();
    assert_eq!(returned, written);
    // And it reads back as a summary.
    let read: Summary = serde_json::from_str(&written).unwrap();
    assert_eq!(
        (read.accuracy, read.epochs),
        (summary.accuracy, summary.epochs)
    );
    assert_eq!(summary.evaluated_on, EvaluatedOn::Test);
    assert_eq!(summary.selected_on, SelectedOn::Eval);
    assert_eq!((summary.epochs, summary.workers), (2, 2));
    assert_eq!(summary.test_examples, Some(100));
    // Better than always answering the largest class of the slice.
    let accuracy = summary.accuracy.expect("a test accuracy");
    assert!(accuracy > 0.3, "accuracy {accuracy}");
    for e in &summary.epoch_log {
        assert_eq!(e.examples_trained, e.examples_planned, "{e:?}");
    }
    let lines = metrics(&run_dir);
    assert_eq!(
        lines.iter().map(|l| l.epoch).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(lines.iter().all(|l| l.eval_accuracy.is_some()));
}

#[test]
fn a_shutdown_stops_the_run_and_it_continues_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let argv = args(dir.path(), &run_dir, 3);
    let watched = run_dir.clone();
    let after_first_epoch = async move {
        while metrics(&watched).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let err = run(plan(&argv), after_first_epoch).expect_err("stopped");
    let message = format!("{err:#}");
    assert!(
        message.starts_with("interrupted") && message.contains("coordinator --resume"),
        "{message}"
    );
    let done = metrics(&run_dir).len() as u64;
    assert!((1..3).contains(&done), "{done} epochs before the stop");
    // The lock was released with the run: the same command continues it.
    let summary = run(plan(&argv), std::future::pending()).expect("the run ends");
    assert_eq!(summary.epochs, 3);
    assert_eq!(
        summary
            .epoch_log
            .iter()
            .map(|e| e.epoch)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        metrics(&run_dir)
            .iter()
            .map(|l| l.epoch)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
