//! A training run from the coordinator's side: prepare the data, serve the workers, plan and
//! hand out every epoch, gather reports, select and checkpoint the model, write the record.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::data::vocab::Vocab;
use common::data::Example;
use common::encoder::{EncoderMode, EncoderRef, WordPiece};
use common::metrics::Confusion;
use common::model::{HeadConfig, InputConfig, ModelConfig, SequenceConfig};
use common::pb;
use common::pipeline::Pipeline;
use common::train::{AdamConfig, GroupTotals, RunSpec};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::{RingTransport, TrainArgs, Workers};
use crate::interrupt::StopNote;
use crate::local::Fleet;
use crate::membership::{Lost, Regroup};
use crate::model_dir::{self, ModelMeta};
use crate::rundir::{RunDir, RunState};
use crate::service::{EpochPlan, Inbox, RunInfo, Service, Shared};
use crate::sharding::global_batches;

/// What one epoch's reports add up to.
#[derive(Debug)]
struct EpochSummary {
    examples: u64,
    loss: f64,
    accuracy: f64,
    samples_per_s: f64,
    allreduce_s_per_step: f64,
    /// The slowest worker's forward and backward, and optimizer update, per step.
    compute_s_per_step: f64,
    update_s_per_step: f64,
    bytes_per_step: f64,
    eval: Option<(f64, Confusion)>,
    weights: Vec<u8>,
    optimizer: Vec<u8>,
    diverged: bool,
    /// Peak resident memory of each reporting worker: its id, bytes.
    peak_rss: Vec<(u32, u64)>,
    /// Training examples, loss and correct predictions per source (every worker's report holds
    /// the whole epoch's).
    sources: BTreeMap<u32, GroupTotals>,
    /// With --encoder: sentences encoded and answered from the cache (summed), and the
    /// slowest worker's seconds spent encoding.
    encoded: u64,
    encode_cached: u64,
    encode_seconds: f64,
    /// Examples in the global batches every replica applied (the lost workers' parts too).
    applied: u64,
    /// Workers at the end of the epoch, and those lost during it.
    workers: usize,
    lost: Vec<Lost>,
}

/// Training metrics per `--data` source, for runs on mixed data (null for one source).
fn per_source_figures(
    stats: &BTreeMap<u32, GroupTotals>,
    sources: &[common::data::config::SourceSpec],
) -> serde_json::Value {
    if sources.len() < 2 {
        return serde_json::Value::Null;
    }
    let n = |x: u64| x.max(1) as f64;
    json!(stats
        .iter()
        .map(|(&source, s)| json!({
            "source": sources.get(source as usize).map_or_else(|| format!("source {source}"), |p| p.path.display().to_string()),
            "examples": s.examples,
            "train_loss": s.loss_sum / n(s.examples),
            "train_accuracy": s.correct as f64 / n(s.examples),
        }))
        .collect::<Vec<_>>())
}

/// The files a run reads its examples and labels from: training sources, validation and test
/// sets, the label map.
fn input_paths(args: &TrainArgs) -> Vec<&std::path::Path> {
    let data = args.data.data.iter().map(|s| s.path.as_path());
    let others = [&args.data.eval, &args.test, &args.data.label_map];
    data.chain(others.into_iter().flatten().map(|p| p.as_path()))
        .collect()
}

