//! The worker's training loop: per epoch, stream its part of every step, train in lock step
//! with the ring, evaluate its part of the validation set, report.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::collective::{Abort, Backend, Collective, CollectiveError, Local, RingAuth};
use common::collective::{RingAllReduce, RingOptions};
use common::encoder::Encoder;
use common::metrics::Confusion;
use common::model::{Batch, Classifier};
use common::pb;
use common::state_transfer::{ModelState, Outgoing};
use common::train::{evaluate, train_share, Adam, Held, Replica, RunSpec, Share, StepError, Tally};

use crate::client::{self, RingGeneration, TrainingProgress};
use crate::epoch_figures::EpochFigures;
use crate::Args;
use common::device::DeviceSpec;

/// Joins the coordinator at `url`, trains its run and returns when the run is over. Both
/// `worker --coordinator URL` and every job of a daemon (`worker --listen`, which starts this
/// binary with `--coordinator URL`) come here.
pub fn run(args: &Args, url: &str, token: &str, rt: &tokio::runtime::Runtime) -> Result<()> {
    let bind_ip = if args.advertise_addr.starts_with("127.") || args.advertise_addr == "localhost" {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let listener = TcpListener::bind((bind_ip, args.ring_port))
        .with_context(|| format!("binding the ring port {}:{}", bind_ip, args.ring_port))?;
    let ring_addr = format!("{}:{}", args.advertise_addr, listener.local_addr()?.port());
    let device = args.device.open()?;
    let req = pb::JoinRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        token: token.to_string(),
        ring_addr: ring_addr.clone(),
        hostname: common::hostname(),
        pid: std::process::id(),
        threads: args.threads as u32,
        nccl_id: nccl_candidate(args.device)?,
        device: args.device.to_string(),
    };
    let tls = args.tls.load()?;
    let (mut client, reply) = rt.block_on(client::join(
        url,
        req,
        Duration::from_secs(args.connect_timeout),
        tls.as_ref(),
    ))?;
    // Ring links use TLS when this worker has an identity and a CA to check neighbours with.
    let ring_tls = tls.filter(|t| t.for_ring()).map(Arc::new);
    let rank = reply.rank;
    let world = reply.world_size as usize;
    tracing::info!("joined as rank {rank} of {world}; ring address {ring_addr}");
    // From the join on: forming the ring, fetching and loading the encoder all take time,
    // and a coordinator that hears nothing meanwhile takes the worker for lost.
    let progress = Arc::new(TrainingProgress::default());
    let membership = Arc::new(RingGeneration::default());
    membership
        .generation
        .store(reply.generation, Ordering::SeqCst);
    rt.spawn(client::heartbeats(
        client.clone(),
        token.to_string(),
        rank,
        progress.clone(),
        membership.clone(),
        Duration::from_secs(args.heartbeat_timeout),
    ));
    let spec: RunSpec = serde_json::from_str(&reply.run_spec_json)
        .context("the coordinator sent an unreadable run spec")?;
    let classes = reply.labels.len();
    if spec.model.num_classes() != classes {
        bail!(
            "the run spec has {} classes but {} labels",
            spec.model.num_classes(),
            classes
        );
    }

    // The weights and optimizer state to start from, before the ring forms (its peers wait
    // for this worker up to the ring's connect timeout, not its first all-reduce's).
    let initial = match &reply.initial_state {
        Some(header) => rt.block_on(client::fetch_initial_state(
            &mut client,
            token,
            rank,
            header,
        ))?,
        None => ModelState::default(),
    };
    let held = Held::from_env(&device)?;
    let mut replica = Replica::held(&spec.model, spec.seed, &device, held)
        .with_context(|| format!("building the model on {}", args.device))?;
    if held == Held::Device {
        tracing::info!("training state held on the device ({})", args.device);
    }
    let auth_id = reply.run_id;
    let backend = if reply.awaiting_admission {
        tracing::info!("the run is under way: this worker enters at the next epoch boundary");
        Backend::Local
    } else {
        Backend::try_from(reply.backend.clone()).context("joining the run")?
    };
    let (ring, abort) = form(
        &backend,
        rank as usize,
        world,
        &reply.peers,
        &listener,
        &RingSession {
            token,
            run_id: auth_id,
            generation: 0,
            tls: ring_tls.clone(),
            device: args.device,
            dense_len: replica.model().dense_len(),
            membership: None,
            connect_timeout: Duration::from_secs(60),
        },
    )?;

    if !initial.weights.is_empty() {
        replica
            .load_weights_bytes(&initial.weights)
            .context("loading the coordinator's initial weights")?;
    } else if let Some(r) = spec.encoder.as_ref().filter(|r| r.pretrained_in_weights()) {
        // A fine-tuning run starts from the pretrained encoder's files, which every worker
        // reads itself: the coordinator never holds the weights (90 MB for MiniLM).
        let found = crate::encoder_files::locate(r, &mut client, token, rank, rt)?;
        let path = found.dir().join(common::encoder::files::WEIGHTS);
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading the encoder's weights {}", path.display()))?;
        replica
            .load_encoder_weights(&tensors)
            .with_context(|| format!("loading the encoder's weights {}", path.display()))?;
    }
    if let Some(r) = spec.encoder.as_ref().filter(|_| spec.model.reads_encoder()) {
        let started = Instant::now();
        let found = crate::encoder_files::locate(r, &mut client, token, rank, rt)?;
        let dir = found.dir();
        let encoder = Encoder::load_hashed(&found, r.mode, &device, spec.encoder_cache_bytes)
            .with_context(|| format!("loading the encoder from {}", dir.display()))?;
        tracing::info!(
            "encoder {} from {} ready in {:.1} s",
            r.name,
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        replica.attach_encoder(Arc::new(encoder))?;
    }
    let opt = if initial.optimizer.is_empty() {
        Adam::new(replica.model().groups(), spec.adam)
    } else {
        Adam::from_bytes(replica.model().groups(), spec.adam, &initial.optimizer)
            .context("loading the coordinator's optimizer state")?
    };
    let opt = replica
        .hold(opt)
        .with_context(|| format!("moving the optimizer's state onto {}", args.device))?;
    drop(initial);
    membership.set_abort(abort);
    let mut job = Job {
        id: rank,
        token: token.to_string(),
        run_id: auth_id,
        spec,
        classes,
        client,
        listener,
        replica,
        opt,
        ring,
        ring_tls,
        device: args.device,
        nccl_failed: false,
        membership,
        progress,
        at: Position {
            epoch: reply.start_epoch,
            steps: reply.start_step,
            applied: reply.start_applied,
        },
        figures: EpochFigures::default(),
        peak_device_bytes: 0,
    };
    job.run(rt, reply.awaiting_admission)
}

/// How long re-forming a ring after a regroup may take: every survivor is already running,
/// so a peer that does not show up soon has failed too, and the next regroup drops it.
const REFORM_TIMEOUT: Duration = Duration::from_secs(15);

/// Where this worker's weights stand: `steps` of `epoch` applied, with `applied` examples in
/// their global batches. It moves to the next epoch when that epoch's header arrives.
#[derive(Debug, Clone, Copy)]
struct Position {
    epoch: u64,
    steps: u64,
    applied: u64,
}

/// Why an epoch pass stopped before its report.
enum Interrupt {
    /// The ring or the stream broke, or the run moved to a new membership: regroup.
    Regroup(String),
    Fatal(anyhow::Error),
}

impl Interrupt {
    /// ABORTED is the coordinator's word for "the membership changed": regroup. Any other
    /// status while `doing` ends the worker.
    fn from_status(status: tonic::Status, doing: &'static str) -> Self {
        if status.code() == tonic::Code::Aborted {
            Interrupt::Regroup(status.message().to_string())
        } else {
            Interrupt::Fatal(anyhow!(status).context(doing))
        }
    }
}

impl From<anyhow::Error> for Interrupt {
    fn from(e: anyhow::Error) -> Self {
        Interrupt::Fatal(e)
    }
}

/// A ring all-reduce failed: the step was not applied here; the worker regroups.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RingFailed(String);

/// One worker's part of a run.
struct Job {
    id: u32,
    token: String,
    run_id: u64,
    spec: RunSpec,
    classes: usize,
    client: client::Client,
    listener: TcpListener,
    replica: Replica,
    opt: Adam,
    ring: Box<dyn Collective>,
    ring_tls: Option<Arc<common::tls::Tls>>,
    /// Where the model runs: a worker on a GPU offers an NCCL id at every regroup…
    device: DeviceSpec,
    /// …unless forming an NCCL communicator failed here before.
    nccl_failed: bool,
    membership: Arc<RingGeneration>,
    progress: Arc<TrainingProgress>,
    at: Position,
    /// What this replica has trained of `at.epoch` so far (kept across regroups within the
    /// epoch).
    figures: EpochFigures,
    /// The most device memory in use after a step so far (0 on the CPU).
    peak_device_bytes: u64,
}

impl Job {
    fn run(&mut self, rt: &tokio::runtime::Runtime, admission: bool) -> Result<()> {
        let mut next = self.at.epoch;
        let mut pass = if admission {
            Err(Interrupt::Regroup("joining the run under way".into()))
        } else {
            self.epoch_pass(rt, next)
        };
        loop {
            match pass {
                Ok(true) => return Ok(()),
                Ok(false) => next = self.at.epoch + 1,
                Err(Interrupt::Fatal(e)) => return Err(e),
                Err(Interrupt::Regroup(mut reason)) => loop {
                    match self.regroup(rt, &reason) {
                        Ok(true) => {
                            tracing::info!("the run ended before this worker was admitted");
                            return Ok(());
                        }
                        Ok(false) => {
                            next = self.at.epoch;
                            break;
                        }
                        Err(e) if e.downcast_ref::<RingFailed>().is_some() => {
                            reason = format!("{e:#}");
                        }
                        Err(e) => return Err(e),
                    }
                },
            }
            pass = self.epoch_pass(rt, next);
        }
    }

    /// Streams and trains epoch `epoch` (or what is left of it) and reports it; true when the
    /// coordinator says the run is over.
    fn epoch_pass(&mut self, rt: &tokio::runtime::Runtime, epoch: u64) -> Result<bool, Interrupt> {
        let request = pb::EpochRequest {
            rank: self.id,
            token: self.token.clone(),
            epoch,
            generation: self.membership.generation.load(Ordering::SeqCst),
        };
        let mut stream = rt
            .block_on(self.client.stream_epoch(request))
            .map_err(|s| Interrupt::from_status(s, "asking for the next epoch"))?
            .into_inner();
        let header = match rt
            .block_on(stream.message())
            .map_err(|s| Interrupt::from_status(s, "receiving the epoch's header"))?
        {
            Some(pb::EpochMessage {
                kind: Some(pb::epoch_message::Kind::Header(h)),
            }) => h,
            _ => {
                return Err(anyhow!(
                    "epoch {epoch}: the coordinator's stream did not start with a header"
                )
                .into())
            }
        };
        if header.finished {
            tracing::info!("the run is over");
            return Ok(true);
        }
        if header.epoch != self.at.epoch {
            self.at = Position {
                epoch: header.epoch,
                steps: 0,
                applied: 0,
            };
            self.figures = EpochFigures::default();
        }
        if header.first_step != self.at.steps {
            return Err(anyhow!(
                "epoch {epoch}: the coordinator streams from step {} but this worker is at step {}",
                header.first_step,
                self.at.steps
            )
            .into());
        }
        self.progress.epoch.store(epoch, Ordering::Relaxed);
        let mut confusion = Confusion::new(self.classes);
        // Summed per head: with tasks, each task's validation loss is its own.
        let mut eval_loss = vec![0.0; self.spec.model.heads.len()];
        loop {
            let msg = match rt.block_on(stream.message()) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => {
                    return Err(Interrupt::from_status(
                        status,
                        "receiving the epoch's shard",
                    ))
                }
            };
            match msg.kind {
                Some(pb::epoch_message::Kind::Step(step)) => {
                    if step.index != self.at.steps {
                        return Err(anyhow!(
                            "epoch {epoch}: step {} arrived, step {} expected",
                            step.index,
                            self.at.steps
                        )
                        .into());
                    }
                    if let Err(e) = train_one(
                        &self.replica,
                        &mut self.opt,
                        self.ring.as_mut(),
                        &step,
                        &self.spec,
                        &mut self.figures,
                    ) {
                        return Err(match e.downcast_ref::<RingFailed>() {
                            Some(r) => Interrupt::Regroup(r.0.clone()),
                            None => Interrupt::Fatal(e),
                        });
                    }
                    if let Some(used) = common::device_memory_in_use(self.replica.model().device())
                    {
                        self.peak_device_bytes = self.peak_device_bytes.max(used);
                    }
                    self.at.steps = step.index + 1;
                    self.at.applied += u64::from(step.global_batch);
                    if step.checkpoint {
                        self.upload_checkpoint(rt, epoch)?;
                    }
                    self.progress.step.store(self.at.steps, Ordering::Relaxed);
                    self.progress
                        .examples
                        .store(self.figures.trained.examples, Ordering::Relaxed);
                    self.progress.loss_milli.store(
                        (self.figures.trained.loss_sum * 1000.0).max(0.0) as u64,
                        Ordering::Relaxed,
                    );
                }
                Some(pb::epoch_message::Kind::Eval(eval)) => {
                    let part = evaluate_part(
                        self.replica.model(),
                        &eval.examples,
                        self.classes,
                        &mut confusion,
                    )?;
                    eval_loss.iter_mut().zip(part).for_each(|(a, b)| *a += b);
                }
                _ => {
                    return Err(
                        anyhow!("epoch {epoch}: unexpected message in the shard stream").into(),
                    )
                }
            }
        }
        if let Some(encoder) = self.replica.model().encoder() {
            let stats = encoder.take_stats();
            self.figures.encoded += stats.encoded;
            self.figures.encode_cached += stats.cached;
            self.figures.encode_seconds += stats.seconds;
        }
        let mut report = self.figures.to_report();
        report.rank = self.id;
        report.token = self.token.clone();
        report.epoch = epoch;
        report.generation = self.membership.generation.load(Ordering::SeqCst);
        report.applied_examples = self.at.applied;
        report.eval_loss_sum = eval_loss.iter().sum();
        if eval_loss.len() > 1 {
            report.eval_loss_by_task = eval_loss;
        }
        report.confusion = confusion.counts;
        report.bytes_sent = self.ring.take_bytes_sent();
        report.peak_rss_bytes = common::peak_rss_bytes();
        report.peak_device_bytes = self.peak_device_bytes;
        let per_step = |s: f64| format!("{:.2}", s * 1e3 / report.steps.max(1) as f64);
        tracing::debug!(
            epoch = epoch + 1,
            compute_ms = per_step(report.compute_seconds),
            allreduce_ms = per_step(report.allreduce_seconds),
            update_ms = per_step(report.update_seconds),
            "step time"
        );
        let state = match header.upload_weights {
            true => Some(self.outgoing()?),
            false => None,
        };
        client::report_epoch(rt, &self.client, report, state.as_ref())
            .context("reporting the epoch")?;
        Ok(false)
    }

    /// Sends the coordinator this replica's weights and optimizer state after a step it
    /// marked for a checkpoint.
    fn upload_checkpoint(&mut self, rt: &tokio::runtime::Runtime, epoch: u64) -> Result<()> {
        let upload = pb::CheckpointUpload {
            rank: self.id,
            token: self.token.clone(),
            epoch,
            generation: self.membership.generation.load(Ordering::SeqCst),
            steps_done: self.at.steps,
            applied_examples: self.at.applied,
            state: None,
        };
        let started = Instant::now();
        client::upload_checkpoint(rt, &self.client, upload, &self.outgoing()?)
            .context("uploading a checkpoint")?;
        tracing::debug!(
            "checkpoint uploaded in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// This replica's weights and optimizer state, as the coordinator keeps them, to be sent
    /// from where they lie.
    fn outgoing(&self) -> Result<Outgoing<'_>> {
        Ok(Outgoing {
            weights: self.replica.weights_pieces()?,
            optimizer: self.opt.to_pieces()?,
        })
    }

    /// Leaves the broken ring, asks the coordinator for the new membership, forms the new
    /// ring and adopts the state of the survivor that got furthest. True when the run ended
    /// meanwhile.
    fn regroup(&mut self, rt: &tokio::runtime::Runtime, reason: &str) -> Result<bool> {
        self.membership.set_abort(None);
        self.ring = Box::new(Local);
        let generation = self.membership.generation.load(Ordering::SeqCst);
        tracing::warn!("leaving ring generation {generation}: {reason}");
        let req = pb::RegroupRequest {
            rank: self.id,
            token: self.token.clone(),
            generation,
            epoch: self.at.epoch,
            steps_done: self.at.steps,
            applied_examples: self.at.applied,
            reason: reason.chars().take(1000).collect(),
            // Without an id this worker keeps the new ring on TCP, which still trains.
            nccl_id: match self.nccl_failed {
                true => Vec::new(),
                false => nccl_candidate(self.device).unwrap_or_else(|e| {
                    tracing::warn!("offering no NCCL id for the new ring: {e:#}");
                    Vec::new()
                }),
            },
        };
        let reply = rt
            .block_on(self.client.regroup(req))
            .map_err(|status| anyhow!("{}", status.message()))
            .context("regrouping after a membership change")?
            .into_inner();
        if reply.finished {
            return Ok(true);
        }
        let world = reply.world_size as usize;
        let rank = reply.ring_rank as usize;
        self.membership
            .generation
            .store(reply.generation, Ordering::SeqCst);
        tracing::info!(
            "ring generation {}: rank {rank} of {world}; epoch {} goes on at step {}",
            reply.generation,
            reply.epoch + 1,
            reply.resume_step
        );
        let backend = Backend::try_from(reply.backend.clone()).context("regrouping")?;
        let formed = form(
            &backend,
            rank,
            world,
            &reply.peers,
            &self.listener,
            &RingSession {
                token: &self.token,
                run_id: self.run_id,
                generation: reply.generation,
                tls: self.ring_tls.clone(),
                device: self.device,
                dense_len: self.replica.model().dense_len(),
                membership: Some(&self.membership),
                connect_timeout: REFORM_TIMEOUT,
            },
        );
        // Not after an abort (the membership moved on, nothing wrong here): after any other
        // failure, offering NCCL again could fail every regroup the same way.
        if let (Backend::Nccl { .. }, Err(e)) = (&backend, &formed) {
            if !matches!(e.downcast_ref(), Some(CollectiveError::Aborted)) {
                tracing::warn!("NCCL failed here; this worker's later rings are TCP rings");
                self.nccl_failed = true;
            }
        }
        let (ring, abort) = formed.map_err(|e| anyhow::Error::new(RingFailed(format!("{e:#}"))))?;
        self.ring = ring;
        self.membership.set_abort(abort);
        let source = reply.state_source as usize;
        let mut state = if rank == source {
            pack_state(
                &self.replica.weights_bytes()?,
                &self.opt.to_bytes()?,
                &self.figures.trained_bytes(),
            )
        } else {
            Vec::new()
        };
        self.ring
            .broadcast_bytes(source, &mut state)
            .map_err(|e| anyhow::Error::new(RingFailed(format!("state broadcast: {e}"))))?;
        if reply.epoch != self.at.epoch {
            self.figures = EpochFigures::default();
        }
        if rank != source {
            let (weights, optimizer, figures) = unpack_state(&state)?;
            self.replica
                .load_weights_bytes(weights)
                .context("loading the broadcast weights")?;
            let opt = Adam::from_bytes(self.replica.model().groups(), self.spec.adam, optimizer)
                .context("loading the broadcast optimizer state")?;
            self.opt = self.replica.hold(opt)?;
            // The figures go with the weights: those of the steps this worker adopts.
            if reply.epoch == self.at.epoch {
                self.figures.adopt_trained(figures)?;
            }
        }
        self.at = Position {
            epoch: reply.epoch,
            steps: reply.resume_step,
            applied: reply.applied_examples,
        };
        Ok(false)
    }
}

/// What forming the collective of one ring generation needs besides its backend and peers.
struct RingSession<'a> {
    /// Ring links authenticate with the token, bound to the run and the generation.
    token: &'a str,
    run_id: u64,
    generation: u64,
    tls: Option<Arc<common::tls::Tls>>,
    device: DeviceSpec,
    /// Floats of the model's dense gradients, which one shared-memory slot must hold.
    dense_len: usize,
    /// During a regroup (the heartbeats run): where an NCCL communicator's abort handle goes
    /// before it forms, so that a newer generation also ends the wait for the other ranks.
    membership: Option<&'a RingGeneration>,
    connect_timeout: Duration,
}

