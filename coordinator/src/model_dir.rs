//! A trained model on disk: `weights.safetensors` plus `model.json` (shape, vocabulary, labels,
//! tokenizer and the configuration it was trained with), so `evaluate` and `predict` need
//! nothing else.
//!
//! Format 2 describes the model as parts (input, sequence encoder, heads); format 1 described
//! the seed's classifier as one flat record. Both load; what is written is format 2. The
//! weights file is the same in both.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use common::data::config::UnknownLabels;
use common::data::load::{self, LoadOptions};
use common::data::tasks::Task;
use common::data::tokenize::Tokenizer;
use common::data::vocab::Vocab;
use common::encoder::{files, Encoder, EncoderRef, WordPiece};
use common::model::{Classifier, FlatConfig, ModelConfig};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::spool::{SpoolFile, SpooledState};

pub const WEIGHTS: &str = "weights.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const META: &str = "model.json";
/// The run directory's folder holding its best model (named here so that `load` can tell a
/// run directory from a model directory).
pub const MODEL: &str = "model";
const FORMAT: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: u32,
    pub model: ModelConfig,
    pub labels: Vec<String>,
    pub tokenizer: Tokenizer,
    pub max_len: usize,
    pub vocab: Vocab,
    /// Epoch (0-based) these weights come from.
    pub epoch: u64,
    /// The full training configuration, for provenance.
    pub training: serde_json::Value,
    pub version: String,
    /// The pretrained encoder the model was trained with (its tokenizer makes the ids; in
    /// `features` mode its vectors are the input): needed, identical, to use the model.
    #[serde(default)]
    pub encoder: Option<EncoderRef>,
    /// The training's `--label-map` (alias → label): data labelled with the aliases is
    /// evaluated as training read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_map: BTreeMap<String, String>,
    /// A multi-task model's tasks, the target first: each with its block of `labels`, scored
    /// by the head of the same index. Empty for one task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Task>,
    /// False while the run that writes the model goes on, and after it was stopped before its
    /// end: the weights are then its best epoch so far, not its result. (Models from before
    /// this field are finished ones.)
    #[serde(default = "yes")]
    pub finished: bool,
    /// SHA-256 of `weights.safetensors` (and of `optimizer.safetensors`, when saved), checked
    /// when they are read back: a damaged or changed file is refused instead of predicting
    /// something else. Models from before these fields load unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_sha256: Option<String>,
}

fn yes() -> bool {
    true
}

impl ModelMeta {
    /// The task `--task NAME` names (`None`: the target, task 0), refused with the list of
    /// tasks when there is no such task.
    pub fn task(&self, name: Option<&str>) -> Result<usize> {
        let Some(name) = name else { return Ok(0) };
        if self.tasks.is_empty() {
            bail!("--task {name}: this model was trained on one task, without --task");
        }
        self.tasks
            .iter()
            .position(|t| t.name == name)
            .with_context(|| {
                format!(
                    "--task {name}: the model has no such task; its tasks are {}",
                    self.task_names().join(", ")
                )
            })
    }

    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    /// Task `k`'s block of the labels (every label without tasks).
    pub fn task_labels(&self, k: usize) -> std::ops::Range<usize> {
        self.tasks
            .get(k)
            .map_or(0..self.labels.len(), |t| t.labels.clone())
    }

    /// Reads `model.json` of format 1 or 2 (a format-1 model's flat record becomes its parts).
    pub fn from_json(text: &str) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(text)?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        match format {
            Some(1) => {
                let flat: FlatConfig = serde_json::from_value(value["model"].take())
                    .context("its format-1 model record")?;
                value["model"] = serde_json::to_value(ModelConfig::from(flat))?;
                value["format"] = FORMAT.into();
            }
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => bail!("model format {f} is not supported (this build reads 1 and {FORMAT})"),
            None => bail!("it has no format number"),
        }
        let meta: ModelMeta = serde_json::from_value(value)?;
        meta.model
            .validate()
            .map_err(|e| anyhow::anyhow!("its model: {e}"))?;
        Ok(meta)
    }

    pub fn new(
        model: ModelConfig,
        labels: Vec<String>,
        tokenizer: Tokenizer,
        max_len: usize,
        vocab: Vocab,
        training: serde_json::Value,
    ) -> Self {
        ModelMeta {
            format: FORMAT,
            model,
            labels,
            tokenizer,
            max_len,
            vocab,
            epoch: 0,
            training,
            version: env!("CARGO_PKG_VERSION").into(),
            encoder: None,
            label_map: BTreeMap::new(),
            tasks: Vec::new(),
            finished: false,
            weights_sha256: None,
            optimizer_sha256: None,
        }
    }
}