pub async fn train(args: TrainArgs, note: Arc<StopNote>) -> Result<()> {
    let started = Instant::now();
    let tls_files = args.tls.clone();
    let tls = tls_files.load()?;
    let server_tls = tls.as_ref().map(|t| t.grpc_server()).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let pretrained_table = args.train.init_embeddings.is_some()
        || (args.train.encoder.is_some() && args.train.encoder_mode == EncoderMode::Embeddings);
    if args.train.freeze_embeddings && !pretrained_table {
        bail!(
            "--freeze-embeddings keeps the embedding table as it starts, and nothing pretrained \
             starts it: it would freeze random vectors. Give --init-embeddings FILE, or \
             --encoder DIR --encoder-mode embeddings, or leave the table to train"
        );
    }
    // Before anything in the directory is read: a second run there is refused while this one
    // lives, and the kernel frees the lock when this process dies, however it dies.
    let run_path = args.run_dir.clone().unwrap_or_else(default_run_dir);
    let _lock = crate::run_lock::lock(&run_path, "the run directory", "--run-dir")?;
    // A coordinator started again with the same command (e.g. a pod Kubernetes restarts)
    // continues its unfinished run rather than starting over on top of its checkpoint.
    let resume = match (&args.run_dir, args.resume) {
        (Some(dir), false) if !args.command.is_empty() => match crate::rundir::unfinished(dir)? {
            Some(saved)
                if saved.argv == args.command
                    && Some(&saved.cwd) == std::env::current_dir().ok().as_ref() =>
            {
                tracing::info!(
                    "{} holds an unfinished run of this same command: continuing it from its \
                     checkpoint, as --resume does",
                    dir.display()
                );
                true
            }
            Some(_) => bail!(
                "the run directory {dir} holds an unfinished run started with other options \
                 (its command.json): continue it with `coordinator --resume {dir}`, or give a new \
                 --run-dir",
                dir = dir.display()
            ),
            None => false,
        },
        // Nothing of it was kept: the same run, from its beginning (the data still checked).
        (Some(dir), true) if !crate::rundir::has_checkpoint(dir) => {
            crate::rundir::check_inputs(&crate::rundir::read_command(dir)?.inputs)?;
            tracing::info!(
                "{} has no checkpoint yet (its run stopped before the first epoch ended): \
                 starting the run from its beginning",
                dir.display()
            );
            false
        }
        (_, resume) => resume,
    };
    let (run_dir, checkpoint) = match (&args.run_dir, resume) {
        (Some(dir), true) => {
            let (run_dir, checkpoint) = RunDir::reopen(dir)?;
            crate::rundir::check_inputs(&crate::rundir::read_command(dir)?.inputs)?;
            let p = &checkpoint.progress;
            note.run_dir(dir.clone());
            note.checkpoint(p.epochs_done, p.step);
            tracing::info!(
                "resuming {} after epoch {} and {} steps of the next",
                dir.display(),
                p.epochs_done,
                p.step
            );
            (run_dir, Some(checkpoint))
        }
        _ => {
            if !args.run_dir_force
                && !crate::rundir::holds_run(&run_path)
                && !crate::run_lock::is_empty(&run_path)?
            {
                bail!(
                    "the run directory {} holds files and no run: give a new --run-dir, or add \
                     --run-dir-force to put the run's files beside them",
                    run_path.display()
                );
            }
            let run_dir = RunDir::create(run_path.clone())?;
            if !args.command.is_empty() {
                let inputs = input_paths(&args)
                    .into_iter()
                    .map(crate::rundir::InputFile::hash)
                    .collect::<Result<_>>()?;
                run_dir.save_command(&crate::rundir::Command {
                    cwd: std::env::current_dir().context("the working directory")?,
                    argv: args.command.clone(),
                    inputs,
                })?;
            }
            (run_dir, None)
        }
    };
    tracing::info!("run directory {}", run_dir.path().display());
    note.run_dir(run_dir.path().to_path_buf());

    note.phase("preparing the training data");
    let data_cfg = args.data.clone();
    let mut pipeline = tokio::task::spawn_blocking(move || Pipeline::new(&data_cfg))
        .await?
        .context("preparing the training data")?;
    let encoder = match &args.train.encoder {
        Some(dir) => Some(prepare_encoder(dir, &args, &mut pipeline)?),
        None => None,
    };
    let pipeline = Arc::new(pipeline);
    let test = match &args.test {
        Some(path) => {
            let docs = pipeline.load_labelled(path, "test set")?;
            let in_training = pipeline.texts_in_training(&docs);
            if in_training > 0 {
                tracing::warn!(
                    "test set {}: {in_training} of its {} sentences also {} in the training data \
                     (same tokens), so its accuracy overstates how the model does on new text",
                    path.display(),
                    docs.len(),
                    if in_training == 1 { "occurs" } else { "occur" }
                );
            }
            Some(TestSet {
                examples: pipeline.encode_docs(&docs),
                in_training,
            })
        }
        None => None,
    };
    let eval = Arc::new(pipeline.eval_examples());
    let has_eval = !eval.is_empty();
    if args.train.patience.is_some() && !has_eval {
        bail!("--patience needs a validation set: give --eval FILE or --eval-split FRACTION");
    }
    let labels = pipeline.labels().to_vec();
    // With an encoder, its tokenizer makes the ids and no vocabulary is built from the data.
    let vocab = match &encoder {
        Some(_) => Vocab::build(std::iter::empty::<&str>(), 2, 1),
        None => pipeline.vocab().clone(),
    };
    if encoder.is_none() && vocab.words() == 0 {
        bail!(
            "the vocabulary holds no word (only PAD and UNK): no token occurs --min-freq {} \
             times in the training data; lower --min-freq",
            args.data.min_freq
        );
    }
    tracing::info!(
        "training data: {} examples, {} classes, vocabulary {}, validation {}, augmentations per example {}",
        pipeline.train_rows(),
        labels.len(),
        pipeline.vocab_size(),
        eval.len(),
        pipeline.plan().num_aug
    );
    if let Some(mix) = pipeline.mix_description() {
        tracing::info!("{mix}");
    }

    let t = &args.train;
    let class_weights = match &t.class_weights {
        Some(w) => {
            let mut counts = vec![0usize; labels.len()];
            for s in 0..pipeline.sources().len() {
                for d in pipeline.train_docs(s) {
                    counts[d.label as usize] += 1;
                }
            }
            let w = crate::cli::class_weights(w, &labels, &counts).map_err(anyhow::Error::msg)?;
            tracing::info!(
                "class weights: {}",
                labels
                    .iter()
                    .zip(&w)
                    .map(|(l, w)| format!("{l}={w:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Some(w)
        }
        None => None,
    };
    let features = encoder
        .as_ref()
        .is_some_and(|e| e.mode == EncoderMode::Features);
    let spec = RunSpec {
        model: ModelConfig {
            input: match &encoder {
                Some(e) if features => InputConfig::EncoderFeatures {
                    vocab_size: pipeline.vocab_size(),
                    dim: common::encoder::hidden_size(&e.path)?,
                },
                _ => InputConfig::Embedding {
                    vocab_size: pipeline.vocab_size(),
                    dim: match &encoder {
                        Some(e) => common::encoder::hidden_size(&e.path)?,
                        None => t.embedding_dim,
                    },
                    frozen: t.freeze_embeddings,
                },
            },
            sequence: SequenceConfig::Bilstm {
                hidden_dim: t.hidden_dim,
                layers: t.layers,
                dropout: t.dropout,
            },
            heads: vec![HeadConfig {
                num_classes: labels.len(),
                dropout: t.dropout,
            }],
        },
        adam: AdamConfig {
            lr: t.lr,
            clip_norm: t.clip_norm,
            ..AdamConfig::default()
        },
        seed: args.data.seed,
        class_weights,
        encoder: encoder.clone(),
        encoder_cache_bytes: t.encoder_cache_mb.saturating_mul(1 << 20),
        sources: pipeline.sources().len() as u32,
    };
    let (world, local, daemons) = match (&args.workers, args.expect_workers) {
        (Workers::Remote(_), Some(_)) => bail!("--workers host:port,... runs the job on those worker daemons and --expect-workers N waits for workers that join by themselves: give one of them"),
        (Workers::Remote(d), None) => (d.len(), None, Some(d.as_slice())),
        (_, Some(n)) => (n, None, None),
        (Workers::Local(n), None) => (*n, Some(*n), None),
    };
    if world == 0 {
        bail!("a run needs at least one worker");
    }
    if args.min_workers as usize > world {
        bail!(
            "--min-workers {} is more than the run's {world} workers: the run would give up \
             before it starts; give at most {world}",
            args.min_workers
        );
    }
    let token = match local {
        Some(_) => random_token(),
        None => common::read_token(args.token_file.as_deref())?,
    };
    let run_id: u64 = rand::random();
    let info = RunInfo {
        run_id,
        spec_json: serde_json::to_string(&spec)?,
        ring_shared_memory: args.ring_transport == RingTransport::Auto,
        vocab_json: serde_json::to_string(&vocab)?,
        labels: labels.clone(),
        initial_weights: match (&t.init_embeddings, &encoder) {
            _ if checkpoint.is_some() => checkpoint
                .as_ref()
                .map(|c| c.weights.clone())
                .unwrap_or_default(),
            (Some(path), _) => pretrained_weights(path, &spec, &vocab)?,
            (None, Some(e)) if e.mode == EncoderMode::Embeddings => {
                encoder_table_weights(e, &spec)?
            }
            _ => Vec::new(),
        },
        encoder_dir: encoder.as_ref().map(|e| e.path.clone()),
        initial_optimizer: checkpoint
            .as_ref()
            .map(|c| c.optimizer.clone())
            .unwrap_or_default(),
        start_epoch: checkpoint.as_ref().map_or(0, |c| c.progress.epochs_done),
        start_step: checkpoint.as_ref().map_or(0, |c| c.progress.step),
        start_applied: checkpoint.as_ref().map_or(0, |c| c.progress.applied),
    };
    let (shared, mut inbox) = Shared::new(token.clone(), world, info);
    let _metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-addr: listening on {addr}"))?;
            tracing::info!(
                "metrics at http://{}/metrics",
                listener.local_addr().context("the metrics address")?
            );
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                listener,
                shared.metrics.clone(),
            ))))
        }
        None => None,
    };

    let advertise = match daemons {
        Some(d) => Some(crate::daemons::advertise_addr(
            args.advertise_addr.as_deref(),
            d,
        )?),
        None => None,
    };
    let listen = args.listen.clone().unwrap_or_else(|| {
        match daemons {
            Some(d) => crate::daemons::default_listen(d),
            None => "127.0.0.1:0",
        }
        .into()
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, shared.clone(), server_stopped, server_tls));
    tracing::info!("coordinator listening on {addr}, waiting for {world} workers");

    let threads = args.threads.unwrap_or_else(|| (cores() / world).max(1));
    if let (Some(n), crate::cli::LocalDevice::Cpu) = (local, args.device) {
        if let Some(warning) = oversubscribed(n, threads, cores()) {
            tracing::warn!("{warning}");
        }
    }
    note.phase(format!("waiting for {world} workers to join"));
    if local.is_some() {
        note.workers_started();
    }
    let mut fleet = match local {
        Some(n) => Fleet::spawn(
            n,
            &format!("{scheme}://{addr}"),
            &token,
            threads,
            args.device,
            &tls_files,
        )?,
        None => Fleet::none(),
    };
    let result = async {
        if let (Some(daemons), Some(host)) = (daemons, &advertise) {
            let url = crate::daemons::url(scheme, host, addr.port());
            tracing::info!(
                "enrolling {} worker daemons; they join this coordinator at {url}",
                daemons.len()
            );
            crate::daemons::enroll_all(daemons, &url, &token, tls.as_ref()).await?;
        }
        drive(
            &args,
            &shared,
            &mut inbox,
            &mut fleet,
            &pipeline,
            eval.clone(),
            &spec,
            &run_dir,
            &labels,
            &vocab,
            checkpoint.map(|c| c.progress),
            &note,
        )
        .await
    }
    .await;
    shared.close();
    let last_epoch = shared.plan.borrow().as_ref().map_or(0, |p| p.epoch + 1);
    shared
        .plan
        .send_replace(Some(Arc::new(EpochPlan::finished(last_epoch))));
    let outcome = match result {
        Ok(record) if local.is_some() => fleet.wait(Duration::from_secs(30)).await.map(|()| record),
        Ok(record) => {
            // Workers this coordinator did not start: serve until each has been told the run
            // is over, so none fails asking for an epoch that will not come.
            let deadline = Instant::now() + Duration::from_secs(10);
            let left = shared
                .members
                .borrow()
                .as_ref()
                .map_or(world, |m| m.members.len());
            while shared.told_finished.load(Ordering::Relaxed) < left && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(record)
        }
        Err(e) => {
            fleet.kill_all().await;
            Err(e)
        }
    };
    let _ = stop_server.send(());
    if tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .is_err()
    {
        tracing::warn!("the gRPC server did not stop within 10 s");
    }
    let record = outcome?;

    note.phase("testing and saving the final model");
    finish(
        &args, &run_dir, record, test, &labels, started, world, threads,
    )
    .await
}

