//! A frozen pretrained encoder (a BERT-family model: `config.json`, `model.safetensors`,
//! `tokenizer.json`) whose last-layer token vectors are the BiLSTM's input instead of its
//! embedding layer (`--encoder`), or whose token-embedding table initialises that layer
//! (`--encoder-mode embeddings`).
//!
//! As in the reference (`torch_encoder_bilstm.py`): the encoder's own WordPiece tokens, at
//! most 64 with `[CLS]` and `[SEP]`, and the vectors of all of them, special tokens included.

mod bert;
mod cache;
mod dropout_mask;
mod error;
pub mod files;
pub mod fused;
pub mod gelu;
pub mod trainable;
mod wordpiece;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::Config;
use serde::{Deserialize, Serialize};

pub use cache::FeatureCache;
pub use error::EncoderError;
use error::Result;
pub use wordpiece::{WordPiece, MAX_PIECES};

/// Sentences per encoder forward pass (the reference's batch).
pub const ENCODE_BATCH: usize = 64;

/// How a run uses the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderMode {
    /// The frozen encoder's last-layer token vectors are the BiLSTM's input.
    #[default]
    Features,
    /// The encoder's token-embedding table (and its tokenizer) initialise the embedding layer.
    Embeddings,
    /// Every weight of the encoder trains with the head.
    Finetune,
}

/// Which encoder a run used: recorded in checkpoints and sent to workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderRef {
    pub name: String,
    /// [`files::content_hash`] of the model directory.
    pub sha256: String,
    /// Where it was read from (on the coordinator's machine).
    pub path: PathBuf,
    pub mode: EncoderMode,
    /// Its weights were drawn from `config.json` as BERT initialises them, not read
    /// (`--encoder-random-init`, for speed checks); the hash then covers the configuration and
    /// the tokenizer only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub random_init: bool,
}

impl EncoderRef {
    /// Names and hashes the model in `dir`.
    pub fn of(dir: &Path, mode: EncoderMode) -> Result<Self> {
        Ok(Self {
            name: files::display_name(dir),
            sha256: files::content_hash(dir)?,
            path: dir.to_path_buf(),
            mode,
            random_init: false,
        })
    }

    /// Whether a run's initial weights hold this encoder's pretrained ones, which each worker
    /// reads from the encoder's files (fine-tuning, unless the weights are drawn).
    pub fn pretrained_in_weights(&self) -> bool {
        self.mode == EncoderMode::Finetune && !self.random_init
    }

    /// Names and hashes the configuration and tokenizer in `dir`, whose weights a run draws
    /// at random instead of reading (the directory needs no `model.safetensors`).
    pub fn unweighted(dir: &Path, mode: EncoderMode) -> Result<Self> {
        Ok(Self {
            name: files::display_name(dir),
            sha256: files::content_hash_of(dir, &files::UNWEIGHTED)?,
            path: dir.to_path_buf(),
            mode,
            random_init: true,
        })
    }
}

/// The model's `config.json`.
pub fn read_config(dir: &Path) -> Result<Config> {
    files::check_files(dir, &[files::CONFIG])?;
    let path = dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| EncoderError::Io {
        path: path.clone(),
        cause: source,
    })?;
    serde_json::from_str(&text).map_err(|e| EncoderError::Invalid {
        path,
        msg: format!("not a BERT configuration: {e}"),
    })
}

/// Width of the model's token vectors.
pub fn hidden_size(dir: &Path) -> Result<usize> {
    Ok(read_config(dir)?.hidden_size)
}

/// The model's token-embedding table (vocabulary × width) on the CPU, for `--encoder-mode
/// embeddings`.
pub fn word_embeddings(dir: &Path) -> Result<Tensor> {
    let path = dir.join(files::WEIGHTS);
    let invalid = |msg: String| EncoderError::Invalid {
        path: path.clone(),
        msg,
    };
    let tensors =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| invalid(e.to_string()))?;
    let table = [
        "embeddings.word_embeddings.weight",
        "bert.embeddings.word_embeddings.weight",
    ]
    .iter()
    .find_map(|k| tensors.get(*k))
    .ok_or_else(|| invalid("no embeddings.word_embeddings.weight tensor".into()))?;
    Ok(table.to_dtype(DType::F32)?)
}