/// A worker's weights and optimizer state, checked and hashed once however many directories
/// they are written to (an epoch's model and its checkpoint: 270 MB of a fine-tuned encoder's
/// state read once, not twice, on the cores the workers train on).
pub struct Verified<'a> {
    state: &'a SpooledState,
    weights_sha256: String,
    optimizer_sha256: Option<String>,
}

/// Checks a received state to save. Weights or state with a value that is not finite are
/// refused: a diverged step must not become a model or a checkpoint.
pub fn verify(state: &SpooledState) -> Result<Verified<'_>> {
    for (what, part) in [
        ("weights", &state.weights),
        ("optimizer state", &state.optimizer),
    ] {
        // A part the coordinator could not keep fails where it is written, naming the file.
        if part.is_empty() || part.failed() {
            continue;
        }
        if let Some(name) = non_finite_tensor(part.reader())? {
            bail!(
                "the {what} to save hold a value that is not finite (in {name}): training \
                 diverged; they are not saved"
            );
        }
    }
    Ok(Verified {
        state,
        weights_sha256: state.weights.sha256(),
        optimizer_sha256: (!state.optimizer.is_empty()).then(|| state.optimizer.sha256()),
    })
}

/// Writes a model directory: the weights (and optimizer state), then the metadata with their
/// hashes, each file atomically.
pub fn save(dir: &Path, meta: &ModelMeta, state: &Verified<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        common::fsutil::write_atomic(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    let copy = |name: &str, part: &SpoolFile| {
        let p = dir.join(name);
        common::fsutil::write_atomic_with(&p, |w| part.copy_to(w))
            .with_context(|| format!("writing {}", p.display()))
    };
    // A fine-tuned encoder is in the weights; with its configuration and tokenizer beside
    // them, the directory needs nothing else.
    if let (Some(t), Some(r)) = (&meta.model.transformer, &meta.encoder) {
        write(files::CONFIG, &serde_json::to_vec_pretty(&t.config)?)?;
        let tokenizer = r.path.join(files::TOKENIZER);
        let bytes = std::fs::read(&tokenizer)
            .with_context(|| format!("reading {}", tokenizer.display()))?;
        write(files::TOKENIZER, &bytes)?;
    }
    let mut meta = meta.clone();
    copy(WEIGHTS, &state.state.weights)?;
    meta.weights_sha256 = Some(state.weights_sha256.clone());
    meta.optimizer_sha256 = state.optimizer_sha256.clone();
    if !state.state.optimizer.is_empty() {
        copy(OPTIMIZER, &state.state.optimizer)?;
    }
    write(META, &serde_json::to_vec_pretty(&meta)?)?;
    Ok(())
}

/// Reads the weights (or optimizer state) file `name` of `dir` and checks it against the hash
/// `model.json` recorded for it, if any.
pub fn read_checked(dir: &Path, name: &str, recorded: Option<&str>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    copy_checked(dir, name, recorded, &mut bytes, |_| {})?;
    Ok(bytes)
}

/// Copies the file `name` of `dir` into `out` a block at a time, handing each block to `seen`
/// as well, and checks it against the hash `model.json` recorded for it, if any: a file of any
/// size costs a block of memory. Returns its length.
pub fn copy_checked(
    dir: &Path,
    name: &str,
    recorded: Option<&str>,
    out: &mut impl std::io::Write,
    mut seen: impl FnMut(&[u8]),
) -> Result<u64> {
    use sha2::Digest;
    let path = dir.join(name);
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut block)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
        seen(&block[..n]);
        out.write_all(&block[..n])
            .with_context(|| format!("copying {}", path.display()))?;
        len += n as u64;
    }
    if let Some(want) = recorded {
        let got = hex::encode(hasher.finalize());
        if got != want {
            bail!(
                "{}: its SHA-256 is {}… but {} records {}…: the file was changed or damaged \
                 since it was written",
                path.display(),
                &got[..12],
                dir.join(META).display(),
                want.get(..12).unwrap_or(want)
            );
        }
    }
    Ok(len)
}

