//! The NCCL backend of [`Collective`], for workers on GPUs (one rank per GPU). The coordinator
//! hands every rank the same NCCL unique id at rendezvous, and a fresh one at every regroup
//! (the new rank 0's, see [`new_unique_id`]); the communicator is then formed by NCCL itself.
//!
//! A GPU worker holds its training state on the device (see `train::Replica`), so the step sums
//! each bucket of its gradients in place there ([`Collective::all_reduce_on_device`]), and
//! gathers the table's touched rows there (`train/step_device.rs`). The host-memory calls
//! remain for the rest (a short world's slots, the step's figures, the rows' ids, broadcasts):
//! each copies its buffer to the GPU, reduces there and copies back. Sparse rows from the host
//! are gathered (counts first, then ids and rows padded to the largest count) and merged on
//! the host in rank order, the same on every rank.
//!
//! NCCL waits for a dead peer forever, so nothing here blocks inside NCCL or CUDA without a
//! way out. The communicator is formed on a helper thread that the caller waits for with a
//! deadline and the abort flag. Each collective is enqueued and then polled (its completion
//! event, NCCL's asynchronous error, the abort flag, a deadline) instead of synchronizing the
//! stream. After any failure the collective refuses further calls; dropping it aborts the
//! communicator (`ncclCommAbort`, which also stops a kernel still waiting for the dead), and
//! the worker regroups with the survivors, who form a new one.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::{result, result::NcclError, sys, Id, NcclType};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp1, Layout, Tensor};

use super::deadline::{on_helper_thread, poll_until};
use super::{check_sparse_input, Abort, Collective, CollectiveError};

/// Bytes of an NCCL unique id.
pub const UNIQUE_ID_BYTES: usize = 128;

/// How long forming a communicator may take. Every rank is running when the coordinator
/// answers it, so one that has not joined by then is lost.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one collective may wait for the slowest rank. The first call also connects the
/// ranks; a lost peer is normally noticed much sooner, through the abort flag.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh NCCL unique id (rank 0 makes one and the coordinator passes it to all ranks).
pub fn new_unique_id() -> Result<Vec<u8>, CollectiveError> {
    let id = Id::new().map_err(nccl_err("making a unique id"))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

fn nccl_err(during: &'static str) -> impl Fn(NcclError) -> CollectiveError {
    move |e| CollectiveError::Backend(format!("NCCL failed while {during}: {:?}", e.0))
}

fn cuda_err(during: &'static str) -> impl Fn(DriverError) -> CollectiveError {
    move |e| CollectiveError::Backend(format!("CUDA failed while {during}: {e}"))
}

/// A communicator, aborted when dropped. Never destroyed: `ncclCommDestroy` would wait for
/// operations that a dead peer never completes.
struct RawComm(sys::ncclComm_t);

// SAFETY: `ncclComm_t` is a raw pointer, so not `Send` by default. NCCL requires only that a
// communicator is not used by two threads at once; `RawComm` is owned whole and used only
// through its owner.
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // SAFETY: the handle comes from a successful ncclCommInitRank and is aborted once.
        if let Err(e) = unsafe { result::comm_abort(self.0) } {
            tracing::warn!("aborting the NCCL communicator failed: {:?}", e.0);
        }
    }
}

/// Stops an [`NcclAllReduce`] from another thread (see [`Abort`]): a call waiting for the
/// other ranks, or for them to join, fails within a millisecond or so.
#[derive(Debug, Clone, Default)]
pub struct NcclAbort(Arc<AtomicBool>);

