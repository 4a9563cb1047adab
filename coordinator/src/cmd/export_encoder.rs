//! `coordinator export-encoder`: the fine-tuned encoder of a model directory as a Hugging Face
//! model directory (`config.json`, `model.safetensors`, `tokenizer.json`), which
//! `transformers.AutoModel.from_pretrained` loads, and `--encoder` takes.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use common::encoder::files;
use common::model::transformer::{model_name, WORD_TABLE};
use common::model::EMBEDDING;

use crate::model_dir;

#[derive(Args, Debug)]
pub struct ExportEncoderArgs {
    /// Model directory of a run with --encoder-mode finetune (RUN_DIR/model).
    #[arg(long)]
    pub model: PathBuf,
    /// New directory to write; it must not exist.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: ExportEncoderArgs) -> Result<()> {
    let loaded = model_dir::load(&args.model)?;
    let Some(transformer) = &loaded.meta.model.transformer else {
        bail!(
            "{} holds no fine-tuned encoder (it was not trained with --encoder-mode finetune)",
            args.model.display()
        );
    };
    if args.out.exists() {
        bail!("{} exists; give a new directory", args.out.display());
    }
    let bert = transformer.bert()?;
    let weights = args.model.join(model_dir::WEIGHTS);
    let trained = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (hf, _) in common::encoder::trainable::weight_shapes(&bert) {
        let ours = match hf.as_str() {
            WORD_TABLE => EMBEDDING.to_string(),
            _ => model_name(&hf),
        };
        let t = trained
            .get(&ours)
            .with_context(|| format!("{} has no tensor {ours}", weights.display()))?;
        out.insert(hf, t.clone());
    }
    // Written beside the destination, then moved into place: no half-written export.
    let mut partial = args.out.clone().into_os_string();
    partial.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(partial);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        candle_core::safetensors::save(&out, tmp.join(files::WEIGHTS))
            .context("writing model.safetensors")?;
        std::fs::write(
            tmp.join(files::CONFIG),
            serde_json::to_vec_pretty(&transformer.config)?,
        )
        .context("writing config.json")?;
        let tokenizer = args.model.join(files::TOKENIZER);
        std::fs::copy(&tokenizer, tmp.join(files::TOKENIZER))
            .with_context(|| format!("copying {}", tokenizer.display()))?;
        std::fs::rename(&tmp, &args.out)
            .with_context(|| format!("moving into {}", args.out.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    tracing::info!(
        "{}: the fine-tuned encoder ({} tensors), its configuration and tokenizer",
        args.out.display(),
        out.len()
    );
    Ok(())
}
