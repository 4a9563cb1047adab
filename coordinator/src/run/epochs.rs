//! The epochs of a run: each planned and handed out, its reports gathered, the model
//! selected and checkpointed, its figures recorded, until the last epoch or an early stop.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::data::tasks::Task;
use common::metrics::Confusion;
use common::train::GroupTotals;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::gather::{gather, TaskEval};
use super::prepare::Prepared;
use crate::cli::SelectBy;
use crate::interrupt::StopNote;
use crate::local::Fleet;
use crate::membership::Regroup;
use crate::model_dir::{self, ModelMeta};
use crate::plan::TrainPlan;
use crate::record::{EpochLogEntry, LostWorker, MetricsLine, SourceFigures, TaskFigures};
use crate::report::StepCheckpoint;
use crate::rundir::{RunDir, RunState};
use crate::service::{EpochPlan, Inbox, Shared};
use crate::sharding::global_batches;
use crate::spool::SpooledState;
use crate::summary::SelectedOn;

/// Training metrics per `--data` source, for runs on mixed data (none for one source).
fn per_source_figures(
    stats: &BTreeMap<u32, GroupTotals>,
    sources: &[common::data::config::SourceSpec],
) -> Option<Vec<SourceFigures>> {
    if sources.len() < 2 {
        return None;
    }
    let n = |x: u64| x.max(1) as f64;
    Some(
        stats
            .iter()
            .map(|(&source, s)| SourceFigures {
                source: sources.get(source as usize).map_or_else(
                    || format!("source {source}"),
                    |p| p.path.display().to_string(),
                ),
                examples: s.examples,
                train_loss: s.loss_sum / n(s.examples),
                train_accuracy: s.correct as f64 / n(s.examples),
            })
            .collect(),
    )
}

/// Each task's training figures (source k is task k) and validation figures; `None` without
/// tasks.
fn per_task_figures(
    stats: &BTreeMap<u32, GroupTotals>,
    tasks: &[Task],
    eval: &[TaskEval],
) -> Option<BTreeMap<String, TaskFigures>> {
    if tasks.is_empty() {
        return None;
    }
    let n = |x: u64| x.max(1) as f64;
    let figures = tasks.iter().enumerate().map(|(k, task)| {
        let s = stats.get(&(k as u32)).copied().unwrap_or_default();
        let e = eval.iter().find(|e| e.task == task.name);
        let f = TaskFigures {
            examples: s.examples,
            train_loss: s.loss_sum / n(s.examples),
            train_accuracy: s.correct as f64 / n(s.examples),
            eval_examples: e.map(|e| e.confusion.total()),
            eval_loss: e.map(|e| e.loss),
            eval_accuracy: e.map(|e| e.confusion.accuracy()),
            eval_macro_f1: e.map(|e| e.confusion.macro_f1()),
        };
        (task.name.clone(), f)
    });
    Some(figures.collect())
}

/// What the epochs produced, for the summary.
pub(super) struct Record {
    pub(super) epochs: u64,
    pub(super) best_epoch: u64,
    pub(super) selected_on: SelectedOn,
    pub(super) eval: Option<(f64, Confusion)>,
    pub(super) samples_per_s: Vec<f64>,
    pub(super) worker_peak_rss: Vec<u64>,
    /// Each worker's peak device memory (0 on the CPU).
    pub(super) worker_peak_device: Vec<u64>,
    /// The last epoch's training metrics per source (none for one source).
    pub(super) train_by_source: Option<Vec<SourceFigures>>,
    /// Seconds spent encoding with --encoder (slowest worker per epoch, summed).
    pub(super) encode_seconds: f64,
    /// Per epoch: examples planned and trained, workers.
    pub(super) epoch_log: Vec<EpochLogEntry>,
    pub(super) workers_lost: u64,
}

/// The workers the run serves, and what they send it.
pub(super) struct Crew<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) inbox: &'a mut Inbox,
    pub(super) fleet: &'a mut Fleet,
}

