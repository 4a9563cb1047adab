//! Character noise (`--augment chars`): typo-like edits inside words, so that a model learns
//! to read misspelt input. Each word is edited with probability `rate`, by exactly one edit
//! chosen uniformly among four: a character inserted (a QWERTY neighbour of a character beside
//! the gap; a random lowercase letter where that character is no letter key), a character
//! deleted, a letter replaced by one of its QWERTY neighbours, or two adjacent characters
//! swapped. An edit a word does not allow (no letter key to replace, no two adjacent
//! characters that differ) is left out of its choice. Words are edited as `char`s, never
//! splitting a UTF-8 sequence.

use std::borrow::Cow;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::stopwords::is_stop_word;
use crate::rng::{stream, tag};

/// `--char-rate`'s default.
pub const DEFAULT_RATE: f64 = 0.05;

/// Shorter words are left alone: one edit in two letters makes another word, or none.
pub const MIN_CHARS: usize = 3;

/// The noise's own random stream for the augmentations keyed by `key` (the example, the epoch,
/// ...) under `seed`. EDA and crop draw from another: so runs without character noise draw
/// exactly the numbers they drew before it existed.
/// It is made for every example of every epoch: on the stack, `key` at most 6 long.
pub fn noise_stream(seed: u64, key: &[u64]) -> ChaCha8Rng {
    let mut parts = [0u64; 8];
    parts[0] = seed;
    parts[1] = tag::CHAR_NOISE;
    parts[2..2 + key.len()].copy_from_slice(key);
    stream(&parts[..2 + key.len()])
}

/// `words`, each edited with probability `rate` (in [0, 1]) if it is [`noisy`].
pub fn char_noise<'a, R: Rng>(words: &[&'a str], rate: f64, rng: &mut R) -> Vec<Cow<'a, str>> {
    words
        .iter()
        .map(|&w| {
            if rate > 0.0 && noisy(w) && rng.gen_bool(rate) {
                Cow::Owned(edit(w, rng))
            } else {
                Cow::Borrowed(w)
            }
        })
        .collect()
}

/// Whether character noise may edit `word`: not a stop word, not a number, at least
/// [`MIN_CHARS`] characters, and with a letter (a run of punctuation is no word).
pub fn noisy(word: &str) -> bool {
    if word.chars().count() < MIN_CHARS || !word.chars().any(char::is_alphabetic) {
        return false;
    }
    // The tokenizers lower-case; a word given otherwise is still a stop word.
    let stop = if word.chars().any(char::is_uppercase) {
        is_stop_word(&word.to_lowercase())
    } else {
        is_stop_word(word)
    };
    !stop && !is_number(word)
}

/// `1,000`, `3.5`, `-2`, `1/2`, `50%`, `1e5`.
fn is_number(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_digit())
        && (word
            .chars()
            .all(|c| c.is_numeric() || ".,+-/%:".contains(c))
            || word.parse::<f64>().is_ok())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Insert,
    Delete,
    Substitute,
    Swap,
}

/// `word` with one edit (a word of one character or none: an insertion).
fn edit<R: Rng>(word: &str, rng: &mut R) -> String {
    let mut cs: Vec<char> = word.chars().collect();
    let n = cs.len();
    let keys: Vec<usize> = (0..n).filter(|&i| !neighbours(cs[i]).is_empty()).collect();
    let swaps: Vec<usize> = (1..n).filter(|&i| cs[i - 1] != cs[i]).collect();
    let edits: Vec<Edit> = [
        (Edit::Insert, true),
        (Edit::Delete, n > 1),
        (Edit::Substitute, !keys.is_empty()),
        (Edit::Swap, !swaps.is_empty()),
    ]
    .into_iter()
    .filter(|&(_, possible)| possible)
    .map(|(e, _)| e)
    .collect();
    match edits.choose(rng) {
        Some(Edit::Insert) => {
            let at = rng.gen_range(0..=n);
            // The character after the gap or the one before it (at the ends, the one there is).
            let beside = if at == 0 || (at < n && rng.gen_bool(0.5)) {
                cs.get(at)
            } else {
                cs.get(at - 1)
            };
            let c = beside
                .and_then(|&b| neighbour(b, rng))
                .unwrap_or_else(|| rng.gen_range('a'..='z'));
            cs.insert(at, c);
        }
        Some(Edit::Delete) => {
            cs.remove(rng.gen_range(0..n));
        }
        Some(Edit::Substitute) => {
            if let Some(&i) = keys.choose(rng) {
                cs[i] = neighbour(cs[i], rng).unwrap_or(cs[i]);
            }
        }
        Some(Edit::Swap) => {
            if let Some(&i) = swaps.choose(rng) {
                cs.swap(i - 1, i);
            }
        }
        None => {}
    }
    cs.into_iter().collect()
}

