//! The coordinator's gRPC service: rendezvous, shard streaming, reports, heartbeats. The only
//! place that builds a `tonic::Status`.

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::collective::Backend;
use common::constant_time_eq;
use common::data::Example;
use common::pb;
use common::state_transfer::{self, ModelState, ReceiveError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Offer;
use crate::metrics::Metrics;
use crate::regroup_call::{RegroupAnswer, RegroupAsk};
use crate::report::{StepCheckpoint, WorkerReport};
use crate::sharding::{deal, part};
use crate::spool::SpooledState;
use crate::stored_state::StoredState;

/// What every worker receives at join.
pub struct RunInfo {
    pub run_id: u64,
    pub spec_json: String,
    /// Whether a ring whose workers are all on one host may sum through shared memory
    /// (`--ring-transport auto`).
    pub ring_shared_memory: bool,
    pub vocab_json: String,
    pub labels: Vec<String>,
    /// Weights every worker starts from (safetensors), empty to initialise from the seed, and
    /// the optimizer state (a resumed run), empty for a fresh one: announced in the join reply
    /// and sent in chunks (FetchInitialState).
    pub initial_state: Arc<StoredState>,
    /// The first epoch workers train (0, or after a resumed run's checkpoint).
    pub start_epoch: u64,
    /// Steps of `start_epoch` already in the initial weights, and their examples.
    pub start_step: u64,
    pub start_applied: u64,
    /// The --encoder directory, served to workers that lack it.
    pub encoder_dir: Option<std::path::PathBuf>,
    /// Where the states workers send are kept as they arrive (the run directory).
    pub spool_dir: std::path::PathBuf,
}

/// One epoch as the coordinator planned it.
pub struct EpochPlan {
    pub epoch: u64,
    /// No more epochs: workers receive a `finished` header and exit.
    pub finished: bool,
    pub upload_weights: bool,
    pub examples: Vec<Example>,
    /// Global batches, indices into `examples`.
    pub batches: Vec<Vec<usize>>,
    pub eval: Arc<Vec<Example>>,
    /// Ring rank 0 uploads a checkpoint after every this many steps (0: never).
    pub checkpoint_every: usize,
}

impl EpochPlan {
    /// Whether step `index` ends with a checkpoint upload (not the last: the epoch's end has
    /// its own checkpoint).
    pub fn checkpoint_after(&self, index: usize) -> bool {
        self.checkpoint_every > 0
            && (index + 1).is_multiple_of(self.checkpoint_every)
            && index + 1 < self.batches.len()
    }

    pub fn finished(epoch: u64) -> Self {
        EpochPlan {
            epoch,
            finished: true,
            upload_weights: false,
            examples: Vec::new(),
            batches: Vec::new(),
            eval: Arc::new(Vec::new()),
            checkpoint_every: 0,
        }
    }
}

/// A worker that joined.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its id for the whole run (join order); its ring rank is its place in a [`Membership`].
    pub id: usize,
    pub ring_addr: String,
    pub host: String,
    pub pid: u32,
    pub device: String,
}

/// What a worker reported in its last heartbeat.
#[derive(Default)]
pub struct WorkerProgress {
    pub step: AtomicU64,
    pub epoch: AtomicU64,
    pub last_seen_ms: AtomicU64,
    /// Examples and summed loss (f64 bits) of the epoch so far.
    pub examples: AtomicU64,
    pub loss_sum_bits: AtomicU64,
}

struct Pending {
    req: pb::JoinRequest,
    reply: oneshot::Sender<pb::JoinReply>,
}

/// The workers of one generation of the run, in ring order.
#[derive(Debug)]
pub struct Membership {
    pub generation: u64,
    pub members: Vec<Member>,
    /// The slots each global batch is dealt into: the most workers the run has had, so that a
    /// lost worker's slot moves to a survivor instead of its examples being dealt anew (see
    /// `common::train::Share`).
    pub slots: usize,
    /// False while a regroup collects the survivors: streams are refused meanwhile.
    pub settled: bool,
    /// The epoch in flight at the regroup goes on at this step; later epochs start at 0.
    pub resume_epoch: u64,
    pub resume_step: usize,
}

