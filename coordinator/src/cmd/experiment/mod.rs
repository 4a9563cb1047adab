//! `coordinator experiment`: the small-sample gain measured on the user's data, as the EDA
//! paper did. For each size and seed a stratified subsample (the same for every condition);
//! each condition trains on it with one fixed protocol (10% of the subsample carved as the
//! validation set before any augmentation, early stopping on validation loss with patience 3,
//! at most --max-epochs, best-validation model kept) and is evaluated once on --test.
//! Results go to results.jsonl a cell at a time, so a rerun skips what is done.

mod report;
mod subsample;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use common::values::{at_least, open_fraction};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{TrainArgs, Workers};
use crate::summary::Summary;
use crate::TrainPlan;
use common::data::config::{AugmentKind, DataConfig, NumAug, SourceSpec};
use common::data::tasks::TaskSpec;
use common::encoder::EncoderMode;
use common::resample::Balance;
pub use report::Cell;

#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// Training data: the file subsamples are drawn from.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Test set every cell is evaluated on.
    #[arg(long, value_name = "FILE")]
    pub test: PathBuf,
    /// Training-set sizes: numbers of examples, or `full`.
    #[arg(long, value_delimiter = ',', default_value = "100,500,2000,full")]
    pub sizes: Vec<String>,
    /// Conditions: baseline, eda, chars (character noise), balance, eda+balance,
    /// augment-balance; mix and multitask (need --mix); encoder and encoder+eda (need
    /// --encoder); encoder+mix and encoder+multitask (need both); finetune and finetune+eda
    /// (need --encoder: it is fine-tuned under a mean-pooled head with the protocol of
    /// --encoder-mode finetune, at most 10 epochs, no early stopping; finetune+eda makes 4
    /// augmentations per sentence).
    ///
    /// mix merges the --mix sources into the subsample's label space; multitask trains the
    /// subsample as the target task and each --mix source as an auxiliary task with a head of
    /// its own. A source whose labels differ from the subsample's cannot be mixed: its mix
    /// cells are left out, and the report says why.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,eda,balance,eda+balance"
    )]
    pub conditions: Vec<String>,
    /// Seeds 0 … K−1: each draws its own subsample, validation split and initialisation.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// Another labelled source for the mix and multitask conditions, PATH:WEIGHT (e.g. movie
    /// reviews beside a small product-review set); repeatable.
    #[arg(long, value_name = "PATH:WEIGHT")]
    pub mix: Vec<String>,
    /// The pretrained encoder of the `encoder*` and `finetune*` conditions (a BERT model
    /// directory, e.g. models/all-MiniLM-L6-v2): its frozen token vectors under the BiLSTM, or
    /// the encoder itself fine-tuned.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
    /// Local worker processes per training run.
    #[arg(long, default_value_t = 1, value_parser = at_least(1))]
    pub workers: usize,
    /// Compute threads per worker (default: cores / workers).
    #[arg(long, value_parser = at_least(1))]
    pub threads: Option<usize>,
    /// Early stopping: epochs without a better validation loss.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub patience: u64,
    /// At most this many epochs per run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_epochs: u64,
    /// Fraction of each subsample carved as its validation set.
    #[arg(long, default_value_t = 0.1, value_parser = open_fraction)]
    pub eval_split: f64,
    /// Output directory: results.jsonl, report.md, learning-curve.png, data/ and runs/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// What a condition changes in the fixed protocol.
#[derive(Clone, Debug, PartialEq)]
enum Condition {
    Baseline,
    Eda,
    /// Character noise (`--augment chars`).
    Chars,
    Balance,
    EdaBalance,
    AugmentBalance,
    /// Other sources mixed in by weight, into one label space (`merge`), or as auxiliary
    /// tasks with heads of their own; under the frozen encoder or not.
    Mix {
        sources: Vec<SourceSpec>,
        tasks: bool,
        encoder: Option<PathBuf>,
    },
    /// The frozen encoder's token vectors under the BiLSTM, with EDA or without.
    Encoder {
        dir: PathBuf,
        eda: bool,
    },
    /// The encoder fine-tuned under the mean-pooled head, with the fine-tuning protocol (see
    /// [`Condition::apply`]), with EDA (4 augmentations per sentence) or without.
    Finetune {
        dir: PathBuf,
        eda: bool,
    },
}

/// The most epochs of a fine-tuning cell: the reference's protocol.
const FINETUNE_EPOCHS: u64 = 10;
/// EDA's augmentations per sentence in `finetune+eda`: "auto" would give 16 at these sizes,
/// and a fine-tuning epoch costs 16 times as much.
const FINETUNE_NUM_AUG: usize = 4;

