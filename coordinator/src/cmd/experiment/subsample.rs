//! The training subsample of one (size, seed) cell: stratified (each label keeps its share of
//! the file, largest remainders rounded up) and seeded, the same for every condition.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use common::data::load::{load, LoadOptions, Record};
use common::rng::stream;
use rand::seq::SliceRandom;

/// `n` records of `records`, stratified by label, drawn with `seed`; all of them when `n` is
/// None or at least their number. File order is kept.
pub fn stratified(records: &[Record], n: Option<usize>, seed: u64) -> Vec<Record> {
    let total = records.len();
    let Some(n) = n.filter(|&n| n < total) else {
        return records.to_vec();
    };
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_label.entry(r.label.as_str()).or_default().push(i);
    }
    // Quota n·share, floors first, then the largest remainders.
    let mut quotas: Vec<(usize, f64)> = by_label
        .values()
        .map(|m| {
            let exact = n as f64 * m.len() as f64 / total as f64;
            (exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let short = n - quotas.iter().map(|q| q.0).sum::<usize>();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&a, &b| quotas[b].1.total_cmp(&quotas[a].1).then(a.cmp(&b)));
    for &k in order.iter().take(short) {
        quotas[k].0 += 1;
    }
    let mut keep = Vec::with_capacity(n);
    for (k, (members, (quota, _))) in by_label.values().zip(quotas).enumerate() {
        let mut members = members.clone();
        members.shuffle(&mut stream(&[seed, 0x5a3b_5e7d, k as u64]));
        keep.extend(members.into_iter().take(quota));
    }
    keep.sort_unstable();
    keep.into_iter().map(|i| records[i].clone()).collect()
}

/// Reads `path` (any supported format) and writes the subsample as `label<TAB>text` to `out`.
pub fn write(path: &Path, n: Option<usize>, seed: u64, out: &Path) -> Result<usize> {
    let loaded = load(path, &LoadOptions::default())
        .with_context(|| format!("reading {}", path.display()))?;
    if let Some(n) = n {
        if n > loaded.records.len() {
            bail!(
                "--sizes {n}: {} has only {} examples (use `full`)",
                path.display(),
                loaded.records.len()
            );
        }
    }
    let rows = stratified(&loaded.records, n, seed);
    let mut text = String::new();
    for r in &rows {
        text.push_str(&r.label);
        text.push('\t');
        text.push_str(&r.text);
        text.push('\n');
    }
    common::fsutil::write_atomic(out, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[(&str, usize)]) -> Vec<Record> {
        let mut out = Vec::new();
        for &(label, n) in labels {
            for i in 0..n {
                out.push(Record {
                    line: out.len() as u32 + 1,
                    label: label.into(),
                    text: format!("{label} {i}"),
                    source: None,
                });
            }
        }
        out
    }

    #[test]
    fn keeps_each_labels_share_and_is_seeded() {
        let all = records(&[("a", 640), ("b", 300), ("c", 60)]);
        let s = stratified(&all, Some(100), 1);
        assert_eq!(s.len(), 100);
        let count = |l: &str| s.iter().filter(|r| r.label == l).count();
        assert_eq!((count("a"), count("b"), count("c")), (64, 30, 6));
        assert_eq!(s, stratified(&all, Some(100), 1));
        assert_ne!(s, stratified(&all, Some(100), 2));
        assert_eq!(stratified(&all, None, 1).len(), 1000);
        // Rounding: 7 of 3 equal classes → 3, 2, 2.
        let even = records(&[("a", 10), ("b", 10), ("c", 10)]);
        assert_eq!(stratified(&even, Some(7), 0).len(), 7);
    }
}