impl Abort for NcclAbort {
    fn abort(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub struct NcclAllReduce {
    // Fields drop in order: the communicator is aborted before the buffers of a failed call
    // are freed (freeing may wait for the stream) and before the stream goes.
    comm: RawComm,
    /// GPU buffers of a call that failed while NCCL may still use them.
    stranded: Vec<Box<dyn Send>>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    abort: NcclAbort,
    /// Why an earlier call failed: NCCL's state is unknown after that, so later calls refuse.
    broken: Option<String>,
    bytes_sent: u64,
}

impl NcclAllReduce {
    /// Joins the communicator `unique_id` names as `rank` of `world_size`, on GPU `ordinal`.
    /// Blocks until every rank has joined, for at most a minute.
    pub fn new(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
    ) -> Result<Self, CollectiveError> {
        Self::with_abort(ordinal, rank, world_size, unique_id, NcclAbort::default())
    }

    /// As [`NcclAllReduce::new`]; `abort` (kept by the caller) also ends the wait for the
    /// other ranks to join.
    pub fn with_abort(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
        abort: NcclAbort,
    ) -> Result<Self, CollectiveError> {
        if unique_id.len() != UNIQUE_ID_BYTES || rank >= world_size {
            return Err(CollectiveError::InvalidInput(format!(
                "an NCCL id of {} bytes (need {UNIQUE_ID_BYTES}) for rank {rank} of {world_size}",
                unique_id.len()
            )));
        }
        let mut internal = [0 as c_char; UNIQUE_ID_BYTES];
        for (dst, &src) in internal.iter_mut().zip(unique_id) {
            *dst = src as c_char;
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("opening the GPU"))?;
        let stream = ctx.new_stream().map_err(cuda_err("making a stream"))?;
        let id = sys::ncclUniqueId { internal };
        let comm = join(&ctx, rank, world_size, id, &abort)?;
        Ok(Self {
            comm,
            stranded: Vec::new(),
            stream,
            rank,
            world: world_size,
            abort,
            broken: None,
            bytes_sent: 0,
        })
    }

    /// The handle that aborts this collective from another thread.
    pub fn abort_handle(&self) -> NcclAbort {
        self.abort.clone()
    }

    /// Runs one collective; any failure but bad input leaves the collective broken.
    fn guarded<R>(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<R, CollectiveError>,
    ) -> Result<R, CollectiveError> {
        if let Some(why) = &self.broken {
            return Err(CollectiveError::Broken(why.clone()));
        }
        let out = call(self);
        if let Err(e) = &out {
            if !matches!(e, CollectiveError::InvalidInput(_)) {
                self.broken = Some(e.to_string());
            }
        }
        out
    }

    /// Waits for the work enqueued on the stream so far without blocking in CUDA: polls its
    /// completion, NCCL's asynchronous error, the abort flag and the deadline.
    fn wait(&self, during: &'static str) -> Result<(), CollectiveError> {
        let done = self
            .stream
            .record_event(None)
            .map_err(cuda_err("recording an event"))?;
        let comm = self.comm.0;
        poll_until(
            during,
            CALL_TIMEOUT,
            &self.abort.0,
            || done.try_is_complete().map_err(cuda_err(during)),
            || {
                let mut state = sys::ncclResult_t::ncclSuccess;
                // SAFETY: a live communicator and a valid place for the answer.
                unsafe { sys::ncclCommGetAsyncError(comm, &mut state) }
                    .result()
                    .map_err(nccl_err("asking for its asynchronous error"))?;
                state.result().map(|_| ()).map_err(nccl_err(during))
            },
        )
    }

    /// Sums `buf` across ranks on the GPU; `buf` ends with the sum.
    fn reduce(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        if buf.is_empty() {
            return Ok(());
        }
        let stream = self.stream.clone();
        let mut dev = stream
            .clone_htod(&*buf)
            .map_err(cuda_err("copying to the GPU"))?;
        let enqueued = {
            let (ptr, _written) = dev.device_ptr_mut(&stream);
            // SAFETY: `dev` holds buf.len() floats on this communicator's GPU, in place.
            unsafe {
                result::all_reduce(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    buf.len(),
                    f32::as_nccl_type(),
                    sys::ncclRedOp_t::ncclSum,
                    self.comm.0,
                    stream.cu_stream() as _,
                )
            }
        };
        if let Err(e) = enqueued
            .map_err(nccl_err("all-reducing"))
            .and_then(|_| self.wait("all-reducing"))
        {
            self.stranded.push(Box::new(dev));
            return Err(e);
        }
        stream
            .memcpy_dtoh(&dev, buf)
            .map_err(cuda_err("copying from the GPU"))?;
        stream
            .synchronize()
            .map_err(cuda_err("waiting for the copy"))?;
        // What a ring all-reduce sends per rank, for comparison with the TCP ring.
        let n = self.world as u64;
        self.bytes_sent += 2 * (n - 1) * std::mem::size_of_val(buf) as u64 / n.max(1);
        Ok(())
    }

    /// Sums `len` floats of GPU memory across ranks, in place.
    fn reduce_in_place(
        &mut self,
        buf: &mut impl DevicePtrMut<f32>,
        len: usize,
    ) -> Result<(), CollectiveError> {
        if len == 0 {
            return Ok(());
        }
        let stream = self.stream.clone();
        let enqueued = {
            let (ptr, _written) = buf.device_ptr_mut(&stream);
            // SAFETY: `buf` holds `len` floats on this communicator's GPU, summed in place.
            unsafe {
                result::all_reduce(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    len,
                    f32::as_nccl_type(),
                    sys::ncclRedOp_t::ncclSum,
                    self.comm.0,
                    stream.cu_stream() as _,
                )
            }
        };
        enqueued
            .map_err(nccl_err("all-reducing"))
            .and_then(|_| self.wait("all-reducing"))?;
        let n = self.world as u64;
        self.bytes_sent += 2 * (n - 1) * (4 * len) as u64 / n.max(1);
        Ok(())
    }

    /// Every rank's `values` (each `len` long), rank after rank.
    fn gather<T>(&mut self, values: &[T], len: usize) -> Result<Vec<T>, CollectiveError>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType + Copy + Default + Send + 'static,
    {
        if values.len() != len {
            return Err(CollectiveError::InvalidInput(format!(
                "{} values to gather as {len}",
                values.len()
            )));
        }
        let world = self.world;
        let mut out = vec![T::default(); len * world];
        if len == 0 {
            return Ok(out);
        }
        let stream = self.stream.clone();
        let src = stream
            .clone_htod(values)
            .map_err(cuda_err("copying to the GPU"))?;
        let mut dst = stream
            .alloc_zeros::<T>(len * world)
            .map_err(cuda_err("allocating on the GPU"))?;
        let enqueued = {
            let (from, _read) = src.device_ptr(&stream);
            let (to, _written) = dst.device_ptr_mut(&stream);
            // SAFETY: `src` holds `len` and `dst` len × world values of T on this GPU.
            unsafe {
                result::all_gather(
                    from as *const c_void,
                    to as *mut c_void,
                    len,
                    T::as_nccl_type(),
                    self.comm.0,
                    stream.cu_stream() as _,
                )
            }
        };
        if let Err(e) = enqueued
            .map_err(nccl_err("all-gathering"))
            .and_then(|_| self.wait("all-gathering"))
        {
            self.stranded.push(Box::new(src));
            self.stranded.push(Box::new(dst));
            return Err(e);
        }
        stream
            .memcpy_dtoh(&dst, &mut out)
            .map_err(cuda_err("copying from the GPU"))?;
        stream
            .synchronize()
            .map_err(cuda_err("waiting for the copy"))?;
        self.bytes_sent += (std::mem::size_of::<T>() * len * (world - 1)) as u64;
        Ok(out)
    }
}

/// Forms the communicator on a helper thread (ncclCommInitRank blocks until every rank has
/// joined, with no timeout of its own) and waits for it with a deadline and `abort`. A
/// communicator formed after the caller gave up is dropped by the helper: aborted.
fn join(
    ctx: &Arc<CudaContext>,
    rank: usize,
    world: usize,
    id: sys::ncclUniqueId,
    abort: &NcclAbort,
) -> Result<RawComm, CollectiveError> {
    let too_big = |_| CollectiveError::InvalidInput(format!("rank {rank} of {world}"));
    let (nranks, me) = (
        c_int::try_from(world).map_err(too_big)?,
        c_int::try_from(rank).map_err(too_big)?,
    );
    let ctx = ctx.clone();
    on_helper_thread(
        "forming the NCCL communicator",
        INIT_TIMEOUT,
        &abort.0,
        move || {
            ctx.bind_to_thread()
                .map_err(cuda_err("binding the GPU to the NCCL thread"))?;
            let mut comm = MaybeUninit::uninit();
            // SAFETY: NCCL writes `comm` when it succeeds, and only then is it read.
            unsafe { result::comm_init_rank(comm.as_mut_ptr(), nranks, id, me) }
                .map(|_| RawComm(unsafe { comm.assume_init() }))
                .map_err(nccl_err("forming the communicator"))
        },
    )
}

/// Hands a tensor's own GPU memory to [`NcclAllReduce::reduce_in_place`] (Candle's hook for an
/// in-place op), so the sum neither copies nor allocates.
struct SumInPlace<'a> {
    comm: RefCell<&'a mut NcclAllReduce>,
    outcome: RefCell<Option<Result<(), CollectiveError>>>,
}

impl InplaceOp1 for SumInPlace<'_> {
    fn name(&self) -> &'static str {
        "nccl_all_reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL sums GPU memory, and this tensor is on the CPU")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL sums contiguous tensors only");
        };
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let mut view = slice.slice_mut(start..end);
        let out = self
            .comm
            .borrow_mut()
            .reduce_in_place(&mut view, end - start);
        *self.outcome.borrow_mut() = Some(out);
        Ok(())
    }
}

