//! Everything a run needs before its workers join: the data pipeline, the encoder, the
//! validation and test sets, the class weights, the model's spec and its starting weights.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use common::data::vocab::Vocab;
use common::data::Example;
use common::encoder::{EncoderMode, EncoderRef, WordPiece};
use common::model::{HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig};
use common::pipeline::Pipeline;
use common::train::{AdamConfig, LrSchedule, RunSpec};

use crate::cli::{HeadKind, ScheduleKind};
use crate::plan::TrainPlan;

/// A test set, encoded, and how many of its sentences the training data also holds.
pub(super) struct TestSet {
    pub(super) examples: Vec<Example>,
    pub(super) in_training: usize,
}

/// With tasks: the test set of a task other than the target (`--task-test`).
pub(super) struct TaskTest {
    pub(super) task: usize,
    pub(super) set: TestSet,
}

/// The run's test sets: the target's (`--test`, or its `--task-test`) and the other tasks'.
pub(super) struct Tests {
    pub(super) target: Option<TestSet>,
    pub(super) others: Vec<TaskTest>,
}

/// A run's data and model, ready for its workers.
pub(super) struct Prepared {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) eval: Arc<Vec<Example>>,
    pub(super) tests: Tests,
    pub(super) labels: Vec<String>,
    pub(super) vocab: Vocab,
    pub(super) spec: RunSpec,
    /// Weights every worker starts from (safetensors), empty to initialise from the seed.
    pub(super) initial_weights: Vec<u8>,
}

