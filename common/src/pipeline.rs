//! The data pipeline as one object: load → mix → eval split → (per epoch) augment → balance →
//! shuffle. The coordinator calls [`Pipeline::epoch`] once per epoch and shards the result.
//! This file composes the epoch; the steps live elsewhere: reading and de-duplicating the
//! sources in `data/sources.rs`, the augmentation plan in `augment/plan.rs`, class balance in
//! `resample.rs` (copies) and `balance_augment.rs` (new augmentations).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::augment::{chars, AugmentConfig, AugmentPlan};
use crate::balance_augment;
use crate::data::config::{DataConfig, UnknownLabels};
use crate::data::load::{self, Record};
use crate::data::sources::{self, read_label_map, Sources};
use crate::data::task_flags;
use crate::data::tasks::Task;
use crate::data::vocab::Vocab;
use crate::data::{Doc, Example, ExampleId};
use crate::encoder::WordPiece;
use crate::error::DataError;
use crate::mix;
use crate::resample::{self, Balance};
use crate::rng::{stream, tag};

pub use crate::data::sources::{file_sha256, SourceInfo};
pub use crate::data::Item;

/// An epoch's sentences, with class counts per source before and after balancing.
pub struct Epoch<'a> {
    pub items: Vec<Item<'a>>,
    /// counts[source][class] after augmentation, before balancing.
    pub before: Vec<Vec<usize>>,
    /// counts[source][class] after balancing.
    pub after: Vec<Vec<usize>>,
}

pub struct Pipeline {
    cfg: DataConfig,
    sources: Vec<SourceInfo>,
    labels: Vec<String>,
    /// With `--task`: each task and its block of `labels`, the target first (source k is task
    /// k). Empty for one task.
    tasks: Vec<Task>,
    label_map: BTreeMap<String, String>,
    train: Vec<Vec<Doc>>,
    eval: Vec<Doc>,
    probs: Option<Vec<f64>>,
    rare: Vec<RareClass>,
    plan: AugmentPlan,
    /// Built on first use: exporting data needs no vocabulary.
    vocab: std::sync::OnceLock<Vocab>,
    /// With an encoder: its tokenizer makes the ids instead of the vocabulary.
    wordpiece: Option<std::sync::Arc<WordPiece>>,
}

/// Options of steps that do not run would be ignored without a word: refused instead.
/// `weighted`: the sources are mixed by weight (else concatenated).
fn refuse_unused_options(cfg: &DataConfig, weighted: bool) -> Result<(), DataError> {
    let refuse = |msg: String| Err(DataError::Config(msg));
    if !weighted && cfg.mix_stop != mix::MixStop::default() {
        return refuse(
            "--mix-stop applies to weighted sources (--data PATH:WEIGHT); these are concatenated"
                .into(),
        );
    }
    if cfg.balance == Balance::None && cfg.balance_ratio != 1.0 {
        return refuse(format!(
            "--balance-ratio {} needs --balance oversample, undersample or augment",
            cfg.balance_ratio
        ));
    }
    AugmentConfig::of(cfg).refuse_unused()
}

