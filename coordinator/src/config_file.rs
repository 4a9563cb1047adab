//! `coordinator --config FILE`: every training option in one TOML file (keys are the long
//! flag names, e.g. `batch-size = 32`, `data = ["a.tsv", "b.tsv:0.5"]`), command-line flags
//! overriding it; and `coordinator config example`, a complete commented file.
//!
//! The file becomes flags placed before the command line's own, so the one parser checks it
//! with the same rules and messages; a key the command line also gives is left out, which is
//! how flags override the file, lists included.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Arg, Command};

/// Subcommands that take no training options (the file applies to training only).
const SUBCOMMANDS: [&str; 7] = [
    "data",
    "evaluate",
    "predict",
    "experiment",
    "export-encoder",
    "config",
    "help",
];

/// `argv` with the options of its `--config FILE` (if any) inserted after the program name.
pub fn expand(argv: Vec<OsString>, cmd: &Command) -> Result<Vec<OsString>> {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args
        .get(1)
        .is_some_and(|a| SUBCOMMANDS.contains(&a.as_str()))
    {
        return Ok(argv);
    }
    let mut path = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            path = args.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else {
        return Ok(argv);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("--config: reading {path}"))?;
    let given = |key: &str| {
        let flag = format!("--{key}");
        let with_value = format!("--{key}=");
        args.iter()
            .skip(1)
            .any(|a| *a == flag || a.starts_with(&with_value))
    };
    let flags = to_flags(Path::new(&path), &text, cmd, &given)?;
    let mut out = Vec::with_capacity(argv.len() + flags.len());
    let mut argv = argv.into_iter();
    out.extend(argv.next());
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(argv);
    Ok(out)
}

/// The flags a configuration file stands for, leaving out the keys `given` on the command line.
pub fn to_flags(
    path: &Path,
    text: &str,
    cmd: &Command,
    given: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map_or(String::new(), |s| format!(":{}", line_of(text, s.start)));
        anyhow::anyhow!("{}{at}: {}", path.display(), e.message())
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let where_ = || format!("{}:{}", path.display(), line_of_key(text, key));
        let name = key.replace('_', "-");
        let Some(arg) = option(cmd, &name) else {
            bail!(
                "{}: unknown option {key:?} (`coordinator config example` lists them all)",
                where_()
            );
        };
        if given(&name) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let value = match (v, takes_value) {
                (toml::Value::Boolean(true), false) => {
                    flags.push(format!("--{name}"));
                    continue;
                }
                (toml::Value::Boolean(false), false) => continue,
                (_, false) => bail!("{}: {key} is a switch: true or false", where_()),
                (toml::Value::String(s), true) => s.clone(),
                (
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_),
                    true,
                ) => v.to_string(),
                _ => bail!(
                    "{}: {key} must be a string, number or list of them",
                    where_()
                ),
            };
            if let Err(why) = check_value(arg, &value) {
                bail!("{}: {key} = {value:?}: {why}", where_());
            }
            flags.push(format!("--{name}={value}"));
        }
    }
    Ok(flags)
}

/// Runs the flag's own value parser on `value`, here too, so that a value out of range is
/// reported at its line of the file rather than as a flag the user never typed.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    // With the flag's delimiter, a list in one value (`augment = "eda,chars"`) is checked
    // item by item, as the command line splits it.
    let probe = Arg::new("value")
        .value_parser(arg.get_value_parser().clone())
        .value_delimiter(arg.get_value_delimiter())
        .allow_hyphen_values(true);
    match Command::new("config")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([value])
    {
        Ok(_) => Ok(()),
        Err(e) => Err(match std::error::Error::source(&e) {
            Some(why) => why.to_string(),
            None => e.to_string().lines().next().unwrap_or_default().to_string(),
        }),
    }
}

/// The training option with this long name (not --config, --help or --version).
fn option<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    if matches!(name, "config" | "help" | "version") {
        return None;
    }
    cmd.get_arguments().find(|a| a.get_long() == Some(name))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let assigned = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='));
            // Options are keys at the top; a `[table]` header is no option either.
            assigned || l.starts_with(&format!("[{key}]"))
        })
        .map_or(1, |i| i + 1)
}

/// A configuration file with every training option: its help as a comment, its default set
/// (or, with no default, commented out).
pub fn example(cmd: &Command) -> String {
    let mut out = String::from(
        "# coordinator --config FILE: every training option; flags on the command line override\n\
         # the file. Keys are the long flag names; lists repeat a flag (data = [\"a.tsv\", \"b.tsv:0.5\"]).\n",
    );
    let mut heading = None;
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_long() else { continue };
        if matches!(name, "config" | "help" | "version") || arg.is_hide_set() {
            continue;
        }
        if arg.get_help_heading() != heading {
            heading = arg.get_help_heading();
            let _ = write!(out, "\n## {}\n", heading.unwrap_or("Options"));
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        for line in wrap(&help, 92) {
            let _ = writeln!(out, "# {line}");
        }
        let takes_value = arg.get_action().takes_values();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let _ = match (takes_value, defaults.first()) {
            (false, _) => writeln!(out, "{name} = false"),
            (true, Some(d)) => writeln!(out, "{name} = {}", literal(d)),
            (true, None) => {
                let placeholder = arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or("VALUE".to_string(), |v| v.to_string());
                writeln!(out, "# {name} = \"{placeholder}\"")
            }
        };
    }
    out
}

fn literal(value: &str) -> String {
    let number = value.parse::<i64>().is_ok() || value.parse::<f64>().is_ok_and(f64::is_finite);
    if number || value == "true" || value == "false" {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use common::data::config::AugmentKind;

    use crate::cmd::command_line::Cli;

    /// `--augment`'s kinds after `--config` with `text`, and `extra` flags.
    fn augment(text: &str, extra: &[&str]) -> anyhow::Result<Vec<AugmentKind>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("run.toml");
        std::fs::write(&path, format!("data = [\"x.tsv\"]\n{text}"))?;
        let argv = ["coordinator", "--config", path.to_str().unwrap()]
            .iter()
            .chain(extra)
            .map(Into::into)
            .collect();
        let argv = super::expand(argv, &Cli::command())?;
        Ok(Cli::try_parse_from(argv)?.train.data.augment)
    }

    #[test]
    fn augment_is_one_kind_or_a_list_in_a_file() {
        use AugmentKind::{Chars, Eda};
        assert_eq!(augment("augment = \"eda\"\n", &[]).unwrap(), [Eda]);
        assert_eq!(
            augment("augment = \"eda,chars\"\n", &[]).unwrap(),
            [Eda, Chars]
        );
        assert_eq!(
            augment("augment = [\"eda\", \"chars\"]\n", &[]).unwrap(),
            [Eda, Chars]
        );
        assert_eq!(
            augment("augment = [\"eda\", \"chars\"]\n", &["--augment", "chars"]).unwrap(),
            [Chars],
            "the command line's list replaces the file's"
        );
        let err = augment("\naugment = \"eda,typos\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("run.toml:3") && err.contains("typos"), "{err}");
    }
}
