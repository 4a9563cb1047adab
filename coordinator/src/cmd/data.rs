//! `coordinator data preview|export`: what the pipeline makes of the data, to read or to keep.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use common::data::config::DataConfig;
use common::data::load::Format;
use common::pipeline::{Epoch, Pipeline};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print originals beside their augmentations, then class counts per source before and
    /// after balancing.
    Preview(PreviewArgs),
    /// Write one epoch of the processed training set: `label<TAB>text`, or CSV or JSON lines
    /// when the --out file is named .csv or .jsonl (`--with-source` adds each example's source).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    #[command(flatten)]
    pub data: DataConfig,
    /// Which epoch to show (augmentation and balance are redrawn every epoch).
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// Worker threads for augmentation (the result does not depend on it).
    #[arg(long, default_value_t = default_threads(), value_parser = common::values::at_least(1))]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many original examples to show with their augmentations.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub common: Common,
    /// Output file (written atomically): .csv and .jsonl are written as such (columns
    /// `label`, `text`), anything else as `label<TAB>text`. `--data` reads each back.
    #[arg(long)]
    pub out: PathBuf,
    /// Add the source of each example as a third column (`source`; in a TSV file under a
    /// `label<TAB>text<TAB>source` header line). `--data` reads the column back, and the file
    /// then stands for the sources it was made of.
    #[arg(long)]
    pub with_source: bool,
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(cmd: DataCommand) -> Result<()> {
    let common = match &cmd {
        DataCommand::Preview(a) => &a.common,
        DataCommand::Export(a) => &a.common,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(common.threads.max(1))
        .build()
        .context("starting the worker threads")?;
    pool.install(|| {
        let pipeline = Pipeline::new(&common.data).context("preparing the training data")?;
        match &cmd {
            DataCommand::Preview(a) => preview(&pipeline, a),
            DataCommand::Export(a) => export(&pipeline, a),
        }
    })
}

fn export(p: &Pipeline, args: &ExportArgs) -> Result<()> {
    if !p.tasks().is_empty() {
        anyhow::bail!(
            "data export writes one label space, and --task keeps several apart: export each \
             task by itself with --data PATH"
        );
    }
    // The same file under any name (symlinks, `..`): writing it would lose what was read.
    if let Ok(out) = args.out.canonicalize() {
        let inputs = p.sources().iter().map(|s| s.path.as_path());
        for input in inputs.chain(p.config().eval.as_deref()) {
            if input.canonicalize().is_ok_and(|i| i == out) {
                anyhow::bail!(
                    "--out {} is an input of this export ({}): writing it would lose the \
                     original; give another --out",
                    args.out.display(),
                    input.display()
                );
            }
        }
    }
    let epoch = p.epoch_items(args.common.epoch);
    let labels = p.labels();
    let sources = p.sources();
    // The file's own name says how to read it back, so it also says how to write it.
    let format = Format::from_path(&args.out).unwrap_or(Format::Tsv);
    let rows = epoch.items.iter().map(|it| {
        let source = &sources[it.doc.id.source as usize].name;
        (
            labels[it.label() as usize].as_str(),
            it.tokens.join(" "),
            args.with_source.then_some(source.as_str()),
        )
    });
    common::fsutil::write_atomic_with(&args.out, |w| match format {
        Format::Tsv => {
            // The header is what tells a reader that the third column is the source.
            if args.with_source {
                writeln!(w, "label\ttext\tsource")?;
            }
            for (label, text, source) in rows {
                write!(w, "{label}\t{text}")?;
                if let Some(source) = source {
                    write!(w, "\t{source}")?;
                }
                writeln!(w)?;
            }
            Ok(())
        }
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(w);
            let header: &[&str] = match args.with_source {
                true => &["label", "text", "source"],
                false => &["label", "text"],
            };
            csv.write_record(header)?;
            for (label, text, source) in rows {
                csv.write_record([label, &text].into_iter().chain(source))?;
            }
            csv.flush()
        }
        Format::Jsonl => {
            for (label, text, source) in rows {
                let mut row = serde_json::json!({"label": label, "text": text});
                if let Some(source) = source {
                    row["source"] = source.into();
                }
                writeln!(w, "{row}")?;
            }
            Ok(())
        }
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!(
        "wrote {} examples to {} ({})",
        epoch.items.len(),
        args.out.display(),
        format!("{format:?}").to_lowercase()
    );
    Ok(())
}

fn preview(p: &Pipeline, args: &PreviewArgs) -> Result<()> {
    let epoch = p.epoch_items(args.common.epoch);
    let mut out = std::io::stdout().lock();
    describe_sources(p, &mut out)?;
    // The first examples of each source, in file order, each followed by its augmentations.
    let docs = (0..p.sources().len()).flat_map(|s| p.train_docs(s).iter());
    for doc in docs.take(args.limit) {
        let mut items = p.augmented(doc, args.common.epoch).into_iter();
        let Some(orig) = items.next() else { continue };
        writeln!(
            out,
            "\n{}\t{}",
            p.labels()[orig.label() as usize],
            orig.tokens.join(" ")
        )?;
        for a in items {
            writeln!(out, "  +{:<3}\t{}", a.aug, a.tokens.join(" "))?;
        }
    }
    writeln!(out)?;
    counts_table(p, &epoch, &mut out)?;
    Ok(())
}

fn describe_sources(p: &Pipeline, out: &mut impl Write) -> Result<()> {
    let what = match p.tasks().is_empty() {
        true => "source",
        false => "task",
    };
    for s in p.sources() {
        write!(
            out,
            "{what} {}: {} rows, {} duplicates dropped",
            s.name, s.rows, s.duplicates
        )?;
        if s.skipped > 0 {
            write!(out, ", {} bad lines skipped", s.skipped)?;
        }
        if let Some(w) = s.weight {
            write!(out, ", weight {w}")?;
        }
        writeln!(out)?;
    }
    if let Some(mix) = p.mix_description() {
        writeln!(out, "{mix}")?;
    }
    let plan = p.plan();
    writeln!(
        out,
        "training rows {} (validation {}), augmentations per example {}, vocabulary {}",
        p.train_rows(),
        p.eval_docs().len(),
        plan.num_aug,
        p.vocab().len()
    )?;
    Ok(())
}

fn counts_table(p: &Pipeline, epoch: &Epoch<'_>, out: &mut impl Write) -> Result<()> {
    let labels = p.labels();
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(0).max(7);
    writeln!(out, "class counts, before → after balancing")?;
    let total: usize = epoch.after.iter().flatten().sum();
    for (s, src) in p.sources().iter().enumerate() {
        // With tasks, a task's own classes, and its share of the epoch.
        let block = match p.tasks().is_empty() {
            true => 0..labels.len(),
            false => {
                let after: usize = epoch.after[s].iter().sum();
                let share = 100.0 * after as f64 / total.max(1) as f64;
                writeln!(out, "task {}: {share:.1}% of the epoch", src.name)?;
                p.task_labels(s)
            }
        };
        if p.tasks().is_empty() {
            writeln!(out, "{}", src.name)?;
        }
        for (c, label) in labels.iter().enumerate().filter(|(c, _)| block.contains(c)) {
            writeln!(
                out,
                "  {label:<width$}  {:>7} → {:>7}",
                epoch.before[s][c], epoch.after[s][c]
            )?;
        }
    }
    if p.sources().len() > 1 && p.tasks().is_empty() {
        writeln!(out, "all sources")?;
        for (c, label) in labels.iter().enumerate() {
            let before: usize = epoch.before.iter().map(|v| v[c]).sum();
            let after: usize = epoch.after.iter().map(|v| v[c]).sum();
            writeln!(out, "  {label:<width$}  {before:>7} → {after:>7}")?;
        }
    }
    Ok(())
}
