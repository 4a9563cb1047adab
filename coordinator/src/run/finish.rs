//! The end of a run: the selected model marked finished, tested once, and the summary written.

use std::time::Instant;

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::Result;
use common::metrics::Confusion;
use common::model::Classifier;
use common::pipeline::Pipeline;

use super::epochs::Record;
use super::prepare::{TestSet, Tests};
use crate::model_dir;
use crate::plan::TrainPlan;
use crate::rundir::RunDir;
use crate::summary::{EncoderSummary, EvaluatedOn, PeakRss, RunConfig, Summary, TaskSummary};

pub(super) async fn finish(
    plan: &TrainPlan,
    run_dir: &RunDir,
    record: Record,
    tests: Tests,
    pipeline: &Pipeline,
    started: Instant,
) -> Result<Summary> {
    let (tasks, all_labels) = (pipeline.tasks(), pipeline.labels());
    let Tests {
        target: test,
        others: task_tests,
    } = tests;
    // With tasks, the headline figures are the target's: its block of the labels.
    let target = tasks
        .first()
        .map_or(0..all_labels.len(), |t| t.labels.clone());
    let labels = &all_labels[target.clone()];
    let args = &plan.args;
    // Training is over: the model is the run's result (before it is loaded for the test, so
    // loading does not warn that it is unfinished).
    let meta = model_dir::mark_finished(&run_dir.model())?;
    // Loaded only to be tested: a fine-tuned model's weights are 90 MB of the coordinator's
    // memory.
    let model = match test.is_some() || !task_tests.is_empty() {
        true => {
            let model_path = run_dir.model();
            Some(tokio::task::spawn_blocking(move || model_dir::load(&model_path)).await??)
        }
        false => None,
    };
    let model = model.as_ref().map(|loaded| &loaded.model);
    let test_confusion = match test.as_ref().zip(model) {
        Some((set, model)) => Some(test_confusion_of(model, set, &target, labels)?),
        None => None,
    };
    let tasks_summary = match tasks.is_empty() {
        true => None,
        false => {
            let mut out = BTreeMap::new();
            for (k, task) in tasks.iter().enumerate() {
                let own = &all_labels[task.labels.clone()];
                let tested = match k {
                    0 => test.as_ref().zip(test_confusion.clone()),
                    _ => match task_tests.iter().find(|t| t.task == k).zip(model) {
                        Some((t, model)) => {
                            Some((&t.set, test_confusion_of(model, &t.set, &task.labels, own)?))
                        }
                        None => None,
                    },
                };
                out.insert(
                    task.name.clone(),
                    TaskSummary {
                        target: k == 0,
                        labels: own.to_vec(),
                        test_examples: tested.as_ref().map(|(s, _)| s.examples.len()),
                        accuracy: tested.as_ref().map(|(_, c)| c.accuracy()),
                        macro_f1: tested.as_ref().map(|(_, c)| c.macro_f1()),
                        macro_f1_present: tested.as_ref().map(|(_, c)| c.macro_f1_present()),
                    },
                );
            }
            Some(out)
        }
    };
    let headline = test_confusion
        .as_ref()
        .or(record.eval.as_ref().map(|(_, c)| c));
    let mut rates = record.samples_per_s.clone();
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let summary = Summary {
        accuracy: headline.map(Confusion::accuracy),
        macro_f1: headline.map(Confusion::macro_f1),
        macro_f1_present: headline.map(Confusion::macro_f1_present),
        evaluated_on: match (&test_confusion, &record.eval) {
            (Some(_), _) => EvaluatedOn::Test,
            (None, Some(_)) => EvaluatedOn::Eval,
            (None, None) => EvaluatedOn::None,
        },
        test_examples: test.as_ref().map(|t| t.examples.len()),
        test_examples_in_training: test.as_ref().map(|t| t.in_training),
        eval_accuracy: record.eval.as_ref().map(|(_, c)| c.accuracy()),
        eval_macro_f1: record.eval.as_ref().map(|(_, c)| c.macro_f1()),
        eval_loss: record.eval.as_ref().map(|(l, _)| *l),
        per_class: headline.map(|c| c.per_class(labels)),
        confusion: headline.map(|c| c.counts.clone()),
        labels: labels.to_vec(),
        tasks: tasks_summary,
        best_epoch: record.best_epoch,
        selected_on: record.selected_on,
        epochs: record.epochs,
        workers: plan.world,
        threads_per_worker: plan.threads,
        samples_per_s: median,
        samples_per_s_by_epoch: record.samples_per_s,
        train_by_source: record.train_by_source,
        epoch_log: record.epoch_log,
        workers_lost: record.workers_lost,
        encoder: meta.encoder.as_ref().map(|e| EncoderSummary {
            name: e.name.clone(),
            sha256: e.sha256.clone(),
            path: e.path.clone(),
            mode: e.mode,
            encode_seconds: record.encode_seconds,
        }),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mb: PeakRss {
            coordinator: mib(common::peak_rss_bytes()),
            workers: record.worker_peak_rss.iter().map(|b| mib(*b)).collect(),
        },
        peak_gpu_mb: record
            .worker_peak_device
            .iter()
            .any(|&b| b > 0)
            .then(|| record.worker_peak_device.iter().map(|b| mib(*b)).collect()),
        seed: args.data.seed,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: RunConfig {
            data: args.data.clone(),
            train: args.train.clone(),
            test: args.test.clone(),
            task_test: args.task_test.clone(),
            workers: plan.world,
            threads: plan.threads,
            device: format!("{:?}", args.device).to_lowercase(),
        },
        data_files: plan.input_files()?,
    };
    run_dir.write_summary(&summary)?;
    match headline {
        Some(c) => tracing::info!(
            "done in {:.0} s: {} accuracy {:.4}, macro-F1 {:.4}; model in {}",
            started.elapsed().as_secs_f64(),
            match summary.evaluated_on {
                EvaluatedOn::Test => "test",
                EvaluatedOn::Eval => "eval",
                EvaluatedOn::None => "",
            },
            c.accuracy(),
            c.macro_f1(),
            run_dir.model().display()
        ),
        None => tracing::info!(
            "done in {:.0} s; model in {}",
            started.elapsed().as_secs_f64(),
            run_dir.model().display()
        ),
    }
    Ok(summary)
}

/// The confusion of a test set (of the task whose labels are `block`), over that block only.
fn test_confusion_of(
    model: &Classifier,
    set: &TestSet,
    block: &Range<usize>,
    labels: &[String],
) -> Result<Confusion> {
    let pairs: Vec<(&[u32], u32)> = set
        .examples
        .iter()
        .map(|e| (e.tokens.as_slice(), e.label))
        .collect();
    let c = common::train::evaluate(model, &pairs)?
        .confusion
        .block(block.start, block.len());
    if let Some(note) = c.absent_note(labels) {
        tracing::warn!("test set: {note}");
    }
    Ok(c)
}
