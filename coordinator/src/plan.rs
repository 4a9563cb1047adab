//! A training run's plan: the flags (from the command line, a `--config` file or `experiment`)
//! checked against each other in one place, and what follows from them resolved once: where
//! the workers come from, how many threads each runs, where the run directory is, which
//! address the coordinator listens on and the token workers join with.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use common::encoder::EncoderMode;

use crate::class_weights::ClassWeights;
use crate::cli::{ScheduleKind, TrainArgs, Workers};

/// Where a run's workers come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerSource {
    /// This many worker processes, started here (`--workers N`).
    Local(usize),
    /// Worker daemons at these addresses, enrolled in the run; they dial back to `advertise`
    /// (`--workers host:port,...`).
    Daemons {
        addrs: Vec<String>,
        advertise: String,
    },
    /// This many workers that join by themselves (`--listen ADDR --expect-workers N`).
    Joining(usize),
}

/// A training run, ready to start: every combination of flags has been checked.
pub struct TrainPlan {
    pub args: TrainArgs,
    pub workers: WorkerSource,
    /// Workers the run starts with.
    pub world: usize,
    /// Compute threads per worker.
    pub threads: usize,
    pub run_dir: PathBuf,
    /// The address the coordinator's gRPC service listens on (port 0: any free port).
    pub listen: String,
    /// The join token: a fresh random one for local workers, else `--token-file` or
    /// SMALLTEXT_TOKEN.
    pub token: String,
    /// The worker program local workers run (default: `worker` beside this executable).
    pub worker_program: Option<PathBuf>,
    pub class_weights: Option<ClassWeights>,
}

/// Everything but the token, which must never reach a log.
impl std::fmt::Debug for TrainPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainPlan")
            .field("args", &self.args)
            .field("workers", &self.workers)
            .field("world", &self.world)
            .field("threads", &self.threads)
            .field("run_dir", &self.run_dir)
            .field("listen", &self.listen)
            .field("token", &"(hidden)")
            .field("worker_program", &self.worker_program)
            .field("class_weights", &self.class_weights)
            .finish()
    }
}

impl TrainPlan {
    /// Checks `args` and resolves what follows from them.
    pub fn from_args(mut args: TrainArgs) -> Result<Self> {
        check_model_flags(&args)?;
        // The mode's defaults, made explicit: summary.json and the model's provenance then
        // say what the run trained with.
        let t = &mut args.train;
        t.batch_size = Some(t.batch_size());
        t.lr_schedule = Some(t.lr_schedule());
        t.weight_decay = Some(t.weight_decay());
        t.select_by = Some(t.select_by());
        t.head = Some(t.head());
        if t.finetunes() {
            t.encoder_lr = Some(t.encoder_lr());
        }
        let class_weights = args
            .train
            .class_weights
            .as_deref()
            .map(str::parse::<ClassWeights>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        if args.data.data.is_empty() && args.data.task.is_empty() {
            bail!(
                "no training data: give --data PATH (e.g. --data data/trec/train.tsv), or tasks \
                 with --task NAME=PATH; see --help"
            );
        }
        let tasks = common::data::task_flags::ordered(&args.data)?;
        check_task_tests(&args, tasks.as_deref())?;
        if args.train.patience.is_some()
            && args.data.eval.is_none()
            && args.data.eval_split.is_none()
        {
            bail!("--patience needs a validation set: give --eval FILE or --eval-split FRACTION");
        }
        common::augment::AugmentConfig::of(&args.data).refuse_unused()?;
        if let (Some(w), ScheduleKind::Constant) = (args.train.warmup, args.train.lr_schedule()) {
            bail!("--warmup {w} applies to --lr-schedule linear; the schedule is constant");
        }
        let workers = match (&args.workers, args.expect_workers) {
            (Workers::Remote(_), Some(_)) => bail!(
                "--workers host:port,... runs the job on those worker daemons and \
                 --expect-workers N waits for workers that join by themselves: give one of them"
            ),
            (Workers::Remote(addrs), None) => WorkerSource::Daemons {
                advertise: crate::daemons::advertise_addr(args.advertise_addr.as_deref(), addrs)?,
                addrs: addrs.clone(),
            },
            (_, Some(n)) => WorkerSource::Joining(n),
            (Workers::Local(n), None) => WorkerSource::Local(*n),
        };
        let world = match &workers {
            WorkerSource::Local(n) | WorkerSource::Joining(n) => *n,
            WorkerSource::Daemons { addrs, .. } => addrs.len(),
        };
        if world == 0 {
            bail!("a run needs at least one worker");
        }
        if args.min_workers as usize > world {
            bail!(
                "--min-workers {} is more than the run's {world} workers: the run would give up \
                 before it starts; give at most {world}",
                args.min_workers
            );
        }
        let token = match workers {
            WorkerSource::Local(_) => random_token(),
            _ => common::read_token(args.token_file.as_deref())?,
        };
        let listen = args.listen.clone().unwrap_or_else(|| {
            match &workers {
                WorkerSource::Daemons { addrs, .. } => crate::daemons::default_listen(addrs),
                _ => "127.0.0.1:0",
            }
            .into()
        });
        Ok(TrainPlan {
            threads: args.threads.unwrap_or_else(|| (cores() / world).max(1)),
            run_dir: args.run_dir.clone().unwrap_or_else(default_run_dir),
            listen,
            token,
            world,
            workers,
            worker_program: None,
            class_weights,
            args,
        })
    }

    /// The listener for the coordinator's gRPC service, on the planned address.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("listening on {}", self.listen))
    }

