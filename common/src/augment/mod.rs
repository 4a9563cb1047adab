pub mod stopwords;
pub mod synonyms;