/// What the epochs produced, for the summary.
struct Record {
    epochs: u64,
    best_epoch: u64,
    selected_on: &'static str,
    eval: Option<(f64, Confusion)>,
    samples_per_s: Vec<f64>,
    worker_peak_rss: Vec<u64>,
    /// The last epoch's training metrics per source (null for one source).
    train_by_source: serde_json::Value,
    /// Seconds spent encoding with --encoder (slowest worker per epoch, summed).
    encode_seconds: f64,
    /// Per epoch: examples planned and trained, workers.
    epoch_log: Vec<serde_json::Value>,
    workers_lost: u64,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &TrainArgs,
    shared: &Arc<Shared>,
    inbox: &mut Inbox,
    fleet: &mut Fleet,
    pipeline: &Arc<Pipeline>,
    eval: Arc<Vec<Example>>,
    spec: &RunSpec,
    run_dir: &RunDir,
    labels: &[String],
    vocab: &common::data::vocab::Vocab,
    resumed: Option<RunState>,
    note: &StopNote,
) -> Result<Record> {
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
    let has_eval = !eval.is_empty();
    let mut progress = resumed.unwrap_or_default();
    let mut epochs = progress.epochs_done;
    let mut worker_peak_rss: Vec<u64> = Vec::new();
    let mut train_by_source = serde_json::Value::Null;
    let bar = progress_bar();
    // A run resumed after its early stop has nothing left to train.
    let first = match t.patience {
        Some(p) if progress.since_best >= p => t.epochs,
        _ => progress.epochs_done,
    };
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
        let batches = global_batches(&examples, t.batch_size, args.data.seed, epoch);
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
        bar.set_length(steps);
        bar.set_position(0);
        bar.set_message(format!("epoch {}/{}", epoch + 1, t.epochs));
        note.phase(format!("training epoch {} of {}", epoch + 1, t.epochs));
        // Inside the epoch, a checkpoint after every --checkpoint-every steps.
        let mut save_inside = |c: pb::CheckpointUpload| -> Result<()> {
            let mut p = progress.clone();
            p.step = c.steps_done;
            p.applied = c.applied_examples;
            run_dir.save_checkpoint(&meta, &c.weights, &c.optimizer_state, &p)?;
            note.checkpoint(p.epochs_done, p.step);
            tracing::debug!("checkpoint at step {} of epoch {}", c.steps_done, epoch + 1);
            Ok(())
        };
        let s = gather(
            &regroup,
            inbox,
            fleet,
            labels.len(),
            &bar,
            lost_entering,
            &mut save_inside,
        )
        .await?;
        progress.workers_lost += s.lost.len() as u64;
        epochs = epoch + 1;
        for &(id, rss) in &s.peak_rss {
            let id = id as usize;
            if id >= worker_peak_rss.len() {
                worker_peak_rss.resize(id + 1, 0);
            }
            worker_peak_rss[id] = worker_peak_rss[id].max(rss);
        }
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
        let mut line = json!({
            "epoch": epoch + 1, "examples": s.examples, "train_loss": s.loss, "train_accuracy": s.accuracy,
            "samples_per_s": s.samples_per_s, "allreduce_s_per_step": s.allreduce_s_per_step, "bytes_per_step": s.bytes_per_step,
            "compute_s_per_step": s.compute_s_per_step, "update_s_per_step": s.update_s_per_step,
        });
        if s.encoded + s.encode_cached > 0 {
            line["encoded"] = json!(s.encoded);
            line["encode_cached"] = json!(s.encode_cached);
            line["encode_s"] = json!(s.encode_seconds);
            progress.encode_seconds += s.encode_seconds;
        }
        train_by_source = per_source_figures(&s.sources, &args.data.data);
        if !train_by_source.is_null() {
            line["sources"] = train_by_source.clone();
        }
        let mut improved = !has_eval;
        if let Some((loss, c)) = &s.eval {
            line["eval_loss"] = json!(loss);
            line["eval_accuracy"] = json!(c.accuracy());
            line["eval_macro_f1"] = json!(c.macro_f1());
            improved = progress
                .best
                .as_ref()
                .is_none_or(|(b, _, _)| *loss < b - 1e-6);
            if improved {
                progress.best = Some((*loss, epoch, c.clone()));
                progress.since_best = 0;
            } else {
                progress.since_best += 1;
            }
        }
        if improved {
            model_dir::save(&run_dir.model(), &meta, &s.weights, &s.optimizer)?;
        }
        progress.epochs_done = epoch + 1;
        progress.step = 0;
        progress.applied = 0;
        progress.metrics.push(line.clone());
        progress.epoch_log.push(json!({
            "epoch": epoch + 1, "examples_planned": n, "examples_trained": s.applied, "workers": s.workers,
            "workers_lost": s.lost.iter().map(|l| json!({"worker": l.member.id, "host": l.member.host, "pid": l.member.pid, "reason": l.reason})).collect::<Vec<_>>(),
        }));
        // The checkpoint follows the selected model, so a resumed run never lacks it.
        run_dir.save_checkpoint(&meta, &s.weights, &s.optimizer, &progress)?;
        note.checkpoint(progress.epochs_done, 0);
        run_dir.append_metrics(&line)?;
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
        if bar.is_hidden() {
            tracing::info!("{note}");
        } else {
            bar.println(note);
        }
        if let Some(patience) = t.patience {
            if progress.since_best >= patience {
                tracing::info!(
                    "early stopping: validation loss has not improved for {patience} epochs"
                );
                break;
            }
        }
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
        Some((loss, epoch, c)) => (epoch + 1, "eval", Some((loss, c))),
        None => (epochs, "last", None),
    };
    Ok(Record {
        epochs,
        best_epoch,
        selected_on,
        eval,
        samples_per_s,
        worker_peak_rss,
        train_by_source,
        encode_seconds,
        epoch_log,
        workers_lost,
    })
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

