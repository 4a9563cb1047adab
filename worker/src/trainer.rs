//! The worker's training loop: per epoch, stream its part of every step, train in lock step
//! with the ring, evaluate its part of the validation set, report.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::collective::{Collective, Local, RingAuth};
use common::collective::{RingAllReduce, RingOptions};
use common::encoder::{Encoder, EncoderMode};
use common::metrics::Confusion;
use common::model::Classifier;
use common::pb;
use common::train::{
    apply_gradients, compute_gradients_per_example, predict, zero_gradients, Adam, Batch, Replica,
    RunSpec,
};

use crate::client::{self, Progress};
use crate::device::DeviceSpec;
use crate::Args;

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
        hostname: hostname(),
        pid: std::process::id(),
        threads: args.threads as u32,
        nccl_id: nccl_candidate(args.device)?,
        device: args.device.to_string(),
    };
    let (mut client, reply) = rt.block_on(client::join(
        url,
        req,
        Duration::from_secs(args.connect_timeout),
    ))?;
    let rank = reply.rank;
    let world = reply.world_size as usize;
    tracing::info!("joined as rank {rank} of {world}; ring address {ring_addr}");
    let spec: RunSpec = serde_json::from_str(&reply.run_spec_json)
        .context("the coordinator sent an unreadable run spec")?;
    let classes = reply.labels.len();
    if spec.model.num_classes != classes {
        bail!(
            "the run spec has {} classes but {} labels",
            spec.model.num_classes,
            classes
        );
    }

    let mut ring: Box<dyn Collective> = if world == 1 {
        Box::new(Local)
    } else if !reply.nccl_id.is_empty() {
        nccl(args.device, rank as usize, world, &reply.nccl_id)?
    } else {
        let peers = reply
            .peers
            .iter()
            .map(|p| resolve(p))
            .collect::<Result<Vec<_>>>()?;
        let options = RingOptions {
            connect_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(30),
            ..RingOptions::default()
        };
        Box::new(
            RingAllReduce::connect_with(
                rank as usize,
                &peers,
                &listener,
                &RingAuth::new(token.as_bytes(), reply.run_id),
                &options,
            )
            .context("forming the ring")?,
        )
    };

    let mut replica = Replica::new(&spec.model, spec.seed, &device)
        .with_context(|| format!("building the model on {}", args.device))?;
    if !reply.initial_weights.is_empty() {
        replica
            .load_weights_bytes(&reply.initial_weights)
            .context("loading the coordinator's initial weights")?;
    }
    if let Some(r) = spec
        .encoder
        .as_ref()
        .filter(|r| r.mode == EncoderMode::Features)
    {
        let started = Instant::now();
        let dir = crate::encoder_files::locate(r, &mut client, token, rank, rt)?;
        let encoder = Encoder::load_checked(&dir, r, &device, spec.encoder_cache_bytes)
            .with_context(|| format!("loading the encoder from {}", dir.display()))?;
        tracing::info!(
            "encoder {} from {} ready in {:.1} s",
            r.name,
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        replica.attach_encoder(Arc::new(encoder))?;
    }
    let mut opt = if reply.initial_optimizer.is_empty() {
        Adam::new(replica.host(), spec.adam)
    } else {
        Adam::from_bytes(replica.host(), spec.adam, &reply.initial_optimizer)
            .context("loading the coordinator's optimizer state")?
    };
    let progress = Arc::new(Progress::default());
    rt.spawn(client::heartbeats(
        client.clone(),
        token.to_string(),
        rank,
        progress.clone(),
        Duration::from_secs(args.heartbeat_timeout),
    ));

    for epoch in reply.start_epoch.. {
        progress.epoch.store(epoch, Ordering::Relaxed);
        progress.step.store(0, Ordering::Relaxed);
        let request = pb::EpochRequest {
            rank,
            token: token.to_string(),
            epoch,
        };
        let mut stream = rt
            .block_on(client.stream_epoch(request))
            .context("asking for the next epoch")?
            .into_inner();
        let header = match rt.block_on(stream.message())?.and_then(|m| m.kind) {
            Some(pb::epoch_message::Kind::Header(h)) => h,
            _ => bail!("epoch {epoch}: the coordinator's stream did not start with a header"),
        };
        if header.finished {
            tracing::info!("the run is over");
            return Ok(());
        }
        let mut report = pb::EpochReport {
            rank,
            token: token.to_string(),
            epoch,
            ..Default::default()
        };
        let mut confusion = Confusion::new(classes);
        while let Some(msg) = rt
            .block_on(stream.message())
            .context("receiving the epoch's shard")?
        {
            match msg.kind {
                Some(pb::epoch_message::Kind::Step(step)) => {
                    train_one(&replica, &mut opt, ring.as_mut(), &step, &spec, &mut report)?;
                    progress.step.store(step.index + 1, Ordering::Relaxed);
                    progress.examples.store(report.examples, Ordering::Relaxed);
                    progress.loss_milli.store(
                        (report.loss_sum * 1000.0).max(0.0) as u64,
                        Ordering::Relaxed,
                    );
                }
                Some(pb::epoch_message::Kind::Eval(eval)) => {
                    report.eval_loss_sum +=
                        evaluate(replica.compute(), &eval.examples, classes, &mut confusion)?;
                }
                _ => bail!("epoch {epoch}: unexpected message in the shard stream"),
            }
        }
        if let Some(encoder) = replica.compute().encoder() {
            let stats = encoder.take_stats();
            report.encoded = stats.encoded;
            report.encode_cached = stats.cached;
            report.encode_seconds = stats.seconds;
        }
        report.confusion = confusion.counts;
        report.bytes_sent = ring.take_bytes_sent();
        report.peak_rss_bytes = common::peak_rss_bytes();
        if header.upload_weights {
            report.weights = replica.host().to_bytes()?;
            report.optimizer_state = opt.to_bytes()?;
        }
        rt.block_on(client.report_epoch(report))
            .context("reporting the epoch")?;
    }
    Ok(())
}