impl Condition {
    fn parse(name: &str, mix: &[String], encoder: Option<&Path>) -> Result<Self> {
        Ok(match name {
            "baseline" => Condition::Baseline,
            "eda" => Condition::Eda,
            "chars" => Condition::Chars,
            "balance" => Condition::Balance,
            "eda+balance" => Condition::EdaBalance,
            "augment-balance" => Condition::AugmentBalance,
            "mix" | "multitask" | "encoder+mix" | "encoder+multitask" => {
                if mix.is_empty() {
                    bail!("the {name} condition needs --mix PATH:WEIGHT");
                }
                let sources = mix
                    .iter()
                    .map(|m| m.parse().map_err(|e| anyhow::anyhow!("--mix {m}: {e}")))
                    .collect::<Result<Vec<SourceSpec>>>()?;
                let encoder = match name.starts_with("encoder+") {
                    false => None,
                    true => Some(
                        encoder
                            .with_context(|| format!("the {name} condition needs --encoder DIR"))?
                            .to_path_buf(),
                    ),
                };
                Condition::Mix {
                    sources,
                    tasks: name.ends_with("multitask"),
                    encoder,
                }
            }
            "finetune" | "finetune+eda" => {
                let Some(dir) = encoder else {
                    bail!("the {name} condition needs --encoder DIR");
                };
                Condition::Finetune {
                    dir: dir.to_path_buf(),
                    eda: name == "finetune+eda",
                }
            }
            "encoder" | "encoder+eda" => {
                let Some(dir) = encoder else {
                    bail!("the {name} condition needs --encoder DIR");
                };
                Condition::Encoder {
                    dir: dir.to_path_buf(),
                    eda: name == "encoder+eda",
                }
            }
            other => bail!(
                "unknown condition {other:?}: baseline, eda, chars, balance, eda+balance, \
                 augment-balance, mix, multitask, encoder, encoder+eda, encoder+mix, \
                 encoder+multitask, finetune, finetune+eda"
            ),
        })
    }

    /// Sets this condition's options in a cell's `args`.
    fn apply(&self, args: &mut TrainArgs) {
        let d = &mut args.data;
        match self {
            Condition::Baseline => {}
            Condition::Eda => d.augment = vec![AugmentKind::Eda],
            Condition::Chars => d.augment = vec![AugmentKind::Chars],
            Condition::Balance => d.balance = Balance::Oversample,
            Condition::EdaBalance => {
                d.augment = vec![AugmentKind::Eda];
                d.balance = Balance::Oversample;
            }
            Condition::AugmentBalance => d.balance = Balance::Augment,
            Condition::Mix {
                sources,
                tasks,
                encoder,
            } => {
                if *tasks {
                    // The subsample is the target task; each source an auxiliary one.
                    let target = std::mem::take(&mut d.data).remove(0);
                    d.task.push(TaskSpec {
                        name: "target".into(),
                        source: target,
                    });
                    for (k, source) in sources.iter().enumerate() {
                        d.task.push(TaskSpec {
                            name: format!("aux{}", k + 1),
                            source: source.clone(),
                        });
                    }
                } else {
                    d.data.extend(sources.iter().cloned());
                }
                args.train.encoder.clone_from(encoder);
            }
            Condition::Encoder { dir, eda } => {
                args.train.encoder = Some(dir.clone());
                if *eda {
                    d.augment = vec![AugmentKind::Eda];
                }
            }
            // The fine-tuning mode's own defaults (batch 16, AdamW with decay 0.01, encoder lr
            // 5e-5 on a linear schedule with 10% warm-up, the best validation accuracy kept),
            // at most 10 epochs and no early stopping, as the reference trains.
            Condition::Finetune { dir, eda } => {
                args.train.encoder = Some(dir.clone());
                args.train.encoder_mode = EncoderMode::Finetune;
                args.train.epochs = args.train.epochs.min(FINETUNE_EPOCHS);
                args.train.patience = None;
                if *eda {
                    d.augment = vec![AugmentKind::Eda];
                    d.num_aug = NumAug::Count(FINETUNE_NUM_AUG);
                }
            }
        }
    }
}

/// Why the --mix sources cannot be merged into `data`'s label space, if they cannot: a source
/// whose labels are not `data`'s.
fn labels_differ(data: &Path, mix: &[String]) -> Result<Option<String>> {
    let labels = |path: &Path| -> Result<Vec<String>> {
        let loaded = common::data::load::load(path, &DataConfig::default().load_options())
            .with_context(|| format!("reading the labels of {}", path.display()))?;
        let mut l: Vec<String> = loaded.records.into_iter().map(|r| r.label).collect();
        l.sort_unstable();
        l.dedup();
        Ok(l)
    };
    let own = labels(data)?;
    for m in mix {
        let source: SourceSpec = m.parse().map_err(|e| anyhow::anyhow!("--mix {m}: {e}"))?;
        let theirs = labels(&source.path)?;
        if theirs != own {
            return Ok(Some(format!(
                "mix is left out: {} has the labels {} and {} has {}; merged into one label \
                 space they would be other classes, not more examples of these (multitask \
                 keeps each source's labels with a head of its own)",
                source.path.display(),
                theirs.join(", "),
                data.display(),
                own.join(", ")
            )));
        }
    }
    Ok(None)
}

