//! Multi-task data: `--task NAME=PATH[:WEIGHT]` names a task, each with its own labels and its
//! own head over the shared model. The tasks' labels are one list in which each task owns a
//! block (the target's first), so everything that counts by label (balance, class weights,
//! the confusion matrix) works on the list, and each task's part is its block.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::config::{DataConfig, SourceSpec};
use crate::error::DataError;

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

/// A task name: letters, digits, `_`, `-` and `.`, as it appears in metrics and on the
/// command line of `predict --task`.
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

macro_rules! string_form {
    ($t:ty, $fmt:expr) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(t: $t) -> String {
                t.to_string()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                #[allow(clippy::redundant_closure_call)]
                ($fmt)(self, f)
            }
        }
    };
}

string_form!(TaskSpec, |t: &TaskSpec, f: &mut fmt::Formatter<'_>| write!(
    f,
    "{}={}",
    t.name, t.source
));
string_form!(TaskFile, |t: &TaskFile, f: &mut fmt::Formatter<'_>| write!(
    f,
    "{}={}",
    t.name,
    t.path.display()
));

/// A task of a run: its name and its labels' block of the run's label list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub labels: Range<usize>,
}

/// The tasks of `cfg`, the target first and the others in their order; `None` without
/// `--task`. Refuses what cannot be meant: `--task` with `--data`, two tasks of one name, a
/// `--target` or `--task-eval` that names no task, and two validation sets for one task.
pub fn ordered(cfg: &DataConfig) -> Result<Option<Vec<TaskSpec>>, DataError> {
    let refuse = |msg: String| Err(DataError::Config(msg));
    if cfg.task.is_empty() {
        if let Some(t) = &cfg.target {
            return refuse(format!(
                "--target {t} needs tasks: give them with --task NAME=PATH"
            ));
        }
        if let Some(t) = cfg.task_eval.first() {
            return refuse(format!(
                "--task-eval {t} needs tasks: give them with --task NAME=PATH"
            ));
        }
        return Ok(None);
    }
    if !cfg.data.is_empty() {
        return refuse(
            "--task and --data exclude each other: with tasks, every training file is a task's \
             (--task NAME=PATH[:WEIGHT])"
                .into(),
        );
    }
    let names: Vec<&str> = cfg.task.iter().map(|t| t.name.as_str()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return refuse(format!(
                "two tasks are called {n}: each --task needs a name of its own"
            ));
        }
    }
    let known = || names.join(", ");
    let target = match &cfg.target {
        Some(t) => names.iter().position(|n| n == t).ok_or_else(|| {
            DataError::Config(format!(
                "--target {t} is not a task; the tasks are {}",
                known()
            ))
        })?,
        None => 0,
    };
    for (i, f) in cfg.task_eval.iter().enumerate() {
        if !names.contains(&f.name.as_str()) {
            return refuse(format!(
                "--task-eval {f}: {} is not a task; the tasks are {}",
                f.name,
                known()
            ));
        }
        if cfg.task_eval[..i].iter().any(|g| g.name == f.name)
            || (f.name == names[target] && cfg.eval.is_some())
        {
            return refuse(format!("two validation sets for task {}", f.name));
        }
    }
    if !cfg.task_eval.is_empty() && cfg.eval.is_none() && cfg.eval_split.is_none() {
        return refuse(format!(
            "--task-eval validates other tasks beside the target, and the target {} has no \
             validation set: give --eval FILE or --eval-split FRACTION too",
            names[target]
        ));
    }
    let mut tasks = cfg.task.clone();
    let t = tasks.remove(target);
    tasks.insert(0, t);
    Ok(Some(tasks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tasks: &[&str]) -> DataConfig {
        DataConfig {
            task: tasks.iter().map(|t| t.parse().unwrap()).collect(),
            ..DataConfig::default()
        }
    }

    fn err(c: &DataConfig) -> String {
        ordered(c).unwrap_err().to_string()
    }

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

    #[test]
    fn the_target_goes_first_and_what_cannot_be_meant_is_refused() {
        let mut c = cfg(&["cr=cr.tsv", "sst2=s.tsv:0.5", "subj=j.tsv:0.2"]);
        c.target = Some("sst2".into());
        let names: Vec<String> = ordered(&c)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["sst2", "cr", "subj"]);

        c.target = Some("trec".into());
        assert!(err(&c).contains("--target trec is not a task; the tasks are cr, sst2, subj"));

        let c = cfg(&["cr=cr.tsv", "cr=other.tsv"]);
        assert!(err(&c).contains("two tasks are called cr"));

        let mut c = cfg(&["cr=cr.tsv"]);
        c.data = vec!["x.tsv".parse().unwrap()];
        assert!(err(&c).contains("--task and --data exclude each other"));

        let mut c = cfg(&["cr=cr.tsv"]);
        c.task_eval = vec!["subj=j.tsv".parse().unwrap()];
        assert!(err(&c).contains("subj is not a task"));

        let mut c = cfg(&["cr=cr.tsv"]);
        c.eval = Some("e.tsv".into());
        c.task_eval = vec!["cr=j.tsv".parse().unwrap()];
        assert!(err(&c).contains("two validation sets for task cr"));

        let c = DataConfig {
            target: Some("cr".into()),
            ..DataConfig::default()
        };
        assert!(err(&c).contains("needs tasks"));
    }
}
