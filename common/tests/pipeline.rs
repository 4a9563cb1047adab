//! The pipeline on real data: the bundled TREC training file and slices of it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use common::data::config::{AugmentKind, DataConfig, NumAug};
use common::pipeline::Pipeline;
use common::resample::Balance;

fn trec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/trec/train.tsv")
}

/// The first `n` lines of TREC's training file, as a file of their own.
fn trec_slice(dir: &tempfile::TempDir, name: &str, skip: usize, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(trec()).unwrap();
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for line in text.lines().skip(skip).take(n) {
        writeln!(f, "{line}").unwrap();
    }
    path
}

fn cfg(data: &[&PathBuf]) -> DataConfig {
    DataConfig {
        data: data
            .iter()
            .map(|p| p.display().to_string().parse().unwrap())
            .collect(),
        ..Default::default()
    }
}

fn class_counts(p: &Pipeline, epoch: u64) -> Vec<usize> {
    let mut c = vec![0; p.labels().len()];
    for ex in p.epoch(epoch) {
        c[ex.label as usize] += 1;
    }
    c
}

#[test]
fn trec_eda_oversample_gives_five_times_the_majority_in_every_class() {
    let c = DataConfig {
        augment: vec![AugmentKind::Eda],
        num_aug: NumAug::Count(4),
        balance: Balance::Oversample,
        ..cfg(&[&trec()])
    };
    let p = Pipeline::new(&c).unwrap();
    let enty = p.labels().iter().position(|l| l == "ENTY").unwrap();
    let distinct_enty = p
        .train_docs(0)
        .iter()
        .filter(|d| d.label as usize == enty)
        .count();
    assert_eq!(distinct_enty, 1245);
    assert_eq!(class_counts(&p, 0), vec![5 * 1245; 6]);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let p = Pipeline::new(&cfg(&[&trec()])).unwrap();
    let s = &p.sources()[0];
    assert!(s.duplicates > 0);
    assert_eq!(s.rows, 5452);
    assert_eq!(p.train_rows(), 5452 - s.duplicates);
    let texts: HashSet<(String, u32)> = p
        .train_docs(0)
        .iter()
        .map(|d| (d.tokens.join(" "), d.label))
        .collect();
    assert!(
        texts.len() >= p.train_rows() - 5,
        "near-unique after de-duplication"
    );
}

#[test]
fn augment_balance_fills_classes_without_exact_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "slice.tsv", 0, 400);
    let c = DataConfig {
        augment: vec![AugmentKind::Eda],
        num_aug: NumAug::Count(2),
        balance: Balance::Augment,
        ..cfg(&[&slice])
    };
    let p = Pipeline::new(&c).unwrap();
    let epoch = p.epoch_items(0);
    let counts = &epoch.after[0];
    let max = *counts.iter().max().unwrap();
    assert!(counts.iter().all(|&n| n == max), "{counts:?}");
    // The filled-in sentences (augmentation indices past --num-aug) are all new.
    let mut seen = HashSet::new();
    let mut filled = 0;
    for it in &epoch.items {
        let fresh = seen.insert((it.tokens.clone(), it.label()));
        if it.aug > 2 {
            filled += 1;
            assert!(fresh, "duplicate filled-in sentence {:?}", it.tokens);
        }
    }
    assert!(filled > 100, "{filled}");
}

#[test]
fn eval_split_is_stratified_and_never_reaches_training() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "slice.tsv", 0, 600);
    let c = DataConfig {
        augment: vec![AugmentKind::Eda],
        num_aug: NumAug::Count(4),
        balance: Balance::Augment,
        eval_split: Some(0.1),
        ..cfg(&[&slice])
    };
    let p = Pipeline::new(&c).unwrap();
    let eval_ids: HashSet<_> = p.eval_docs().iter().map(|d| d.id).collect();
    let eval_texts: HashSet<String> = p.eval_docs().iter().map(|d| d.tokens.join(" ")).collect();
    assert!((55..=65).contains(&eval_ids.len()), "{}", eval_ids.len());
    for epoch in 0..3 {
        for it in p.epoch_items(epoch).items {
            assert!(
                !eval_ids.contains(&it.doc.id),
                "an augmentation of a validation example reached training"
            );
            assert!(!eval_texts.contains(&it.tokens.join(" ")));
        }
    }
    // Stratified: every class's share of the validation set is within one example of 10%.
    let mut per_class: HashMap<u32, (usize, usize)> = HashMap::new();
    for d in p.train_docs(0) {
        per_class.entry(d.label).or_default().0 += 1;
    }
    for d in p.eval_docs() {
        per_class.entry(d.label).or_default().1 += 1;
    }
    for (train, eval) in per_class.values() {
        let want = 0.1 * (*train + *eval) as f64;
        assert!(
            (*eval as f64 - want).abs() <= 1.0,
            "{eval} of {}",
            train + eval
        );
    }
}

