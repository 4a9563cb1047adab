//! TEMPORARY stub until the WordNet branch lands.
pub fn is_stop_word(word: &str) -> bool {
    matches!(word, "the" | "a" | "is" | "of" | "what" | "how")
}