/// A collective of one generation and the handle that aborts it (`None` for a world of one).
type Formed = (Box<dyn Collective>, Option<Arc<dyn Abort>>);

/// The collective of one ring generation, as the coordinator chose it: the one place a worker
/// forms one, at its join and at every regroup alike.
fn form(
    backend: &Backend,
    rank: usize,
    world: usize,
    peers: &[String],
    listener: &TcpListener,
    session: &RingSession<'_>,
) -> Result<Formed> {
    match backend {
        Backend::Local => Ok((Box::new(Local), None)),
        Backend::TcpRing => form_ring(rank, peers, listener, session, 0),
        // Room for the dense gradients in one slot (a batch's sparse embedding rows fit
        // easily; anything larger, like a state broadcast, goes over TCP).
        Backend::SharedMemoryRing => form_ring(
            rank,
            peers,
            listener,
            session,
            session.dense_len.max(1 << 18),
        ),
        Backend::Nccl { unique_id } => {
            nccl(session.device, rank, world, unique_id, session.membership)
        }
    }
}

/// The TCP ring (summing through a shared-memory segment of `shared_memory` floats per rank
/// when that is more than 0 and every rank can map it), with its abort handle.
/// Authentication binds to the run and the generation, so a link of an old ring cannot join
/// a new one.
fn form_ring(
    rank: usize,
    peers: &[String],
    listener: &TcpListener,
    session: &RingSession<'_>,
    shared_memory: usize,
) -> Result<Formed> {
    if peers.len() <= 1 {
        return Ok((Box::new(Local), None));
    }
    let peers = peers
        .iter()
        .map(|p| resolve(p))
        .collect::<Result<Vec<_>>>()?;
    let options = RingOptions {
        connect_timeout: session.connect_timeout,
        io_timeout: Duration::from_secs(30),
        tls: session.tls.clone(),
        shared_memory,
        ..RingOptions::default()
    };
    let id = session.run_id ^ session.generation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let ring = RingAllReduce::connect_with(
        rank,
        &peers,
        listener,
        &RingAuth::new(session.token.as_bytes(), id),
        &options,
    )
    .context("forming the ring")?;
    let abort: Arc<dyn Abort> = Arc::new(ring.abort_handle());
    Ok((Box::new(ring), Some(abort)))
}