/// The name of the first tensor (in name order) of the safetensors file that `file` reads
/// holding a float that is not finite (NaN or ±∞), read a block at a time: a file of any size
/// costs a block of memory.
fn non_finite_tensor(mut file: impl std::io::Read) -> Result<Option<String>> {
    let bad = |e: std::io::Error| anyhow::anyhow!("reading safetensors: {e}");
    let header = common::model::read_header(&mut file).map_err(bad)?;
    let mut at = 0u64;
    let mut block = vec![0u8; 1 << 20];
    let mut found: Option<String> = None;
    for name in header.offset_keys() {
        let Some(info) = header.info(&name) else {
            continue;
        };
        let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        if begin < at || end < begin {
            bail!("reading safetensors: tensor {name} overlaps another");
        }
        let mut gap = std::io::Read::take(&mut file, begin - at);
        std::io::copy(&mut gap, &mut std::io::sink()).map_err(bad)?;
        let size = match info.dtype {
            safetensors::Dtype::F32 => 4,
            safetensors::Dtype::F64 => 8,
            _ => 0,
        };
        let mut finite = true;
        let mut left = end - begin;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            file.read_exact(&mut block[..n]).map_err(bad)?;
            finite &= match size {
                4 => block[..n]
                    .chunks_exact(4)
                    .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
                8 => block[..n].chunks_exact(8).all(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()
                }),
                _ => true,
            };
            left -= n as u64;
        }
        at = end;
        if !finite && found.as_ref().is_none_or(|f| name < *f) {
            found = Some(name);
        }
    }
    Ok(found)
}

/// Marks the model in `dir` as its run's result, once the run has finished; its metadata.
pub fn mark_finished(dir: &Path) -> Result<ModelMeta> {
    let path = dir.join(META);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut meta = ModelMeta::from_json(&text)
        .with_context(|| format!("{} cannot be read", path.display()))?;
    meta.finished = true;
    common::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&meta)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(meta)
}

pub struct LoadedModel {
    pub meta: ModelMeta,
    pub model: Classifier,
    /// The encoder's tokenizer, for a model trained with one.
    wordpiece: Option<Arc<WordPiece>>,
}

impl LoadedModel {
    /// The fraction of a sentence's tokens (`ids`, as [`LoadedModel::encode`] gives them) that
    /// the model does not know: UNK of its vocabulary, or its encoder's `[UNK]` piece.
    pub fn unknown_fraction(&self, ids: &[u32]) -> f64 {
        let (unknown, tokens) = match &self.wordpiece {
            // [CLS] … [SEP]: only the pieces between them are the sentence's.
            Some(wp) => (
                wp.unknown_id(),
                ids.get(1..ids.len().saturating_sub(1)).unwrap_or(&[]),
            ),
            None => (Some(common::data::vocab::UNK), ids),
        };
        let n = tokens.iter().filter(|&&id| Some(id) == unknown).count();
        n as f64 / tokens.len().max(1) as f64
    }

    /// Token ids of a sentence, as at training.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let words = self.meta.tokenizer.tokenize(text);
        match &self.wordpiece {
            Some(wp) => wp.encode_words_or_unknown(&words),
            None => self.meta.vocab.encode(&words, self.meta.max_len),
        }
    }
}

/// Memory for the vectors of sentences seen at inference (they are all "originals").
const INFERENCE_CACHE: usize = 0;

pub fn load(dir: &Path) -> Result<LoadedModel> {
    load_with(dir, None, &Device::Cpu)
}