/// Once a cell's result is recorded, its run needs no resuming: its checkpoint and its
/// model's optimizer state go (a fine-tuned cell's is 0.3 GB), its model's weights stay.
fn prune(run_dir: &Path) -> Result<()> {
    let checkpoint = run_dir.join("checkpoint");
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint)
            .with_context(|| format!("removing {}", checkpoint.display()))?;
    }
    let state = run_dir
        .join(crate::model_dir::MODEL)
        .join(crate::model_dir::OPTIMIZER);
    if state.exists() {
        std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok(())
}

/// The first item of `list` that appears again later in it.
fn repeated(list: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    list.iter()
        .find(|s| !seen.insert(s.as_str()))
        .map(String::as_str)
}

fn parse_size(size: &str) -> Result<Option<usize>> {
    if size == "full" {
        return Ok(None);
    }
    match size.parse::<usize>() {
        Ok(n) if n >= 10 => Ok(Some(n)),
        _ => bail!("--sizes: {size:?} is neither a number of examples (≥ 10) nor `full`"),
    }
}

/// The results already in `path`, one cell a line.
fn read_results(path: &Path) -> Result<Vec<Cell>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn read_summary(path: &Path) -> Result<Summary> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_results(path: &Path, cells: &[Cell]) -> Result<()> {
    let mut text = String::new();
    for c in cells {
        text.push_str(&serde_json::to_string(c)?);
        text.push('\n');
    }
    common::fsutil::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[derive(Parser)]
struct OneRun {
    #[command(flatten)]
    train: TrainArgs,
}

/// A cell's training options: the fixed protocol, then its condition.
fn cell_args(
    args: &ExperimentArgs,
    sample: &Path,
    seed: u64,
    condition: &Condition,
    run_dir: &Path,
) -> Result<TrainArgs> {
    // Every option at its default, as a plain `coordinator` run has them.
    let mut cell = OneRun::try_parse_from(["coordinator"])
        .context("the training options' defaults")?
        .train;
    cell.data.data = vec![SourceSpec {
        path: sample.to_path_buf(),
        weight: None,
    }];
    cell.test = Some(args.test.clone());
    cell.data.eval_split = Some(args.eval_split);
    cell.train.patience = Some(args.patience);
    cell.train.epochs = args.max_epochs;
    cell.data.seed = seed;
    cell.workers = Workers::Local(args.workers);
    cell.threads = args.threads;
    cell.run_dir = Some(run_dir.to_path_buf());
    condition.apply(&mut cell);
    Ok(cell)
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s).map(|n| (s.clone(), n)))
        .collect::<Result<Vec<_>>>()?;
    let conditions = args
        .conditions
        .iter()
        .map(|c| Condition::parse(c, &args.mix, args.encoder.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    // A cell listed twice would be trained twice and counted twice in the report.
    for (flag, list) in [("--sizes", &args.sizes), ("--conditions", &args.conditions)] {
        if let Some(twice) = repeated(list) {
            bail!("{flag} lists {twice} twice");
        }
    }
    // One experiment at a time writes results.jsonl and the cells' runs.
    let _lock = crate::run_lock::lock(&args.out, "the experiment directory", "--out")?;
    for dir in ["data", "runs"] {
        std::fs::create_dir_all(args.out.join(dir))
            .with_context(|| format!("creating {}", args.out.join(dir).display()))?;
    }
    let results_path = args.out.join("results.jsonl");
    let mut cells = read_results(&results_path)?;
    let mut notes = Vec::new();
    let merges = conditions
        .iter()
        .any(|c| matches!(c, Condition::Mix { tasks: false, .. }));
    let unmergeable = match merges {
        true => labels_differ(&args.data, &args.mix)?,
        false => None,
    };
    if let Some(why) = &unmergeable {
        tracing::warn!("{why}");
        notes.push(why.clone());
    }
    let mut todo: Vec<(String, Option<usize>, String, &Condition, u64)> = Vec::new();
    for (label, n) in &sizes {
        for seed in 0..args.seeds {
            for (c, condition) in args.conditions.iter().zip(&conditions) {
                let merge = matches!(condition, Condition::Mix { tasks: false, .. });
                if merge && unmergeable.is_some() {
                    continue;
                }
                let done = cells
                    .iter()
                    .any(|x| x.size == *label && x.condition == *c && x.seed == seed);
                if !done {
                    todo.push((label.clone(), *n, c.clone(), condition, seed));
                }
            }
        }
    }
    let total = sizes.len() * args.seeds as usize * args.conditions.len();
    tracing::info!(
        "experiment: {total} cells, {} already in {}",
        total - todo.len(),
        results_path.display()
    );
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} cells, {elapsed} elapsed, ~{eta} left",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let rt = crate::run::runtime()?;
    for (label, n, condition, how, seed) in todo {
        bar.set_message(format!("{label} {condition} seed {seed}"));
        let sample = args.out.join(format!("data/{label}-seed{seed}.tsv"));
        let rows = subsample::write(&args.data, n, seed, &sample)?;
        let run_dir = args.out.join(format!(
            "runs/{label}-{}-seed{seed}",
            condition.replace('+', "_")
        ));
        let summary_path = run_dir.join("summary.json");
        // A cell an interrupted experiment finished has its summary in its run directory.
        let summary = match summary_path.exists() {
            true => read_summary(&summary_path)?,
            false => {
                // A run cut short leaves a directory without a summary: start it again.
                if run_dir.exists() {
                    std::fs::remove_dir_all(&run_dir).with_context(|| {
                        format!("removing the unfinished {}", run_dir.display())
                    })?;
                }
                let plan = TrainPlan::from_args(cell_args(&args, &sample, seed, how, &run_dir)?)?;
                rt.block_on(async {
                    let listener = plan.bind().await?;
                    crate::run(plan, listener, common::shutdown::signal()).await
                })
                .with_context(|| format!("cell {label} {condition} seed {seed}"))?
            }
        };
        let figure = |k: &str, v: Option<f64>| {
            v.with_context(|| format!("{} has no {k}", summary_path.display()))
        };
        cells.push(Cell {
            size: label.clone(),
            rows,
            condition: condition.clone(),
            seed,
            accuracy: figure("accuracy", summary.accuracy)?,
            macro_f1: figure("macro_f1", summary.macro_f1)?,
            epochs: summary.epochs,
            seconds: summary.seconds,
        });
        write_results(&results_path, &cells)?;
        prune(&run_dir)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let title = format!(
        "{} → {}",
        args.data.display(),
        args.test
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned())
    );
    let report = report::markdown(&cells, &args.conditions, &title, &notes);
    common::fsutil::write_atomic(&args.out.join("report.md"), report.as_bytes())
        .context("writing report.md")?;
    report::plot(
        &cells,
        &args.conditions,
        &title,
        &args.out.join("learning-curve.png"),
    )?;
    print!("{report}");
    tracing::info!(
        "results in {}, report.md and learning-curve.png beside it",
        results_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(condition: &str) -> Result<TrainArgs> {
        let args = ExperimentArgs {
            data: "train.tsv".into(),
            test: "test.tsv".into(),
            sizes: vec!["full".into()],
            conditions: vec![condition.into()],
            seeds: 1,
            mix: vec!["sst2.tsv:0.5".into()],
            encoder: Some("models/enc".into()),
            workers: 1,
            threads: None,
            patience: 3,
            max_epochs: 5,
            eval_split: 0.1,
            out: "out".into(),
        };
        let c = Condition::parse(condition, &args.mix, args.encoder.as_deref())?;
        cell_args(&args, Path::new("sample.tsv"), 0, &c, Path::new("run"))
    }

    #[test]
    fn multitask_makes_the_subsample_the_target_and_each_mix_source_a_task() {
        let mt = cell("multitask").unwrap();
        assert!(mt.data.data.is_empty());
        let tasks: Vec<String> = mt.data.task.iter().map(ToString::to_string).collect();
        assert_eq!(tasks, ["target=sample.tsv", "aux1=sst2.tsv:0.5"]);
        assert_eq!(mt.train.encoder, None);
        let mix = cell("mix").unwrap();
        let data: Vec<String> = mix.data.data.iter().map(ToString::to_string).collect();
        assert_eq!(data, ["sample.tsv", "sst2.tsv:0.5"]);
        assert!(mix.data.task.is_empty());
        let enc = cell("encoder+multitask").unwrap();
        assert_eq!(enc.train.encoder, Some("models/enc".into()));
        assert_eq!(enc.data.task.len(), 2);
        TrainPlan::from_args(mt).expect("a multitask cell is a valid run");
    }

    #[test]
    fn the_chars_condition_adds_character_noise_alone() {
        assert_eq!(cell("chars").unwrap().data.augment, [AugmentKind::Chars]);
        for eda in ["eda", "eda+balance", "encoder+eda"] {
            assert_eq!(cell(eda).unwrap().data.augment, [AugmentKind::Eda], "{eda}");
        }
        assert_eq!(cell("baseline").unwrap().data.augment, [AugmentKind::None]);
        let err = cell("typos").unwrap_err().to_string();
        assert!(err.contains("eda, chars, balance"), "{err}");
    }
}
