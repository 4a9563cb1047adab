//! One epoch's reports gathered while watching the workers: a worker whose process exits,
//! whose heartbeats stop, or a survivor asking to regroup starts a membership change, after
//! which the new membership's reports are awaited; then what the reports add up to.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::data::tasks::Task;
use common::metrics::Confusion;
use common::pipeline::Pipeline;
use common::train::GroupTotals;
use indicatif::ProgressBar;

use crate::local::Fleet;
use crate::membership::{Lost, Regroup};
use crate::report::{StepCheckpoint, WorkerReport};
use crate::service::Inbox;
use crate::spool::SpooledState;

/// What one epoch's reports add up to.
#[derive(Debug)]
pub(super) struct EpochSummary {
    pub(super) examples: u64,
    pub(super) loss: f64,
    pub(super) accuracy: f64,
    pub(super) samples_per_s: f64,
    pub(super) allreduce_s_per_step: f64,
    /// The slowest worker's forward and backward, and optimizer update, per step.
    pub(super) compute_s_per_step: f64,
    pub(super) update_s_per_step: f64,
    pub(super) bytes_per_step: f64,
    /// Validation loss and confusion: with tasks, the target's.
    pub(super) eval: Option<(f64, Confusion)>,
    /// With tasks: each validated task's name, loss and confusion.
    pub(super) eval_by_task: Vec<TaskEval>,
    /// Rank 0's weights and optimizer state after the epoch.
    pub(super) state: SpooledState,
    pub(super) diverged: bool,
    /// Peak resident memory of each reporting worker: its id, bytes.
    pub(super) peak_rss: Vec<(u32, u64)>,
    /// Peak device memory of each reporting worker (0 on the CPU): its id, bytes.
    pub(super) peak_device: Vec<(u32, u64)>,
    /// Training examples, loss and correct predictions per source (every worker's report holds
    /// the whole epoch's).
    pub(super) sources: BTreeMap<u32, GroupTotals>,
    /// With --encoder: sentences encoded and answered from the cache (summed), and the
    /// slowest worker's seconds spent encoding.
    pub(super) encoded: u64,
    pub(super) encode_cached: u64,
    pub(super) encode_seconds: f64,
    /// Examples in the global batches every replica applied (the lost workers' parts too).
    pub(super) applied: u64,
    /// Workers at the end of the epoch, and those lost during it.
    pub(super) workers: usize,
    pub(super) lost: Vec<Lost>,
}

/// One task's validation figures in an epoch.
#[derive(Debug, Clone)]
pub(super) struct TaskEval {
    pub(super) task: String,
    pub(super) loss: f64,
    pub(super) confusion: Confusion,
}