fn train_one(
    replica: &Replica,
    opt: &mut Adam,
    ring: &mut dyn Collective,
    step: &pb::Step,
    spec: &RunSpec,
    report: &mut pb::EpochReport,
) -> Result<()> {
    let start = Instant::now();
    let model = replica.compute();
    let (mut grads, outcomes) = if step.examples.is_empty() {
        (zero_gradients(model), Vec::new())
    } else {
        let batch = to_batch(
            &step.examples,
            spec.model.num_classes,
            spec.model.vocab_size,
        )?;
        compute_gradients_per_example(model, &batch, spec.class_weights.as_deref())?
    };
    let mut loss = 0.0;
    let mut correct = 0;
    for (example, outcome) in step.examples.iter().zip(&outcomes) {
        let stats = by_source(&mut report.sources, example.source);
        stats.examples += 1;
        stats.loss_sum += f64::from(outcome.loss);
        stats.correct += u64::from(outcome.correct);
        loss += f64::from(outcome.loss);
        correct += usize::from(outcome.correct);
    }
    let reduce = Instant::now();
    ring.all_reduce_sum(&mut grads.dense)
        .context("all-reduce of the dense gradients")?;
    let dim = grads.embedding.dim;
    ring.all_reduce_sparse_rows(&mut grads.embedding.ids, &mut grads.embedding.rows, dim)
        .context("all-reduce of the embedding rows")?;
    report.allreduce_seconds += reduce.elapsed().as_secs_f64();
    apply_gradients(replica.host(), opt, &mut grads, step.global_batch as usize)?;
    replica.sync()?;
    report.train_seconds += start.elapsed().as_secs_f64();
    report.examples += step.examples.len() as u64;
    report.loss_sum += loss;
    report.correct += correct as u64;
    report.steps += 1;
    if !loss.is_finite() {
        report.diverged = true;
    }
    Ok(())
}

/// The entry of `source` in `sources` (kept sorted by source), added if missing.
fn by_source(sources: &mut Vec<pb::SourceStats>, source: u32) -> &mut pb::SourceStats {
    let at = match sources.binary_search_by_key(&source, |s| s.source) {
        Ok(at) => at,
        Err(at) => {
            sources.insert(
                at,
                pb::SourceStats {
                    source,
                    ..Default::default()
                },
            );
            at
        }
    };
    &mut sources[at]
}

/// Checks what came over the wire before it reaches the model.
fn to_batch(examples: &[pb::Example], classes: usize, vocab: usize) -> Result<Batch> {
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
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.tokens.as_slice()).collect();
    let labels: Vec<u32> = examples.iter().map(|e| e.label).collect();
    let augmented: Vec<bool> = examples.iter().map(|e| e.augmented).collect();
    Ok(Batch::new(&seqs, &labels)?.with_augmented(&augmented)?)
}

/// Adds the examples' predictions to `confusion`; returns their summed cross-entropy.
fn evaluate(
    model: &Classifier,
    examples: &[pb::Example],
    classes: usize,
    confusion: &mut Confusion,
) -> Result<f64> {
    if examples.is_empty() {
        return Ok(0.0);
    }
    let batch = to_batch(examples, classes, model.config().vocab_size)?;
    let mut loss = 0.0;
    for ((pred, probs), e) in predict(model, &batch)?.into_iter().zip(examples) {
        confusion.add(e.label as usize, pred);
        loss -= f64::from(probs[e.label as usize].max(1e-30)).ln();
    }
    Ok(loss)
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

/// The NCCL communicator of this run, on this worker's GPU.
fn nccl(device: DeviceSpec, rank: usize, world: usize, id: &[u8]) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "nccl")]
    if let DeviceSpec::Cuda(ordinal) = device {
        let comm = common::collective::nccl::NcclAllReduce::new(ordinal, rank, world, id)
            .context("forming the NCCL communicator")?;
        tracing::info!("all-reduce: NCCL, rank {rank} of {world} on {device}");
        return Ok(Box::new(comm));
    }
    let _ = (rank, world, id);
    bail!("the coordinator chose NCCL but this worker ({device}) cannot use it")
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving ring peer {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("ring peer {addr} has no address"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