/// Weights, optimizer state and the epoch's figures so far in one buffer for the broadcast,
/// each but the last after its length.
fn pack_state(weights: &[u8], optimizer: &[u8], figures: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + weights.len() + optimizer.len() + figures.len());
    out.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    out.extend_from_slice(&(optimizer.len() as u64).to_le_bytes());
    out.extend_from_slice(weights);
    out.extend_from_slice(optimizer);
    out.extend_from_slice(figures);
    out
}

fn unpack_state(state: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    let malformed = || anyhow!("the broadcast state is malformed");
    let (weights_len, rest) = state
        .split_first_chunk::<8>()
        .context("the broadcast state is too short")?;
    let (optimizer_len, rest) = rest
        .split_first_chunk::<8>()
        .context("the broadcast state is too short")?;
    let len = |b: &[u8; 8]| usize::try_from(u64::from_le_bytes(*b)).map_err(|_| malformed());
    let (weights_len, optimizer_len) = (len(weights_len)?, len(optimizer_len)?);
    if weights_len
        .checked_add(optimizer_len)
        .is_none_or(|n| n > rest.len())
    {
        return Err(malformed());
    }
    let (weights, rest) = rest.split_at(weights_len);
    let (optimizer, figures) = rest.split_at(optimizer_len);
    Ok((weights, optimizer, figures))
}