/// As [`load`], onto `device`; a model trained with an encoder finds it at `encoder`, else
/// where it was at training, and is refused when it is missing or differs.
pub fn load_with(dir: &Path, encoder: Option<&Path>, device: &Device) -> Result<LoadedModel> {
    if !dir.is_dir() {
        bail!(
            "{} is not a model directory (expected {META} and {WEIGHTS} in it)",
            dir.display()
        );
    }
    let meta_path = dir.join(META);
    let inner = dir.join(MODEL);
    if !meta_path.exists() && inner.join(META).exists() {
        bail!(
            "{} is a run directory; its model is {}",
            dir.display(),
            inner.display()
        );
    }
    let text = std::fs::read_to_string(&meta_path)
        .with_context(|| format!("reading {}", meta_path.display()))?;
    let meta = ModelMeta::from_json(&text)
        .with_context(|| format!("{} cannot be read", meta_path.display()))?;
    if !meta.finished {
        tracing::warn!(
            "{}: the run that wrote this model has not finished (it still runs, or it was \
             stopped): these are the weights of its best epoch so far (epoch {}), not its result",
            dir.display(),
            meta.epoch + 1
        );
    }
    let vocab_ok = meta.encoder.is_some() || meta.vocab.len() == meta.model.vocab_size();
    let tasks_ok = meta.tasks.is_empty()
        || (meta.tasks.len() == meta.model.heads.len()
            && meta.tasks.iter().enumerate().all(|(k, t)| {
                t.labels.start == meta.model.head_offset(k)
                    && t.labels.len() == meta.model.heads[k].num_classes
            }));
    if meta.labels.len() != meta.model.num_classes() || !vocab_ok || !tasks_ok {
        bail!(
            "{} is inconsistent: labels, tasks or vocabulary do not match the model's shape",
            meta_path.display()
        );
    }
    let weights = dir.join(WEIGHTS);
    let bytes = read_checked(dir, WEIGHTS, meta.weights_sha256.as_deref())?;
    if let Some(name) = non_finite_tensor(bytes.as_slice())? {
        bail!(
            "{}: {name} holds a value that is not finite (NaN or infinite): these weights cannot \
             predict anything",
            weights.display()
        );
    }
    let mut model = Classifier::new_on(&meta.model, 0, device)?;
    model
        .load_weights_bytes(&bytes)
        .with_context(|| format!("loading the weights {}", weights.display()))?;
    let wordpiece = match &meta.encoder {
        None => None,
        // The fine-tuned encoder is in the weights, its tokenizer beside them.
        Some(_) if meta.model.transformer.is_some() => {
            let path = dir.join(files::TOKENIZER);
            Some(Arc::new(WordPiece::load(&path).with_context(|| {
                format!("{}: the fine-tuned encoder's tokenizer", dir.display())
            })?))
        }
        Some(r) => {
            let dir_used = encoder.unwrap_or(&r.path);
            let refuse = |e: &dyn std::fmt::Display| {
                anyhow::anyhow!(
                    "{} was trained with the encoder {} (sha256 {}), which cannot be used: {e}",
                    meta_path.display(),
                    r.name,
                    r.sha256
                )
            };
            if !dir_used.is_dir() {
                return Err(refuse(&format!(
                    "{} does not exist; give --encoder DIR",
                    dir_used.display()
                )));
            }
            if meta.model.reads_encoder() {
                let enc = Encoder::load_checked(dir_used, r, device, INFERENCE_CACHE)
                    .map_err(|e| refuse(&e))?;
                let wp = enc.wordpiece().clone();
                model.attach_encoder(Arc::new(enc))?;
                Some(wp)
            } else {
                let found = files::content_hash(dir_used).map_err(|e| refuse(&e))?;
                if found != r.sha256 {
                    return Err(refuse(&format!(
                        "{} has content hash {found}",
                        dir_used.display()
                    )));
                }
                Some(Arc::new(
                    WordPiece::load(&dir_used.join(files::TOKENIZER)).map_err(|e| refuse(&e))?,
                ))
            }
        }
    };
    Ok(LoadedModel {
        meta,
        model,
        wordpiece,
    })
}

/// A labelled file as (token ids, label id), with the model's tokenizer and labels. Labels the
/// model does not know are an error listing them, or with [`UnknownLabels::Skip`] their
/// examples are left out and counted in the log.
pub fn load_labelled(
    m: &LoadedModel,
    path: &Path,
    opts: &LoadOptions,
    unknown_labels: UnknownLabels,
    task: usize,
) -> Result<Vec<(Vec<u32>, u32)>> {
    let meta = &m.meta;
    // A task's labels are read as that task's (its block of the model's labels).
    let block = meta.task_labels(task);
    let loaded = load::load(path, opts)?;
    let mut out = Vec::with_capacity(loaded.records.len());
    let mut unknown: Vec<String> = Vec::new();
    let mut skipped = 0;
    for mut r in loaded.records {
        if let Some(l) = meta.label_map.get(&r.label) {
            r.label = l.clone();
        }
        match meta.labels[block.clone()]
            .iter()
            .position(|l| *l == r.label)
        {
            Some(id) => out.push((m.encode(&r.text), (block.start + id) as u32)),
            None => {
                skipped += 1;
                if !unknown.contains(&r.label) {
                    unknown.push(r.label)
                }
            }
        }
    }
    if unknown.is_empty() {
        return Ok(out);
    }
    unknown.sort();
    match unknown_labels {
        UnknownLabels::Error => bail!(
            "{} has labels the model was not trained on: {} (use --unknown-labels skip to leave \
             those examples out)",
            path.display(),
            unknown.join(", ")
        ),
        UnknownLabels::Skip if out.is_empty() => bail!(
            "{}: every example has a label the model was not trained on ({})",
            path.display(),
            unknown.join(", ")
        ),
        UnknownLabels::Skip => {
            tracing::warn!(
                "{}: skipped {skipped} examples with labels the model was not trained on ({})",
                path.display(),
                unknown.join(", ")
            );
            Ok(out)
        }
    }
}
