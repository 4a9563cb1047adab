//! `--init-embeddings FILE`: pretrained word vectors in the word2vec / GloVe text format
//! (`word v1 v2 …` a line, an optional `count dim` header) mapped onto the vocabulary. The
//! file is read a line at a time and only the vocabulary's words are kept, so a
//! multi-gigabyte file costs no more memory than the table it fills.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::vocab::Vocab;
use crate::error::DataError;

/// The rows of the vocabulary's words that the file has.
#[derive(Debug, Clone, PartialEq)]
pub struct Pretrained {
    pub dim: usize,
    /// (vocabulary id, vector) for every vocabulary word found, in id order.
    pub rows: Vec<(u32, Vec<f32>)>,
    /// Vocabulary words (PAD and UNK aside) the file lacks.
    pub missing: usize,
}

/// Reads `path` and keeps the vectors of `vocab`'s words. Every line must have the same
/// number of values; the first line may instead be a `count dim` header.
pub fn read(path: &Path, vocab: &Vocab) -> Result<Pretrained, DataError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DataError::io(&shown, e))?;
    let wanted: HashMap<&str, u32> = (2..vocab.len() as u32)
        .filter_map(|id| vocab.token(id).map(|t| (t, id)))
        .collect();
    let mut dim = None;
    let mut rows = Vec::new();
    let bad = |line: usize, msg: String| DataError::BadLine {
        path: shown.clone(),
        line: line as u64,
        msg,
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| DataError::io(&shown, e))?;
        let line = match i {
            0 => super::strip_byte_order_mark(&line),
            _ => &line,
        };
        let mut fields = line.split_whitespace();
        let Some(word) = fields.next() else { continue };
        let values: Vec<&str> = fields.collect();
        if i == 0 && values.len() == 1 && word.parse::<u64>().is_ok() {
            let d = values[0]
                .parse::<usize>()
                .map_err(|_| bad(1, "a header must be `count dim`".into()))?;
            dim = Some(d);
            continue;
        }
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => {
                return Err(bad(
                    i + 1,
                    format!("{} values where the file has {d}", values.len()),
                ))
            }
            Some(_) => {}
        }
        if values.is_empty() {
            return Err(bad(i + 1, "a word without a vector".into()));
        }
        if let Some(&id) = wanted.get(word) {
            let v = values
                .iter()
                .map(|x| x.parse::<f32>().ok().filter(|v| v.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad(i + 1, format!("a value of {word:?} is not a number")))?;
            rows.push((id, v));
        }
    }
    let dim = dim.ok_or_else(|| DataError::Empty {
        path: shown.clone(),
    })?;
    rows.sort_by_key(|r| r.0);
    // A word listed twice keeps its first vector.
    rows.dedup_by_key(|r| r.0);
    let missing = wanted.len() - rows.len();
    Ok(Pretrained { dim, rows, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        Vocab::build(["the", "cat", "sat", "the", "mat"], 100, 1)
    }

    #[test]
    fn maps_vectors_onto_the_vocabulary_with_or_without_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let v = vocab();
        for header in ["", "3 2\n"] {
            let path = dir.path().join("v.txt");
            std::fs::write(&path, format!("{header}cat 1 2\ndog 3 4\nthe 0.5 -0.5\n")).unwrap();
            let p = read(&path, &v).unwrap();
            assert_eq!(p.dim, 2);
            assert_eq!(
                p.rows,
                vec![
                    (v.id("the"), vec![0.5, -0.5]),
                    (v.id("cat"), vec![1.0, 2.0])
                ]
            );
            assert_eq!(p.missing, 2, "sat and mat");
        }
    }

    #[test]
    fn a_byte_order_mark_before_the_first_word_or_header_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let v = vocab();
        for header in ["", "3 2\n"] {
            let path = dir.path().join("v.txt");
            std::fs::write(&path, format!("\u{feff}{header}cat 1 2\nthe 0.5 -0.5\n")).unwrap();
            let p = read(&path, &v).unwrap();
            assert_eq!(
                p.rows[1],
                (v.id("cat"), vec![1.0, 2.0]),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.txt");
        std::fs::write(&path, "cat 1 2\nthe 1 2 3\n").unwrap();
        let err = read(&path, &vocab()).unwrap_err().to_string();
        assert!(
            err.ends_with("v.txt:2: 3 values where the file has 2"),
            "{err}"
        );
        std::fs::write(&path, "cat 1 x\n").unwrap();
        let err = read(&path, &vocab()).unwrap_err().to_string();
        assert!(
            err.contains("v.txt:1:") && err.contains("not a number"),
            "{err}"
        );
    }
}
