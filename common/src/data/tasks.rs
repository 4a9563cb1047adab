//! Multi-task data: `--task NAME=PATH[:WEIGHT]` names a task, each with its own labels and its
//! own head over the shared model (`task_flags.rs` checks and orders the flags). The tasks'
//! labels are one list in which each task owns a block (the target's first), so everything
//! that counts by label (balance, class weights, the confusion matrix) works on the list, and
//! each task's part is its block.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::source_spec::SourceSpec;

/// `NAME=PATH` or `NAME=PATH:WEIGHT`: a task and its training file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskSpec {
    pub name: String,
    pub source: SourceSpec,
}

/// `NAME=PATH`: a file of one task (its validation or test set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskFile {
    pub name: String,
    pub path: PathBuf,
}

/// `NAME=REST` split, the name checked: letters, digits, `_`, `-` and `.` (it appears in
/// metrics and on the command line of `predict --task`), and not `all`.
fn split_name(s: &str) -> Result<(&str, &str), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: expected NAME=PATH"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{s}: a task name is letters, digits, '_', '-' or '.', and not empty"
        ));
    }
    if name == "all" {
        return Err(format!(
            "{s}: \"all\" names every task in predict; choose another name"
        ));
    }
    if rest.is_empty() {
        return Err(format!("{s}: no path after '='"));
    }
    Ok((name, rest))
}

impl FromStr for TaskSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = split_name(s)?;
        Ok(TaskSpec {
            name: name.to_string(),
            source: rest.parse()?,
        })
    }
}

impl FromStr for TaskFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = split_name(s)?;
        Ok(TaskFile {
            name: name.to_string(),
            path: rest.into(),
        })
    }
}

// As `SourceSpec`, both are written as their command-line text in JSON.
impl TryFrom<String> for TaskSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TaskSpec> for String {
    fn from(t: TaskSpec) -> String {
        t.to_string()
    }
}

impl fmt::Display for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.source)
    }
}

impl TryFrom<String> for TaskFile {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TaskFile> for String {
    fn from(t: TaskFile) -> String {
        t.to_string()
    }
}

impl fmt::Display for TaskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.path.display())
    }
}

/// A task of a run: its name and its labels' block of the run's label list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub labels: Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_specs_parse_and_print_back() {
        let t: TaskSpec = "sst2=data/sst2.tsv:0.5".parse().unwrap();
        assert_eq!(t.name, "sst2");
        assert_eq!(t.source.weight, Some(0.5));
        assert_eq!(t.to_string(), "sst2=data/sst2.tsv:0.5");
        let f: TaskFile = "cr=a=b.tsv".parse().unwrap();
        assert_eq!((f.name.as_str(), f.path.to_str()), ("cr", Some("a=b.tsv")));
        for bad in ["data.tsv", "=x.tsv", "a b=x.tsv", "cr=", "all=x.tsv"] {
            assert!(bad.parse::<TaskSpec>().is_err(), "{bad}");
        }
    }
}
