//! The `--task`, `--target` and `--task-eval` flags checked together and the tasks put in
//! their order: the target first.

use super::config::DataConfig;
use super::tasks::TaskSpec;
use crate::error::DataError;

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