#[test]
fn eval_split_leaves_every_class_in_training_and_refuses_an_empty_validation_set() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "s.tsv", 0, 100);
    // Almost everything to validation: each class still keeps one training example.
    let p = Pipeline::new(&DataConfig {
        eval_split: Some(0.99),
        ..cfg(&[&slice])
    })
    .unwrap();
    let trained: HashSet<u32> = p.train_docs(0).iter().map(|d| d.label).collect();
    assert_eq!(
        trained.len(),
        p.labels().len(),
        "a class lost to validation"
    );
    assert_eq!(p.train_docs(0).len() + p.eval_docs().len(), 100);
    // Too small a fraction of too few rows: no validation set at all is an error, not a run
    // without model selection.
    let e = Pipeline::new(&DataConfig {
        eval_split: Some(0.001),
        ..cfg(&[&slice])
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("--eval-split 0.001") && e.contains("s.tsv") && e.contains("no validation"),
        "{e}"
    );
}

#[test]
fn eval_split_comes_only_from_the_first_source() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(&dir, "a.tsv", 0, 300);
    let b = trec_slice(&dir, "b.tsv", 300, 300);
    let p = Pipeline::new(&DataConfig {
        eval_split: Some(0.2),
        ..cfg(&[&a, &b])
    })
    .unwrap();
    assert!(p.eval_docs().iter().all(|d| d.id.source == 0));
    assert_eq!(
        p.train_docs(1).len(),
        p.sources()[1].rows - p.sources()[1].duplicates
    );
}

#[test]
fn weighted_mix_keeps_sources_and_concatenation_sees_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(&dir, "a.tsv", 0, 300);
    let b = trec_slice(&dir, "b.tsv", 300, 300);
    let concat = Pipeline::new(&cfg(&[&a, &b])).unwrap();
    let ex = concat.epoch(0);
    assert_eq!(ex.len(), concat.train_rows());
    let ids: HashSet<_> = ex.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), ex.len());
    let mut c = cfg(&[&a, &b]);
    c.data[1].weight = Some(0.25);
    let mixed = Pipeline::new(&c).unwrap();
    let ex = mixed.epoch(1);
    let from_b = ex.iter().filter(|e| e.source() == 1).count() as f64 / ex.len() as f64;
    assert!((0.15..0.35).contains(&from_b), "{from_b}");
}

#[test]
fn same_seed_same_epoch_is_identical_and_epochs_differ() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "s.tsv", 0, 300);
    let c = DataConfig {
        augment: vec![AugmentKind::Eda],
        num_aug: NumAug::Count(3),
        balance: Balance::Oversample,
        ..cfg(&[&slice])
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let a = one.install(|| Pipeline::new(&c).unwrap().epoch(2));
    let b = two.install(|| Pipeline::new(&c).unwrap().epoch(2));
    assert_eq!(a, b);
    let other = Pipeline::new(&c).unwrap().epoch(3);
    assert_ne!(a, other);
}

#[test]
fn labels_unseen_in_training_are_an_error_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.tsv");
    std::fs::write(&train, "pos\tgood\nneg\tbad\n").unwrap();
    let test = dir.path().join("test.tsv");
    std::fs::write(&test, "pos\tfine\nmaybe\thmm\nunsure\tso so\n").unwrap();
    let p = Pipeline::new(&cfg(&[&train])).unwrap();
    let err = p.load_labelled(&test, "test set").unwrap_err().to_string();
    assert!(
        err.contains("maybe, unsure") && err.contains("test.tsv"),
        "{err}"
    );
    let skip = DataConfig {
        unknown_labels: common::data::config::UnknownLabels::Skip,
        ..cfg(&[&train])
    };
    let p = Pipeline::new(&skip).unwrap();
    assert_eq!(p.load_labelled(&test, "test set").unwrap().len(), 1);
}