impl Pipeline {
    pub fn new(cfg: &DataConfig) -> Result<Self, DataError> {
        let ordered = task_flags::ordered(cfg)?;
        // With tasks, the pipeline reads their files as its sources, the target's first.
        let with_tasks;
        let cfg = match &ordered {
            Some(t) => {
                with_tasks = DataConfig {
                    data: t.iter().map(|t| t.source.clone()).collect(),
                    ..cfg.clone()
                };
                &with_tasks
            }
            None => cfg,
        };
        let task_names: Option<Vec<String>> =
            ordered.map(|t| t.into_iter().map(|t| t.name).collect());
        if cfg.data.is_empty() {
            return Err(DataError::Config(
                "no training data: give at least one --data PATH (or --task NAME=PATH)".into(),
            ));
        }
        if cfg.data.len() > u16::MAX as usize {
            return Err(DataError::Config("too many --data sources".into()));
        }
        let probs = mix::probabilities(&cfg.data.iter().map(|s| s.weight).collect::<Vec<_>>())
            .map_err(DataError::Config)?;
        refuse_unused_options(cfg, probs.is_some())?;
        let label_map = match &cfg.label_map {
            Some(p) => read_label_map(p)?,
            None => BTreeMap::new(),
        };
        let opts = cfg.load_options();

        // Validation files by task (task 0, the target, is the only one without tasks).
        let mut eval_files: Vec<(usize, &Path)> = Vec::new();
        if let Some(path) = &cfg.eval {
            eval_files.push((0, path));
        }
        for f in &cfg.task_eval {
            let names = task_names.as_deref().unwrap_or_default();
            let task = names.iter().position(|n| *n == f.name).unwrap_or_default();
            eval_files.push((task, &f.path));
        }
        let mut eval_records = Vec::new();
        for &(task, path) in &eval_files {
            eval_records.push((task, path, load::load(path, &opts)?));
        }
        let eval_texts: HashSet<String> = eval_records
            .iter()
            .flat_map(|(_, _, l)| l.records.iter().map(|r| r.text.clone()))
            .collect();

        let how = match (&task_names, &probs) {
            (Some(names), _) => Sources::Tasks(names),
            (None, Some(_)) => Sources::Weighted,
            (None, None) => Sources::Concatenated,
        };
        let (sources, per_source) =
            sources::load_sources(cfg, &opts, how, &label_map, &eval_texts)?;

        let (labels, tasks, rare) = match &task_names {
            None => {
                let labels = sorted_labels(per_source.iter().flatten());
                if labels.len() < 2 {
                    return Err(DataError::SingleClass(
                        labels.first().cloned().unwrap_or_default(),
                    ));
                }
                let rare = rare_classes(&labels, &per_source, &sources);
                (labels, Vec::new(), rare)
            }
            Some(names) => task_labels(names, &per_source, &sources)?,
        };
        for r in &rare {
            tracing::warn!(
                "class \"{}\" has only {} training example(s), where the median class has {}: \
                 a typo in a label? ({})",
                r.label,
                r.lines.len(),
                r.median,
                r.lines.join(", ")
            );
        }
        // A label's id, in its source's task's block (every source shares one block without
        // tasks).
        let label_ids: Vec<HashMap<&str, u32>> = (0..per_source.len())
            .map(|s| {
                let block = tasks.get(s).map_or(0..labels.len(), |t| t.labels.clone());
                block.map(|i| (labels[i].as_str(), i as u32)).collect()
            })
            .collect();

        let mut train: Vec<Vec<Doc>> = per_source
            .iter()
            .enumerate()
            .map(|(s, records)| {
                records
                    .iter()
                    .map(|r| Doc {
                        id: ExampleId {
                            source: s as u16,
                            line: r.line,
                        },
                        tokens: cfg.tokenizer.tokenize(&r.text),
                        label: label_ids[s][r.label.as_str()],
                    })
                    .collect()
            })
            .collect();

        let mut pipeline = Pipeline {
            cfg: cfg.clone(),
            sources,
            labels,
            tasks,
            label_map,
            train: Vec::new(),
            eval: Vec::new(),
            probs,
            plan: AugmentPlan::NONE,
            rare,
            vocab: std::sync::OnceLock::new(),
            wordpiece: None,
        };
        // Each task's validation set: its file, or a split of its own rows (without tasks,
        // of the first source).
        let mut eval_by_task: Vec<Vec<Doc>> = vec![Vec::new(); pipeline.tasks.len().max(1)];
        for (task, path, loaded) in eval_records {
            eval_by_task[task] = pipeline.docs_of(
                task,
                &path.display().to_string(),
                loaded.records,
                "validation set",
            )?;
        }
        if let Some(f) = cfg.eval_split {
            for (task, eval) in eval_by_task.iter_mut().enumerate() {
                if !eval.is_empty() {
                    continue;
                }
                *eval = split_off_eval(&mut train[task], f, cfg.seed, pipeline.labels.len());
                let path = cfg.data[task].path.display();
                if eval.is_empty() {
                    return Err(DataError::Config(format!(
                        "--eval-split {f} of {path} leaves no validation example: give a \
                         larger fraction, or a validation file with --eval FILE{}",
                        if pipeline.tasks.is_empty() {
                            ""
                        } else {
                            " (--task-eval NAME=FILE)"
                        }
                    )));
                }
                if train[task].len() < eval.len() {
                    tracing::warn!(
                        "--eval-split {f} of {path}: training keeps {} rows and validation {}: \
                         fewer to learn from than to check on; a fraction like 0.1 is usual",
                        train[task].len(),
                        eval.len()
                    );
                }
            }
        }
        pipeline.eval = eval_by_task.into_iter().flatten().collect();
        pipeline.train = train;
        pipeline.plan = AugmentPlan::resolve(&AugmentConfig::of(cfg), pipeline.train_rows())?;
        let budget = cfg.memory_budget.or_else(crate::memory::default_budget);
        if let Some(budget) = budget {
            let (estimate, how) = pipeline.epoch_estimate();
            crate::memory::check(&estimate, budget, &how, cfg.memory_budget.is_some())?;
            tracing::debug!(
                "an epoch: about {} sentences ({how}), about {} of the budget of {}",
                estimate.items,
                crate::memory::human(estimate.bytes()),
                crate::memory::human(budget)
            );
        }
        Ok(pipeline)
    }

