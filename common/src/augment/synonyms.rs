//! TEMPORARY stub until the WordNet branch lands.
pub struct Synonyms;
static S: Synonyms = Synonyms;
impl Synonyms {
    pub fn wordnet() -> &'static Synonyms {
        &S
    }
    pub fn get(&self, word: &str) -> Vec<&'static str> {
        match word {
            "car" => vec!["auto", "automobile", "motor car"],
            "film" => vec!["movie", "picture show"],
            _ => vec![],
        }
    }
    pub fn has(&self, word: &str) -> bool {
        !self.get(word).is_empty()
    }
}