impl Membership {
    /// Ring rank of worker `id`, if it is a member.
    pub fn position(&self, id: usize) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// The first step of `epoch` a stream of this generation carries.
    pub fn first_step(&self, epoch: u64) -> usize {
        if epoch == self.resume_epoch {
            self.resume_step
        } else {
            0
        }
    }
}

/// A worker waiting in Regroup for the new membership: its new ring, or why it has none
/// (answered as FAILED_PRECONDITION, here and only here).
pub struct PendingRegroup {
    pub ask: RegroupAsk,
    pub reply: oneshot::Sender<Result<RegroupAnswer, String>>,
}

/// What workers send the run driver.
pub struct Inbox {
    pub reports: mpsc::UnboundedReceiver<WorkerReport>,
    pub checkpoints: mpsc::UnboundedReceiver<StepCheckpoint>,
}

/// Workers that may join a run after its start, over the whole run.
const MAX_LATE_JOINS: usize = 64;

/// State shared by the service handlers and the run driver.
pub struct Shared {
    token: String,
    expected: usize,
    run: RunInfo,
    pending: Mutex<Vec<Pending>>,
    /// Set once every expected worker has joined; replaced at every membership change.
    pub members: watch::Sender<Option<Arc<Membership>>>,
    /// Workers waiting in Regroup; the run driver settles them.
    pub regroups: Mutex<Vec<PendingRegroup>>,
    /// Workers that joined the run under way, not yet admitted to a ring.
    pub candidates: Mutex<Vec<Member>>,
    /// Ids handed out so far (the expected workers', then late joiners').
    next_id: AtomicUsize,
    pub regroup_requested: tokio::sync::Notify,
    /// The current epoch plan; handlers wait on it.
    pub plan: watch::Sender<Option<Arc<EpochPlan>>>,
    reports: mpsc::UnboundedSender<WorkerReport>,
    checkpoints: mpsc::UnboundedSender<StepCheckpoint>,
    pub progress: Vec<WorkerProgress>,
    pub running: AtomicBool,
    /// Workers that have been sent the `finished` header (told the run is over).
    pub told_finished: AtomicUsize,
    started: Instant,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// The collective backend of a ring of `offers` (ring-rank order) under this run's options.
    pub fn backend_for(&self, offers: &[Offer<'_>]) -> Backend {
        crate::backend::choose(offers, self.run.ring_shared_memory)
    }

    pub fn new(token: String, expected: usize, run: RunInfo) -> (Arc<Self>, Inbox) {
        let (reports, rx) = mpsc::unbounded_channel();
        let (checkpoints, checkpoints_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            token,
            expected,
            run,
            pending: Mutex::new(Vec::new()),
            members: watch::channel(None).0,
            regroups: Mutex::new(Vec::new()),
            candidates: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            regroup_requested: tokio::sync::Notify::new(),
            plan: watch::channel(None).0,
            reports,
            checkpoints,
            progress: (0..expected + MAX_LATE_JOINS)
                .map(|_| WorkerProgress::default())
                .collect(),
            running: AtomicBool::new(true),
            told_finished: AtomicUsize::new(0),
            started: Instant::now(),
            metrics: Arc::new(Metrics::default()),
        };
        (
            Arc::new(shared),
            Inbox {
                reports: rx,
                checkpoints: checkpoints_rx,
            },
        )
    }

    /// The workers the run starts with.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// The workers waiting for the others to join (host and pid), for a message when the
    /// others do not come.
    pub fn joined_so_far(&self) -> Vec<String> {
        match self.pending.lock() {
            Ok(pending) => pending
                .iter()
                .map(|p| format!("{} pid {}", p.req.hostname, p.req.pid))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Ends the run for the service: heartbeats answer `running: false` and joins still waiting
    /// for the rest of the cluster are refused.
    pub fn close(&self) {
        self.running.store(false, Ordering::Relaxed);
        match self.pending.lock() {
            Ok(mut pending) => pending.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
        for p in self.take_regroups(|_| true) {
            let _ = p.reply.send(Ok(RegroupAnswer::Finished));
        }
    }

    pub fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn check_token(&self, token: &str, what: &str) -> Result<(), Status> {
        if constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            tracing::warn!("{what} refused: wrong or missing join token");
            Err(Status::permission_denied("join token refused"))
        }
    }

    /// The current membership generation (0 before the rendezvous).
    pub fn generation(&self) -> u64 {
        self.members.borrow().as_ref().map_or(0, |m| m.generation)
    }

    fn regroups(&self) -> std::sync::MutexGuard<'_, Vec<PendingRegroup>> {
        self.regroups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the waiting Regroup calls of the workers `wanted` picks; the others wait on.
    pub fn take_regroups(&self, wanted: impl Fn(usize) -> bool) -> Vec<PendingRegroup> {
        let mut pending = self.regroups();
        let (taken, left) = std::mem::take(&mut *pending)
            .into_iter()
            .partition(|p| wanted(p.ask.rank as usize));
        *pending = left;
        taken
    }

    /// Whether any worker `wanted` picks waits in Regroup.
    pub fn regroup_waiting(&self, wanted: impl Fn(usize) -> bool) -> bool {
        self.regroups().iter().any(|p| wanted(p.ask.rank as usize))
    }

    /// Whether a late joiner waits in Regroup to be admitted.
    pub fn admission_waiting(&self) -> bool {
        let candidates: Vec<usize> = self
            .candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|m| m.id)
            .collect();
        !candidates.is_empty() && self.regroup_waiting(|id| candidates.contains(&id))
    }

    /// Late joiners waiting in Regroup for admission (their calls still open).
    pub fn take_candidates(&self) -> Vec<Member> {
        let ready: Vec<usize> = self
            .regroups()
            .iter()
            .filter(|p| !p.reply.is_closed())
            .map(|p| p.ask.rank as usize)
            .collect();
        let mut candidates = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        let (taken, left) = std::mem::take(&mut *candidates)
            .into_iter()
            .partition(|m| ready.contains(&m.id));
        *candidates = left;
        taken
    }

    fn check_rank(&self, rank: u32) -> Result<usize, Status> {
        let rank = rank as usize;
        let ids = self.next_id.load(Ordering::SeqCst);
        if rank < ids {
            Ok(rank)
        } else {
            Err(Status::invalid_argument(format!(
                "rank {rank} is not in this run of {ids} workers"
            )))
        }
    }

    /// A worker joining after the rendezvous: it gets an id now and a ring at the next epoch
    /// boundary (it calls Regroup when ready and waits there).
    fn join_late(&self, req: pb::JoinRequest) -> Result<pb::JoinReply, Status> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        if id >= self.progress.len() {
            self.next_id.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted(format!(
                "this run has taken {MAX_LATE_JOINS} late workers and takes no more"
            )));
        }
        tracing::info!(
            "worker {id} (host {}, pid {}) joined the running run; it enters at the next epoch boundary",
            req.hostname,
            req.pid
        );
        self.progress[id]
            .last_seen_ms
            .store(self.millis(), Ordering::Relaxed);
        self.candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Member {
                id,
                ring_addr: req.ring_addr,
                host: req.hostname,
                pid: req.pid,
                device: req.device,
            });
        Ok(pb::JoinReply {
            rank: id as u32,
            run_id: self.run.run_id,
            run_spec_json: self.run.spec_json.clone(),
            vocab_json: self.run.vocab_json.clone(),
            labels: self.run.labels.clone(),
            generation: self.generation(),
            awaiting_admission: true,
            ..Default::default()
        })
    }

    /// Assigns ranks in join order and answers every waiting worker.
    fn rendezvous(&self, pending: &mut Vec<Pending>) {
        let peers: Vec<String> = pending.iter().map(|p| p.req.ring_addr.clone()).collect();
        let offers: Vec<Offer<'_>> = pending
            .iter()
            .map(|p| Offer {
                host: &p.req.hostname,
                nccl_id: &p.req.nccl_id,
            })
            .collect();
        let backend = self.backend_for(&offers);
        tracing::info!("all-reduce between workers: {backend}");
        let members: Vec<Member> = pending
            .iter()
            .enumerate()
            .map(|(id, p)| Member {
                id,
                ring_addr: p.req.ring_addr.clone(),
                host: p.req.hostname.clone(),
                pid: p.req.pid,
                device: p.req.device.clone(),
            })
            .collect();
        for (rank, p) in pending.drain(..).enumerate() {
            let reply = pb::JoinReply {
                rank: rank as u32,
                world_size: self.expected as u32,
                peers: peers.clone(),
                run_id: self.run.run_id,
                run_spec_json: self.run.spec_json.clone(),
                vocab_json: self.run.vocab_json.clone(),
                labels: self.run.labels.clone(),
                initial_state: self.run.initial_state.header().cloned(),
                start_epoch: self.run.start_epoch,
                start_step: self.run.start_step,
                start_applied: self.run.start_applied,
                backend: Some(backend.clone().into()),
                generation: 0,
                awaiting_admission: false,
            };
            let _ = p.reply.send(reply);
        }
        for m in &members {
            tracing::info!(
                "worker rank {} joined: host {} pid {}, device {}, ring {}",
                m.id,
                m.host,
                m.pid,
                if m.device.is_empty() {
                    "cpu"
                } else {
                    &m.device
                },
                m.ring_addr
            );
        }
        self.next_id.store(members.len(), Ordering::SeqCst);
        self.metrics.update(|v| {
            v.workers_alive = members.len() as u64;
            v.membership_changes += members.len() as u64;
        });
        self.members.send_replace(Some(Arc::new(Membership {
            generation: 0,
            slots: members.len(),
            members,
            settled: true,
            resume_epoch: self.run.start_epoch,
            resume_step: self.run.start_step as usize,
        })));
    }
}