/// Trains one step with the library's step and books it in the epoch's figures. A failed
/// all-reduce (other than bad input) is a [`RingFailed`]: the step was not applied, and the
/// worker regroups.
fn train_one(
    replica: &Replica,
    opt: &mut Adam,
    ring: &mut dyn Collective,
    step: &pb::Step,
    spec: &RunSpec,
    figures: &mut EpochFigures,
) -> Result<()> {
    let start = Instant::now();
    let batches = slot_batches(step, spec, ring.world_size())?;
    let share = Share {
        slots: step.slot_count as usize,
        first: step.first_slot as usize,
        batches: batches.iter().map(Option::as_ref).collect(),
    };
    let sources: Vec<u32> = step.examples.iter().map(|e| e.source).collect();
    let tally = Tally {
        group_of: &sources,
        groups: spec.sources.max(1) as usize,
    };
    let done = train_share(
        replica,
        opt,
        ring,
        &share,
        step.global_batch as usize,
        spec.class_weights.as_deref(),
        Some(&tally),
    )
    .map_err(|e| match e {
        StepError::Collective {
            source: source @ CollectiveError::InvalidInput(_),
            what,
        } => anyhow!(source).context(format!("all-reduce of {what}")),
        StepError::Collective { what, source } => {
            anyhow::Error::new(RingFailed(format!("all-reduce of {what}: {source}")))
        }
        StepError::Model(e) => anyhow!(e),
    })?;
    figures.add_step(
        &done.totals,
        &done.timings,
        start.elapsed(),
        done.loss_sum().is_finite(),
    );
    Ok(())
}