    /// What an epoch will hold, from the counts alone, and how that number comes about.
    pub fn epoch_estimate(&self) -> (crate::memory::EpochEstimate, String) {
        let rows: Vec<u64> = self.train.iter().map(|s| s.len() as u64).collect();
        let total: u64 = rows.iter().sum();
        // A weighted mix draws until a source runs out: at most the longest such run.
        let drawn = match &self.probs {
            None => total as f64,
            Some(p) => rows
                .iter()
                .zip(p)
                .filter(|(_, &p)| p > 0.0)
                .map(|(&r, &p)| r as f64 / p)
                .fold(0.0, f64::max),
        };
        let copies = 1 + self.plan.num_aug as u64;
        let mut per_class = vec![0u64; self.labels.len()];
        for d in self.train.iter().flatten() {
            per_class[d.label as usize] += 1;
        }
        // Every class up to the largest one of its task (of all, without tasks).
        let grown: f64 = (0..self.tasks.len().max(1))
            .map(|t| {
                let block = &per_class[self.task_labels(t)];
                let largest = block.iter().copied().max().unwrap_or(0) as f64;
                largest / total.max(1) as f64 * block.len() as f64
            })
            .sum();
        let balanced = match self.cfg.balance {
            Balance::None | Balance::Undersample => 1.0,
            Balance::Oversample | Balance::Augment => grown,
        };
        let items = (drawn * copies as f64 * balanced)
            .ceil()
            .min(u64::MAX as f64) as u64;
        let tokens: usize = self.train.iter().flatten().map(|d| d.tokens.len()).sum();
        let how = format!(
            "{} rows × (1 + {} augmentations){}",
            drawn.round() as u64,
            self.plan.num_aug,
            if balanced > 1.0 {
                format!(" × {balanced:.1} for --balance")
            } else {
                String::new()
            }
        );
        let estimate = crate::memory::EpochEstimate {
            items,
            tokens_per_item: tokens as f64 / total.max(1) as f64,
        };
        (estimate, how)
    }