    /// Local workers, if the run starts its own.
    pub fn local_workers(&self) -> Option<usize> {
        match self.workers {
            WorkerSource::Local(n) => Some(n),
            _ => None,
        }
    }

    /// The files a run reads its examples and labels from: training sources, validation and
    /// test sets, the label map.
    fn input_paths(&self) -> Vec<&std::path::Path> {
        let args = &self.args;
        let data = args.data.data.iter().map(|s| s.path.as_path());
        let tasks = args.data.task.iter().map(|t| t.source.path.as_path());
        let task_files =
            (args.data.task_eval.iter().chain(&args.task_test)).map(|f| f.path.as_path());
        let others = [&args.data.eval, &args.test, &args.data.label_map];
        data.chain(tasks)
            .chain(task_files)
            .chain(others.into_iter().flatten().map(|p| p.as_path()))
            .collect()
    }

    /// The run's hashed input files, as `command.json` and `summary.json` record them.
    pub fn input_files(&self) -> Result<Vec<crate::rundir::InputFile>> {
        self.input_paths()
            .into_iter()
            .map(crate::rundir::InputFile::hash)
            .collect()
    }
}

/// `--task-test` names tasks, each once, and the target's test set is `--test` or one of them.
fn check_task_tests(
    args: &TrainArgs,
    tasks: Option<&[common::data::tasks::TaskSpec]>,
) -> Result<()> {
    let Some(tasks) = tasks else {
        if let Some(f) = args.task_test.first() {
            bail!("--task-test {f} needs tasks: give them with --task NAME=PATH");
        }
        return Ok(());
    };
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    for (i, f) in args.task_test.iter().enumerate() {
        if !names.contains(&f.name.as_str()) {
            bail!(
                "--task-test {f}: {} is not a task; the tasks are {}",
                f.name,
                names.join(", ")
            );
        }
        let twice = args.task_test[..i].iter().any(|g| g.name == f.name)
            || (f.name == names[0] && args.test.is_some());
        if twice {
            bail!("two test sets for task {}", f.name);
        }
    }
    Ok(())
}