/// The step's examples cut into the slots this worker hosts, each a batch or None when it
/// holds no example.
fn slot_batches(step: &pb::Step, spec: &RunSpec, world: usize) -> Result<Vec<Option<Batch>>> {
    let sizes: Vec<usize> = step.slot_sizes.iter().map(|&n| n as usize).collect();
    let slots = step.slot_count as usize;
    if sizes.is_empty()
        || sizes.iter().sum::<usize>() != step.examples.len()
        || slots < world
        || step.first_slot as usize + sizes.len() > slots
    {
        bail!(
            "step {}: slots {} to {} of {slots} holding {sizes:?} for {} examples in a world of {world}",
            step.index,
            step.first_slot,
            step.first_slot as usize + sizes.len(),
            step.examples.len()
        );
    }
    let mut at = 0;
    sizes
        .into_iter()
        .map(|n| {
            let examples = &step.examples[at..at + n];
            at += n;
            match examples.is_empty() {
                true => Ok(None),
                false => {
                    to_batch(examples, spec.model.num_classes(), spec.model.vocab_size()).map(Some)
                }
            }
        })
        .collect()
}

/// Checks what came over the wire before it reaches the model.
fn check_examples(examples: &[pb::Example], classes: usize, vocab: usize) -> Result<()> {
    for e in examples {
        if e.label as usize >= classes
            || e.tokens.is_empty()
            || e.tokens.iter().any(|&t| t as usize >= vocab)
        {
            bail!(
                "malformed example from the coordinator (label {}, {} tokens)",
                e.label,
                e.tokens.len()
            );
        }
    }
    Ok(())
}