/// Waits for every worker's report of the epoch, watching for lost workers meanwhile: a
/// worker whose process exits, whose heartbeats stop, or a survivor asking to regroup starts a
/// membership change, after which the reports of the new membership are awaited.
async fn gather(
    regroup: &Regroup<'_>,
    inbox: &mut Inbox,
    fleet: &mut Fleet,
    classes: usize,
    bar: &ProgressBar,
    lost_before: Vec<Lost>,
    save_checkpoint: &mut (dyn FnMut(pb::CheckpointUpload) -> Result<()> + Send),
) -> Result<EpochSummary> {
    let shared = regroup.shared;
    let epoch = regroup.epoch;
    let timeout_ms = regroup.timeout.as_millis() as u64;
    let mut membership = shared
        .members
        .borrow()
        .clone()
        .context("no workers joined")?;
    let mut got: Vec<Option<pb::EpochReport>> = vec![None; membership.members.len()];
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
    let reports: Vec<pb::EpochReport> = got.into_iter().flatten().collect();
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
    let slowest = |f: fn(&pb::EpochReport) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let compute = slowest(|r| r.compute_seconds);
    let update = slowest(|r| r.update_seconds);
    let eval_n: u64 = reports
        .iter()
        .map(|r| r.confusion.iter().sum::<u64>())
        .sum();
    let eval = if eval_n > 0 {
        let mut c = Confusion::new(classes);
        for r in &reports {
            let part = Confusion::from_counts(classes, r.confusion.clone())
                .context("a worker sent a confusion matrix of the wrong size")?;
            c.merge(&part);
        }
        let l: f64 = reports.iter().map(|r| r.eval_loss_sum).sum();
        Some((l / eval_n as f64, c))
    } else {
        None
    };
    let peak_rss = reports.iter().map(|r| (r.rank, r.peak_rss_bytes)).collect();
    let reports_encoded = reports.iter().map(|r| r.encoded).sum();
    let reports_cached = reports.iter().map(|r| r.encode_cached).sum();
    let reports_encode_s = reports.iter().map(|r| r.encode_seconds).fold(0.0, f64::max);
    let sources = reports[0]
        .sources
        .iter()
        .map(GroupTotals::from_pb)
        .collect();
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
        weights: std::mem::take(&mut rank0.weights),
        optimizer: std::mem::take(&mut rank0.optimizer_state),
        diverged: rank0.diverged,
        peak_rss,
        sources,
        encoded: reports_encoded,
        encode_cached: reports_cached,
        encode_seconds: reports_encode_s,
        applied,
        workers,
        lost: lost_here,
    })
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

