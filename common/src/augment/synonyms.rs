//! WordNet 3.0 synonyms for EDA's synonym replacement and random insertion.
//!
//! The EDA reference (Wei & Zou 2019) takes, for a word, the lemma names of every synset NLTK's
//! `wordnet.synsets(word)` returns (all parts of speech, after morphy lemmatisation), with `_`
//! and `-` turned into spaces, lower-cased, reduced to `a-z` and spaces, minus the word itself.
//! [`Synonyms`] answers the same question from a table generated once from the WordNet files
//! (`tools/wordnet/gen_synonyms.py`, layout described there) and embedded in the binary: it
//! is read in place by binary search, so there is nothing to load or parse at start-up and a
//! look-up costs a few binary searches plus a sort of the ids it finds.
//!
//! The morphy step (exception lists, then one round of suffix rules, keeping the forms that
//! are in that part of speech's index) runs here at look-up time, as NLTK 3.8+ does it.
//! WordNet 3.0 licence: `common/data/WORDNET-LICENSE`.

use std::ops::ControlFlow;
use std::sync::OnceLock;

static TABLE: &[u8] = include_bytes!("../../data/wordnet-synonyms.bin");

const MAGIC: &[u8; 8] = b"WNSYN30\0";
const VERSION: u32 = 1;
const SECTIONS: usize = 9;
const HEADER_LEN: usize = MAGIC.len() + 12 + 8 * SECTIONS;

/// Parts of speech in the table's bit order, which is also NLTK's `POS_LIST` order.
const POS_COUNT: usize = 4;

