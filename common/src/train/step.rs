//! The training step, as every worker runs it: forward and backward over the local examples,
//! the all-reduce of the gradients with the other workers (the dense groups as one flat vector
//! in the model's buckets, each sparse table as the rows the batch touched), and the optimizer's
//! update of the weights, each phase timed. This file holds the step's parts and its path for a
//! replica held in host memory; one held on its device takes `step_device.rs`, with the same
//! calls in the same order, and `step_entry.rs` picks the path.
//!
//! The buckets are ranges of the flat vector that the backward pass completes one after the
//! other (a fine-tuned encoder's stages, top first). Where the collective allows it, a thread
//! of the step sums each bucket as soon as it is complete, while backward goes on below it.
//!
//! A global batch is dealt into slots, one per worker the run started with; a worker computes
//! each slot it hosts on its own. After a lost worker a survivor hosts two, and the sums are
//! taken as the full world took them (`collective/slots.rs`), so the step's bits do not depend
//! on how many workers are left.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::adam::Adam;
use super::replica::Replica;
use super::tally::{self, GroupTotals, Tally, TallyError};
use crate::collective::{
    all_reduce_dense_slots, all_reduce_sparse_slots, Collective, CollectiveError,
};
use crate::model::{Batch, Classifier, Forward, Gradients, ModelError, Result, SparseRows};

/// The index of the largest value (NaN never wins).
pub(crate) fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best
}

/// How one training example fared in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Its cross-entropy (unweighted).
    pub loss: f32,
    /// Whether its highest logit is its label.
    pub correct: bool,
}

/// Forward and backward over `batch`: the gradients of the summed cross-entropy (not the mean:
/// workers hold different numbers of examples, so the step divides once by the global batch
/// size after summing across workers), the summed loss, and how many were classified right.
pub fn compute_gradients(model: &Classifier, batch: &Batch) -> Result<(Gradients, f64, usize)> {
    compute_gradients_weighted(model, batch, None)
}

/// As [`compute_gradients`], with each example's loss multiplied by its class's weight (the
/// returned loss stays the plain cross-entropy, comparable across runs).
pub fn compute_gradients_weighted(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
) -> Result<(Gradients, f64, usize)> {
    let (grads, outcomes) = compute_gradients_per_example(model, batch, class_weights)?;
    let loss = outcomes.iter().map(|o| f64::from(o.loss)).sum();
    let correct = outcomes.iter().filter(|o| o.correct).count();
    Ok((grads, loss, correct))
}

/// As [`compute_gradients_weighted`], with each example's loss and correctness in batch
/// order (for metrics per source of mixed data).
pub fn compute_gradients_per_example(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
) -> Result<(Gradients, Vec<Outcome>)> {
    let mut dense = vec![0f32; model.dense_len()];
    let (sparse, outcomes) = backward_into(model, batch, class_weights, &mut dense, &mut |_| {})?;
    Ok((Gradients { dense, sparse }, outcomes))
}

/// The forward and backward pass of [`compute_gradients_per_example`], filling `dense` (the flat
/// dense gradient, zeros) and handing each of the model's buckets to `ready` as soon as the
/// backward pass has completed it (see [`Classifier::backward`]). Returns the sparse gradients
/// and the outcomes.
fn backward_into<'a>(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
    dense: &'a mut [f32],
    ready: &mut dyn FnMut(&'a mut [f32]),
) -> Result<(Vec<SparseRows>, Vec<Outcome>)> {
    let forward = model.forward_train(batch)?;
    let (total, outcomes) = loss_of(model, batch, &forward, class_weights)?;
    let sparse = model.backward(forward, &total, batch, dense, ready)?;
    Ok((sparse, outcomes))
}