pub struct Service(pub Arc<Shared>);

type EpochStream = Pin<Box<dyn Stream<Item = Result<pb::EpochMessage, Status>> + Send>>;

/// An NCCL unique id offered by a worker: none, or exactly 128 bytes.
fn check_nccl_id(id: &[u8]) -> Result<(), Status> {
    if id.is_empty() || id.len() == 128 {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "an NCCL unique id has 128 bytes, not {}",
        id.len()
    )))
}

fn message(kind: pb::epoch_message::Kind) -> Result<pb::EpochMessage, Status> {
    Ok(pb::EpochMessage { kind: Some(kind) })
}

fn to_pb(e: &Example) -> pb::Example {
    pb::Example {
        tokens: e.tokens.clone(),
        label: e.label,
        source: u32::from(e.source()),
        augmented: e.aug > 0,
        key: 0,
    }
}

/// Returns once the run is no longer in a settled membership of `generation` (or shuts down).
async fn left_behind(rx: &mut watch::Receiver<Option<Arc<Membership>>>, generation: u64) {
    let _ = rx
        .wait_for(|m| {
            m.as_ref()
                .is_none_or(|m| m.generation != generation || !m.settled)
        })
        .await;
}

type FileStream = Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send>>;
type StateStream = Pin<Box<dyn Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