#[test]
fn single_class_training_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("one.tsv");
    std::fs::write(&train, "pos\tgood\npos\tgreat\n").unwrap();
    let err = Pipeline::new(&cfg(&[&train])).err().unwrap().to_string();
    assert!(err.contains("single class (pos)"), "{err}");
}

/// A source with nothing left for training is a mistake (the training file given as --eval
/// too, or a file given twice), not a source to drop without a word.
#[test]
fn a_source_left_without_training_rows_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = trec_slice(&dir, "a.tsv", 0, 100);
    let same_as_eval = DataConfig {
        eval: Some(a.clone()),
        ..cfg(&[&a])
    };
    let err = Pipeline::new(&same_as_eval).err().unwrap().to_string();
    assert!(
        err.contains(&format!(
            "{}: none of its 100 rows is left for training: 100 are in the validation set",
            a.display()
        )),
        "{err}"
    );
    let b = trec_slice(&dir, "b.tsv", 0, 100);
    let err = Pipeline::new(&cfg(&[&a, &b])).err().unwrap().to_string();
    assert!(
        err.contains(&format!("{}: none of its 100 rows", b.display()))
            && err.contains("repeat (text, label) rows of the sources before it"),
        "{err}"
    );
    // Some rows left: the source stays.
    let c = trec_slice(&dir, "c.tsv", 50, 100);
    assert_eq!(Pipeline::new(&cfg(&[&a, &c])).unwrap().train_rows(), 150);
}

#[test]
fn options_of_steps_that_do_not_run_are_refused() {
    let train = trec();
    let refused = |cfg: DataConfig| Pipeline::new(&cfg).err().unwrap().to_string();
    let err = refused(DataConfig {
        num_aug: NumAug::Count(2),
        ..cfg(&[&train])
    });
    assert!(err.contains("--num-aug 2 asks for augmentations"), "{err}");
    let err = refused(DataConfig {
        alpha_rd: Some(0.2),
        crop: Some(0.8),
        ..cfg(&[&train])
    });
    assert!(
        err.contains("--alpha-rd sets a rate of --augment eda"),
        "{err}"
    );
    let err = refused(DataConfig {
        balance_ratio: 0.5,
        ..cfg(&[&train])
    });
    assert!(err.contains("--balance-ratio 0.5 needs --balance"), "{err}");
    let err = refused(DataConfig {
        mix_stop: common::mix::MixStop::AllExhausted,
        ..cfg(&[&train])
    });
    assert!(
        err.contains("--mix-stop applies to weighted sources"),
        "{err}"
    );
    // Crops alone take --num-aug.
    let p = Pipeline::new(&DataConfig {
        num_aug: NumAug::Count(2),
        crop: Some(0.8),
        ..cfg(&[&train])
    })
    .unwrap();
    assert_eq!(p.plan().num_aug, 2);
}

#[test]
fn label_map_merges_spellings_across_sources() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.tsv");
    std::fs::write(&a, "positive\tgood\nnegative\tbad\n").unwrap();
    let b = dir.path().join("b.tsv");
    std::fs::write(&b, "1\tfine\n0\tawful\n").unwrap();
    // A byte order mark (Excel, Notepad) must not hide the first alias.
    for bom in ["", "\u{feff}"] {
        let map = dir.path().join("map.tsv");
        std::fs::write(&map, format!("{bom}1\tpositive\n0\tnegative\n")).unwrap();
        let p = Pipeline::new(&DataConfig {
            label_map: Some(map),
            ..cfg(&[&a, &b])
        })
        .unwrap();
        assert_eq!(p.labels(), ["negative", "positive"], "bom {bom:?}");
    }
}

#[test]
fn vocabulary_covers_inserted_synonyms() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "s.tsv", 0, 300);
    let c = DataConfig {
        augment: vec![AugmentKind::Eda],
        num_aug: NumAug::Count(4),
        ..cfg(&[&slice])
    };
    let p = Pipeline::new(&c).unwrap();
    let originals: HashSet<&str> = p
        .train_docs(0)
        .iter()
        .flat_map(|d| d.tokens.iter().map(String::as_str))
        .collect();
    let new_words: Vec<String> = p
        .epoch_items(0)
        .items
        .iter()
        .flat_map(|it| {
            it.tokens
                .iter()
                .filter(|t| !originals.contains(t.as_ref()))
                .map(|t| t.to_string())
        })
        .collect();
    assert!(!new_words.is_empty(), "augmentation inserted no new word");
    let unk = new_words
        .iter()
        .filter(|w| p.vocab().id(w) == common::data::vocab::UNK)
        .count();
    assert_eq!(unk, 0, "epoch 0's synonyms are in the vocabulary");
}