/// The model's input: at most one pretrained start, and nothing frozen that starts random.
fn check_model_flags(args: &TrainArgs) -> Result<()> {
    let t = &args.train;
    if t.encoder.is_some() && t.init_embeddings.is_some() {
        bail!("--encoder and --init-embeddings both set the model's input: give one of them");
    }
    let pretrained_table = t.init_embeddings.is_some()
        || (t.encoder.is_some() && t.encoder_mode != EncoderMode::Features);
    if !t.finetunes() {
        for (flag, given) in [
            ("--encoder-lr", t.encoder_lr.is_some()),
            ("--finetune-layers", t.finetune_layers.is_some()),
            ("--encoder-random-init", t.encoder_random_init),
        ] {
            if given {
                bail!("{flag} applies to --encoder DIR --encoder-mode finetune");
            }
        }
    }
    if let (Some(k), Some(dir)) = (t.finetune_layers, &t.encoder) {
        let layers = common::encoder::read_config(dir)
            .with_context(|| format!("--encoder {}", dir.display()))?
            .num_hidden_layers;
        if k > layers {
            bail!(
                "--finetune-layers {k}: {} has {layers} transformer blocks",
                dir.display()
            );
        }
    }
    if t.freeze_embeddings && !pretrained_table {
        bail!(
            "--freeze-embeddings keeps the embedding table as it starts, and nothing pretrained \
             starts it: it would freeze random vectors. Give --init-embeddings FILE, or \
             --encoder DIR --encoder-mode embeddings or finetune, or leave the table to train"
        );
    }
    Ok(())
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{secs}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn plan(args: &[&str]) -> Result<TrainPlan> {
        let argv = std::iter::once("coordinator").chain(args.iter().copied());
        TrainPlan::from_args(Flags::try_parse_from(argv)?.train)
    }

    fn refusal(args: &[&str]) -> String {
        format!("{:#}", plan(args).expect_err("refused"))
    }

    #[test]
    fn combinations_of_flags_are_refused_in_one_place() {
        for (args, why) in [
            (&["--epochs", "2"][..], "no training data"),
            (
                &["--data", "x.tsv", "--patience", "2"][..],
                "--patience needs",
            ),
            (
                &["--data", "x.tsv", "--freeze-embeddings"][..],
                "would freeze random vectors",
            ),
            (
                &[
                    "--data",
                    "x.tsv",
                    "--encoder",
                    "m",
                    "--init-embeddings",
                    "v.txt",
                ][..],
                "give one of them",
            ),
            (
                &[
                    "--data",
                    "x.tsv",
                    "--workers",
                    "a:1,b:2",
                    "--expect-workers",
                    "2",
                ][..],
                "give one of them",
            ),
            (
                &["--data", "x.tsv", "--workers", "2", "--min-workers", "3"][..],
                "--min-workers 3",
            ),
            (&["--data", "x.tsv", "--alpha", "0.2"][..], "--alpha"),
            (
                &["--data", "x.tsv", "--class-weights", "a=x"][..],
                "not a number",
            ),
        ] {
            let e = refusal(args);
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }

    #[test]
    fn what_follows_from_the_flags_is_resolved() {
        let p = plan(&["--data", "x.tsv", "--workers", "2", "--threads", "1"]).unwrap();
        assert_eq!(p.workers, WorkerSource::Local(2));
        assert_eq!((p.world, p.threads), (2, 1));
        assert_eq!(p.listen, "127.0.0.1:0");
        assert_eq!(p.token.len(), 64, "a fresh token for local workers");
        assert!(
            !format!("{p:?}").contains(&p.token),
            "the token stays out of Debug"
        );
        let p = plan(&[
            "--data",
            "x.tsv",
            "--eval-split",
            "0.1",
            "--patience",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--expect-workers",
            "3",
            "--run-dir",
            "runs/a",
        ]);
        // Joining workers need a token from the environment or a file.
        let err = format!("{:#}", p.expect_err("no token"));
        assert!(err.contains("token"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let token = token.to_string_lossy().into_owned();
        let p = plan(&[
            "--data",
            "x.tsv",
            "--workers",
            "127.0.0.1:7001,localhost:7002",
            "--token-file",
            &token,
        ])
        .unwrap();
        assert_eq!(
            p.workers,
            WorkerSource::Daemons {
                addrs: vec!["127.0.0.1:7001".into(), "localhost:7002".into()],
                advertise: "127.0.0.1".into()
            }
        );
        assert_eq!((p.world, p.listen.as_str()), (2, "127.0.0.1:0"));
    }
}
