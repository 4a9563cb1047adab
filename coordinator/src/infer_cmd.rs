//! `coordinator evaluate` and `coordinator predict`: a trained model on new data.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use common::data::config::UnknownLabels;
use common::data::load::{BadLinePolicy, Format, LoadOptions};
use common::train::{evaluate as evaluate_model, predict_all};
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
    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    pub json: bool,
    /// The encoder directory, for a model trained with --encoder (default: where it was at
    /// training). It must be the same encoder, byte for byte.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model directory (RUN_DIR/model).
    #[arg(long)]
    pub model: PathBuf,
    /// Sentences to classify; without them, one per line from --input or stdin. Every one
    /// gets a line of output, in order; a blank one gets no label (an empty label and
    /// probability, or null in JSON), so the output lines up with the input.
    pub texts: Vec<String>,
    /// File with one sentence per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// One JSON object per line, with the fraction of the sentence's tokens the model does
    /// not know (`unknown_fraction`; above one half the log warns). The plain output writes a
    /// tab, line break or backslash inside a sentence as `\t`, `\n`, `\r` or `\\`.
    #[arg(long)]
    pub json: bool,
    /// The encoder directory, for a model trained with --encoder (default: where it was at
    /// training). It must be the same encoder, byte for byte.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    let m = model_dir::load_with(&args.model, args.encoder.as_deref())?;
    let opts = LoadOptions {
        format: args.format,
        text_column: args.text_column,
        label_column: args.label_column,
        on_bad_line: args.on_bad_line,
    };
    let data = model_dir::load_labelled(&m, &args.data, &opts, args.unknown_labels)?;
    let pairs: Vec<(&[u32], u32)> = data.iter().map(|(s, l)| (s.as_slice(), *l)).collect();
    let c = evaluate_model(&m.model, &pairs)?.confusion;
    if let Some(note) = c.absent_note(&m.meta.labels) {
        tracing::warn!("{}: {note}", args.data.display());
    }
    let per_class = c.per_class(&m.meta.labels);
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({"accuracy": c.accuracy(), "macro_f1": c.macro_f1(), "macro_f1_present": c.macro_f1_present(), "examples": c.total(), "per_class": per_class, "confusion": c.counts, "labels": m.meta.labels});
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

/// Above this fraction of unknown tokens a sentence's prediction is flagged in the log.
const UNKNOWN_WARNING: f64 = 0.5;

/// `text` as the last field of a tab-separated line: tabs and line breaks inside it written as
/// `\t`, `\n`, `\r` (and a backslash as `\\`), so every line keeps three fields.
fn one_field(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\t', '\n', '\r', '\\']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.into()
}

pub fn predict_cmd(args: PredictArgs) -> Result<()> {
    let m = model_dir::load_with(&args.model, args.encoder.as_deref())?;
    let texts: Vec<String> = if !args.texts.is_empty() {
        args.texts
    } else {
        let (reader, name): (Box<dyn BufRead>, String) = match &args.input {
            Some(p) => (
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                p.display().to_string(),
            ),
            None => (Box::new(std::io::stdin().lock()), "stdin".into()),
        };
        let mut v = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("{name}:{}", i + 1))?;
            v.push(match i {
                0 => common::data::strip_byte_order_mark(&line).to_string(),
                _ => line,
            });
        }
        v
    };
    // Blank sentences have nothing to classify; they keep their place in the output.
    let given: Vec<usize> = (0..texts.len())
        .filter(|&i| !texts[i].trim().is_empty())
        .collect();
    let seqs: Vec<Vec<u32>> = given.iter().map(|&i| m.encode(&texts[i])).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let mut preds = vec![None; texts.len()];
    for (&i, pred) in given.iter().zip(predict_all(&m.model, &refs)?) {
        preds[i] = Some(pred);
    }
    let mut unknown = vec![None; texts.len()];
    for (&i, ids) in given.iter().zip(&seqs) {
        let fraction = m.unknown_fraction(ids);
        if fraction > UNKNOWN_WARNING {
            tracing::warn!(
                "sentence {}: {:.0}% of its tokens are not in the model's vocabulary, so its \
                 label says little",
                i + 1,
                100.0 * fraction
            );
        }
        unknown[i] = Some(fraction);
    }
    let mut out = std::io::stdout().lock();
    for ((text, pred), unknown) in texts.iter().zip(preds).zip(unknown) {
        let (name, p) = match &pred {
            Some((label, probs)) => (Some(&m.meta.labels[*label]), Some(probs[*label])),
            None => (None, None),
        };
        if args.json {
            writeln!(
                out,
                "{}",
                json!({"text": text, "label": name, "probability": p, "unknown_fraction": unknown})
            )?;
        } else {
            let name = name.map_or("", String::as_str);
            let p = p.map_or(String::new(), |p| format!("{p:.4}"));
            writeln!(out, "{name}\t{p}\t{}", one_field(text))?;
        }
    }
    Ok(())
}