/// Encoding work done since the last [`Encoder::take_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EncodeStats {
    /// Sentences run through the encoder.
    pub encoded: u64,
    /// Sentences answered from the cache.
    pub cached: u64,
    pub seconds: f64,
}

pub struct Encoder {
    reference: EncoderRef,
    hidden: usize,
    wordpiece: Arc<WordPiece>,
    bert: bert::Bert,
    device: Device,
    cache: Mutex<FeatureCache>,
    stats: Mutex<EncodeStats>,
}

impl Encoder {
    /// Loads the model in `dir` onto `device`, with a pool of `cache_bytes` for the vectors of
    /// augmented sentences.
    pub fn load(
        dir: &Path,
        mode: EncoderMode,
        device: &Device,
        cache_bytes: usize,
    ) -> Result<Self> {
        Self::load_hashed(&files::hashed(dir)?, mode, device, cache_bytes)
    }

    /// As [`Encoder::load`], for a directory whose content hash is already known.
    pub fn load_hashed(
        hashed: &files::Hashed,
        mode: EncoderMode,
        device: &Device,
        cache_bytes: usize,
    ) -> Result<Self> {
        let dir = hashed.dir();
        files::check_dir(dir)?;
        let config = read_config(dir)?;
        let weights = dir.join(files::WEIGHTS);
        let invalid = |e: candle_core::Error| EncoderError::Invalid {
            path: weights.clone(),
            msg: e.to_string(),
        };
        let tensors = candle_core::safetensors::load(&weights, device).map_err(invalid)?;
        let bert = bert::Bert::load(&tensors, &config).map_err(invalid)?;
        let wordpiece = Arc::new(WordPiece::load(&dir.join(files::TOKENIZER))?);
        Ok(Self {
            reference: EncoderRef {
                name: files::display_name(dir),
                sha256: hashed.sha256().to_string(),
                path: dir.to_path_buf(),
                mode,
                random_init: false,
            },
            hidden: config.hidden_size,
            wordpiece,
            bert,
            device: device.clone(),
            cache: Mutex::new(FeatureCache::new(cache_bytes)),
            stats: Mutex::new(EncodeStats::default()),
        })
    }

    /// As [`Encoder::load`], refusing a directory whose content differs from `expected`.
    pub fn load_checked(
        dir: &Path,
        expected: &EncoderRef,
        device: &Device,
        cache_bytes: usize,
    ) -> Result<Self> {
        let found = files::hashed(dir)?;
        if found.sha256() != expected.sha256 {
            return Err(EncoderError::Mismatch {
                dir: dir.to_path_buf(),
                found: found.sha256().to_string(),
                expected: expected.sha256.clone(),
                expected_name: expected.name.clone(),
            });
        }
        Self::load_hashed(&found, expected.mode, device, cache_bytes)
    }

    pub fn reference(&self) -> &EncoderRef {
        &self.reference
    }