/// NLTK's `MORPHOLOGICAL_SUBSTITUTIONS` (suffix, replacement) per part of speech: noun, verb,
/// adjective, adverb. NLTK's noun list has `ves -> f` besides WordNet's own rules.
const RULES: [&[(&str, &str)]; POS_COUNT] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// A run of little-endian u32s inside the table.
#[derive(Clone, Copy)]
struct U32s(&'static [u8]);

impl U32s {
    fn len(self) -> usize {
        self.0.len() / 4
    }

    // Indexing cannot go out of bounds on the embedded table: the unit test
    // `every_offset_in_the_table_is_in_bounds` walks every offset it holds.
    fn get(self, i: usize) -> u32 {
        let b = &self.0[i * 4..i * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn range(self, start: u32, end: u32) -> U32s {
        U32s(&self.0[start as usize * 4..end as usize * 4])
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        self.0
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The synonym table: views into the embedded bytes (see `tools/wordnet/gen_synonyms.py`).
pub struct Synonyms {
    head_count: usize,
    /// Length-prefixed strings in sorted order; a string's id is its offset here.
    pool: &'static [u8],
    /// Sorted string ids of every look-up key (index head words and exception keys).
    entries: U32s,
    /// Per entry: bit p = in the index of part of speech p, bit 4+p = exception key for p.
    masks: &'static [u8],
    /// Per entry: its first slot (one slot per part of speech it is indexed in).
    first: U32s,
    /// Per slot: offsets into `lists`.
    slots: U32s,
    /// Synonym string ids, ascending within a slot.
    lists: U32s,
    /// entry * 4 + pos of every exception key, ascending.
    exc_key: U32s,
    exc_off: U32s,
    /// Entry indices of each exception's forms that are in that part of speech's index.
    exc_forms: U32s,
}

impl Synonyms {
    /// The embedded WordNet 3.0 table.
    pub fn wordnet() -> &'static Synonyms {
        static WORDNET: OnceLock<Synonyms> = OnceLock::new();
        WORDNET.get_or_init(|| match Synonyms::from_table(TABLE) {
            Ok(s) => s,
            // The table is a build artefact, so a bad one is a packaging bug, not bad input.
            Err(why) => panic!(
                "common/data/wordnet-synonyms.bin is invalid ({why}); \
                 regenerate it with tools/wordnet/gen_synonyms.py"
            ),
        })
    }

    /// Checks the header and slices the sections: O(1), nothing is parsed.
    fn from_table(table: &'static [u8]) -> Result<Synonyms, String> {
        let u32_at = |at: usize| -> u32 {
            table
                .get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if table.len() < HEADER_LEN || &table[..MAGIC.len()] != MAGIC {
            return Err("bad magic".into());
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!("version {version}, expected {VERSION}"));
        }
        if u32_at(16) as usize != SECTIONS {
            return Err(format!("{} sections, expected {SECTIONS}", u32_at(16)));
        }
        let mut sections = [&table[..0]; SECTIONS];
        for (i, section) in sections.iter_mut().enumerate() {
            let (offset, len) = (u32_at(20 + 8 * i) as usize, u32_at(24 + 8 * i) as usize);
            *section = offset
                .checked_add(len)
                .and_then(|end| table.get(offset..end))
                .ok_or_else(|| format!("section {i} out of bounds"))?;
        }
        let [pool, entries, masks, first, slots, lists, exc_key, exc_off, exc_forms] = sections;
        let s = Synonyms {
            head_count: u32_at(12) as usize,
            pool,
            entries: U32s(entries),
            masks,
            first: U32s(first),
            slots: U32s(slots),
            lists: U32s(lists),
            exc_key: U32s(exc_key),
            exc_off: U32s(exc_off),
            exc_forms: U32s(exc_forms),
        };
        // Cheap consistency checks between section sizes; offsets inside are checked by tests.
        let e = s.entries.len();
        if s.masks.len() != e
            || s.first.len() != e + 1
            || s.slots.len() == 0
            || s.exc_off.len() != s.exc_key.len() + 1
            || [entries, first, slots, lists, exc_key, exc_off, exc_forms]
                .iter()
                .any(|b| b.len() % 4 != 0)
        {
            return Err("section sizes disagree".into());
        }
        Ok(s)
    }

    /// Synonyms of a lower-cased word, as NLTK's `wordnet.synsets(word)` and EDA's cleaning
    /// give them: sorted, unique, without the word itself. Multi-word synonyms ("ice cream")
    /// contain spaces; the caller splits them. Upper-case input matches nothing.
    pub fn get(&self, word: &str) -> Vec<&'static str> {
        let mut ids = Vec::new();
        let _ = self.for_each_list(word, |list| {
            ids.extend(list.iter());
            ControlFlow::Continue(())
        });
        // Ids are offsets into a sorted pool, so sorting them sorts the strings.
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| self.string(id))
            .filter(|s| !s.is_empty() && *s != word)
            .collect()
    }

    /// True if [`get`](Self::get) would return at least one synonym; allocates nothing.
    pub fn has(&self, word: &str) -> bool {
        self.for_each_list(word, |list| {
            // Strings in a list are distinct, so two of them cannot both be `word`.
            if list.len() > 1 || list.iter().any(|id| self.string(id) != word) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
    }

    /// The number of distinct head words in WordNet's index files.
    pub fn headword_count(&self) -> usize {
        self.head_count
    }

    /// Calls `f` with the synonym list of every (form, part of speech) NLTK's `synsets(word)`
    /// would visit: per part of speech, the exception list's forms if `word` is an exception
    /// key there, else `word` and its one-rule base forms, each only where it is in that index.
    fn for_each_list(
        &self,
        word: &str,
        mut f: impl FnMut(U32s) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let entry = self.find(word, "");
        for (pos, rules) in RULES.iter().enumerate() {
            if let Some(e) = entry {
                if self.masks[e] & (0x10 << pos) != 0 {
                    for form in self.exception_forms(e, pos).iter() {
                        if let Some(list) = self.list(form as usize, pos) {
                            f(list)?;
                        }
                    }
                    continue;
                }
                if let Some(list) = self.list(e, pos) {
                    f(list)?;
                }
            }
            for (suffix, replacement) in rules.iter() {
                let Some(stem) = word.strip_suffix(suffix) else {
                    continue;
                };
                if let Some(list) = self.find(stem, replacement).and_then(|e| self.list(e, pos)) {
                    f(list)?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The synonym list of entry `e` in part of speech `pos`, if it is in that index.
    fn list(&self, e: usize, pos: usize) -> Option<U32s> {
        let mask = self.masks[e] & 0xF;
        if mask & (1 << pos) == 0 {
            return None;
        }
        // Slots follow the set bits of the mask, so count the bits below `pos`.
        let slot = self.first.get(e) as usize + (mask & ((1 << pos) - 1)).count_ones() as usize;
        Some(
            self.lists
                .range(self.slots.get(slot), self.slots.get(slot + 1)),
        )
    }

    /// The forms an exception key stands for in `pos` (entry indices), found by binary search.
    fn exception_forms(&self, e: usize, pos: usize) -> U32s {
        let key = (e * POS_COUNT + pos) as u32;
        let (mut lo, mut hi) = (0, self.exc_key.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.exc_key.get(mid).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return self
                        .exc_forms
                        .range(self.exc_off.get(mid), self.exc_off.get(mid + 1))
                }
            }
        }
        U32s(&[])
    }

    /// The entry whose key is `stem` followed by `suffix` (two parts, so morphy's candidate
    /// forms need no allocation).
    fn find(&self, stem: &str, suffix: &str) -> Option<usize> {
        let (stem, suffix) = (stem.as_bytes(), suffix.as_bytes());
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cmp_concat(self.bytes(self.entries.get(mid)), stem, suffix) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn bytes(&self, id: u32) -> &'static [u8] {
        let start = id as usize + 1;
        &self.pool[start..start + usize::from(self.pool[id as usize])]
    }

    /// The pool is ASCII (checked by a test), so this never yields the empty fallback.
    fn string(&self, id: u32) -> &'static str {
        std::str::from_utf8(self.bytes(id)).unwrap_or_default()
    }
}

/// Compares `s` with the concatenation `a ++ b`.
fn cmp_concat(s: &[u8], a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = s.len().min(a.len());
    s[..n].cmp(&a[..n]).then_with(|| {
        if s.len() < a.len() {
            std::cmp::Ordering::Less
        } else {
            s[a.len()..].cmp(b)
        }
    })
}

/// Synonyms that are at least one token (WordNet's cleaning can leave a bare space, e.g. of "9-11").
pub(super) fn usable(syn: &Synonyms, word: &str) -> Vec<&'static str> {
    let mut all = syn.get(word);
    all.retain(|s| !s.trim().is_empty());
    all
}

/// Multi-word synonyms ("ice cream") become several tokens.
pub(super) fn push_synonym(out: &mut Vec<&str>, synonym: &'static str) {
    out.extend(synonym.split(' ').filter(|s| !s.is_empty()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wn() -> &'static Synonyms {
        Synonyms::wordnet()
    }

    #[test]
    fn header_is_valid() {
        assert_eq!(&TABLE[..8], MAGIC);
        let s = Synonyms::from_table(TABLE).expect("embedded table is valid");
        // WordNet 3.0 has 147,306 distinct lemmas across its four index files.
        assert_eq!(s.headword_count(), 147_306);
        assert!(Synonyms::from_table(&TABLE[..10]).is_err());
    }

    #[test]
    fn rejects_a_wrong_version() {
        let mut bad = TABLE[..HEADER_LEN].to_vec();
        bad[8] = 99;
        let bad: &'static [u8] = Box::leak(bad.into_boxed_slice());
        let err = Synonyms::from_table(bad).err().expect("rejected");
        assert!(err.contains("version 99"), "{err}");
    }

    #[test]
    fn every_offset_in_the_table_is_in_bounds() {
        let s = wn();
        let mut previous: Option<&[u8]> = None;
        for i in 0..s.entries.len() {
            let id = s.entries.get(i) as usize;
            assert!(id < s.pool.len() && id + 1 + usize::from(s.pool[id]) <= s.pool.len());
            let key = s.bytes(id as u32);
            assert!(previous < Some(key), "entries sorted and unique");
            previous = Some(key);
        }
        for i in 0..s.first.len() {
            assert!((s.first.get(i) as usize) < s.slots.len());
        }
        for i in 0..s.slots.len() {
            assert!(s.slots.get(i) as usize <= s.lists.len());
        }
        for i in 0..s.exc_off.len() {
            assert!(s.exc_off.get(i) as usize <= s.exc_forms.len());
        }
        assert!(s.exc_forms.iter().all(|e| (e as usize) < s.entries.len()));
        for e in 0..s.entries.len() {
            for pos in 0..POS_COUNT {
                let Some(list) = s.list(e, pos) else { continue };
                let mut ids = list.iter().peekable();
                while let Some(id) = ids.next() {
                    assert!((id as usize) < s.pool.len());
                    assert!(ids.peek().is_none_or(|next| id < *next), "ascending");
                    let syn = s.bytes(id);
                    assert!(!syn.is_empty());
                    assert!(syn.iter().all(|&c| c == b' ' || c.is_ascii_lowercase()));
                }
            }
        }
    }

    #[test]
    fn known_wordnet_facts() {
        let car = wn().get("car");
        assert!(
            car.contains(&"automobile") && car.contains(&"auto"),
            "{car:?}"
        );
        assert!(wn().get("happy").contains(&"felicitous"));
        // Multi-word lemmas come back with spaces.
        assert!(wn().get("dog").contains(&"domestic dog"));
    }

    #[test]
    fn morphy_finds_base_forms() {
        // Suffix rule: dogs -> dog (noun) and dog (verb); "dog" itself is now a synonym.
        let dogs = wn().get("dogs");
        assert!(
            dogs.contains(&"domestic dog") && dogs.contains(&"dog"),
            "{dogs:?}"
        );
        // Exception list: geese -> goose; went -> go.
        assert!(wn().get("geese").contains(&"fathead"));
        assert!(wn().get("went").contains(&"travel"));
        // Adjective rule: happier -> happy.
        assert!(wn().get("happier").contains(&"felicitous"));
    }

    #[test]
    fn results_are_sorted_unique_and_exclude_the_word() {
        for word in ["car", "dogs", "run", "good", "well", "bank", "set"] {
            let syns = wn().get(word);
            assert!(!syns.is_empty(), "{word}");
            assert!(syns.windows(2).all(|w| w[0] < w[1]), "{word}: {syns:?}");
            assert!(!syns.contains(&word), "{word}");
            assert!(wn().has(word));
        }
    }

    #[test]
    fn words_without_synonyms() {
        for word in ["the", "", "qwertyuiop", "xyzs", "Car", "é", "ing", "xyz123"] {
            assert!(wn().get(word).is_empty(), "{word}: {:?}", wn().get(word));
            assert!(!wn().has(word), "{word}");
        }
    }

    #[test]
    fn concatenated_comparison() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_concat(b"dog", b"do", b"g"), Equal);
        assert_eq!(cmp_concat(b"do", b"do", b"g"), Less);
        assert_eq!(cmp_concat(b"d", b"do", b""), Less);
        assert_eq!(cmp_concat(b"doge", b"do", b"g"), Greater);
        assert_eq!(cmp_concat(b"dp", b"do", b"g"), Greater);
    }
}
