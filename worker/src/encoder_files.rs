//! Where this worker finds the run's encoder: at the path the run spec names when that holds
//! the same files (a shared volume, or one machine), else in its own cache directory, filled
//! from the coordinator (`FetchEncoder`) and checked by content hash before use.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use common::encoder::files::{self, Hashed};
use common::encoder::EncoderRef;
use common::pb;

use crate::client::Client;

/// The directory holding the encoder `r` (its content hash checked), downloading it if need be.
pub fn locate(
    r: &EncoderRef,
    client: &mut Client,
    token: &str,
    rank: u32,
    rt: &tokio::runtime::Runtime,
) -> Result<Hashed> {
    if let Some(found) = matching(&r.path, &r.sha256) {
        return Ok(found);
    }
    let cached = cache_root().join(&r.sha256);
    if let Some(found) = matching(&cached, &r.sha256) {
        tracing::info!("encoder {}: using the copy in {}", r.name, cached.display());
        return Ok(found);
    }
    tracing::info!(
        "encoder {}: no identical copy at {}; downloading it from the coordinator into {}",
        r.name,
        r.path.display(),
        cached.display()
    );
    let partial = cache_root().join(format!("{}.partial-{}", r.sha256, std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = rt.block_on(download(client, token, rank, &partial));
    let checked = result.and_then(|()| {
        let found = files::hashed(&partial)?;
        if found.sha256() != r.sha256 {
            bail!(
                "the encoder received has content hash {}, not the run's {}",
                found.sha256(),
                r.sha256
            );
        }
        Ok(found)
    });
    let found = match checked {
        Ok(found) => found,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e.context("downloading the encoder from the coordinator"));
        }
    };
    let _ = std::fs::remove_dir_all(&cached);
    std::fs::rename(&partial, &cached)
        .with_context(|| format!("moving the encoder into {}", cached.display()))?;
    Ok(found.moved_to(cached))
}

/// `SMALLTEXT_CACHE`, else the system's temporary directory.
fn cache_root() -> PathBuf {
    std::env::var_os("SMALLTEXT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("smalltext-encoders")
}

fn matching(dir: &Path, sha256: &str) -> Option<Hashed> {
    if !dir.is_dir() {
        return None;
    }
    files::hashed(dir).ok().filter(|h| h.sha256() == sha256)
}

async fn download(client: &mut Client, token: &str, rank: u32, dir: &Path) -> Result<()> {
    let mut stream = client
        .fetch_encoder(pb::FetchEncoderRequest {
            rank,
            token: token.to_string(),
        })
        .await?
        .into_inner();
    let mut current: Option<(String, std::fs::File, u64)> = None;
    while let Some(chunk) = stream.message().await? {
        if !files::FILES.contains(&chunk.name.as_str()) {
            bail!("the coordinator sent an unexpected file {:?}", chunk.name);
        }
        if current.as_ref().is_none_or(|(n, _, _)| *n != chunk.name) {
            if let Some((name, f, _)) = current.take() {
                f.sync_all().with_context(|| format!("writing {name}"))?;
            }
            let path = dir.join(&chunk.name);
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            current = Some((chunk.name.clone(), f, 0));
        }
        if let Some((name, f, written)) = current.as_mut() {
            if chunk.offset != *written || *written + chunk.data.len() as u64 > chunk.size {
                bail!("{name}: chunk at {} out of order", chunk.offset);
            }
            f.write_all(&chunk.data)
                .with_context(|| format!("writing {name}"))?;
            *written += chunk.data.len() as u64;
        }
    }
    if let Some((name, f, _)) = current.take() {
        f.sync_all().with_context(|| format!("writing {name}"))?;
    }
    files::check_dir(dir)?;
    Ok(())
}
