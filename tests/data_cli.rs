//! `coordinator data preview|export` as a user runs them, on the bundled TREC data.

use std::collections::HashMap;

use common::data::load::{load, LoadOptions};
use common::data::tokenize::Tokenizer;
use smalltext_tests::{coordinator, stderr, stdout, trec, trec_slice};

fn counts(tsv: &str) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for line in tsv.lines() {
        *c.entry(line.split('\t').next().unwrap().to_string())
            .or_default() += 1;
    }
    c
}

#[test]
fn export_eda_oversample_balances_trec_to_five_times_the_majority() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train.processed.tsv");
    let train = trec("train.tsv");
    let o = coordinator(&[
        "data",
        "export",
        "--data",
        train.to_str().unwrap(),
        "--augment",
        "eda",
        "--num-aug",
        "4",
        "--balance",
        "oversample",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = counts(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(c.len(), 6);
    assert!(c.values().all(|&n| n == 6225), "{c:?}");
}

#[test]
fn export_is_byte_identical_with_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 400);
    let b = trec_slice(dir.path(), "train.tsv", 400, 300);
    let mut outputs = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("out{threads}.tsv"));
        let o = coordinator(&[
            "data",
            "export",
            "--data",
            a.to_str().unwrap(),
            "--data",
            &format!("{}:0.4", b.display()),
            "--augment",
            "eda",
            "--num-aug",
            "auto",
            "--balance",
            "augment",
            "--seed",
            "7",
            "--epoch",
            "3",
            "--threads",
            threads,
            "--with-source",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1]);
    let text = String::from_utf8(outputs[0].clone()).unwrap();
    assert!(
        text.starts_with("label\ttext\tsource\n"),
        "the header names the column"
    );
    assert!(
        text.lines().all(|l| l.split('\t').count() == 3),
        "source column on every line"
    );
}

