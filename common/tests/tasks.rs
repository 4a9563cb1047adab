//! Multi-task data on real files (TREC's questions and the bundled SUBJ slice): each task
//! keeps its labels in a block of its own, the target first; the validation split, class
//! balance and de-duplication work within each task; the vocabulary puts the target's words
//! first; and what cannot be meant is refused.

use std::io::Write;
use std::path::PathBuf;

use common::data::config::DataConfig;
use common::pipeline::Pipeline;
use common::resample::Balance;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(rel)
}

/// The first `n` lines of `from`, as a file of their own.
fn slice(dir: &tempfile::TempDir, from: &PathBuf, name: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(from).unwrap();
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for line in text.lines().take(n) {
        writeln!(f, "{line}").unwrap();
    }
    path
}

fn tasks(specs: &[(&str, &PathBuf, Option<f64>)]) -> DataConfig {
    DataConfig {
        task: specs
            .iter()
            .map(|(n, p, w)| {
                let weight = w.map(|w| format!(":{w}")).unwrap_or_default();
                format!("{n}={}{weight}", p.display()).parse().unwrap()
            })
            .collect(),
        ..DataConfig::default()
    }
}

fn names(p: &Pipeline) -> Vec<&str> {
    p.tasks().iter().map(|t| t.name.as_str()).collect()
}

#[test]
fn each_task_keeps_its_labels_the_target_first() {
    let dir = tempfile::tempdir().unwrap();
    let trec = slice(&dir, &data("trec/train.tsv"), "trec.tsv", 400);
    let subj = data("subj/train.tsv");
    let mut c = tasks(&[("trec", &trec, None), ("subj", &subj, None)]);
    c.target = Some("subj".into());
    let p = Pipeline::new(&c).unwrap();
    assert_eq!(names(&p), ["subj", "trec"]);
    assert_eq!(
        p.labels(),
        [
            "objective",
            "subjective",
            "ABBR",
            "DESC",
            "ENTY",
            "HUM",
            "LOC",
            "NUM"
        ]
    );
    assert_eq!(p.tasks()[0].labels, 0..2);
    assert_eq!(p.tasks()[1].labels, 2..8);
    // Source k is task k: every example's label lies in its task's block.
    for ex in p.epoch(0) {
        let block = p.task_labels(ex.source() as usize);
        assert!(block.contains(&(ex.label as usize)), "{ex:?}");
    }
    assert_eq!(p.train_docs(0).len(), 300);
    assert_eq!(p.train_docs(1).len() + p.sources()[1].duplicates, 400);
    // A test file is read as the target's, or as the task named.
    let test = p.load_labelled(&data("subj/test.tsv"), "test set").unwrap();
    assert!(test.iter().all(|d| d.label < 2));
    let other = p
        .load_labelled_for(1, &data("trec/test.tsv"), "test set")
        .unwrap();
    assert!(other.iter().all(|d| (2..8).contains(&d.label)));
    assert!(p.load_labelled(&data("trec/test.tsv"), "test set").is_err());
    // The target's words come first in the vocabulary.
    let v = p.vocab();
    let subj_words: std::collections::HashSet<&str> = p
        .train_docs(0)
        .iter()
        .flat_map(|d| d.tokens.iter().map(String::as_str))
        .collect();
    let first: Vec<&str> = (2..2 + subj_words.len() as u32)
        .map(|id| v.token(id).unwrap())
        .collect();
    assert!(first.iter().all(|w| subj_words.contains(w)));
}

#[test]
fn validation_split_and_balance_are_per_task_and_the_mix_follows_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let trec = slice(&dir, &data("trec/train.tsv"), "trec.tsv", 1000);
    let subj = data("subj/train.tsv");
    let mut c = tasks(&[("subj", &subj, None), ("trec", &trec, Some(0.5))]);
    c.eval_split = Some(0.1);
    c.balance = Balance::Oversample;
    let p = Pipeline::new(&c).unwrap();
    // Each task's validation rows come from that task alone, and the target's split is the
    // one a run of the target alone makes.
    let eval = p.eval_docs();
    let by_task = |t: u16| eval.iter().filter(|d| d.id.source == t).count();
    assert_eq!(by_task(0), 30);
    assert!((95..=105).contains(&by_task(1)), "{}", by_task(1));
    let alone = Pipeline::new(&DataConfig {
        data: vec![subj.display().to_string().parse().unwrap()],
        eval_split: Some(0.1),
        ..DataConfig::default()
    })
    .unwrap();
    let ids = |docs: &[common::data::Doc]| docs.iter().map(|d| d.id.line).collect::<Vec<_>>();
    assert_eq!(ids(&eval[..30]), ids(alone.eval_docs()));
    // Balance: within a task every class reaches that task's majority, not the other's.
    let epoch = p.epoch_items(0);
    for (t, task) in p.tasks().iter().enumerate() {
        let after = &epoch.after[t][task.labels.clone()];
        let most = *after.iter().max().unwrap();
        assert!(
            after.iter().all(|&n| n == most),
            "task {}: {after:?}",
            task.name
        );
    }
    // The draws follow the weights: half from each, ending when subj runs out.
    let drawn: Vec<usize> = epoch.before.iter().map(|c| c.iter().sum()).collect();
    assert_eq!(drawn[0], 270);
    assert!((220..=320).contains(&drawn[1]), "{drawn:?}");
}

#[test]
fn a_sentence_may_be_an_example_of_two_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let a = slice(&dir, &data("subj/train.tsv"), "a.tsv", 50);
    let p = Pipeline::new(&tasks(&[("one", &a, None), ("two", &a, None)])).unwrap();
    assert_eq!((p.train_docs(0).len(), p.train_docs(1).len()), (50, 50));
    assert_eq!(p.sources()[1].duplicates, 0);
}

#[test]
fn what_cannot_be_meant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let subj = data("subj/train.tsv");
    let one_class = dir.path().join("one.tsv");
    std::fs::write(&one_class, "yes\ta sentence\nyes\tanother one\n").unwrap();
    let err = |c: &DataConfig| Pipeline::new(c).err().expect("refused").to_string();
    let e = err(&tasks(&[("subj", &subj, None), ("odd", &one_class, None)]));
    assert!(e.contains("task odd") && e.contains("one class"), "{e}");

    let mut c = tasks(&[("subj", &subj, None)]);
    c.target = Some("cr".into());
    assert!(err(&c).contains("--target cr is not a task; the tasks are subj"));

    let e = err(&tasks(&[("subj", &subj, None), ("subj", &subj, None)]));
    assert!(e.contains("two tasks are called subj"), "{e}");

    let mut c = tasks(&[("subj", &subj, None)]);
    c.data = vec![subj.display().to_string().parse().unwrap()];
    assert!(err(&c).contains("--task and --data exclude each other"));
}

#[test]
fn the_memory_estimate_balances_each_task_within_itself() {
    let dir = tempfile::tempdir().unwrap();
    let trec = slice(&dir, &data("trec/train.tsv"), "trec.tsv", 2000);
    let subj = data("subj/train.tsv");
    let mut c = tasks(&[("subj", &subj, None), ("trec", &trec, None)]);
    c.balance = Balance::Oversample;
    let p = Pipeline::new(&c).unwrap();
    let (estimate, _) = p.epoch_estimate();
    let made = p.epoch_items(0).items.len() as u64;
    // Each task's classes grow to its own majority, not to the largest class of all (TREC's
    // ENTY would make SUBJ's two classes four times what they become).
    assert!(
        estimate.items.abs_diff(made) <= 1,
        "estimated {}, made {made}",
        estimate.items
    );
}
