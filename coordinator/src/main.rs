//! `coordinator`: trains the classifier across workers, and the tools around it
//! (`data preview|export`, `evaluate`, `predict`, `experiment`). The command line is parsed
//! here; everything else is the library's.

use clap::{CommandFactory, Parser};
use coordinator::cmd::command_line::Cli;

fn main() -> std::process::ExitCode {
    let argv =
        match coordinator::config_file::expand(std::env::args_os().collect(), &Cli::command()) {
            Ok(argv) => argv,
            Err(e) => {
                eprintln!(
                    "error: {}",
                    common::error::chain_without_repeats(&format!("{e:#}"))
                );
                return std::process::ExitCode::from(2);
            }
        };
    let cli = Cli::parse_from(argv.clone());
    coordinator::logging::init(&cli.log);
    if cli.resume.is_some() && argv.len() > 3 {
        eprintln!("error: --resume RUN_DIR continues a run with the options it was started with; give no others");
        return std::process::ExitCode::from(2);
    }
    match coordinator::cmd::run(cli, &argv) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                common::error::chain_without_repeats(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[path = "../../tests/support/manifests.rs"]
mod manifests;

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::{CommandFactory, Parser};

    use coordinator::cmd::command_line::Cli;
    use coordinator::config_file;
    use coordinator::TrainPlan;

    fn parse(args: &[&str]) -> anyhow::Result<Cli> {
        let argv: Vec<OsString> = std::iter::once("coordinator")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let argv = config_file::expand(argv, &Cli::command())?;
        Ok(Cli::try_parse_from(argv)?)
    }

    fn write(dir: &std::path::Path, text: &str) -> String {
        let path = dir.join("run.toml");
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn the_example_configuration_is_complete_and_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let example = config_file::example(&Cli::command());
        for flag in [
            "epochs",
            "batch-size",
            "num-aug",
            "workers",
            "metrics-addr",
            "data",
        ] {
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(flag)),
                "{flag} missing from the example"
            );
        }
        let path = write(dir.path(), &example);
        let cli = parse(&["--config", &path, "--data", "x.tsv"]).unwrap();
        let defaults = parse(&["--data", "x.tsv"]).unwrap();
        assert_eq!(cli.train.train, defaults.train.train);
        assert_eq!(cli.train.data, defaults.train.data);
    }

    #[test]
    fn flags_override_the_file_lists_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "epochs = 5\nbatch-size = 16\ndata = [\"a.tsv\", \"b.tsv:0.5\"]\n",
        );
        let cli = parse(&["--config", &path, "--epochs", "2"]).unwrap();
        assert_eq!(cli.train.train.epochs, 2);
        assert_eq!(cli.train.train.batch_size, Some(16));
        assert_eq!(cli.train.data.data.len(), 2);
        let cli = parse(&["--config", &path, "--data", "c.tsv"]).unwrap();
        assert_eq!(
            cli.train.data.data.len(),
            1,
            "the command line's list replaces the file's"
        );
    }

    #[test]
    fn a_bad_file_is_refused_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "epochs = 5\n\nepohcs = 6\n");
        let err = parse(&["--config", &path]).err().unwrap().to_string();
        assert!(
            err.contains("run.toml:3") && err.contains("epohcs"),
            "{err}"
        );
        let path = write(dir.path(), "epochs = [\n");
        let err = parse(&["--config", &path]).err().unwrap().to_string();
        assert!(err.contains("run.toml:"), "{err}");
        let path = write(dir.path(), "epochs = \"many\"\n");
        let err = parse(&["--config", &path, "--data", "x.tsv"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("run.toml:1"), "{err}");
        // Values out of their option's range: the file's line and the flag's rule.
        for (text, line, why) in [
            (
                "data = [\"x.tsv\"]\nbatch-size = 0\n",
                2,
                "0 is less than 1",
            ),
            ("epochs = 3\nlr = -0.5\n", 2, "not a finite number"),
            ("\ndropout = 1.0\n", 2, "below 1"),
            (
                "epochs = 2\n[training]\nlr = 1\n",
                2,
                "unknown option \"training\"",
            ),
        ] {
            let path = write(dir.path(), text);
            let err = parse(&["--config", &path]).err().unwrap().to_string();
            assert!(
                err.contains(&format!("run.toml:{line}")) && err.contains(why),
                "{text:?}: {err}"
            );
        }
    }

    /// A configuration file's options are checked against each other as the command line's
    /// are, and against the flags given beside it.
    #[test]
    fn a_config_file_goes_through_the_plans_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "data = [\"x.tsv\"]\npatience = 2\n");
        let cli = parse(&["--config", &path]).unwrap();
        let err = format!("{:#}", TrainPlan::from_args(cli.train).unwrap_err());
        assert!(err.contains("--patience needs a validation set"), "{err}");
        let cli = parse(&["--config", &path, "--eval-split", "0.1"]).unwrap();
        let plan = TrainPlan::from_args(cli.train).unwrap();
        assert_eq!(plan.args.train.patience, Some(2));
        let path = write(
            dir.path(),
            "data = [\"x.tsv\"]\nworkers = 2\nmin-workers = 3\n",
        );
        let cli = parse(&["--config", &path]).unwrap();
        let err = format!("{:#}", TrainPlan::from_args(cli.train).unwrap_err());
        assert!(err.contains("--min-workers 3"), "{err}");
    }

    /// A renamed or removed flag must not silently break the Kubernetes deployment: the
    /// coordinator's arguments and the ConfigMap's run.toml go through the real parser.
    /// The token Secret is mounted 0400, in pods whose group the kubelet gives it to: a
    /// non-root process can read it and has nothing to warn about.
    #[test]
    fn token_secrets_are_mounted_for_the_owner_alone() {
        let mut secrets = 0;
        for (file, doc) in super::manifests::documents() {
            let pod = &doc["spec"]["template"]["spec"];
            let Some(volumes) = pod["volumes"].as_sequence() else {
                continue;
            };
            for v in volumes.iter().filter(|v| !v["secret"].is_null()) {
                secrets += 1;
                assert_eq!(
                    v["secret"]["defaultMode"].as_u64(),
                    Some(0o400),
                    "{}: {v:?}",
                    file.display()
                );
                assert_eq!(
                    pod["securityContext"]["fsGroup"].as_u64(),
                    pod["securityContext"]["runAsUser"].as_u64(),
                    "{}: fsGroup makes the secret readable to the pod's user",
                    file.display()
                );
            }
        }
        assert!(secrets >= 2, "the coordinator's and the workers' token");
    }

    #[test]
    fn the_coordinator_container_and_its_configmap_parse() {
        let dir = tempfile::tempdir().unwrap();
        let configs: Vec<String> = super::manifests::documents()
            .into_iter()
            .filter(|(_, d)| d["kind"].as_str() == Some("ConfigMap"))
            .filter_map(|(_, d)| d["data"]["run.toml"].as_str().map(str::to_string))
            .collect();
        assert_eq!(configs.len(), 1, "one run.toml ConfigMap");
        let config = write(dir.path(), &configs[0]);
        let coordinators: Vec<_> = super::manifests::containers()
            .into_iter()
            .filter(|c| c.command.first().map(String::as_str) == Some("coordinator"))
            .collect();
        assert!(!coordinators.is_empty());
        for c in coordinators {
            // The ConfigMap is mounted at the path the arguments name.
            let args: Vec<&str> = c
                .args
                .iter()
                .map(|a| {
                    if a.ends_with("run.toml") {
                        config.as_str()
                    } else {
                        a.as_str()
                    }
                })
                .collect();
            if let Err(e) = parse(&args) {
                panic!("{}: coordinator {:?}: {e:#}", c.file.display(), c.args);
            }
        }
    }
}
