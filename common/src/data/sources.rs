//! The training sources as read: each `--data` file loaded, split into the sources its rows
//! name (when it is an export that kept them), its labels mapped through `--label-map`, and
//! exact (text, label) duplicates and rows whose text the validation set holds dropped, with
//! the counts per source for the log and the summary.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::DataConfig;
use super::load::{self, LoadOptions, Record};
use crate::error::DataError;

/// What was read from one `--data` source.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    pub name: String,
    pub path: PathBuf,
    pub weight: Option<f64>,
    /// Lines read as examples.
    pub rows: usize,
    /// Bad lines skipped (`--on-bad-line skip`).
    pub skipped: usize,
    /// Exact (text, label) duplicates dropped, within and across sources.
    pub duplicates: usize,
    /// Training rows dropped because the validation set holds the same text.
    pub in_eval: usize,
    /// SHA-256 of the file, for provenance.
    pub sha256: String,
}

/// How a run keeps its sources apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sources<'a> {
    /// Concatenated: a file whose rows name their sources gives those sources.
    Concatenated,
    /// Mixed by weight: each file is one source.
    Weighted,
    /// Tasks, each file one, named so; duplicates are dropped within a task only (the same
    /// sentence may well be an example of two tasks).
    Tasks(&'a [String]),
}

/// Every `--data` source's records after the label map and de-duplication (within and across
/// sources, first come first kept; within each task), in `cfg.data`'s order. Rows whose text is
/// in `eval_texts` are dropped from training. A source left empty is an error.
pub fn load_sources(
    cfg: &DataConfig,
    opts: &LoadOptions,
    how: Sources<'_>,
    label_map: &BTreeMap<String, String>,
    eval_texts: &HashSet<String>,
) -> Result<(Vec<SourceInfo>, Vec<Vec<Record>>), DataError> {
    let weighted = how != Sources::Concatenated;
    let mut sources = Vec::new();
    let mut per_source: Vec<Vec<Record>> = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut groups = Vec::new();
    for spec in &cfg.data {
        let loaded = load::load(&spec.path, opts)?;
        let sha256 = file_sha256(&spec.path)?;
        let mut skipped = loaded.skipped;
        for (name, records) in by_recorded_source(&spec.path, loaded.records, weighted)? {
            let name = match how {
                Sources::Tasks(names) => names[groups.len()].clone(),
                _ => name,
            };
            let info = SourceInfo {
                name,
                path: spec.path.clone(),
                weight: spec.weight,
                rows: records.len(),
                skipped: std::mem::take(&mut skipped),
                duplicates: 0,
                in_eval: 0,
                sha256: sha256.clone(),
            };
            groups.push((info, records));
        }
    }
    if groups.len() > u16::MAX as usize {
        return Err(DataError::Config("too many sources".into()));
    }
    for (mut info, records) in groups {
        if matches!(how, Sources::Tasks(_)) {
            seen.clear();
        }
        let mut kept = Vec::with_capacity(records.len());
        for mut r in records {
            if let Some(l) = label_map.get(&r.label) {
                r.label = l.clone();
            }
            if eval_texts.contains(&r.text) {
                info.in_eval += 1;
            } else if seen.insert((r.text.clone(), r.label.clone())) {
                kept.push(r);
            } else {
                info.duplicates += 1;
            }
        }
        if info.duplicates > 0 {
            tracing::info!(
                "{}: dropped {} duplicate (text, label) rows",
                info.name,
                info.duplicates
            );
        }
        if info.in_eval > 0 {
            tracing::warn!(
                "{}: dropped {} rows whose text is in the validation set",
                info.name,
                info.in_eval
            );
        }
        if kept.is_empty() {
            return Err(DataError::NothingLeft {
                path: info.name,
                rows: info.rows,
                in_eval: info.in_eval,
                duplicates: info.duplicates,
            });
        }
        sources.push(info);
        per_source.push(kept);
    }
    Ok((sources, per_source))
}

/// One file's records, as one source named for the file, or, when its rows name their
/// sources (the `source` column of `data export --with-source`), as those sources in the
/// order they first appear: reading an export back gives the sources it was made of.
fn by_recorded_source(
    path: &Path,
    records: Vec<Record>,
    weighted: bool,
) -> Result<Vec<(String, Vec<Record>)>, DataError> {
    let file = path.display().to_string();
    if records.iter().all(|r| r.source.is_none()) {
        return Ok(vec![(file, records)]);
    }
    if weighted {
        return Err(DataError::Config(format!(
            "{file}: its rows name their sources (a `source` column, as `data export \
             --with-source` writes), which a weighted mix or a task cannot keep apart; give \
             the sources themselves"
        )));
    }
    let mut groups: Vec<(String, Vec<Record>)> = Vec::new();
    for r in records {
        let name = r.source.clone().unwrap_or_else(|| file.clone());
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, g)) => g.push(r),
            None => groups.push((name, vec![r])),
        }
    }
    Ok(groups)
}

/// `--label-map FILE`: alias<TAB>label lines; an alias given two labels is an error naming both
/// lines.
pub fn read_label_map(path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(&shown, e))?;
    // Each alias with its target and the line that said so.
    let mut map: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (i, line) in super::strip_byte_order_mark(&text).lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (alias, label) = line.split_once('\t').ok_or_else(|| DataError::BadLine {
            path: shown.clone(),
            line: line_no,
            msg: "expected alias<TAB>label".into(),
        })?;
        let (alias, label) = (alias.trim(), label.trim());
        match map.get(alias) {
            Some((earlier, at)) if earlier != label => {
                return Err(DataError::BadLine {
                    path: shown,
                    line: line_no,
                    msg: format!(
                        "\"{alias}\" maps to \"{label}\" here and to \"{earlier}\" on line {at}: \
                         an alias has one label; remove one of the two lines"
                    ),
                });
            }
            Some(_) => {}
            None => {
                map.insert(alias.to_string(), (label.to_string(), line_no));
            }
        }
    }
    Ok(map
        .into_iter()
        .map(|(alias, (label, _))| (alias, label))
        .collect())
}

/// The SHA-256 of a data file, for provenance (`summary.json`, `command.json`).
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    load::not_a_directory(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path.display(), e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| DataError::io(path.display(), e))?;
    Ok(hex::encode(h.finalize()))
}