    /// Width of a token vector.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn wordpiece(&self) -> &Arc<WordPiece> {
        &self.wordpiece
    }

    /// The last layer's vectors of each id sequence (tokens × width, row-major), computed
    /// without the cache: sentences sorted by length and run [`ENCODE_BATCH`] at a time, each
    /// batch padded to its longest with the attention mask hiding the padding.
    pub fn encode_ids(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.wordpiece.vocab_size();
        for r in rows {
            if r.is_empty() || r.len() > MAX_PIECES {
                return Err(EncoderError::Run(format!(
                    "a sentence of {} pieces (1 to {MAX_PIECES} allowed)",
                    r.len()
                )));
            }
            if let Some(&bad) = r.iter().find(|&&id| id as usize >= vocab) {
                return Err(EncoderError::Run(format!(
                    "token id {bad} ≥ the encoder's vocabulary size {vocab}"
                )));
            }
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![Vec::new(); rows.len()];
        for chunk in order.chunks(ENCODE_BATCH) {
            for group in length_groups(chunk, |i| rows[i].len()) {
                self.encode_group(rows, group, &mut out)?;
            }
        }
        Ok(out)
    }

    /// One forward pass over `group` (indices into `rows`), padded to its longest.
    fn encode_group(&self, rows: &[&[u32]], group: &[usize], out: &mut [Vec<f32>]) -> Result<()> {
        let steps = group.iter().map(|&i| rows[i].len()).max().unwrap_or(1);
        let n = group.len();
        let mut ids = vec![0u32; n * steps];
        let mut mask = vec![0u32; n * steps];
        for (k, &i) in group.iter().enumerate() {
            let r = rows[i];
            ids[k * steps..k * steps + r.len()].copy_from_slice(r);
            mask[k * steps..k * steps + r.len()].fill(1);
        }
        let padded = group.iter().any(|&i| rows[i].len() < steps);
        let ids = Tensor::from_vec(ids, (n, steps), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, steps), &self.device)?;
        let h = self.bert.forward(&ids, padded.then_some(&mask))?;
        let flat = h.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        for (k, &i) in group.iter().enumerate() {
            let start = k * steps * self.hidden;
            out[i] = flat[start..start + rows[i].len() * self.hidden].to_vec();
        }
        Ok(())
    }

    /// The encoder's vectors for rows of WordPiece ids (B × `steps` × width on `device`, zero
    /// past each row's length), from the cache where it has them. Rows marked `augmented` go
    /// to the cache's bounded pool, the others are kept for the run (no marks: none is).
    pub fn features(
        &self,
        rows: &[&[u32]],
        augmented: &[bool],
        steps: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let (b, t, h) = (rows.len(), steps, self.hidden);
        if rows.iter().any(|r| r.len() > t) {
            return Err(EncoderError::Run(format!("a row is longer than {t} steps")));
        }
        let row = |i: usize| rows[i];
        let is_augmented = |i: usize| augmented.get(i).copied().unwrap_or(false);
        let mut found: Vec<Option<cache::Vectors>> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            (0..b).map(|i| cache.get(row(i))).collect()
        };
        let mut missing: Vec<usize> = (0..b).filter(|&i| found[i].is_none()).collect();
        missing.sort_by_key(|&i| row(i));
        missing.dedup_by_key(|i| row(*i));
        let cached = (b - missing.len()) as u64;
        let start = Instant::now();
        if !missing.is_empty() {
            let rows: Vec<&[u32]> = missing.iter().map(|&i| row(i)).collect();
            let vectors = self.encode_ids(&rows)?;
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (&i, v) in missing.iter().zip(vectors) {
                let v: cache::Vectors = v.into();
                // Identical rows of the batch share one encoding; keep it if any is original.
                let same: Vec<usize> = (0..b).filter(|&j| row(j) == row(i)).collect();
                let keep = same.iter().any(|&j| !is_augmented(j));
                cache.insert(row(i), v.clone(), keep);
                for j in same {
                    found[j].get_or_insert_with(|| v.clone());
                }
            }
        }
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.encoded += missing.len() as u64;
            stats.cached += cached;
            stats.seconds += start.elapsed().as_secs_f64();
        }
        let mut out = vec![0f32; b * t * h];
        for (i, v) in found.iter().enumerate() {
            let v = v
                .as_ref()
                .ok_or_else(|| EncoderError::Run("a row was not encoded".into()))?;
            out[i * t * h..i * t * h + v.len()].copy_from_slice(v);
        }
        Ok(Tensor::from_vec(out, (b, t, h), device)?)
    }

    /// Encoding work since the last call.
    pub fn take_stats(&self) -> EncodeStats {
        std::mem::take(&mut *self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Bytes of vectors cached: (originals, augmented pool).
    pub fn cache_bytes(&self) -> (usize, usize) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).bytes()
    }
}

/// Where `--encoder` runs look for a model when the tests need one: `models/all-MiniLM-L6-v2`
/// in the repository, put there by `models/fetch.sh` (which `.ci/run` calls).
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

/// Splits `sorted` (indices in ascending length) into runs padded to their longest with at
/// most a fifth of padding, each of at least [`MIN_GROUP`] sentences: the encoder's cost is in
/// its matrix products over every padded position, and a batch of 64 sentences of 3 to 60
/// pieces padded as one is mostly padding.
fn length_groups(sorted: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut groups = Vec::new();
    let (mut start, mut real) = (0, 0);
    for (k, &i) in sorted.iter().enumerate() {
        let l = len(i);
        let n = k - start;
        if n >= MIN_GROUP && 10 * (n + 1) * l > 11 * (real + l) {
            groups.push(&sorted[start..k]);
            (start, real) = (k, 0);
        }
        real += l;
    }
    if start < sorted.len() {
        groups.push(&sorted[start..]);
    }
    groups
}

/// Sentences per forward pass at the least, so that the matrix products stay efficient.
const MIN_GROUP: usize = 4;
