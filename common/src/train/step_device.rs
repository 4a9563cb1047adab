//! The training step of a replica whose training state is held on its device (see
//! `replica.rs`): the step of `step.rs`, with the gradients left on the device. They are summed
//! there where the collective can (NCCL, in place, bucket by bucket, and the table's touched
//! rows gathered there); a collective that sums
//! host memory gets each bucket copied up and back, counted (see `transfers.rs`). A world of
//! one sums nothing, so nothing is copied. The optimizer then updates the weights in place on
//! the device. A short world (a worker lost) sums its slots on the host, as `step.rs` does, so
//! that the survivors' sums keep the full world's order.

use std::time::Instant;

use super::adam::Adam;
use super::replica::Replica;
use super::step::{
    all_reduce_slots, failed, loss_of, sum_figures, Outcome, Share, StepError, StepReport,
    StepTimings,
};
use super::tally::Tally;
use super::transfers::{self, Cargo};
use candle_core::{DType, Device, Tensor};

use crate::collective::Collective;
use crate::model::{
    params::sparse_shapes, Batch, Classifier, DeviceGradients, Gradients, ModelError, SparseRows,
    TableRows,
};

type StepResult<T> = std::result::Result<T, StepError>;

/// [`super::train_share`] for a replica held on its device.
pub(super) fn train_share(
    replica: &Replica,
    opt: &mut Adam,
    collective: &mut dyn Collective,
    share: &Share<'_>,
    global_batch_size: usize,
    class_weights: Option<&[f32]>,
    tally: Option<&Tally<'_>>,
) -> StepResult<StepReport> {
    let start = Instant::now();
    let model = replica.model();
    let (mut grads, outcomes, reduce) = match share.batches.as_slice() {
        [batch] if share.is_own(collective) => {
            let (mut grads, outcomes) = match batch {
                Some(batch) => gradients(model, batch, class_weights)?,
                None => (zeros(model)?, Vec::new()),
            };
            let reduce = Instant::now();
            sum_across(model, collective, &mut grads)?;
            (grads, outcomes, reduce)
        }
        batches => {
            let mut per_slot = Vec::with_capacity(batches.len());
            let mut outcomes = Vec::new();
            for batch in batches {
                per_slot.push(match batch {
                    Some(batch) => {
                        let (grads, mine) = gradients(model, batch, class_weights)?;
                        outcomes.extend(mine);
                        to_host(model, &grads)?
                    }
                    None => Gradients::zeros(model.groups()),
                });
            }
            let reduce = Instant::now();
            let summed = all_reduce_slots(collective, share, &model.buckets(), per_slot)?;
            (to_device(model, &summed)?, outcomes, reduce)
        }
    };
    let totals = sum_figures(collective, tally, &outcomes)?;
    let update = Instant::now();
    let mean = 1.0 / global_batch_size.max(1) as f32;
    match opt.config().clip_norm {
        Some(max) => {
            grads.scale(mean)?;
            grads.clip_norm(max)?;
            opt.step_on_device(model.groups(), &grads, 1.0)?;
        }
        None => opt.step_on_device(model.groups(), &grads, mean)?,
    }
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

/// Forward and backward over `batch` on the model's device: the summed loss's gradients, left
/// there, and each example's outcome.
fn gradients(
    model: &Classifier,
    batch: &Batch,
    class_weights: Option<&[f32]>,
) -> StepResult<(DeviceGradients, Vec<Outcome>)> {
    let forward = model.forward_train(batch)?;
    let (total, outcomes) = loss_of(model, batch, &forward, class_weights)?;
    let grads = model.backward_on_device(forward, &total, batch)?;
    Ok((grads, outcomes))
}

/// No gradient, on the model's device.
fn zeros(model: &Classifier) -> StepResult<DeviceGradients> {
    let dims: Vec<usize> = sparse_shapes(model.groups())
        .into_iter()
        .map(|(_, dim)| dim)
        .collect();
    Ok(DeviceGradients::zeros(
        &model.buckets(),
        &dims,
        model.device(),
    )?)
}

/// Sums `grads` across the workers of an undiminished world: bucket by bucket in place on the
/// device where the collective can, else through the host.
fn sum_across(
    model: &Classifier,
    collective: &mut dyn Collective,
    grads: &mut DeviceGradients,
) -> StepResult<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let device = model.device();
    if collective.sums_on_device() {
        for bucket in &grads.buckets {
            collective
                .all_reduce_on_device(bucket)
                .map_err(failed("the dense gradients"))?;
        }
        for table in &mut grads.tables {
            gather_rows(collective, table, device)?;
        }
        return Ok(());
    }
    for bucket in &mut grads.buckets {
        let mut host = transfers::up(bucket, Cargo::Gradients)?;
        collective
            .all_reduce_sum(&mut host)
            .map_err(failed("the dense gradients"))?;
        *bucket = transfers::down(&host, host.len(), device, Cargo::Gradients)?;
    }
    for table in &mut grads.tables {
        let mut rows = match &table.rows {
            Some(r) => transfers::up(r, Cargo::Gradients)?,
            None => Vec::new(),
        };
        let dim = table.dim;
        collective
            .all_reduce_sparse_rows(&mut table.ids, &mut rows, dim)
            .map_err(failed("the embedding rows"))?;
        table.rows = match table.ids.len() {
            0 => None,
            n => Some(transfers::down(&rows, (n, dim), device, Cargo::Gradients)?),
        };
    }
    Ok(())
}