/// A random key next to `c` on a QWERTY keyboard, in `c`'s case; `None` if `c` is no letter key.
fn neighbour<R: Rng>(c: char, rng: &mut R) -> Option<char> {
    let keys = neighbours(c);
    let k = *keys.as_bytes().choose(rng)? as char;
    Some(if c.is_ascii_uppercase() {
        k.to_ascii_uppercase()
    } else {
        k
    })
}

/// The letter keys around `c`'s on a QWERTY keyboard (rows staggered as on a real one: `a`
/// lies under `q` and `w`, `z` under `a` and `s`); empty if `c` is no letter key.
pub fn neighbours(c: char) -> &'static str {
    match c.to_ascii_lowercase() {
        'q' => "wa",
        'w' => "qeas",
        'e' => "wrsd",
        'r' => "etdf",
        't' => "ryfg",
        'y' => "tugh",
        'u' => "yihj",
        'i' => "uojk",
        'o' => "ipkl",
        'p' => "ol",
        'a' => "qwsz",
        's' => "weadzx",
        'd' => "ersfxc",
        'f' => "rtdgcv",
        'g' => "tyfhvb",
        'h' => "yugjbn",
        'j' => "uihknm",
        'k' => "iojlm",
        'l' => "opk",
        'z' => "asx",
        'x' => "sdzc",
        'c' => "dfxv",
        'v' => "fgcb",
        'b' => "ghvn",
        'n' => "hjbm",
        'm' => "jkn",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "what",
        "is",
        "the",
        "car",
        "film",
        "of",
        "a",
        "red",
        "house",
        "?",
        "1990",
        "3.5",
        "go",
        "Canada",
        "café",
        "naïve",
        "日本語",
        "...",
        "tool",
        "aaa",
        "élan",
        "über",
        "1,000",
    ];

    fn sentence() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(WORDS), 0..30)
    }

    /// Levenshtein distance on chars.
    fn distance(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut diag = row[0];
            row[0] = i;
            for j in 1..=b.len() {
                let up = row[j];
                row[j] = (up + 1)
                    .min(row[j - 1] + 1)
                    .min(diag + usize::from(a[i - 1] != b[j - 1]));
                diag = up;
            }
        }
        row[b.len()]
    }

    /// `b` is `a` with two adjacent characters swapped.
    fn transposed(a: &str, b: &str) -> bool {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a.get(i) != b.get(i)).collect();
        a.len() == b.len()
            && diff.len() == 2
            && diff[1] == diff[0] + 1
            && a[diff[0]] == b[diff[1]]
            && a[diff[1]] == b[diff[0]]
    }

    fn noise(words: &[&str], rate: f64, seed: u64, epoch: u64) -> Vec<String> {
        let mut rng = noise_stream(seed, &[0, 7, epoch]);
        char_noise(words, rate, &mut rng)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    proptest! {
        #[test]
        fn noise_keeps_the_word_count_and_edits_only_words_it_may(
            words in sentence(), rate in 0.0f64..=1.0, seed: u64,
        ) {
            let out = noise(&words, rate, seed, 0);
            prop_assert_eq!(out.len(), words.len());
            for (w, o) in words.iter().zip(&out) {
                if w != o {
                    prop_assert!(noisy(w), "{w:?} became {o:?}");
                    prop_assert!(!o.is_empty() && !o.contains(char::is_whitespace));
                }
            }
        }

        #[test]
        fn at_rate_one_every_word_it_may_edit_gets_exactly_one_edit(
            words in sentence(), seed: u64,
        ) {
            let out = noise(&words, 1.0, seed, 0);
            for (w, o) in words.iter().zip(&out) {
                if noisy(w) {
                    prop_assert!(
                        distance(w, o) == 1 || transposed(w, o),
                        "{w:?} → {o:?} is not one edit"
                    );
                } else {
                    prop_assert_eq!(*w, o.as_str());
                }
            }
        }

        #[test]
        fn any_unicode_word_gets_one_edit(word in "\\PC{3,12}", seed: u64) {
            let out = edit(&word, &mut noise_stream(seed, &[]));
            prop_assert!(distance(&word, &out) == 1 || transposed(&word, &out), "{word:?} → {out:?}");
        }

        #[test]
        fn a_substitution_is_a_qwerty_neighbour(word in "[a-zA-Z]{3,12}", seed: u64) {
            let out = edit(&word, &mut noise_stream(seed, &[]));
            let (a, b): (Vec<char>, Vec<char>) = (word.chars().collect(), out.chars().collect());
            let diff: Vec<usize> = (0..a.len()).filter(|&i| a.get(i) != b.get(i)).collect();
            // Same length and one place changed: a substitution (a swap changes two places).
            if a.len() == b.len() && diff.len() == 1 {
                let (from, to) = (a[diff[0]], b[diff[0]]);
                prop_assert!(
                    neighbours(from).contains(to.to_ascii_lowercase())
                        && from.is_ascii_uppercase() == to.is_ascii_uppercase(),
                    "{from:?} → {to:?}"
                );
            }
        }

        #[test]
        fn rate_zero_changes_nothing(words in sentence(), seed: u64) {
            let out = noise(&words, 0.0, seed, 0);
            prop_assert_eq!(out, words.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn stop_words_numbers_and_short_words_are_left_alone() {
        for w in [
            "the",
            "which",
            "yourselves",
            "The",
            "1990",
            "3.5",
            "1,000",
            "-2",
            "50%",
            "1e5",
            "go",
            "?",
            "...",
            "日本",
        ] {
            assert!(!noisy(w), "{w}");
        }
        for w in ["car", "house", "café", "日本語", "1990s", "infinity"] {
            assert!(noisy(w), "{w}");
        }
        assert!(is_stop_word("which"));
        let words = ["the", "which", "1990", "go", "?", "3.5"];
        for seed in 0..50 {
            assert_eq!(noise(&words, 1.0, seed, 0), words);
        }
    }

    #[test]
    fn the_same_seed_example_and_epoch_give_the_same_noise_and_another_epoch_other() {
        let words = [
            "who",
            "invented",
            "the",
            "telephone",
            "and",
            "when",
            "was",
            "it",
            "patented",
        ];
        let a = noise(&words, 0.3, 5, 1);
        assert_eq!(a, noise(&words, 0.3, 5, 1));
        let epochs: std::collections::HashSet<Vec<String>> =
            (0..8).map(|e| noise(&words, 0.3, 5, e)).collect();
        assert!(epochs.len() > 4, "{epochs:?}");
        let other_example = char_noise(&words, 0.3, &mut noise_stream(5, &[0, 8, 1]));
        let seeds: std::collections::HashSet<Vec<String>> = (0..8)
            .map(|s| noise(&words, 0.3, s, 1))
            .chain(std::iter::once(
                other_example.into_iter().map(Cow::into_owned).collect(),
            ))
            .collect();
        assert!(seeds.len() > 4, "{seeds:?}");
    }

    #[test]
    fn the_four_edits_are_drawn_about_equally() {
        let mut counts = [0usize; 4];
        let mut rng = noise_stream(1, &[]);
        for _ in 0..4000 {
            let out = edit("keyboard", &mut rng);
            let n = out.chars().count();
            let kind = match n {
                9 => 0,
                7 => 1,
                _ if transposed("keyboard", &out) => 3,
                _ => 2,
            };
            counts[kind] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_keyboard_is_symmetric() {
        for c in 'a'..='z' {
            let keys = neighbours(c);
            assert!(!keys.is_empty() && !keys.contains(c), "{c}");
            for k in keys.chars() {
                assert!(neighbours(k).contains(c), "{c} → {k} but not back");
            }
        }
        assert_eq!(neighbours('Q'), "wa");
        assert_eq!(neighbours('é'), "");
    }
}