/// Waits for every worker's report of the epoch, watching for lost workers meanwhile: a
/// worker whose process exits, whose heartbeats stop, or a survivor asking to regroup starts a
/// membership change, after which the reports of the new membership are awaited.
pub(super) async fn gather(
    regroup: &Regroup<'_>,
    inbox: &mut Inbox,
    fleet: &mut Fleet,
    pipeline: &Pipeline,
    bar: &ProgressBar,
    lost_before: Vec<Lost>,
    save_checkpoint: &mut (dyn FnMut(StepCheckpoint) -> Result<()> + Send),
) -> Result<EpochSummary> {
    let (tasks, classes) = (pipeline.tasks(), pipeline.labels().len());
    // The bar's message gains the epoch's samples/s so far (its own rate counts steps).
    let (title, started) = (bar.message(), std::time::Instant::now());
    let shared = regroup.shared;
    let epoch = regroup.epoch;
    let timeout_ms = regroup.timeout.as_millis() as u64;
    let mut membership = shared
        .members
        .borrow()
        .clone()
        .context("no workers joined")?;
    let mut got: Vec<Option<WorkerReport>> = vec![None; membership.members.len()];
    let mut lost_here = lost_before;
    let mut since = shared.millis();
    while got.iter().any(Option::is_none) {
        let mut lost = Vec::new();
        tokio::select! {
            c = inbox.checkpoints.recv() => {
                let c = c.context("the service stopped")?;
                // Only ring rank 0 of the current membership is asked for checkpoints.
                if c.epoch == epoch && c.generation == membership.generation && membership.position(c.rank as usize) == Some(0) {
                    save_checkpoint(c)?;
                }
            }
            r = inbox.reports.recv() => {
                let r = r.context("the service stopped")?;
                if r.epoch == epoch && r.generation == membership.generation {
                    if let Some(at) = membership.position(r.rank as usize) {
                        got[at] = Some(r);
                    }
                }
            }
            _ = shared.regroup_requested.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let members = &membership.members;
                if let Some(first) = members.first() {
                    bar.set_position(shared.progress[first.id].step.load(Ordering::Relaxed));
                }
                let (n, loss) = members.iter().fold((0, 0.0), |(n, l), m| {
                    let p = &shared.progress[m.id];
                    (n + p.examples.load(Ordering::Relaxed), l + f64::from_bits(p.loss_sum_bits.load(Ordering::Relaxed)))
                });
                if n > 0 {
                    shared.metrics.update(|v| v.loss = loss / n as f64);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{title}, {rate:.0} samples/s"));
                }
                for (pid, status) in fleet.exited().await? {
                    if let Some(m) = members.iter().find(|m| m.pid == pid) {
                        lost.push(Lost { member: m.clone(), reason: format!("its process exited ({status})") });
                    }
                }
                let now = shared.millis();
                for (at, m) in members.iter().enumerate() {
                    let seen = shared.progress[m.id].last_seen_ms.load(Ordering::Relaxed).max(since);
                    if got[at].is_none() && now.saturating_sub(seen) > timeout_ms && !lost.iter().any(|l| l.member.id == m.id) {
                        lost.push(Lost { member: m.clone(), reason: format!("no heartbeat for {} s", regroup.timeout.as_secs()) });
                    }
                }
            }
        }
        let member = |id: usize| membership.position(id).is_some();
        if !lost.is_empty() || shared.regroup_waiting(member) {
            let (m, gone) = regroup.run(fleet, lost, false).await?;
            lost_here.extend(gone);
            got = vec![None; m.members.len()];
            membership = m;
            since = shared.millis();
        }
    }
    let reports: Vec<WorkerReport> = got.into_iter().flatten().collect();
    let applied = reports.first().map_or(0, |r| r.applied_examples);
    if let Some(r) = reports.iter().find(|r| r.applied_examples != applied) {
        bail!(
            "epoch {}: the replicas disagree: worker {} applied {} examples, worker {} {applied}",
            epoch + 1,
            r.rank,
            r.applied_examples,
            reports[0].rank
        );
    }
    let workers = reports.len();
    // Every report holds the figures of the whole epoch (each step sums them across the
    // workers, and a regroup hands them on with the weights), a lost worker's share included.
    if let Some(r) = reports.iter().find(|r| r.examples != reports[0].examples) {
        tracing::warn!(
            "epoch {}: worker {} counts {} trained examples, worker {} {}",
            epoch + 1,
            r.rank,
            r.examples,
            reports[0].rank,
            reports[0].examples
        );
    }
    let examples = reports[0].examples;
    let loss = reports[0].loss_sum;
    let correct = reports[0].correct;
    let train_s = reports.iter().map(|r| r.train_seconds).fold(0.0, f64::max);
    let steps = reports.iter().map(|r| r.steps).max().unwrap_or(0).max(1) as f64;
    let allreduce = reports
        .iter()
        .map(|r| r.allreduce_seconds)
        .fold(0.0, f64::max);
    let bytes = reports.iter().map(|r| r.bytes_sent).max().unwrap_or(0) as f64;
    let slowest = |f: fn(&WorkerReport) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let compute = slowest(|r| r.compute_seconds);
    let update = slowest(|r| r.update_seconds);
    let eval_n: u64 = reports
        .iter()
        .map(|r| r.confusion.iter().sum::<u64>())
        .sum();
    let mut eval_by_task = Vec::new();
    let eval = if eval_n > 0 {
        let mut c = Confusion::new(classes);
        for r in &reports {
            let part = Confusion::from_counts(classes, r.confusion.clone())
                .context("a worker sent a confusion matrix of the wrong size")?;
            c.merge(&part);
        }
        let l: f64 = reports.iter().map(|r| r.eval_loss_sum).sum();
        if tasks.is_empty() {
            Some((l / eval_n as f64, c))
        } else {
            eval_by_task = per_task(&reports, tasks, &c)?;
            // The target (task 0) is what selection and the headline figures follow.
            eval_by_task
                .first()
                .filter(|t| t.task == tasks[0].name)
                .map(|t| (t.loss, t.confusion.clone()))
        }
    } else {
        None
    };
    let peak_rss = reports.iter().map(|r| (r.rank, r.peak_rss_bytes)).collect();
    let peak_device = reports
        .iter()
        .map(|r| (r.rank, r.peak_device_bytes))
        .collect();
    let reports_encoded = reports.iter().map(|r| r.encoded).sum();
    let reports_cached = reports.iter().map(|r| r.encode_cached).sum();
    let reports_encode_s = reports.iter().map(|r| r.encode_seconds).fold(0.0, f64::max);
    let sources = reports[0].sources.clone();
    let mut rank0 = reports.into_iter().next().context("no report")?;
    Ok(EpochSummary {
        examples,
        loss: loss / examples.max(1) as f64,
        accuracy: correct as f64 / examples.max(1) as f64,
        samples_per_s: if train_s > 0.0 {
            examples as f64 / train_s
        } else {
            0.0
        },
        allreduce_s_per_step: allreduce / steps,
        compute_s_per_step: compute / steps,
        update_s_per_step: update / steps,
        bytes_per_step: bytes / steps,
        eval,
        eval_by_task,
        state: std::mem::take(&mut rank0.state),
        diverged: rank0.diverged,
        peak_rss,
        peak_device,
        sources,
        encoded: reports_encoded,
        encode_cached: reports_cached,
        encode_seconds: reports_encode_s,
        applied,
        workers,
        lost: lost_here,
    })
}

/// Each task's validation figures, from its block of the confusion and the workers' losses per
/// task; tasks without a validation example are left out.
fn per_task(reports: &[WorkerReport], tasks: &[Task], c: &Confusion) -> Result<Vec<TaskEval>> {
    let mut out = Vec::new();
    for (k, task) in tasks.iter().enumerate() {
        let confusion = c.block(task.labels.start, task.labels.len());
        let n = confusion.total();
        if n == 0 {
            continue;
        }
        let mut loss = 0.0;
        for r in reports {
            loss += r
                .eval_loss_by_task
                .get(k)
                .context("a worker sent no validation loss per task")?;
        }
        out.push(TaskEval {
            task: task.name.clone(),
            loss: loss / n as f64,
            confusion,
        });
    }
    Ok(out)
}