/// The summed (class-weighted) cross-entropy of `forward`'s scores, as a scalar to run backward
/// from, and each example's outcome, after checking that `batch` fits the model.
pub(super) fn loss_of(
    model: &Classifier,
    batch: &Batch,
    forward: &Forward,
    class_weights: Option<&[f32]>,
) -> Result<(Tensor, Vec<Outcome>)> {
    let classes = model.config().num_classes();
    if class_weights.is_some_and(|w| w.len() != classes) {
        return Err(ModelError::Batch(format!(
            "{} class weights for {classes} classes",
            class_weights.map_or(0, <[f32]>::len),
        )));
    }
    let labels = batch.labels();
    if labels.len() != batch.len() {
        return Err(ModelError::Batch("training needs a labelled batch".into()));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(ModelError::Batch(format!(
            "label {bad} ≥ number of classes {classes}"
        )));
    }
    let mut outcomes = vec![
        Outcome {
            loss: 0.0,
            correct: false,
        };
        batch.len()
    ];
    let mut total: Option<Tensor> = None;
    for scored in &forward.scored {
        // The batch row of the head's i-th row (all rows, in order, with one head).
        let rows = scored.rows.as_deref();
        let n = rows.map_or(batch.len(), <[usize]>::len);
        let row = |i: usize| rows.map_or(i, |r| r[i]);
        // A head's labels are its own block of the model's label list.
        let offset = model.config().head_offset(scored.head) as u32;
        let own: Cow<[u32]> = match rows {
            None if offset == 0 => Cow::Borrowed(labels),
            _ => Cow::Owned((0..n).map(|i| labels[row(i)] - offset).collect()),
        };
        let targets = Tensor::from_slice(&own, (n, 1), model.device())?;
        let log_probs = candle_nn::ops::log_softmax(&scored.logits, 1)?;
        let picked = log_probs.gather(&targets, 1)?;
        let loss = match class_weights {
            None => picked.sum_all()?.neg()?,
            Some(w) => {
                let per_example: Vec<f32> = (0..n).map(|i| w[labels[row(i)] as usize]).collect();
                let w = Tensor::from_slice(&per_example, (n, 1), model.device())?;
                picked.mul(&w)?.sum_all()?.neg()?
            }
        };
        total = Some(match total {
            None => loss,
            Some(t) => t.add(&loss)?,
        });
        let losses = picked.neg()?.flatten_all()?.to_vec1::<f32>()?;
        for (i, ((logits, &label), loss)) in scored
            .logits
            .to_vec2::<f32>()?
            .iter()
            .zip(own.iter())
            .zip(losses)
            .enumerate()
        {
            outcomes[row(i)] = Outcome {
                loss,
                correct: argmax(logits) == label as usize,
            };
        }
    }
    let total = total.ok_or_else(|| ModelError::Batch("no head scored the batch".into()))?;
    Ok((total, outcomes))
}

/// Where a step's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Forward and backward (with the sums that overlap the backward pass).
    pub compute: Duration,
    /// What the step waits for the all-reduce of the gradients after its backward pass, waiting
    /// for the slowest worker included: the whole all-reduce, or, where its buckets are summed
    /// while backward goes on, what that did not hide.
    pub all_reduce: Duration,
    /// The optimizer's update.
    pub update: Duration,
}

/// What one applied step gives back.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Each local example's loss and correctness, in batch order.
    pub outcomes: Vec<Outcome>,
    /// With a [`Tally`]: the whole global batch's figures per group, the same on every worker.
    pub totals: Vec<GroupTotals>,
    pub timings: StepTimings,
}

impl StepReport {
    /// The local examples' summed loss.
    pub fn loss_sum(&self) -> f64 {
        self.outcomes.iter().map(|o| f64::from(o.loss)).sum()
    }

    /// How many local examples were classified right.
    pub fn correct(&self) -> usize {
        self.outcomes.iter().filter(|o| o.correct).count()
    }
}

/// Why a step was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The all-reduce failed; the weights are untouched, so the step can be trained again
    /// (or adopted from a survivor) once the workers regroup.
    #[error("all-reduce of {what}: {source}")]
    Collective {
        what: &'static str,
        #[source]
        source: CollectiveError,
    },
}

/// What one worker computes of a step: the slots of the global batch it hosts.
#[derive(Debug, Clone)]
pub struct Share<'a> {
    /// How many slots the global batch is dealt into: the run's worker count, which a lost
    /// worker does not lower.
    pub slots: usize,
    /// The first slot this worker hosts; it hosts `batches.len()` slots in a row.
    pub first: usize,
    /// Each hosted slot's examples, in slot order (None: the slot holds none in this step).
    pub batches: Vec<Option<&'a Batch>>,
}