#[test]
fn conflicting_label_map_lines_are_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.tsv");
    std::fs::write(&a, "1\tgood\n0\tbad\n").unwrap();
    let map = dir.path().join("map.tsv");
    std::fs::write(&map, "1\tpositive\n# a comment\n1\tpositive\n1\tnegative\n").unwrap();
    let err = Pipeline::new(&DataConfig {
        label_map: Some(map.clone()),
        ..cfg(&[&a])
    })
    .err()
    .expect("a conflict is refused")
    .to_string();
    assert!(
        err.contains("map.tsv:4: \"1\" maps to \"negative\" here and to \"positive\" on line 1"),
        "{err}"
    );
}

#[test]
fn a_class_of_one_or_two_beside_large_ones_is_named_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "t.tsv", 0, 600);
    let mut text = std::fs::read_to_string(&slice).unwrap();
    text.push_str("DSEC\tWhat is a typo ?\n");
    let path = dir.path().join("typo.tsv");
    std::fs::write(&path, &text).unwrap();
    let p = Pipeline::new(&cfg(&[&path])).unwrap();
    let rare = p.rare_classes();
    assert_eq!(rare.len(), 1, "{rare:?}");
    assert_eq!(rare[0].label, "DSEC");
    assert_eq!(rare[0].lines, [format!("{}:601", path.display())]);
    assert!(rare[0].median >= 50);
    // TREC's smallest class, ABBR (86 rows), is small, not suspicious.
    let p = Pipeline::new(&cfg(&[&trec()])).unwrap();
    assert!(p.rare_classes().is_empty(), "{:?}", p.rare_classes());
    // With small classes all round, two examples are no sign of a mistake.
    let small = trec_slice(&dir, "small.tsv", 0, 40);
    let p = Pipeline::new(&cfg(&[&small])).unwrap();
    assert!(p.rare_classes().is_empty(), "{:?}", p.rare_classes());
}

#[test]
fn character_noise_is_redrawn_per_epoch_and_fills_classes_too() {
    let dir = tempfile::tempdir().unwrap();
    let slice = trec_slice(&dir, "slice.tsv", 0, 300);
    let c = DataConfig {
        augment: vec![AugmentKind::Chars],
        char_rate: Some(0.3),
        num_aug: NumAug::Count(2),
        ..cfg(&[&slice])
    };
    let p = Pipeline::new(&c).unwrap();
    let text = |epoch| -> Vec<(u32, String)> {
        let mut items: Vec<(u32, String)> = p
            .epoch_items(epoch)
            .items
            .iter()
            .map(|it| (it.aug, it.tokens.join(" ")))
            .collect();
        items.sort();
        items
    };
    let epoch0 = text(0);
    assert_eq!(epoch0.len(), 3 * p.train_rows());
    assert_eq!(epoch0, text(0));
    assert_ne!(epoch0, text(1));
    // Epoch 0's misspellings are in the vocabulary, as EDA's synonyms are.
    let originals: HashSet<&str> = p
        .train_docs(0)
        .iter()
        .flat_map(|d| d.tokens.iter().map(String::as_str))
        .collect();
    let items = p.epoch_items(0).items;
    let misspelt: Vec<&str> = items
        .iter()
        .flat_map(|it| it.tokens.iter().map(|t| t.as_ref()))
        .filter(|t| !originals.contains(t))
        .collect();
    assert!(misspelt.len() > 100, "{}", misspelt.len());
    assert!(misspelt
        .iter()
        .all(|w| p.vocab().id(w) != common::data::vocab::UNK));

    let balanced = Pipeline::new(&DataConfig {
        balance: Balance::Augment,
        ..c
    })
    .unwrap();
    let epoch = balanced.epoch_items(0);
    let counts = &epoch.after[0];
    let max = *counts.iter().max().unwrap();
    assert!(counts.iter().all(|&n| n == max), "{counts:?}");
    assert!(epoch.items.iter().any(|it| it.aug > 2));
}