/// A training batch of examples that came over the wire, checked first.
fn to_batch(examples: &[pb::Example], classes: usize, vocab: usize) -> Result<Batch> {
    check_examples(examples, classes, vocab)?;
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.tokens.as_slice()).collect();
    let labels: Vec<u32> = examples.iter().map(|e| e.label).collect();
    let augmented: Vec<bool> = examples.iter().map(|e| e.augmented).collect();
    let keys: Vec<u64> = examples.iter().map(|e| e.key).collect();
    Ok(Batch::new(&seqs, &labels)?
        .with_augmented(&augmented)?
        .with_keys(&keys)?)
}

/// Adds the examples' predictions to `confusion`; returns their summed cross-entropy per
/// head.
fn evaluate_part(
    model: &Classifier,
    examples: &[pb::Example],
    classes: usize,
    confusion: &mut Confusion,
) -> Result<Vec<f64>> {
    if examples.is_empty() {
        return Ok(vec![0.0; model.config().heads.len()]);
    }
    check_examples(examples, classes, model.config().vocab_size())?;
    let pairs: Vec<(&[u32], u32)> = examples
        .iter()
        .map(|e| (e.tokens.as_slice(), e.label))
        .collect();
    let part = evaluate(model, &pairs)?;
    if !confusion.merge(&part.confusion) {
        bail!(
            "the model has {} classes, the run {classes}",
            part.confusion.classes
        );
    }
    Ok(part.loss_by_head)
}