/// Gathers every worker's touched rows of one table on the device and sums them by id, the same
/// on every worker, rank by rank. The counts and ids travel as host floats (exact below 2^24);
/// the rows as one device buffer of a block per worker, each worker filling its own and the sum
/// with the others' zeros gathering them exactly.
fn gather_rows(
    collective: &mut dyn Collective,
    table: &mut TableRows,
    device: &Device,
) -> StepResult<()> {
    const EXACT: usize = 1 << 24;
    let (world, rank, dim) = (collective.world_size(), collective.rank(), table.dim);
    if table.ids.last().is_some_and(|&id| id as usize >= EXACT) {
        return Err(ModelError::Gradients(format!(
            "table rows up to {EXACT} can be gathered on the device, not row {:?}",
            table.ids.last()
        ))
        .into());
    }
    let mut counts = vec![0f32; world];
    counts[rank] = table.ids.len() as f32;
    collective
        .all_reduce_sum(&mut counts)
        .map_err(failed("the embedding rows"))?;
    let counts: Vec<usize> = counts.iter().map(|&c| c as usize).collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    if most == 0 {
        *table = TableRows::empty(dim);
        return Ok(());
    }
    let mut ids = vec![0f32; world * most];
    for (k, &id) in table.ids.iter().enumerate() {
        ids[rank * most + k] = id as f32;
    }
    collective
        .all_reduce_sum(&mut ids)
        .map_err(failed("the embedding rows"))?;
    let zeros = |n: usize| Tensor::zeros((n, dim), DType::F32, device);
    let before = rank * most;
    let after = world * most - before - table.ids.len();
    let mut blocks = vec![zeros(before).map_err(ModelError::from)?];
    blocks.extend(table.rows.clone());
    blocks.push(zeros(after).map_err(ModelError::from)?);
    let blocks: Vec<Tensor> = blocks.into_iter().filter(|b| b.elem_count() > 0).collect();
    let all = Tensor::cat(&blocks, 0).map_err(ModelError::from)?;
    collective
        .all_reduce_on_device(&all)
        .map_err(failed("the embedding rows"))?;
    // Every worker's entries, rank by rank, each with the place of its id among all ids.
    let entries: Vec<(u32, u32)> = (0..world)
        .flat_map(|r| (0..counts[r]).map(move |k| r * most + k))
        .map(|at| (ids[at] as u32, at as u32))
        .collect();
    let mut union: Vec<u32> = entries.iter().map(|&(id, _)| id).collect();
    union.sort_unstable();
    union.dedup();
    let (at, to): (Vec<u32>, Vec<u32>) = entries
        .iter()
        .map(|&(id, at)| (at, union.partition_point(|&u| u < id) as u32))
        .unzip();
    let n = at.len();
    let rows = (|| {
        let picked = all.index_select(&Tensor::from_vec(at, n, device)?, 0)?;
        zeros(union.len())?.index_add(&Tensor::from_vec(to, n, device)?, &picked, 0)
    })()
    .map_err(ModelError::from)?;
    *table = TableRows {
        ids: union,
        rows: Some(rows),
        dim,
    };
    Ok(())
}

/// The gradients as the host's step keeps them (for the slots' sums), copied up.
fn to_host(model: &Classifier, grads: &DeviceGradients) -> StepResult<Gradients> {
    let mut dense = vec![0f32; model.dense_len()];
    for (range, bucket) in grads.ranges.iter().zip(&grads.buckets) {
        dense[range.clone()].copy_from_slice(&transfers::up(bucket, Cargo::Gradients)?);
    }
    let mut sparse = Vec::with_capacity(grads.tables.len());
    for t in &grads.tables {
        sparse.push(SparseRows {
            ids: t.ids.clone(),
            rows: match &t.rows {
                Some(r) => transfers::up(r, Cargo::Gradients)?,
                None => Vec::new(),
            },
            dim: t.dim,
        });
    }
    Ok(Gradients { dense, sparse })
}

/// Summed host gradients back on the model's device, in its buckets.
fn to_device(model: &Classifier, grads: &Gradients) -> StepResult<DeviceGradients> {
    let device = model.device();
    let ranges = model.buckets();
    let mut buckets = Vec::with_capacity(ranges.len());
    for range in &ranges {
        let values = grads.dense.get(range.clone()).ok_or_else(|| {
            ModelError::Gradients(format!("no dense gradients for bucket {range:?}"))
        })?;
        buckets.push(transfers::down(
            values,
            range.len(),
            device,
            Cargo::Gradients,
        )?);
    }
    let mut tables = Vec::with_capacity(grads.sparse.len());
    for s in &grads.sparse {
        tables.push(TableRows {
            ids: s.ids.clone(),
            rows: match s.ids.len() {
                0 => None,
                n => Some(transfers::down(
                    &s.rows,
                    (n, s.dim),
                    device,
                    Cargo::Gradients,
                )?),
            },
            dim: s.dim,
        });
    }
    Ok(DeviceGradients {
        ranges,
        buckets,
        tables,
    })
}
