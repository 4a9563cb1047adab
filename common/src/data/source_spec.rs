//! A training source as the command line names it: `PATH` or `PATH:WEIGHT`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A training source: `PATH` or `PATH:WEIGHT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceSpec {
    pub path: PathBuf,
    pub weight: Option<f64>,
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty data path".into());
        }
        if let Some((path, w)) = s.rsplit_once(':') {
            if let Ok(weight) = w.parse::<f64>() {
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(format!("{s}: weight must be a positive number"));
                }
                return Ok(SourceSpec {
                    path: path.into(),
                    weight: Some(weight),
                });
            }
        }
        Ok(SourceSpec {
            path: s.into(),
            weight: None,
        })
    }
}

impl TryFrom<String> for SourceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SourceSpec> for String {
    fn from(s: SourceSpec) -> String {
        s.to_string()
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            Some(w) => write!(f, "{}:{w}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_spec_parses_optional_weight() {
        let s: SourceSpec = "a/b.jsonl:0.3".parse().unwrap();
        assert_eq!((s.path, s.weight), (PathBuf::from("a/b.jsonl"), Some(0.3)));
        let s: SourceSpec = "c:/x.tsv".parse().unwrap();
        assert_eq!(s.weight, None);
        assert!("a.tsv:-1".parse::<SourceSpec>().is_err());
    }
}