    /// Training words plus those epoch 0's augmentations produce, so that inserted synonyms
    /// are not all UNK (the reference builds its vocabulary after augmentation too).
    fn build_vocab(&self) -> Vocab {
        let (max, min) = (self.cfg.max_vocab, self.cfg.min_freq);
        // With tasks, every word of the target (source 0) ranks before the others'.
        let with_tasks = !self.tasks.is_empty();
        let first = move |doc: &Doc| with_tasks && doc.id.source == 0;
        if !self.plan.is_active() {
            let words = |part: bool| {
                self.train
                    .iter()
                    .flatten()
                    .filter(move |d| first(d) == part)
                    .flat_map(|d| d.tokens.iter().map(String::as_str))
            };
            return Vocab::build_first(words(true), words(false), max, min);
        }
        let epoch0 = self.epoch_items(0);
        let words = |part: bool| {
            epoch0
                .items
                .iter()
                .filter(move |it| first(it.doc) == part)
                .flat_map(|it| it.tokens.iter().map(|t| t.as_ref()))
        };
        Vocab::build_first(words(true), words(false), max, min)
    }

    /// Per class, its count after balancing: within each task, toward that task's classes.
    fn balance_targets(&self, counts: &[usize]) -> Vec<Option<usize>> {
        let (kind, ratio) = (self.cfg.balance, self.cfg.balance_ratio);
        if self.tasks.is_empty() {
            return resample::targets(counts, kind, ratio);
        }
        self.tasks
            .iter()
            .flat_map(|t| resample::targets(&counts[t.labels.clone()], kind, ratio))
            .collect()
    }

    pub fn config(&self) -> &DataConfig {
        &self.cfg
    }
    pub fn sources(&self) -> &[SourceInfo] {
        &self.sources
    }
    /// What a weighted mix does, in a line for the log; `None` when the sources are simply
    /// concatenated.
    pub fn mix_description(&self) -> Option<String> {
        let probs = self.probs.as_ref()?;
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        let weights: Vec<Option<f64>> = self.sources.iter().map(|s| s.weight).collect();
        let kind = match self.tasks.is_empty() {
            true => "source",
            false => "task",
        };
        Some(mix::describe(
            kind,
            &names,
            &weights,
            probs,
            self.cfg.mix_stop,
        ))
    }
    /// `--label-map`'s aliases and the labels they stand for.
    pub fn label_map(&self) -> &BTreeMap<String, String> {
        &self.label_map
    }
    /// Classes so small beside the others that they look like mistakes (warned about).
    pub fn rare_classes(&self) -> &[RareClass] {
        &self.rare
    }
    /// Every class, one list; with tasks, each task's block in turn (see [`Pipeline::tasks`]).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    /// With `--task`: the tasks, the target first, each with its block of [`Pipeline::labels`]
    /// (training source k is task k). Empty without tasks.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }
    /// The labels of task `task` (0: the target; without tasks, every label).
    pub fn task_labels(&self, task: usize) -> std::ops::Range<usize> {
        self.tasks
            .get(task)
            .map_or(0..self.labels.len(), |t| t.labels.clone())
    }
    pub fn vocab(&self) -> &Vocab {
        self.vocab.get_or_init(|| self.build_vocab())
    }

    /// Makes ids with an encoder's tokenizer (WordPiece, at most 64 pieces a sentence with
    /// `[CLS]` and `[SEP]`) instead of a vocabulary built from the data.
    pub fn use_wordpiece(&mut self, wordpiece: std::sync::Arc<WordPiece>) {
        self.wordpiece = Some(wordpiece);
    }

    /// Number of distinct ids: the tokenizer's or the vocabulary's.
    pub fn vocab_size(&self) -> usize {
        match &self.wordpiece {
            Some(wp) => wp.vocab_size(),
            None => self.vocab().len(),
        }
    }