impl<'a> Share<'a> {
    /// One slot per worker, this worker's own: the share of every worker of an undiminished
    /// world.
    pub fn own(collective: &dyn Collective, batch: Option<&'a Batch>) -> Self {
        Self {
            slots: collective.world_size(),
            first: collective.rank(),
            batches: vec![batch],
        }
    }

    /// Whether the world has one rank per slot and this rank hosts its own, so that the
    /// ordinary all-reduce already sums as the slots require.
    pub(super) fn is_own(&self, collective: &dyn Collective) -> bool {
        self.batches.len() == 1
            && self.slots == collective.world_size()
            && self.first == collective.rank()
    }
}

/// [`super::train_share`] for a replica held in host memory.
pub(super) fn train_share_on_host(
    replica: &Replica,
    opt: &mut Adam,
    collective: &mut dyn Collective,
    share: &Share<'_>,
    global_batch_size: usize,
    class_weights: Option<&[f32]>,
    tally: Option<&Tally<'_>>,
) -> std::result::Result<StepReport, StepError> {
    let start = Instant::now();
    let model = replica.model();
    let buckets = model.buckets();
    let (mut grads, outcomes, reduce) = match share.batches.as_slice() {
        [batch] if share.is_own(collective) => {
            let overlap = collective.world_size() > 1 && buckets.len() > 1 && collective.overlaps();
            let (mut grads, outcomes, reduce) = match batch {
                Some(batch) if overlap => {
                    compute_overlapped(model, batch, class_weights, collective)?
                }
                _ => {
                    let (mut grads, outcomes) = match batch {
                        Some(batch) => compute_gradients_per_example(model, batch, class_weights)?,
                        None => (Gradients::zeros(model.groups()), Vec::new()),
                    };
                    let reduce = Instant::now();
                    for range in &buckets {
                        collective
                            .all_reduce_sum(&mut grads.dense[range.clone()])
                            .map_err(failed("the dense gradients"))?;
                    }
                    (grads, outcomes, reduce)
                }
            };
            for table in &mut grads.sparse {
                let dim = table.dim;
                collective
                    .all_reduce_sparse_rows(&mut table.ids, &mut table.rows, dim)
                    .map_err(failed("the embedding rows"))?;
            }
            (grads, outcomes, reduce)
        }
        batches => {
            let mut per_slot = Vec::with_capacity(batches.len());
            let mut outcomes = Vec::new();
            for batch in batches {
                let (grads, mine) = match batch {
                    Some(batch) => compute_gradients_per_example(model, batch, class_weights)?,
                    None => (Gradients::zeros(model.groups()), Vec::new()),
                };
                per_slot.push(grads);
                outcomes.extend(mine);
            }
            let reduce = Instant::now();
            let grads = all_reduce_slots(collective, share, &buckets, per_slot)?;
            (grads, outcomes, reduce)
        }
    };
    let totals = sum_figures(collective, tally, &outcomes)?;
    let update = Instant::now();
    apply_gradients(replica.model(), opt, &mut grads, global_batch_size)?;
    Ok(StepReport {
        outcomes,
        totals,
        timings: StepTimings {
            compute: reduce - start,
            all_reduce: update - reduce,
            update: update.elapsed(),
        },
    })
}

/// With a `tally`, the step's figures summed across the workers (see [`Tally`]).
pub(super) fn sum_figures(
    collective: &mut dyn Collective,
    tally: Option<&Tally<'_>>,
    outcomes: &[Outcome],
) -> std::result::Result<Vec<GroupTotals>, StepError> {
    let Some(t) = tally else {
        return Ok(Vec::new());
    };
    let figures: Vec<(f32, bool)> = outcomes.iter().map(|o| (o.loss, o.correct)).collect();
    tally::sum(collective, t, &figures).map_err(|e| match e {
        TallyError::Model(e) => StepError::Model(e),
        TallyError::Collective(source) => StepError::Collective {
            what: "the step's figures",
            source,
        },
    })
}