pub(super) async fn prepare(plan: &TrainPlan, resumed: bool) -> Result<Prepared> {
    let args = &plan.args;
    let data_cfg = args.data.clone();
    let mut pipeline = tokio::task::spawn_blocking(move || Pipeline::new(&data_cfg))
        .await?
        .context("preparing the training data")?;
    let encoder = match &args.train.encoder {
        Some(dir) => Some(prepare_encoder(dir, plan, &mut pipeline)?),
        None => None,
    };
    let pipeline = Arc::new(pipeline);
    let mut test = match &args.test {
        Some(path) => Some(test_set(&pipeline, 0, path)?),
        None => None,
    };
    let mut task_tests = Vec::new();
    for f in &args.task_test {
        let task = pipeline
            .tasks()
            .iter()
            .position(|t| t.name == f.name)
            .context("--task-test names no task")?;
        let set = test_set(&pipeline, task, &f.path)?;
        match task {
            0 => test = Some(set),
            _ => task_tests.push(TaskTest { task, set }),
        }
    }
    // Never empty when asked for: an empty --eval file or split is refused as the data loads.
    let eval = Arc::new(pipeline.eval_examples());
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
    let class_weights = match &plan.class_weights {
        Some(w) => {
            let mut counts = vec![0usize; labels.len()];
            for s in 0..pipeline.sources().len() {
                for d in pipeline.train_docs(s) {
                    counts[d.label as usize] += 1;
                }
            }
            // With tasks, each task's weights are resolved among its own classes.
            let blocks: Vec<_> = (0..pipeline.tasks().len().max(1))
                .map(|k| pipeline.task_labels(k))
                .collect();
            let w = w
                .resolve(&labels, &counts, &blocks)
                .map_err(anyhow::Error::msg)?;
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
    if t.finetunes() {
        tracing::info!(
            "fine-tuning the encoder: its vectors change with every step, so they are not \
             cached (--encoder-cache-mb does not apply){}",
            match t.finetune_layers {
                Some(k) => format!(
                    "; only its top {k} block{} train{}",
                    if k == 1 { "" } else { "s" },
                    if k == 1 { "s" } else { "" }
                ),
                None => String::new(),
            }
        );
    }
    let spec = RunSpec {
        model: model_config(plan, &pipeline, encoder.as_ref())?,
        adam: AdamConfig {
            lr: t.lr,
            clip_norm: t.clip_norm,
            schedule: match t.lr_schedule() {
                ScheduleKind::Constant => LrSchedule::Constant,
                ScheduleKind::Linear => {
                    let per_epoch = pipeline
                        .epoch_estimate()
                        .0
                        .items
                        .div_ceil(t.batch_size() as u64);
                    let schedule =
                        LrSchedule::linear(t.epochs * per_epoch.max(1), t.warmup.unwrap_or(0.1));
                    tracing::info!("learning rate: {schedule:?} (steps)");
                    schedule
                }
            },
            weight_decay: t.weight_decay(),
            encoder_lr: t.finetunes().then(|| t.encoder_lr()),
            ..AdamConfig::default()
        },
        seed: args.data.seed,
        class_weights,
        encoder: encoder.clone(),
        encoder_cache_bytes: t.encoder_cache_mb.saturating_mul(1 << 20),
        sources: pipeline.sources().len() as u32,
    };
    let initial_weights = match (&t.init_embeddings, &encoder) {
        // The checkpoint's state is the initial state.
        _ if resumed => Vec::new(),
        (Some(path), _) => pretrained_weights(path, &spec, &vocab)?,
        (None, Some(e)) if e.mode == EncoderMode::Embeddings => encoder_table_weights(e, &spec)?,
        // Drawn by every worker from the seed, as the model's other weights are, or read by
        // every worker from the encoder's files (EncoderRef::pretrained_in_weights).
        (None, Some(e)) if e.mode == EncoderMode::Finetune => {
            if e.pretrained_in_weights() {
                check_encoder_weights(e, &spec)?;
            }
            Vec::new()
        }
        _ => Vec::new(),
    };
    Ok(Prepared {
        pipeline,
        eval,
        tests: Tests {
            target: test,
            others: task_tests,
        },
        labels,
        vocab,
        spec,
        initial_weights,
    })
}

/// Task `task`'s test set at `path`, read with its labels and encoded; warns when the training
/// data holds some of its sentences.
fn test_set(pipeline: &Pipeline, task: usize, path: &Path) -> Result<TestSet> {
    let docs = pipeline.load_labelled_for(task, path, "test set")?;
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
    Ok(TestSet {
        examples: pipeline.encode_docs(&docs),
        in_training,
    })
}

/// The seed's initial weights with the embedding rows of `path`'s word vectors, as
/// safetensors bytes for the workers.
fn pretrained_weights(path: &Path, spec: &RunSpec, vocab: &Vocab) -> Result<Vec<u8>> {
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

/// Names and hashes `--encoder DIR`, and makes the pipeline cut sentences with its tokenizer.
fn prepare_encoder(dir: &Path, plan: &TrainPlan, pipeline: &mut Pipeline) -> Result<EncoderRef> {
    let mode = plan.args.train.encoder_mode;
    let reference = match plan.args.train.encoder_random_init {
        true => EncoderRef::unweighted(dir, mode),
        false => EncoderRef::of(dir, mode),
    }
    .with_context(|| format!("--encoder {}", dir.display()))?;
    if reference.random_init {
        tracing::warn!(
            "--encoder-random-init: the encoder's weights are drawn from its config.json, not              read: the model learns from scratch (for speed checks)"
        );
    }
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

/// The model: its input (a table, or a frozen encoder's vectors), the fine-tuned transformer
/// if any, the sequence encoder, and one head per task (one for all without tasks).
fn model_config(
    plan: &TrainPlan,
    pipeline: &Pipeline,
    encoder: Option<&EncoderRef>,
) -> Result<ModelConfig> {
    let t = &plan.args.train;
    let width = match encoder {
        Some(e) => common::encoder::hidden_size(&e.path)?,
        None => t.embedding_dim,
    };
    let input = match encoder.map(|e| e.mode) {
        Some(EncoderMode::Features) => InputConfig::EncoderFeatures {
            vocab_size: pipeline.vocab_size(),
            dim: width,
        },
        Some(EncoderMode::Finetune) => InputConfig::Embedding {
            vocab_size: pipeline.vocab_size(),
            dim: width,
            frozen: t.freeze_embeddings || t.finetune_layers.is_some(),
        },
        _ => InputConfig::Embedding {
            vocab_size: pipeline.vocab_size(),
            dim: width,
            frozen: t.freeze_embeddings,
        },
    };
    let transformer = match encoder.filter(|e| e.mode == EncoderMode::Finetune) {
        Some(e) => {
            let path = e.path.join(common::encoder::files::CONFIG);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--encoder: reading {}", path.display()))?;
            let config = serde_json::from_str(&text)
                .with_context(|| format!("--encoder: {}", path.display()))?;
            Some(TransformerConfig {
                config,
                trained_layers: t.finetune_layers,
            })
        }
        None => None,
    };
    let model = ModelConfig {
        input,
        transformer,
        sequence: match t.head() {
            HeadKind::Bilstm => SequenceConfig::Bilstm {
                hidden_dim: t.hidden_dim,
                layers: t.layers,
                dropout: t.dropout,
            },
            HeadKind::Mean => SequenceConfig::MeanPool,
        },
        heads: (0..pipeline.tasks().len().max(1))
            .map(|k| HeadConfig {
                num_classes: pipeline.task_labels(k).len(),
                dropout: t.dropout,
            })
            .collect(),
    };
    model
        .validate()
        .with_context(|| "the model these options describe is not valid".to_string())?;
    Ok(model)
}

/// Refuses, before any worker starts, an encoder whose weights file lacks a weight the model
/// needs or holds it in another shape (only the file's header is read).
fn check_encoder_weights(encoder: &EncoderRef, spec: &RunSpec) -> Result<()> {
    let Some(t) = &spec.model.transformer else {
        bail!("fine-tuning without a transformer in the model");
    };
    let path = encoder.path.join(common::encoder::files::WEIGHTS);
    common::encoder::trainable::check_pretrained_file(&path, &t.bert()?)
        .with_context(|| format!("--encoder: {}", path.display()))
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