/// Receives the state `header` announces, whose chunks are the rest of `parts` (`chunk_of` takes
/// a part's chunk). A transfer that is not the announced one is INVALID_ARGUMENT.
async fn receive_state<P>(
    header: Option<&pb::StateHeader>,
    parts: &mut Streaming<P>,
    chunk_of: impl Fn(P) -> Option<pb::StateChunk>,
    what: &str,
    dir: &Path,
) -> Result<SpooledState, Status> {
    let empty = pb::StateHeader {
        sha256: ModelState::default().header().sha256,
        ..Default::default()
    };
    let header = header.unwrap_or(&empty);
    let received = async {
        let into = SpooledState::reassembly(header, dir)?;
        state_transfer::receive_into(into, parts, chunk_of).await
    };
    received
        .await
        .map(|(weights, optimizer)| SpooledState { weights, optimizer })
        .map_err(|e| {
            tracing::warn!("{what} refused: {e}");
            match e {
                ReceiveError::Stream(status) => status,
                e => Status::invalid_argument(format!("{what}: {e}")),
            }
        })
}

/// The first part of a client stream: what it announces (an epoch report, an upload).
async fn first_part<P>(parts: &mut Streaming<P>, what: &str) -> Result<P, Status> {
    parts
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument(format!("an empty {what} stream")))
}