    /// Token ids of a sentence's words.
    fn ids<S: AsRef<str>>(&self, words: &[S]) -> Vec<u32> {
        match &self.wordpiece {
            None => self.vocab().encode(words, self.cfg.max_len),
            Some(wp) => wp.encode_words_or_unknown(words),
        }
    }
    pub fn plan(&self) -> &AugmentPlan {
        &self.plan
    }
    /// Training examples (originals) after de-duplication and the validation split.
    pub fn train_rows(&self) -> usize {
        self.train.iter().map(Vec::len).sum()
    }
    pub fn train_docs(&self, source: usize) -> &[Doc] {
        &self.train[source]
    }
    pub fn eval_docs(&self) -> &[Doc] {
        &self.eval
    }

    /// How many of `docs` have the tokens of a training example (originals of every source;
    /// not the validation set): a test set sharing them overstates accuracy.
    pub fn texts_in_training(&self, docs: &[Doc]) -> usize {
        let seen: HashSet<&[String]> = self
            .train
            .iter()
            .flatten()
            .map(|d| d.tokens.as_slice())
            .collect();
        docs.iter()
            .filter(|d| seen.contains(d.tokens.as_slice()))
            .count()
    }

    /// The sentences of epoch `epoch`: mixed, augmented, balanced and shuffled. Depends only
    /// on (seed, epoch), never on the number of threads.
    pub fn epoch_items(&self, epoch: u64) -> Epoch<'_> {
        let seed = self.cfg.seed;
        let drawn: Vec<&Doc> = match &self.probs {
            None => self.train.iter().flatten().collect(),
            Some(p) => {
                let sizes: Vec<usize> = self.train.iter().map(Vec::len).collect();
                mix::interleave(
                    &sizes,
                    p,
                    self.cfg.mix_stop,
                    &mut stream(&[seed, tag::MIX, epoch]),
                )
                .into_iter()
                .map(|(s, i)| &self.train[s][i])
                .collect()
            }
        };
        let mut items: Vec<Item<'_>> = drawn
            .par_iter()
            .flat_map_iter(|&doc| self.augmented(doc, epoch))
            .collect();
        let before = self.counts(&items);