/// The `--test` set, encoded, and how many of its sentences the training data also holds.
struct TestSet {
    examples: Vec<Example>,
    in_training: usize,
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    args: &TrainArgs,
    run_dir: &RunDir,
    record: Record,
    test: Option<TestSet>,
    labels: &[String],
    started: Instant,
    world: usize,
    threads: usize,
) -> Result<()> {
    // Training is over: the model is the run's result (before it is loaded for the test, so
    // loading does not warn that it is unfinished).
    model_dir::mark_finished(&run_dir.model())?;
    let model_path = run_dir.model();
    let loaded = tokio::task::spawn_blocking(move || model_dir::load(&model_path)).await??;
    let test_confusion = match &test {
        Some(TestSet { examples, .. }) => {
            let data: Vec<(Vec<u32>, u32)> = examples
                .iter()
                .map(|e| (e.tokens.clone(), e.label))
                .collect();
            let pairs: Vec<(&[u32], u32)> = data.iter().map(|(s, l)| (s.as_slice(), *l)).collect();
            let c = common::train::evaluate(&loaded.model, &pairs)?.confusion;
            if let Some(note) = c.absent_note(labels) {
                tracing::warn!("test set: {note}");
            }
            Some(c)
        }
        None => None,
    };
    let headline = test_confusion
        .as_ref()
        .or(record.eval.as_ref().map(|(_, c)| c));
    let mut rates = record.samples_per_s.clone();
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let files = input_paths(args)
        .into_iter()
        .map(crate::rundir::InputFile::hash)
        .collect::<Result<Vec<_>>>()?;
    let summary = json!({
        "accuracy": headline.map(Confusion::accuracy),
        "macro_f1": headline.map(Confusion::macro_f1),
        "macro_f1_present": headline.map(Confusion::macro_f1_present),
        "evaluated_on": if test_confusion.is_some() { "test" } else if record.eval.is_some() { "eval" } else { "none" },
        "test_examples": test.as_ref().map(|t| t.examples.len()),
        "test_examples_in_training": test.as_ref().map(|t| t.in_training),
        "eval_accuracy": record.eval.as_ref().map(|(_, c)| c.accuracy()),
        "eval_macro_f1": record.eval.as_ref().map(|(_, c)| c.macro_f1()),
        "eval_loss": record.eval.as_ref().map(|(l, _)| l),
        "per_class": headline.map(|c| c.per_class(labels)),
        "confusion": headline.map(|c| c.counts.clone()),
        "labels": labels,
        "best_epoch": record.best_epoch,
        "selected_on": record.selected_on,
        "epochs": record.epochs,
        "workers": world,
        "threads_per_worker": threads,
        "samples_per_s": median,
        "samples_per_s_by_epoch": record.samples_per_s,
        "train_by_source": record.train_by_source,
        "epoch_log": record.epoch_log,
        "workers_lost": record.workers_lost,
        "encoder": loaded.meta.encoder.as_ref().map(|e| json!({"name": e.name, "sha256": e.sha256, "path": e.path, "mode": e.mode, "encode_seconds": record.encode_seconds})),
        "seconds": started.elapsed().as_secs_f64(),
        "peak_rss_mb": {
            "coordinator": common::peak_rss_bytes() as f64 / 1048576.0,
            "workers": record.worker_peak_rss.iter().map(|b| *b as f64 / 1048576.0).collect::<Vec<_>>(),
        },
        "seed": args.data.seed,
        "version": env!("CARGO_PKG_VERSION"),
        "config": {"data": args.data, "train": args.train, "test": args.test, "workers": world, "threads": threads, "device": format!("{:?}", args.device).to_lowercase()},
        "data_files": files,
    });
    run_dir.write_summary(&summary)?;
    match headline {
        Some(c) => tracing::info!(
            "done in {:.0} s: {} accuracy {:.4}, macro-F1 {:.4}; model in {}",
            started.elapsed().as_secs_f64(),
            summary["evaluated_on"].as_str().unwrap_or(""),
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
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Receiver<()>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::coordinator_server::CoordinatorServer<Service>>()
        .await;
    let service = pb::coordinator_server::CoordinatorServer::new(Service(shared))
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
    let incoming = common::idle::incoming(listener);
    let mut builder = common::idle::grpc_server();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("gRPC server TLS: {e}");
                return;
            }
        };
    }
    let result = builder
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("gRPC server: {e}");
    }
}