/// A fresh NCCL unique id when this worker can all-reduce with NCCL (rank 0's is used).
fn nccl_candidate(device: DeviceSpec) -> Result<Vec<u8>> {
    #[cfg(feature = "nccl")]
    if device.nccl() {
        return common::collective::nccl::new_unique_id().context("making an NCCL unique id");
    }
    let _ = device;
    Ok(Vec::new())
}

/// The NCCL communicator of this run (or of a regrouped ring), on this worker's GPU, and the
/// handle that aborts it. With `membership` (a regroup, while the heartbeats run), the handle
/// is handed over before the communicator forms, so a newer generation also ends the wait
/// for the other ranks to join.
fn nccl(
    device: DeviceSpec,
    rank: usize,
    world: usize,
    id: &[u8],
    membership: Option<&RingGeneration>,
) -> Result<Formed> {
    #[cfg(feature = "nccl")]
    if let DeviceSpec::Cuda(ordinal) = device {
        use common::collective::nccl::{NcclAbort, NcclAllReduce};
        let abort = NcclAbort::default();
        let handle: Arc<dyn Abort> = Arc::new(abort.clone());
        if let Some(m) = membership {
            m.set_abort(Some(handle.clone()));
        }
        let comm = NcclAllReduce::with_abort(ordinal, rank, world, id, abort)
            .context("forming the NCCL communicator")?;
        tracing::info!("all-reduce: NCCL, rank {rank} of {world} on {device}");
        return Ok((Box::new(comm), Some(handle)));
    }
    let _ = (rank, world, id, membership);
    bail!("the coordinator chose NCCL but this worker ({device}) cannot use it")
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving ring peer {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("ring peer {addr} has no address"))
}
