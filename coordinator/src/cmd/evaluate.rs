//! `coordinator evaluate`: accuracy, macro-F1 and per-class scores of a trained model on
//! labelled data.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use common::data::config::UnknownLabels;
use common::data::load::{BadLinePolicy, Format, LoadOptions};
use common::device::DeviceSpec;
use common::train::evaluate as evaluate_model;
use serde_json::json;

use crate::model_dir;

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Model directory (RUN_DIR/model).
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled data to evaluate on. Labels spelled as an alias of the training's --label-map
    /// count as the label it maps to (the model keeps the map).
    #[arg(long)]
    pub data: PathBuf,
    /// File format; by default from the extension (.tsv/.txt, .csv, .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// CSV/JSONL column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// CSV/JSONL column holding the label.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// What to do with a line that cannot be read: stop with an error naming it, or skip it
    /// and count it.
    #[arg(long, value_enum, default_value = "error")]
    pub on_bad_line: BadLinePolicy,
    /// Examples whose label the model was not trained on: stop with an error listing the
    /// labels, or leave them out (counted in the log).
    #[arg(long, value_enum, default_value = "error")]
    pub unknown_labels: UnknownLabels,
    /// A multi-task model's task to evaluate (default: the target): the data's labels are
    /// that task's, and its head answers.
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,
    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    pub json: bool,
    /// The encoder directory, for a model trained with --encoder (default: where it was at
    /// training). It must be the same encoder, byte for byte.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
    /// Where to compute: cpu, cuda or cuda:N (a GPU needs the coordinator built by
    /// gpu/build.sh). The same model gives the same labels anywhere, up to the last digits of
    /// the probabilities.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda|cuda:N")]
    pub device: DeviceSpec,
}

pub fn run(args: EvaluateArgs) -> Result<()> {
    let m = model_dir::load_with(&args.model, args.encoder.as_deref(), &args.device.open()?)?;
    let opts = LoadOptions {
        format: args.format,
        text_column: args.text_column,
        label_column: args.label_column,
        on_bad_line: args.on_bad_line,
    };
    let task = m.meta.task(args.task.as_deref())?;
    let block = m.meta.task_labels(task);
    let labels = &m.meta.labels[block.clone()];
    let data = model_dir::load_labelled(&m, &args.data, &opts, args.unknown_labels, task)?;
    let pairs: Vec<(&[u32], u32)> = data.iter().map(|(s, l)| (s.as_slice(), *l)).collect();
    // The task's own block of the model's labels (all of them without tasks).
    let c = evaluate_model(&m.model, &pairs)?
        .confusion
        .block(block.start, block.len());
    if let Some(note) = c.absent_note(labels) {
        tracing::warn!("{}: {note}", args.data.display());
    }
    let per_class = c.per_class(labels);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = json!({"accuracy": c.accuracy(), "macro_f1": c.macro_f1(), "macro_f1_present": c.macro_f1_present(), "examples": c.total(), "per_class": per_class, "confusion": c.counts, "labels": labels});
        if let Some(t) = m.meta.tasks.get(task) {
            v["task"] = json!(t.name);
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{}: {} examples, accuracy {:.4}, macro-F1 {:.4}",
            args.data.display(),
            c.total(),
            c.accuracy(),
            c.macro_f1()
        )?;
        writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>8}",
            "class", "precision", "recall", "f1", "support"
        )?;
        for p in per_class {
            writeln!(
                out,
                "{:<12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                p.label, p.precision, p.recall, p.f1, p.support
            )?;
        }
    }
    Ok(())
}