/// Waits for the workers, then trains every epoch: plans it, gathers its reports, selects
/// and checkpoints the model, records its figures, and stops early when told.
pub(super) async fn drive(
    plan: &TrainPlan,
    crew: Crew<'_>,
    prepared: &Prepared,
    run_dir: &RunDir,
    resumed: Option<RunState>,
    note: &StopNote,
) -> Result<Record> {
    let Crew {
        shared,
        inbox,
        fleet,
    } = crew;
    let args = &plan.args;
    let Prepared {
        pipeline,
        eval,
        labels,
        vocab,
        spec,
        ..
    } = prepared;
    wait_for_members(shared, fleet, Duration::from_secs(args.join_timeout)).await?;
    let t = &args.train;
    let training_config = json!({"data": args.data, "train": args.train, "workers": shared.expected(), "test": args.test});
    let mut meta = ModelMeta::new(
        spec.model.clone(),
        labels.to_vec(),
        args.data.tokenizer,
        args.data.max_len,
        vocab.clone(),
        training_config,
    );
    meta.encoder = spec.encoder.clone();
    meta.label_map = pipeline.label_map().clone();
    meta.tasks = pipeline.tasks().to_vec();
    let has_eval = !eval.is_empty();
    let mut progress = resumed.unwrap_or_default();
    let mut epochs = progress.epochs_done;
    let mut worker_peak_rss: Vec<u64> = Vec::new();
    let mut worker_peak_device: Vec<u64> = Vec::new();
    let mut train_by_source = None;
    let bar = progress_bar();
    // A run resumed after its early stop has nothing left to train.
    let first = match t.patience {
        Some(p) if progress.since_best >= p => t.epochs,
        _ => progress.epochs_done,
    };
    // The last ended epoch's files, written once the next epoch is under way.
    let mut ended: Option<EpochEnd> = None;
    for epoch in first..t.epochs {
        let regroup = Regroup {
            shared,
            epoch,
            total_steps: 0,
            timeout: Duration::from_secs(args.heartbeat_timeout),
            min_workers: args.min_workers as usize,
        };
        // Late joiners enter at the epoch boundary, before the plan goes out.
        let lost_entering = if shared.admission_waiting() {
            regroup.run(fleet, Vec::new(), true).await?.1
        } else {
            Vec::new()
        };
        note.phase(format!("preparing epoch {} of {}", epoch + 1, t.epochs));
        let p = pipeline.clone();
        let examples = tokio::task::spawn_blocking(move || p.epoch(epoch)).await?;
        let batches = global_batches(&examples, t.batch_size(), args.data.seed, epoch);
        let steps = batches.len() as u64;
        let n = examples.len();
        let regroup = Regroup {
            total_steps: steps as usize,
            ..regroup
        };
        shared.plan.send_replace(Some(Arc::new(EpochPlan {
            epoch,
            finished: false,
            upload_weights: true,
            examples,
            batches,
            eval: eval.clone(),
            checkpoint_every: args.checkpoint_every as usize,
        })));
        // The workers train on while the last epoch's model and checkpoint are hashed and
        // written: the coordinator's part of an epoch boundary costs them no time.
        if let Some(e) = ended.take() {
            e.write(run_dir, note, &bar)?;
        }
        bar.set_length(steps);
        bar.set_position(0);
        bar.set_message(format!("epoch {}/{}", epoch + 1, t.epochs));
        note.phase(format!("training epoch {} of {}", epoch + 1, t.epochs));
        // Inside the epoch, a checkpoint after every --checkpoint-every steps.
        let mut save_inside = |c: StepCheckpoint| -> Result<()> {
            let mut p = progress.clone();
            p.step = c.steps_done;
            p.applied = c.applied_examples;
            let state = model_dir::verify(&c.state)?;
            run_dir.save_checkpoint(&meta, &state, &p)?;
            note.checkpoint(p.epochs_done, p.step);
            tracing::debug!("checkpoint at step {} of epoch {}", c.steps_done, epoch + 1);
            Ok(())
        };
        let mut s = gather(
            &regroup,
            inbox,
            fleet,
            pipeline,
            &bar,
            lost_entering,
            &mut save_inside,
        )
        .await?;
        progress.workers_lost += s.lost.len() as u64;
        epochs = epoch + 1;
        keep_peaks(&mut worker_peak_rss, &s.peak_rss);
        keep_peaks(&mut worker_peak_device, &s.peak_device);
        if let Some(why) = diverged(s.diverged, s.loss, labels.len()) {
            let kept = match run_dir.checkpoint().exists() {
                true => format!(
                    "the last good checkpoint (after epoch {}) is kept in {}",
                    progress.epochs_done,
                    run_dir.checkpoint().display()
                ),
                false => "no epoch ended before it, so there is no checkpoint to keep".into(),
            };
            bail!(
                "training diverged in epoch {}: {why}; {kept}; nothing of this epoch is saved. \
                 Lower --lr (now {:e}), or bound the steps with --clip-norm",
                epoch + 1,
                t.lr
            );
        }
        if s.applied != n as u64 {
            bail!(
                "epoch {}: workers trained {} examples of {n}",
                epoch + 1,
                s.applied
            );
        }
        progress.samples_per_s.push(s.samples_per_s);
        shared.metrics.update(|v| {
            v.epochs = epoch + 1;
            v.steps += steps;
            v.examples += s.examples;
            v.samples_per_second = s.samples_per_s;
            v.steps_per_second = s.samples_per_s * steps as f64 / s.examples.max(1) as f64;
            v.allreduce_seconds_per_step = s.allreduce_s_per_step;
            v.loss = s.loss;
            v.eval_loss = s.eval.as_ref().map(|(l, _)| *l);
        });
        meta.epoch = epoch;
        let encoding = s.encoded + s.encode_cached > 0;
        if encoding {
            progress.encode_seconds += s.encode_seconds;
        }
        train_by_source = per_source_figures(&s.sources, &args.data.data);
        let line = MetricsLine {
            epoch: epoch + 1,
            examples: s.examples,
            train_loss: s.loss,
            train_accuracy: s.accuracy,
            samples_per_s: s.samples_per_s,
            allreduce_s_per_step: s.allreduce_s_per_step,
            bytes_per_step: s.bytes_per_step,
            compute_s_per_step: s.compute_s_per_step,
            update_s_per_step: s.update_s_per_step,
            encoded: encoding.then_some(s.encoded),
            encode_cached: encoding.then_some(s.encode_cached),
            encode_s: encoding.then_some(s.encode_seconds),
            sources: train_by_source.clone(),
            tasks: per_task_figures(&s.sources, pipeline.tasks(), &s.eval_by_task),
            eval_loss: s.eval.as_ref().map(|(l, _)| *l),
            eval_accuracy: s.eval.as_ref().map(|(_, c)| c.accuracy()),
            eval_macro_f1: s.eval.as_ref().map(|(_, c)| c.macro_f1()),
        };
        let mut improved = !has_eval;
        if let Some((loss, c)) = &s.eval {
            let select_by = args.train.select_by();
            improved = progress.best.as_ref().is_none_or(|(b, _, best)| {
                let lower_loss = *loss < b - 1e-6;
                match select_by {
                    SelectBy::Loss => lower_loss,
                    SelectBy::Accuracy => {
                        let (acc, best_acc) = (c.accuracy(), best.accuracy());
                        acc > best_acc || (acc == best_acc && lower_loss)
                    }
                }
            });
            if improved {
                progress.best = Some((*loss, epoch, c.clone()));
                progress.since_best = 0;
            } else {
                progress.since_best += 1;
            }
        }
        progress.epochs_done = epoch + 1;
        progress.step = 0;
        progress.applied = 0;
        progress.metrics.push(line.clone());
        progress.epoch_log.push(EpochLogEntry {
            epoch: epoch + 1,
            examples_planned: n as u64,
            examples_trained: s.applied,
            workers: s.workers as u64,
            workers_lost: s
                .lost
                .iter()
                .map(|l| LostWorker {
                    worker: l.member.id as u64,
                    host: l.member.host.clone(),
                    pid: l.member.pid,
                    reason: l.reason.clone(),
                })
                .collect(),
        });
        let eval_note = s.eval.as_ref().map_or(String::new(), |(l, c)| {
            format!(", eval loss {l:.4} accuracy {:.4}", c.accuracy())
        });
        let encode_note = if s.encoded + s.encode_cached > 0 {
            format!(
                ", encoder {} sentences in {:.1} s ({} from cache)",
                s.encoded, s.encode_seconds, s.encode_cached
            )
        } else {
            String::new()
        };
        let note = format!(
            "epoch {}/{}: {} examples, loss {:.4} accuracy {:.4}{eval_note}, {:.0} samples/s, all-reduce {:.1} ms/step{encode_note}",
            epoch + 1,
            t.epochs,
            s.examples,
            s.loss,
            s.accuracy,
            s.samples_per_s,
            s.allreduce_s_per_step * 1e3
        );
        ended = Some(EpochEnd {
            improved,
            meta: meta.clone(),
            state: std::mem::take(&mut s.state),
            progress: progress.clone(),
            line,
            log: note,
        });
        if let Some(patience) = t.patience {
            if progress.since_best >= patience {
                let figure = match args.train.select_by() {
                    SelectBy::Loss => "loss",
                    SelectBy::Accuracy => "accuracy",
                };
                tracing::info!(
                    "early stopping: the validation {figure} has not improved for {patience} epochs"
                );
                break;
            }
        }
    }
    if let Some(e) = ended.take() {
        e.write(run_dir, note, &bar)?;
    }
    bar.finish_and_clear();
    let RunState {
        best,
        samples_per_s,
        encode_seconds,
        epoch_log,
        workers_lost,
        ..
    } = progress;
    let (best_epoch, selected_on, eval) = match best {
        Some((loss, epoch, c)) => (epoch + 1, SelectedOn::Eval, Some((loss, c))),
        None => (epochs, SelectedOn::Last, None),
    };
    Ok(Record {
        epochs,
        best_epoch,
        selected_on,
        eval,
        samples_per_s,
        worker_peak_rss,
        worker_peak_device,
        train_by_source,
        encode_seconds,
        epoch_log,
        workers_lost,
    })
}