/// The seed's initial weights with the embedding rows of `path`'s word vectors, as
/// safetensors bytes for the workers.
fn pretrained_weights(
    path: &std::path::Path,
    spec: &RunSpec,
    vocab: &common::data::vocab::Vocab,
) -> Result<Vec<u8>> {
    let vectors = common::data::vectors::read(path, vocab)
        .with_context(|| format!("--init-embeddings {}", path.display()))?;
    if vectors.dim != spec.model.input.dim() {
        bail!(
            "--init-embeddings {}: the vectors have {} dimensions but the embedding has {}; add --embedding-dim {}",
            path.display(),
            vectors.dim,
            spec.model.input.dim(),
            vectors.dim
        );
    }
    tracing::info!(
        "{}: vectors for {} of {} vocabulary words; {} start random",
        path.display(),
        vectors.rows.len(),
        vocab.len().saturating_sub(2),
        vectors.missing
    );
    let model = common::model::Classifier::new(&spec.model, spec.seed)?;
    model.set_embedding_rows(&vectors.rows)?;
    Ok(model.to_bytes()?)
}

/// Checks `--encoder DIR` against the other options, names and hashes it, and makes the
/// pipeline cut sentences with its tokenizer.
fn prepare_encoder(dir: &Path, args: &TrainArgs, pipeline: &mut Pipeline) -> Result<EncoderRef> {
    if args.train.init_embeddings.is_some() {
        bail!("--encoder and --init-embeddings both set the model's input: give one of them");
    }
    let mode = args.train.encoder_mode;
    let reference =
        EncoderRef::of(dir, mode).with_context(|| format!("--encoder {}", dir.display()))?;
    let wordpiece = WordPiece::load(&dir.join(common::encoder::files::TOKENIZER))
        .with_context(|| format!("--encoder {}", dir.display()))?;
    tracing::info!(
        "encoder {} ({}, sha256 {}…), mode {:?}: sentences become its WordPiece tokens (at most {})",
        reference.name,
        dir.display(),
        &reference.sha256[..12],
        mode,
        common::encoder::MAX_PIECES
    );
    pipeline.use_wordpiece(Arc::new(wordpiece));
    Ok(reference)
}