        let labels: Vec<u32> = items.iter().map(Item::label).collect();
        let class_counts = class_counts(&labels, self.labels.len());
        let targets = self.balance_targets(&class_counts);
        match self.cfg.balance {
            Balance::None => {}
            Balance::Oversample | Balance::Undersample => {
                let idx = resample::resample(
                    &labels,
                    &targets,
                    &mut stream(&[seed, tag::BALANCE, epoch]),
                );
                items = idx.into_iter().map(|i| items[i].clone()).collect();
            }
            Balance::Augment => {
                balance_augment::fill(&mut items, &targets, &self.plan, seed, epoch, &self.labels)
            }
        }
        let after = self.counts(&items);
        items.shuffle(&mut stream(&[seed, tag::SHUFFLE, epoch]));
        Epoch {
            items,
            before,
            after,
        }
    }

    /// An example and its augmentations in epoch `epoch`, which depend only on (seed, its id, epoch).
    pub fn augmented<'a>(&'a self, doc: &'a Doc, epoch: u64) -> Vec<Item<'a>> {
        let words: Vec<&str> = doc.tokens.iter().map(String::as_str).collect();
        let original = |words: Vec<&'a str>| Item {
            doc,
            aug: 0,
            tokens: words.into_iter().map(Cow::Borrowed).collect(),
        };
        // Without augmentation no stream is drawn from: none is made.
        if !self.plan.is_active() {
            return vec![original(words)];
        }
        let mut rng = stream(&[
            self.cfg.seed,
            tag::AUGMENT,
            doc.id.source as u64,
            doc.id.line as u64,
            epoch,
        ]);
        let mut noise = chars::noise_stream(
            self.cfg.seed,
            &[doc.id.source as u64, doc.id.line as u64, epoch],
        );
        let augs = self.plan.augmentations(&words, &mut rng, &mut noise);
        std::iter::once(original(words))
            .chain(augs.into_iter().enumerate().map(|(k, tokens)| Item {
                doc,
                aug: k as u32 + 1,
                tokens,
            }))
            .collect()
    }

    fn counts(&self, items: &[Item<'_>]) -> Vec<Vec<usize>> {
        let mut c = vec![vec![0; self.labels.len()]; self.sources.len()];
        for it in items {
            c[it.doc.id.source as usize][it.label() as usize] += 1;
        }
        c
    }

    /// Epoch `epoch` as token ids, cut at `--max-len`.
    pub fn epoch(&self, epoch: u64) -> Vec<Example> {
        self.encode_items(&self.epoch_items(epoch).items)
    }

    pub fn encode_items(&self, items: &[Item<'_>]) -> Vec<Example> {
        items
            .par_iter()
            .map(|it| Example {
                id: it.doc.id,
                aug: it.aug,
                tokens: self.ids(&it.tokens),
                label: it.label(),
            })
            .collect()
    }

    pub fn encode_docs(&self, docs: &[Doc]) -> Vec<Example> {
        docs.iter()
            .map(|d| Example {
                id: d.id,
                aug: 0,
                tokens: self.ids(&d.tokens),
                label: d.label,
            })
            .collect()
    }

    /// The validation set as token ids.
    pub fn eval_examples(&self) -> Vec<Example> {
        self.encode_docs(&self.eval)
    }

    /// Reads a labelled file (a test set) with the pipeline's format options, label map,
    /// tokenizer and labels (the target task's).
    pub fn load_labelled(&self, path: &Path, what: &str) -> Result<Vec<Doc>, DataError> {
        self.load_labelled_for(0, path, what)
    }

    /// As [`Pipeline::load_labelled`], for task `task`: its labels are read as that task's.
    pub fn load_labelled_for(
        &self,
        task: usize,
        path: &Path,
        what: &str,
    ) -> Result<Vec<Doc>, DataError> {
        let loaded = load::load(path, &self.cfg.load_options())?;
        self.docs_of(task, &path.display().to_string(), loaded.records, what)
    }

    fn docs_of(
        &self,
        task: usize,
        name: &str,
        records: Vec<Record>,
        what: &str,
    ) -> Result<Vec<Doc>, DataError> {
        let block = self.task_labels(task);
        let labels = &self.labels[block.clone()];
        let mut docs = Vec::with_capacity(records.len());
        let mut unknown: Vec<String> = Vec::new();
        let mut unknown_count = 0;
        for r in records {
            let label = self.label_map.get(&r.label).unwrap_or(&r.label);
            match labels.binary_search(label) {
                Ok(id) => docs.push(Doc {
                    id: ExampleId {
                        source: task as u16,
                        line: r.line,
                    },
                    tokens: self.cfg.tokenizer.tokenize(&r.text),
                    label: (block.start + id) as u32,
                }),
                Err(_) => {
                    unknown_count += 1;
                    if !unknown.contains(label) {
                        unknown.push(label.clone());
                    }
                }
            }
        }
        if unknown_count > 0 {
            match self.cfg.unknown_labels {
                UnknownLabels::Error => {
                    unknown.sort();
                    return Err(DataError::UnknownLabels {
                        what: format!("{what} {name}"),
                        count: unknown_count,
                        labels: unknown.join(", "),
                    });
                }
                UnknownLabels::Skip => {
                    tracing::warn!("{what} {name}: skipped {unknown_count} examples with labels never seen in training ({})", unknown.join(", "))
                }
            }
        }
        if docs.is_empty() {
            return Err(DataError::Empty {
                path: name.to_string(),
            });
        }
        Ok(docs)
    }
}

/// The distinct labels of `records`, sorted.
fn sorted_labels<'a>(records: impl Iterator<Item = &'a Record>) -> Vec<String> {
    let mut labels: Vec<String> = records.map(|r| r.label.clone()).collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

/// A run's label list, its tasks (each with its block of the list) and its rare classes.
type Labelling = (Vec<String>, Vec<Task>, Vec<RareClass>);

/// The label list of tasks (each task's sorted labels, a block after the other), the tasks
/// with their blocks, and each task's rare classes. A task needs two classes.
fn task_labels(
    names: &[String],
    per_source: &[Vec<Record>],
    sources: &[SourceInfo],
) -> Result<Labelling, DataError> {
    let mut labels = Vec::new();
    let mut tasks = Vec::new();
    let mut rare = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let own = sorted_labels(per_source[k].iter());
        if own.len() < 2 {
            return Err(DataError::Config(format!(
                "task {name} ({}) has one class, \"{}\": a task needs at least two",
                sources[k].path.display(),
                own.first().cloned().unwrap_or_default()
            )));
        }
        rare.extend(rare_classes(&own, &per_source[k..=k], &sources[k..=k]));
        tasks.push(Task {
            name: name.clone(),
            labels: labels.len()..labels.len() + own.len(),
        });
        labels.extend(own);
    }
    Ok((labels, tasks, rare))
}

