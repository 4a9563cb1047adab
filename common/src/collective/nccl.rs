//! The NCCL backend of [`Collective`], for workers on GPUs (one rank per GPU). The coordinator
//! hands every rank the same NCCL unique id at rendezvous (rank 0 makes it, see
//! [`new_unique_id`]); the communicator is then formed by NCCL itself.
//!
//! Gradients live on the host between the backward pass and the optimizer (see
//! `train::Replica`), so each call copies its buffer to the GPU, reduces there and copies back.
//! The sparse embedding rows are gathered (counts first, then ids and rows padded to the
//! largest count) and merged on the host in rank order, the same on every rank.
//!
//! Dropping the collective aborts the communicator (`ncclCommAbort`), which is how a rank that
//! lost a peer gets out: form a new one with the survivors rather than wait on the dead.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaStream, DriverError};
use candle_core::cuda_backend::cudarc::nccl::{result::NcclError, Comm, Id, ReduceOp};

use super::{check_sparse_input, Collective, CollectiveError};

/// Bytes of an NCCL unique id.
pub const UNIQUE_ID_BYTES: usize = 128;

/// A fresh NCCL unique id (rank 0 makes one and the coordinator passes it to all ranks).
pub fn new_unique_id() -> Result<Vec<u8>, CollectiveError> {
    let id = Id::new().map_err(nccl_err("making a unique id"))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

pub struct NcclAllReduce {
    comm: Comm,
    stream: Arc<CudaStream>,
    bytes_sent: u64,
}

fn nccl_err(during: &'static str) -> impl Fn(NcclError) -> CollectiveError {
    move |e| CollectiveError::Backend(format!("NCCL failed while {during}: {e:?}"))
}

fn cuda_err(during: &'static str) -> impl Fn(DriverError) -> CollectiveError {
    move |e| CollectiveError::Backend(format!("CUDA failed while {during}: {e}"))
}

impl NcclAllReduce {
    /// Joins the communicator `unique_id` names as `rank` of `world_size`, on GPU `ordinal`.
    /// Blocks until every rank has joined.
    pub fn new(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
    ) -> Result<Self, CollectiveError> {
        if unique_id.len() != UNIQUE_ID_BYTES || rank >= world_size {
            return Err(CollectiveError::InvalidInput(format!(
                "an NCCL id of {} bytes (need {UNIQUE_ID_BYTES}) for rank {rank} of {world_size}",
                unique_id.len()
            )));
        }
        let mut internal = [0 as std::ffi::c_char; UNIQUE_ID_BYTES];
        for (dst, &src) in internal.iter_mut().zip(unique_id) {
            *dst = src as std::ffi::c_char;
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("opening the GPU"))?;
        let stream = ctx.new_stream().map_err(cuda_err("making a stream"))?;
        let comm = Comm::from_rank(stream.clone(), rank, world_size, Id::uninit(internal))
            .map_err(nccl_err("forming the communicator"))?;
        Ok(Self {
            comm,
            stream,
            bytes_sent: 0,
        })
    }

    /// Sums `buf` across ranks on the GPU; `buf` ends with the sum.
    fn reduce<T>(&mut self, buf: &mut [T]) -> Result<(), CollectiveError>
    where
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::nccl::NcclType
            + Copy,
    {
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self
            .stream
            .clone_htod(&*buf)
            .map_err(cuda_err("copying to the GPU"))?;
        self.comm
            .all_reduce_in_place(&mut dev, &ReduceOp::Sum)
            .map_err(nccl_err("all-reducing"))?;
        self.stream
            .memcpy_dtoh(&dev, buf)
            .map_err(cuda_err("copying from the GPU"))?;
        self.stream
            .synchronize()
            .map_err(cuda_err("waiting for the all-reduce"))?;
        // What a ring all-reduce sends per rank, for comparison with the TCP ring.
        let n = self.comm.world_size() as u64;
        self.bytes_sent += 2 * (n - 1) * std::mem::size_of_val(buf) as u64 / n.max(1);
        Ok(())
    }

    /// Every rank's `values` (each `len` long), rank after rank.
    fn gather<T>(&mut self, values: &[T], len: usize) -> Result<Vec<T>, CollectiveError>
    where
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits
            + candle_core::cuda_backend::cudarc::nccl::NcclType
            + Copy
            + Default,
    {
        let world = self.comm.world_size();
        let mut out = vec![T::default(); len * world];
        if len == 0 {
            return Ok(out);
        }
        let src = self
            .stream
            .clone_htod(values)
            .map_err(cuda_err("copying to the GPU"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<T>(len * world)
            .map_err(cuda_err("allocating on the GPU"))?;
        self.comm
            .all_gather(&src, &mut dst)
            .map_err(nccl_err("all-gathering"))?;
        self.stream
            .memcpy_dtoh(&dst, &mut out)
            .map_err(cuda_err("copying from the GPU"))?;
        self.stream
            .synchronize()
            .map_err(cuda_err("waiting for the all-gather"))?;
        self.bytes_sent += (std::mem::size_of::<T>() * len * (world - 1)) as u64;
        Ok(out)
    }
}

// SAFETY: `Comm` holds a raw `ncclComm_t`, so it is not `Send` by default. NCCL requires only
// that a communicator is not used by two threads at once; this type owns its communicator and
// uses it through `&mut self`, so moving it to another thread is sound.
unsafe impl Send for NcclAllReduce {}

impl Collective for NcclAllReduce {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.reduce(buf)
    }

    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError> {
        check_sparse_input(ids, rows, row_len)?;
        let counts = self.gather(&[ids.len() as u32], 1)?;
        let most = counts.iter().copied().max().unwrap_or(0) as usize;
        let mut padded_ids = ids.clone();
        padded_ids.resize(most, u32::MAX);
        let mut padded_rows = rows.clone();
        padded_rows.resize(most * row_len, 0.0);
        let all_ids = self.gather(&padded_ids, most)?;
        let all_rows = self.gather(&padded_rows, most * row_len)?;
        // (id, position) in id order, ranks in order within an id: the same sum everywhere.
        let mut entries: Vec<(u32, usize)> = counts
            .iter()
            .enumerate()
            .flat_map(|(r, &n)| (0..n as usize).map(move |k| r * most + k))
            .map(|at| (all_ids[at], at))
            .collect();
        entries.sort_by_key(|&(id, at)| (id, at));
        ids.clear();
        rows.clear();
        for (id, at) in entries {
            let src = &all_rows[at * row_len..(at + 1) * row_len];
            if ids.last() == Some(&id) {
                let start = rows.len() - row_len;
                rows[start..].iter_mut().zip(src).for_each(|(a, b)| *a += b);
            } else {
                ids.push(id);
                rows.extend_from_slice(src);
            }
        }
        Ok(())
    }

    fn take_bytes_sent(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_sent)
    }
}