/// The seed's initial weights with the encoder's token-embedding table as the embedding
/// layer (`--encoder-mode embeddings`), as safetensors bytes for the workers.
fn encoder_table_weights(encoder: &EncoderRef, spec: &RunSpec) -> Result<Vec<u8>> {
    let table = common::encoder::word_embeddings(&encoder.path)
        .with_context(|| format!("--encoder {}", encoder.path.display()))?;
    let (rows, dim) = table.dims2()?;
    if rows != spec.model.vocab_size() || dim != spec.model.input.dim() {
        bail!(
            "--encoder {}: its embedding table is {rows} × {dim} but its tokenizer and configuration say {} × {}",
            encoder.path.display(),
            spec.model.vocab_size(),
            spec.model.input.dim()
        );
    }
    let values = table.to_vec2::<f32>()?;
    let rows: Vec<(u32, Vec<f32>)> = values
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i as u32, r))
        .collect();
    let model = common::model::Classifier::new(&spec.model, spec.seed)?;
    model.set_embedding_rows(&rows)?;
    Ok(model.to_bytes()?)
}

/// Stops a background task when the run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{secs}"))
}

/// What to tell a user whose local CPU workers would run more compute threads than the
/// machine has cores: spinning thread pools then take turns on a core and every step waits
/// for the slowest.
fn oversubscribed(workers: usize, threads: usize, cores: usize) -> Option<String> {
    let total = workers * threads;
    (total > cores).then(|| {
        let fit = match cores / workers {
            0 => format!("at most {cores} --workers with --threads 1"),
            per_worker => format!("--threads {per_worker}"),
        };
        format!(
            "{workers} local workers × {threads} compute threads = {total} threads on {cores} \
             cores: they will slow each other down; {fit} would fit"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{diverged, oversubscribed};

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

    #[test]
    fn more_compute_threads_than_cores_is_named_with_what_would_fit() {
        assert_eq!(oversubscribed(2, 1, 2), None);
        assert_eq!(oversubscribed(1, 8, 8), None);
        let two_by_four = oversubscribed(2, 4, 2).unwrap();
        assert!(
            two_by_four.contains("8 threads on 2 cores"),
            "{two_by_four}"
        );
        assert!(
            two_by_four.contains("--threads 1 would fit"),
            "{two_by_four}"
        );
        let three = oversubscribed(3, 1, 2).unwrap();
        assert!(three.contains("at most 2 --workers"), "{three}");
    }
}