/// Bytes per chunk of a file sent to a worker.
const FILE_CHUNK: usize = 1 << 20;

/// Streams the encoder's files from `dir` in chunks, stopping when the worker goes away.
async fn send_files(
    dir: &std::path::Path,
    tx: &mpsc::Sender<Result<pb::FileChunk, Status>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    for name in common::encoder::files::FILES {
        let path = dir.join(name);
        let mut f = tokio::fs::File::open(&path).await?;
        let size = f.metadata().await?.len();
        let mut offset = 0u64;
        loop {
            let mut data = vec![0u8; FILE_CHUNK];
            let n = f.read(&mut data).await?;
            data.truncate(n);
            let last = n == 0 || offset + n as u64 >= size;
            let chunk = pb::FileChunk {
                name: name.to_string(),
                offset,
                data,
                size,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
            offset += n as u64;
            if last {
                break;
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Service {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let req = request.into_inner();
        if req.protocol_version != pb::PROTOCOL_VERSION {
            tracing::warn!(
                "join from {} refused: protocol version {} (this coordinator speaks {})",
                req.hostname,
                req.protocol_version,
                pb::PROTOCOL_VERSION
            );
            return Err(Status::failed_precondition(format!(
                "protocol version {} not supported; this coordinator speaks {}",
                req.protocol_version,
                pb::PROTOCOL_VERSION
            )));
        }
        self.0.check_token(
            &req.token,
            &format!("join from {} (pid {})", req.hostname, req.pid),
        )?;
        if req.ring_addr.len() > 256 || req.hostname.len() > 256 || req.device.len() > 64 {
            return Err(Status::invalid_argument(
                "ring address, host name or device name too long",
            ));
        }
        check_nccl_id(&req.nccl_id)?;
        let rx = {
            let mut pending = self
                .0
                .pending
                .lock()
                .map_err(|_| Status::internal("poisoned lock"))?;
            if !self.0.running.load(Ordering::Relaxed) {
                return Err(Status::failed_precondition("this run is over"));
            }
            if self.0.members.borrow().is_some() {
                return self.0.join_late(req).map(Response::new);
            }
            let (tx, rx) = oneshot::channel();
            pending.push(Pending { req, reply: tx });
            if pending.len() == self.0.expected {
                self.0.rendezvous(&mut pending);
            }
            rx
        };
        // A closed run drops the waiting joins: retrying cannot help, so the worker is refused.
        rx.await
            .map(Response::new)
            .map_err(|_| Status::failed_precondition("the run ended before every worker joined"))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let req = request.into_inner();
        self.0.check_token(&req.token, "heartbeat")?;
        let rank = self.0.check_rank(req.rank)?;
        let p = &self.0.progress[rank];
        p.step.store(req.step, Ordering::Relaxed);
        p.epoch.store(req.epoch, Ordering::Relaxed);
        p.last_seen_ms.store(self.0.millis(), Ordering::Relaxed);
        p.examples.store(req.examples, Ordering::Relaxed);
        p.loss_sum_bits
            .store(req.loss_sum.to_bits(), Ordering::Relaxed);
        Ok(Response::new(pb::HeartbeatReply {
            running: self.0.running.load(Ordering::Relaxed),
            generation: self.0.generation(),
        }))
    }

    type StreamEpochStream = EpochStream;

    async fn stream_epoch(
        &self,
        request: Request<pb::EpochRequest>,
    ) -> Result<Response<EpochStream>, Status> {
        let req = request.into_inner();
        self.0.check_token(&req.token, "epoch stream")?;
        let id = self.0.check_rank(req.rank)?;
        let mut plans = self.0.plan.subscribe();
        let mut generations = self.0.members.subscribe();
        let generation = req.generation;
        let plan = tokio::select! {
            plan = plans.wait_for(|p| {
                p.as_ref()
                    .is_some_and(|p| p.epoch >= req.epoch || p.finished)
            }) => plan
                .map_err(|_| Status::unavailable("the coordinator is shutting down"))?
                .clone()
                .ok_or_else(|| Status::internal("no plan"))?,
            () = left_behind(&mut generations, generation) => {
                return Err(Status::aborted("the membership changed: regroup"));
            }
        };
        if plan.epoch != req.epoch && !plan.finished {
            return Err(Status::failed_precondition(format!(
                "epoch {} was asked for; the run is at epoch {}",
                req.epoch, plan.epoch
            )));
        }
        let membership = self
            .0
            .members
            .borrow()
            .clone()
            .ok_or_else(|| Status::internal("no membership"))?;
        if membership.generation != req.generation || !membership.settled {
            return Err(Status::aborted("the membership changed: regroup"));
        }
        let rank = membership.position(id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "worker {id} is no longer in this run (declared lost)"
            ))
        })?;
        let world = membership.members.len();
        let slots = membership.slots.max(world);
        let hosted = part(slots, world, rank);
        let first_step = membership.first_step(plan.epoch);
        let (tx, rx) = mpsc::channel(32);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let header = pb::EpochHeader {
                epoch: plan.epoch,
                finished: plan.finished,
                steps: plan.batches.len() as u64,
                examples: plan.examples.len() as u64,
                eval_examples: plan.eval.len() as u64,
                upload_weights: plan.upload_weights && rank == 0,
                first_step: first_step as u64,
            };
            if tx
                .send(message(pb::epoch_message::Kind::Header(header)))
                .await
                .is_err()
            {
                return;
            }
            if plan.finished {
                shared.told_finished.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let steps = plan
                .batches
                .iter()
                .enumerate()
                .skip(first_step)
                .map(|(index, batch)| {
                    let dealt: Vec<Vec<usize>> =
                        hosted.clone().map(|s| deal(batch, slots, s)).collect();
                    let keyed = |&i: &usize| pb::Example {
                        key: (plan.epoch << 32) | (i as u64 & 0xffff_ffff),
                        ..to_pb(&plan.examples[i])
                    };
                    pb::epoch_message::Kind::Step(pb::Step {
                        index: index as u64,
                        global_batch: batch.len() as u32,
                        examples: dealt.iter().flatten().map(keyed).collect(),
                        checkpoint: rank == 0 && plan.checkpoint_after(index),
                        slot_count: slots as u32,
                        first_slot: hosted.start as u32,
                        slot_sizes: dealt.iter().map(|d| d.len() as u32).collect(),
                    })
                });
            let mine = &plan.eval[part(plan.eval.len(), world, rank)];
            let evals = mine.chunks(common::train::EVAL_BATCH).map(|chunk| {
                pb::epoch_message::Kind::Eval(pb::EvalBatch {
                    examples: chunk.iter().map(to_pb).collect(),
                })
            });
            for kind in steps.chain(evals) {
                // A membership change ends the stream at once, so a worker waiting for its next
                // step regroups rather than waiting for steps planned for the old ring.
                tokio::select! {
                    sent = tx.send(message(kind)) => if sent.is_err() { return },
                    () = left_behind(&mut generations, generation) => {
                        let _ = tx.send(Err(Status::aborted("the membership changed: regroup"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchInitialStateStream = StateStream;

    async fn fetch_initial_state(
        &self,
        request: Request<pb::FetchStateRequest>,
    ) -> Result<Response<StateStream>, Status> {
        let req = request.into_inner();
        self.0.check_token(&req.token, "initial state download")?;
        self.0.check_rank(req.rank)?;
        if self.0.run.initial_state.header().is_none() {
            return Err(Status::not_found("this run starts from no given state"));
        }
        let state = self.0.run.initial_state.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            state.send_chunks(state_transfer::CHUNK_BYTES, |chunk| {
                let chunk = chunk.map_err(|e| {
                    tracing::warn!("reading the initial state: {e}");
                    Status::internal(format!("reading the initial state: {e}"))
                });
                tx.blocking_send(chunk).is_ok()
            });
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_epoch(
        &self,
        request: Request<Streaming<pb::EpochReportPart>>,
    ) -> Result<Response<pb::EpochAck>, Status> {
        let mut parts = request.into_inner();
        let Some(pb::epoch_report_part::Kind::Report(mut report)) =
            first_part(&mut parts, "epoch report").await?.kind
        else {
            return Err(Status::invalid_argument(
                "an epoch report stream must start with the report",
            ));
        };
        self.0.check_token(&report.token, "epoch report")?;
        self.0.check_rank(report.rank)?;
        let header = report.state.take();
        let state = receive_state(
            header.as_ref(),
            &mut parts,
            |p| match p.kind {
                Some(pb::epoch_report_part::Kind::Chunk(c)) => Some(c),
                _ => None,
            },
            "epoch report",
            &self.0.run.spool_dir,
        )
        .await?;
        self.0
            .reports
            .send(WorkerReport::from_pb(report, state))
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        Ok(Response::new(pb::EpochAck {}))
    }

    async fn regroup(
        &self,
        request: Request<pb::RegroupRequest>,
    ) -> Result<Response<pb::RegroupReply>, Status> {
        let req = request.into_inner();
        self.0.check_token(&req.token, "regroup")?;
        self.0.check_rank(req.rank)?;
        if req.reason.len() > 4096 {
            return Err(Status::invalid_argument("regroup reason too long"));
        }
        check_nccl_id(&req.nccl_id)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .0
                .regroups
                .lock()
                .map_err(|_| Status::internal("poisoned lock"))?;
            if !self.0.running.load(Ordering::Relaxed) {
                return Err(Status::failed_precondition("this run is over"));
            }
            // A second call from the same worker replaces its first.
            pending.retain(|p| p.ask.rank != req.rank);
            pending.push(PendingRegroup {
                ask: req.into(),
                reply: tx,
            });
        }
        self.0.regroup_requested.notify_one();
        match rx.await {
            Ok(reply) => reply
                .map(|answer| Response::new(answer.into()))
                .map_err(Status::failed_precondition),
            Err(_) => Err(Status::failed_precondition(
                "the run ended while this worker waited to regroup",
            )),
        }
    }

    async fn upload_checkpoint(
        &self,
        request: Request<Streaming<pb::CheckpointPart>>,
    ) -> Result<Response<pb::EpochAck>, Status> {
        let mut parts = request.into_inner();
        let Some(pb::checkpoint_part::Kind::Upload(mut upload)) =
            first_part(&mut parts, "checkpoint upload").await?.kind
        else {
            return Err(Status::invalid_argument(
                "a checkpoint upload stream must start with the upload",
            ));
        };
        self.0.check_token(&upload.token, "checkpoint upload")?;
        self.0.check_rank(upload.rank)?;
        let Some(header) = upload.state.take() else {
            return Err(Status::invalid_argument(
                "a checkpoint upload must announce its state",
            ));
        };
        let state = receive_state(
            Some(&header),
            &mut parts,
            |p| match p.kind {
                Some(pb::checkpoint_part::Kind::Chunk(c)) => Some(c),
                _ => None,
            },
            "checkpoint upload",
            &self.0.run.spool_dir,
        )
        .await?;
        self.0
            .checkpoints
            .send(StepCheckpoint::from_pb(upload, state))
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        Ok(Response::new(pb::EpochAck {}))
    }

    type FetchEncoderStream = FileStream;

    async fn fetch_encoder(
        &self,
        request: Request<pb::FetchEncoderRequest>,
    ) -> Result<Response<FileStream>, Status> {
        let req = request.into_inner();
        self.0.check_token(&req.token, "encoder download")?;
        let rank = self.0.check_rank(req.rank)?;
        let dir = self
            .0
            .run
            .encoder_dir
            .clone()
            .ok_or_else(|| Status::not_found("this run has no encoder"))?;
        tracing::info!("sending the encoder {} to rank {rank}", dir.display());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(e) = send_files(&dir, &tx).await {
                tracing::error!("sending the encoder to rank {rank}: {e}");
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn run_status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.0.check_token(&req.get_ref().token, "run status")?;
        let epoch = self.0.plan.borrow().as_ref().map_or(0, |p| p.epoch);
        let workers = self
            .0
            .members
            .borrow()
            .as_ref()
            .map_or(0, |m| m.members.len()) as u32;
        let state = if self.0.running.load(Ordering::Relaxed) {
            "running"
        } else {
            "finished"
        };
        Ok(Response::new(pb::StatusReply {
            state: state.into(),
            epoch,
            workers,
            best_eval_loss: 0.0,
        }))
    }
}
