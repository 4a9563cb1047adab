//! Times `Synonyms::get` on the embedded WordNet table: 1,000,000 look-ups over a word list
//! mixing plain words, inflected forms (morphy), exception forms and unknown words.
//!
//! Run: `cargo run --release -p common --example synonym_lookup`

use common::augment::synonyms::Synonyms;
use std::hint::black_box;
use std::time::Instant;

const WORDS: &[&str] = &[
    "car",
    "happy",
    "dogs",
    "running",
    "went",
    "geese",
    "happier",
    "bank",
    "set",
    "good",
    "question",
    "answer",
    "city",
    "country",
    "people",
    "located",
    "largest",
    "river",
    "what",
    "qwertyuiop",
    "movie",
    "film",
    "great",
    "terrible",
    "acting",
    "plot",
    "boring",
    "wonderful",
    "computer",
    "invented",
    "president",
    "world",
    "water",
    "children",
    "studies",
    "quickly",
];

fn main() {
    let started = Instant::now();
    let synonyms = Synonyms::wordnet();
    println!(
        "table ready in {:?}: {} head words",
        started.elapsed(),
        synonyms.headword_count()
    );

    const LOOKUPS: usize = 1_000_000;
    let mut found = 0usize;
    let started = Instant::now();
    for i in 0..LOOKUPS {
        found += black_box(synonyms.get(black_box(WORDS[i % WORDS.len()]))).len();
    }
    let get = started.elapsed();

    let started = Instant::now();
    let mut with = 0usize;
    for i in 0..LOOKUPS {
        with += usize::from(synonyms.has(black_box(WORDS[i % WORDS.len()])));
    }
    let has = started.elapsed();

    println!(
        "get: {:.2} µs per look-up ({} synonyms on average)",
        get.as_secs_f64() * 1e6 / LOOKUPS as f64,
        found / LOOKUPS
    );
    println!(
        "has: {:.3} µs per look-up ({} of {} words have synonyms)",
        has.as_secs_f64() * 1e6 / LOOKUPS as f64,
        with * WORDS.len() / LOOKUPS,
        WORDS.len()
    );
}