/// What an ended epoch leaves on disk: the selected model (when it improved), the checkpoint
/// (which follows the selected model, so a resumed run never lacks it), then its metrics line,
/// so a line in `metrics.jsonl` means its checkpoint is complete.
struct EpochEnd {
    improved: bool,
    meta: ModelMeta,
    state: SpooledState,
    progress: RunState,
    line: MetricsLine,
    log: String,
}

impl EpochEnd {
    fn write(self, run_dir: &RunDir, note: &StopNote, bar: &ProgressBar) -> Result<()> {
        let state = model_dir::verify(&self.state)?;
        if self.improved {
            model_dir::save(&run_dir.model(), &self.meta, &state)?;
        }
        run_dir.save_checkpoint(&self.meta, &state, &self.progress)?;
        note.checkpoint(self.progress.epochs_done, 0);
        run_dir.append_metrics(&self.line)?;
        if bar.is_hidden() {
            tracing::info!("{}", self.log);
        } else {
            bar.println(self.log);
        }
        Ok(())
    }
}

fn progress_bar() -> ProgressBar {
    if std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    }
}

async fn wait_for_members(
    shared: &Arc<Shared>,
    fleet: &mut Fleet,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut rx = shared.members.subscribe();
    loop {
        if rx.borrow_and_update().is_some() {
            return Ok(());
        }
        fleet.check().await?;
        if Instant::now() > deadline {
            let (expected, joined) = (shared.expected(), shared.joined_so_far());
            let who = match joined.is_empty() {
                true => String::new(),
                false => format!(" ({})", joined.join(", ")),
            };
            bail!(
                "{} of {expected} workers joined within {} s{who}; check that every worker can reach the coordinator and has the right token (--join-timeout waits longer)",
                joined.len(),
                timeout.as_secs()
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// Why an epoch counts as diverged, if it does: a step's loss that was not finite, or a mean
/// loss above ten times chance's (10 · ln classes), which no learning run reaches.
fn diverged(step_not_finite: bool, mean_loss: f64, classes: usize) -> Option<String> {
    let bound = 10.0 * (classes.max(2) as f64).ln();
    if step_not_finite || !mean_loss.is_finite() {
        Some("the loss is not finite".into())
    } else if mean_loss > bound {
        Some(format!(
            "its mean loss {mean_loss:.3e} is above ten times chance's ({bound:.2})"
        ))
    } else {
        None
    }
}

/// Raises each worker's peak (by id) to what it reported, if higher.
fn keep_peaks(peaks: &mut Vec<u64>, reported: &[(u32, u64)]) {
    for &(id, bytes) in reported {
        let id = id as usize;
        if id >= peaks.len() {
            peaks.resize(id + 1, 0);
        }
        peaks[id] = peaks[id].max(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::diverged;

    #[test]
    fn divergence_is_a_loss_that_is_not_finite_or_ten_times_chance() {
        // Six classes: chance is ln 6 = 1.79, the bound 17.9.
        assert_eq!(diverged(false, 1.79, 6), None);
        assert_eq!(diverged(false, 17.0, 6), None);
        assert!(diverged(false, 18.0, 6)
            .unwrap()
            .contains("ten times chance"));
        assert!(diverged(false, 4e31, 6).is_some());
        assert!(diverged(false, f64::NAN, 6).unwrap().contains("not finite"));
        assert!(diverged(true, 1.0, 6).unwrap().contains("not finite"));
    }
}