fn class_counts(labels: &[u32], k: usize) -> Vec<usize> {
    let mut c = vec![0; k];
    for &l in labels {
        c[l as usize] += 1;
    }
    c
}

/// Removes a stratified, seeded `fraction` of `docs` and returns it. Every class keeps at
/// least one training example: a class seen only in validation would be scored but never
/// learnt.
fn split_off_eval(docs: &mut Vec<Doc>, fraction: f64, seed: u64, num_classes: usize) -> Vec<Doc> {
    let mut take = vec![false; docs.len()];
    for class in 0..num_classes as u32 {
        let mut members: Vec<usize> = (0..docs.len())
            .filter(|&i| docs[i].label == class)
            .collect();
        members.shuffle(&mut stream(&[seed, tag::SPLIT, class as u64]));
        let n = ((fraction * members.len() as f64).round() as usize)
            .min(members.len().saturating_sub(1));
        for &i in members.iter().take(n) {
            take[i] = true;
        }
    }
    let mut eval = Vec::new();
    let mut kept = Vec::with_capacity(docs.len());
    for (doc, t) in docs.drain(..).zip(take) {
        if t {
            eval.push(doc)
        } else {
            kept.push(doc)
        }
    }
    *docs = kept;
    eval
}

/// A class with at most [`RARE_AT_MOST`] training examples while the median class has at
/// least [`RARE_MEDIAN_AT_LEAST`]: a stray header, a typo or a shifted column, more often than
/// a real class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RareClass {
    pub label: String,
    /// `file:line` of each of its examples.
    pub lines: Vec<String>,
    pub median: usize,
}

pub const RARE_AT_MOST: usize = 2;
pub const RARE_MEDIAN_AT_LEAST: usize = 50;

fn rare_classes(
    labels: &[String],
    per_source: &[Vec<Record>],
    sources: &[SourceInfo],
) -> Vec<RareClass> {
    let mut lines: BTreeMap<&str, Vec<String>> =
        labels.iter().map(|l| (l.as_str(), Vec::new())).collect();
    for (records, info) in per_source.iter().zip(sources) {
        for r in records {
            if let Some(at) = lines.get_mut(r.label.as_str()) {
                at.push(format!("{}:{}", info.path.display(), r.line));
            }
        }
    }
    let mut sizes: Vec<usize> = lines.values().map(Vec::len).collect();
    sizes.sort_unstable();
    // The upper median: with two classes, the larger.
    let median = sizes[sizes.len() / 2];
    if median < RARE_MEDIAN_AT_LEAST {
        return Vec::new();
    }
    lines
        .into_iter()
        .filter(|(_, at)| at.len() <= RARE_AT_MOST)
        .map(|(label, lines)| RareClass {
            label: label.to_string(),
            lines,
            median,
        })
        .collect()
}