/// The gradients of `batch`, with each bucket of the dense gradient summed across the workers
/// by a thread of its own as soon as the backward pass has completed it, while the pass goes on
/// below it. The same calls as the step without overlap, in the same order; what differs is
/// only when they are made. Returns the gradients (the dense ones summed, the sparse ones not
/// yet), the outcomes, and when the backward pass ended.
fn compute_overlapped(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
    collective: &mut dyn Collective,
) -> std::result::Result<(Gradients, Vec<Outcome>, Instant), StepError> {
    let mut dense = vec![0f32; model.dense_len()];
    let (computed, summed, end) = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<&mut [f32]>();
        let comm = s.spawn(move || {
            for bucket in rx {
                collective.all_reduce_sum(bucket)?;
            }
            Ok::<(), CollectiveError>(())
        });
        let computed = backward_into(model, batch, class_weights, &mut dense, &mut |bucket| {
            // A failed all-reduce ends the thread, and its error is reported below.
            let _ = tx.send(bucket);
        });
        let end = Instant::now();
        drop(tx);
        let summed = comm.join().unwrap_or_else(|_| {
            Err(CollectiveError::Backend(
                "the thread summing the gradients panicked".into(),
            ))
        });
        (computed, summed, end)
    });
    let (sparse, outcomes) = computed?;
    summed.map_err(failed("the dense gradients"))?;
    Ok((Gradients { dense, sparse }, outcomes, end))
}

/// Sums the slots' gradients across the workers as a world of one worker per slot would, bucket
/// by bucket as that world does.
pub(super) fn all_reduce_slots(
    collective: &mut dyn Collective,
    share: &Share<'_>,
    buckets: &[Range<usize>],
    per_slot: Vec<Gradients>,
) -> std::result::Result<Gradients, StepError> {
    let (slot_dense, tables): (Vec<Vec<f32>>, Vec<Vec<SparseRows>>) =
        per_slot.into_iter().map(|g| (g.dense, g.sparse)).unzip();
    let mut dense = vec![0f32; slot_dense.first().map_or(0, Vec::len)];
    for range in buckets {
        let mine = slot_dense
            .iter()
            .map(|d| d[range.clone()].to_vec())
            .collect();
        // Refuses a share of no slot.
        let sum = all_reduce_dense_slots(collective, share.first, share.slots, mine)
            .map_err(failed("the dense gradients"))?;
        dense[range.clone()].copy_from_slice(&sum);
    }
    let shapes = tables.first().map_or(&[][..], Vec::as_slice);
    let mut sparse = Vec::with_capacity(shapes.len());
    for (t, table) in shapes.iter().enumerate() {
        let mine: Vec<(&[u32], &[f32])> = tables
            .iter()
            .map(|s| (s[t].ids.as_slice(), s[t].rows.as_slice()))
            .collect();
        let (ids, rows) =
            all_reduce_sparse_slots(collective, share.first, share.slots, &mine, table.dim)
                .map_err(failed("the embedding rows"))?;
        sparse.push(SparseRows {
            ids,
            rows,
            dim: table.dim,
        });
    }
    Ok(Gradients { dense, sparse })
}

/// What a failed all-reduce of `what` becomes.
pub(super) fn failed(what: &'static str) -> impl Fn(CollectiveError) -> StepError {
    move |source| StepError::Collective { what, source }
}

/// Divides the all-reduced sums by the global batch size, clips if configured, and steps Adam
/// (which divides as it goes when there is no clipping). `grads` may be left unscaled.
fn apply_gradients(
    model: &Classifier,
    opt: &mut Adam,
    grads: &mut Gradients,
    global_batch_size: usize,
) -> Result<()> {
    let mean = 1.0 / global_batch_size.max(1) as f32;
    match opt.config().clip_norm {
        Some(max) => {
            grads.scale(mean);
            grads.clip_norm(max);
            opt.step(model.groups(), grads)
        }
        None => opt.step_scaled(model.groups(), grads, mean),
    }
}
