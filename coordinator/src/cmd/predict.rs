//! `coordinator predict`: a trained model's label for each sentence.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use common::device::DeviceSpec;
use common::train::predict_all_by;
use serde_json::json;

use crate::model_dir;

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
    /// A multi-task model's task to answer for (default: the target), or `all`: every task's
    /// label, one `TASK=LABEL<TAB>PROBABILITY` pair per task before the sentence (in JSON,
    /// a "tasks" object by name).
    #[arg(long, value_name = "NAME|all")]
    pub task: Option<String>,
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

pub fn run(args: PredictArgs) -> Result<()> {
    let m = model_dir::load_with(&args.model, args.encoder.as_deref(), &args.device.open()?)?;
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
    let tasks: Vec<usize> = match args.task.as_deref() {
        Some("all") if !m.meta.tasks.is_empty() => (0..m.meta.tasks.len()).collect(),
        name => vec![m.meta.task(name)?],
    };
    // Per task asked: each sentence's label (an index into the model's labels) and probability.
    let mut answers: Vec<Vec<Option<(usize, f32)>>> = Vec::new();
    for &task in &tasks {
        let offset = m.meta.task_labels(task).start;
        let mut preds = vec![None; texts.len()];
        for (&i, (label, probs)) in given.iter().zip(predict_all_by(&m.model, &refs, task)?) {
            preds[i] = Some((offset + label, probs[label]));
        }
        answers.push(preds);
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
    let every = args.task.as_deref() == Some("all") && !m.meta.tasks.is_empty();
    for (i, (text, unknown)) in texts.iter().zip(unknown).enumerate() {
        let answer = |k: usize| match answers[k][i] {
            Some((label, p)) => (Some(&m.meta.labels[label]), Some(p)),
            None => (None, None),
        };
        let plain = |(name, p): (Option<&String>, Option<f32>)| {
            let name = name.map_or("", String::as_str).to_string();
            (name, p.map_or(String::new(), |p| format!("{p:.4}")))
        };
        match (args.json, every) {
            (true, false) => {
                let (name, p) = answer(0);
                let v = json!({"text": text, "label": name, "probability": p, "unknown_fraction": unknown});
                writeln!(out, "{v}")?;
            }
            (true, true) => {
                let by_task: serde_json::Map<String, serde_json::Value> = tasks
                    .iter()
                    .map(|&k| {
                        let (name, p) = answer(k);
                        let v = json!({"label": name, "probability": p});
                        (m.meta.tasks[k].name.clone(), v)
                    })
                    .collect();
                let v = json!({"text": text, "tasks": by_task, "unknown_fraction": unknown});
                writeln!(out, "{v}")?;
            }
            (false, false) => {
                let (name, p) = plain(answer(0));
                writeln!(out, "{name}\t{p}\t{}", one_field(text))?;
            }
            (false, true) => {
                for &k in &tasks {
                    let (name, p) = plain(answer(k));
                    write!(out, "{}={name}\t{p}\t", m.meta.tasks[k].name)?;
                }
                writeln!(out, "{}", one_field(text))?;
            }
        }
    }
    Ok(())
}