impl Collective for NcclAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.guarded(|me| me.reduce(buf))
    }

    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError> {
        check_sparse_input(ids, rows, row_len)?;
        let counts = self.guarded(|me| me.gather(&[ids.len() as u32], 1))?;
        let most = counts.iter().copied().max().unwrap_or(0) as usize;
        let mut padded_ids = ids.clone();
        padded_ids.resize(most, u32::MAX);
        let mut padded_rows = rows.clone();
        padded_rows.resize(most * row_len, 0.0);
        let all_ids = self.guarded(|me| me.gather(&padded_ids, most))?;
        let all_rows = self.guarded(|me| me.gather(&padded_rows, most * row_len))?;
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

    fn sums_on_device(&self) -> bool {
        true
    }

    fn all_reduce_on_device(&mut self, buf: &Tensor) -> Result<(), CollectiveError> {
        if buf.dtype() != DType::F32 || !buf.device().is_cuda() {
            return Err(CollectiveError::InvalidInput(format!(
                "NCCL sums f32 GPU tensors, not {:?} on {:?}",
                buf.dtype(),
                buf.device()
            )));
        }
        // NCCL's stream does not wait for Candle's: the gradient's kernels finish first.
        buf.device()
            .synchronize()
            .map_err(|e| CollectiveError::Backend(format!("waiting for the GPU: {e}")))?;
        let out = self.guarded(|me| {
            let op = SumInPlace {
                comm: RefCell::new(me),
                outcome: RefCell::new(None),
            };
            buf.inplace_op1(&op)
                .map_err(|e| CollectiveError::InvalidInput(e.to_string()))?;
            op.outcome.into_inner().unwrap_or_else(|| {
                Err(CollectiveError::Backend(
                    "the in-place sum never ran".into(),
                ))
            })
        });
        if out.is_err() {
            // NCCL may still write into it: it lives until the communicator is aborted.
            self.stranded.push(Box::new(buf.clone()));
        }
        out
    }

    /// Not yet: the communicator has only ever run on the step's own thread, bound to its GPU
    /// context, and no GPU was at hand to check another (issue #26 moves the sums onto the
    /// device, into these buckets).
    fn overlaps(&self) -> bool {
        false
    }
}