#[test]
fn preview_shows_augmentations_and_counts_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 200);
    let o = coordinator(&[
        "data",
        "preview",
        "--data",
        a.to_str().unwrap(),
        "--augment",
        "eda",
        "--num-aug",
        "2",
        "--balance",
        "undersample",
        "--limit",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert_eq!(
        s.lines().filter(|l| l.starts_with("  +1")).count(),
        3,
        "{s}"
    );
    assert!(s.contains("before → after balancing"), "{s}");
    assert!(!s.contains("mixing"), "{s}");
    // A weighted mix says what share of the draws each source gets.
    let b = trec_slice(dir.path(), "train.tsv", 1000, 100);
    let o = coordinator(&[
        "data",
        "preview",
        "--data",
        &format!("{}:3", a.display()),
        "--data",
        &format!("{}:1", b.display()),
        "--mix-stop",
        "all-exhausted",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    let want = format!(
        "mixing 2 sources by weight: {} 0.750, {} 0.250 of the draws (the weights add up to 4: \
         scaled to add up to 1); an epoch ends when every source has been drawn whole at least \
         once (--mix-stop all-exhausted)",
        a.display(),
        b.display()
    );
    assert!(s.contains(&want), "{s}");
}

#[test]
fn bad_lines_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "DESC\tfine question ?\nno tab here\n").unwrap();
    let out = dir.path().join("out.tsv");
    let o = coordinator(&[
        "data",
        "export",
        "--data",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.tsv:2"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    assert!(!out.exists(), "no output on error");

    let o = coordinator(&[
        "data",
        "export",
        "--data",
        bad.to_str().unwrap(),
        "--on-bad-line",
        "skip",
        "--out",
        out.to_str().unwrap(),
    ]);
    // One good line left, a single class: still an error, and it says so.
    assert!(!o.status.success());
    assert!(stderr(&o).contains("single class"), "{}", stderr(&o));
}

#[test]
fn skipped_bad_lines_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("some_bad.tsv");
    std::fs::write(&bad, "A\tone\nbroken\nB\ttwo\n\tno label\n").unwrap();
    let o = coordinator(&[
        "data",
        "preview",
        "--data",
        bad.to_str().unwrap(),
        "--on-bad-line",
        "skip",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 bad lines skipped"), "{}", stdout(&o));
}

#[test]
fn export_writes_the_format_its_file_name_says_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 200);
    let b = trec_slice(dir.path(), "train.tsv", 200, 100);
    let export = |name: &str| {
        let out = dir.path().join(name);
        let o = coordinator(&[
            "data",
            "export",
            "--data",
            a.to_str().unwrap(),
            "--data",
            b.to_str().unwrap(),
            "--augment",
            "eda",
            "--num-aug",
            "1",
            "--with-source",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        out
    };
    let rows = |path: &std::path::Path| -> Vec<(String, String)> {
        let loaded = load(path, &LoadOptions::default()).unwrap();
        loaded
            .records
            .into_iter()
            .map(|r| (r.label, r.text))
            .collect()
    };
    let tsv = std::fs::read_to_string(export("out.tsv")).unwrap();
    let columns: Vec<Vec<&str>> = tsv
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(columns.len(), 600);
    assert!(columns.iter().all(|c| c.len() == 3));
    let want: Vec<(String, String)> = columns
        .iter()
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect();
    let sources: Vec<String> = columns.iter().map(|c| c[2].to_string()).collect();
    for name in ["out.csv", "out.jsonl"] {
        let out = export(name);
        let got = rows(&out);
        let same = got == want;
        assert!(
            same,
            "{name} read back: {:?}",
            got.iter().zip(&want).find(|(a, b)| a != b)
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let got: Vec<String> = if name.ends_with(".csv") {
            assert!(text.starts_with("label,text,source\n"), "{name}");
            text.lines()
                .skip(1)
                .map(|l| l.rsplit(',').next().unwrap().to_string())
                .collect()
        } else {
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["source"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(got, sources, "{name}: the source column");
    }
}

/// Exporting over one of the files the export reads would lose the original data.
#[test]
fn export_refuses_to_overwrite_its_own_input() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 50);
    let before = std::fs::read(&a).unwrap();
    // Named another way (./dir/../dir/file), it is still the same file.
    let parent = a.parent().unwrap();
    let alias = parent
        .join("..")
        .join(parent.file_name().unwrap())
        .join(a.file_name().unwrap());
    for out in [&a, &alias] {
        let o = coordinator(&[
            "data",
            "export",
            "--data",
            a.to_str().unwrap(),
            "--augment",
            "eda",
            "--num-aug",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("is an input of this export"),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            std::fs::read(&a).unwrap(),
            before,
            "the input was overwritten"
        );
    }
}

/// An export with its sources, given back as `--data`, stands for the sources it was made of:
/// `preview` counts them apart, under their own names.
#[test]
fn an_export_read_back_keeps_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(dir.path(), "train.tsv", 0, 200);
    let b = trec_slice(dir.path(), "train.tsv", 200, 100);
    let out = dir.path().join("mixed.tsv");
    let o = coordinator(&[
        "data",
        "export",
        "--data",
        a.to_str().unwrap(),
        "--data",
        b.to_str().unwrap(),
        "--with-source",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = coordinator(&[
        "data",
        "preview",
        "--data",
        out.to_str().unwrap(),
        "--limit",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains(&format!("source {}: 200 rows", a.display())),
        "{s}"
    );
    assert!(
        s.contains(&format!("source {}: 100 rows", b.display())),
        "{s}"
    );
    assert!(
        stderr(&o).contains("mixed.tsv:1: a header line"),
        "{}",
        stderr(&o)
    );
    // A weight would mix the two as one: refused, saying why.
    let o = coordinator(&[
        "data",
        "preview",
        "--data",
        &format!("{}:0.5", out.display()),
        "--data",
        &format!("{}:0.5", a.display()),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("its rows name their sources"),
        "{}",
        stderr(&o)
    );
}

/// `--augment chars`: each example and two noised copies of it, word for word, the same on
/// every run.
#[test]
fn export_with_character_noise_keeps_every_copys_words_and_repeats_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(dir.path(), "train.tsv", 0, 300);
    let export = |name: &str| {
        let out = dir.path().join(name);
        let o = coordinator(&[
            "data",
            "export",
            "--data",
            slice.to_str().unwrap(),
            "--augment",
            "chars",
            "--num-aug",
            "2",
            "--char-rate",
            "0.3",
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let first = export("a.tsv");
    assert_eq!(first, export("b.tsv"), "the same bytes on a second run");

    // The pipeline keeps one of rows that repeat (text, label).
    let mut originals: Vec<(String, Vec<String>)> = load(&slice, &LoadOptions::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.label, Tokenizer::Whitespace.tokenize(&r.text)))
        .collect();
    originals.sort();
    originals.dedup();
    let text = String::from_utf8(first).unwrap();
    let rows: Vec<(&str, &str)> = text.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(rows.len(), 3 * originals.len());
    // Words per sentence and label: each original once, each of its copies twice more.
    let shape = |label: &str, text: &str| {
        let words: Vec<&str> = text.split_whitespace().collect();
        (label.to_string(), words.len())
    };
    let mut want: HashMap<(String, usize), usize> = HashMap::new();
    for (label, tokens) in &originals {
        *want.entry((label.clone(), tokens.len())).or_default() += 3;
    }
    let mut got: HashMap<(String, usize), usize> = HashMap::new();
    for (label, text) in &rows {
        *got.entry(shape(label, text)).or_default() += 1;
    }
    assert_eq!(got, want);
    let exported: std::collections::HashSet<&str> = rows.iter().map(|(_, t)| *t).collect();
    assert!(
        exported.len() > originals.len() * 3 / 2,
        "copies differ from their originals: {} distinct of {}",
        exported.len(),
        rows.len()
    );
}

#[test]
fn preview_shows_each_tasks_classes_and_share_and_export_refuses_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let questions = trec_slice(dir.path(), "train.tsv", 0, 400);
    let subj = smalltext_tests::root().join("data/subj/train.tsv");
    let tasks = [
        format!("subj={}", subj.display()),
        format!("trec={}:0.3", questions.display()),
    ];
    let o = coordinator(&[
        "data",
        "preview",
        "--task",
        &tasks[0],
        "--task",
        &tasks[1],
        "--balance",
        "oversample",
        "--limit",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("task subj: 300 rows"), "{out}");
    assert!(out.contains("mixing 2 tasks by weight"), "{out}");
    // Each task's own classes, balanced to its own majority, and its share of the epoch.
    let after = |label: &str| -> usize {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} in {out}"));
        line.rsplit('→').next().unwrap().trim().parse().unwrap()
    };
    assert_eq!(after("objective"), after("subjective"));
    assert_eq!(after("HUM"), after("ENTY"));
    assert_ne!(after("objective"), after("HUM"));
    let shares: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("task ").and_then(|r| r.split(": ").nth(1)))
        .filter_map(|r| r.strip_suffix("% of the epoch"))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(shares.len(), 2, "{out}");
    assert!(
        (shares.iter().sum::<f64>() - 100.0).abs() < 0.2,
        "{shares:?}"
    );

    let o = coordinator(&[
        "data",
        "export",
        "--task",
        &tasks[0],
        "--out",
        dir.path().join("x.tsv").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("export each task by itself"),
        "{}",
        stderr(&o)
    );
}
