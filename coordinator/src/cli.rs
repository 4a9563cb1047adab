//! The training command line: `coordinator [OPTIONS]`.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use common::data::config::DataConfig;
use common::encoder::EncoderMode;
use common::values::{at_least, dropout, learning_rate, positive};
use serde::{Deserialize, Serialize};

/// `--workers N` (start N local workers) or `--workers host:port,host:port` (worker daemons).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Workers {
    Local(usize),
    Remote(Vec<String>),
}

impl FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<usize>() {
            return if n == 0 {
                Err("--workers needs at least one worker".into())
            } else {
                Ok(Workers::Local(n))
            };
        }
        let addrs: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.contains(':')) {
            return Err(format!(
                "{s:?}: expected a number of local workers or a list host:port,host:port"
            ));
        }
        let addrs = addrs.into_iter().map(common::values::host_port);
        Ok(Workers::Remote(addrs.collect::<Result<_, _>>()?))
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDevice {
    Cpu,
    Cuda,
}

/// How the workers of a ring exchange gradients.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingTransport {
    /// Through a shared-memory segment when every worker runs on this same host (e.g.
    /// `--workers N`), else TCP.
    Auto,
    /// Always over TCP between the workers.
    Tcp,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// A number N: start N worker processes on this machine. Or a list host:port,... of
    /// worker daemons (`worker --listen`) to run the job on.
    #[arg(long, default_value = "1", help_heading = "Cluster")]
    pub workers: Workers,
    /// Compute threads per worker (default: cores / local workers).
    #[arg(long, value_parser = at_least(1), help_heading = "Cluster")]
    pub threads: Option<usize>,
    /// How workers sum gradients: auto (shared memory when all of them run on one host,
    /// 3× faster than loopback TCP; TCP otherwise) or tcp.
    #[arg(long, value_enum, default_value = "auto", help_heading = "Cluster")]
    pub ring_transport: RingTransport,
    /// Device of the local workers: cpu, or cuda (worker i on GPU i; a worker built with
    /// gpu/build.sh). Worker daemons and joining workers choose their own with `worker --device`.
    #[arg(long, value_enum, default_value = "cpu", help_heading = "Cluster")]
    pub device: LocalDevice,
    /// Address the coordinator's gRPC service listens on (default: a free port on loopback,
    /// for local workers and for worker daemons that are all on loopback; on 0.0.0.0 for
    /// daemons elsewhere).
    #[arg(long, value_name = "ADDR", value_parser = common::values::listen_addr, help_heading = "Cluster")]
    pub listen: Option<String>,
    /// With --workers host:port,...: the host name or IP the worker daemons dial to reach this
    /// coordinator (default: 127.0.0.1 when every daemon address is loopback, else this
    /// machine's host name).
    #[arg(long, value_name = "HOST", help_heading = "Cluster")]
    pub advertise_addr: Option<String>,
    /// With --listen: wait for this many workers to join (`worker --coordinator URL`).
    #[arg(long, value_parser = at_least(1), help_heading = "Cluster")]
    pub expect_workers: Option<usize>,
    /// File holding the join token (trailing newline ignored); or set SMALLTEXT_TOKEN. Local
    /// workers get a fresh random token.
    #[arg(long, help_heading = "Cluster")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for every worker to join.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Cluster")]
    pub join_timeout: u64,
    /// Serve the run's metrics for Prometheus at http://ADDR/metrics (e.g. 0.0.0.0:9090):
    /// steps/s, samples/s, loss, all-reduce seconds per step, workers alive, membership changes,
    /// in the OpenMetrics text format (which Prometheus reads), as `smalltext_*` samples.
    #[arg(long, value_parser = common::values::listen_addr, value_name = "ADDR", help_heading = "Cluster")]
    pub metrics_addr: Option<String>,
    /// Seconds without a heartbeat after which a worker counts as lost. The run goes on
    /// with the others: the step in flight is settled, the ring re-formed, and the rest of
    /// the epoch split among the survivors.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Cluster")]
    pub heartbeat_timeout: u64,
    /// Also checkpoint every N steps inside an epoch, so `--resume` loses at most N steps
    /// (0: checkpoints at epoch ends only).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Cluster")]
    pub checkpoint_every: u64,
    /// Give up when fewer workers than this remain after losing some.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Cluster")]
    pub min_workers: u64,

    #[command(flatten)]
    pub data: DataConfig,

    #[command(flatten)]
    pub train: TrainConfig,

    /// Test set, evaluated once at the end with the selected model; never used for training
    /// or model selection.
    #[arg(long, value_name = "FILE", help_heading = "Data")]
    pub test: Option<PathBuf>,
    /// With --task: a test set of a task, repeatable, NAME=PATH (the target's may be given
    /// so, or as --test). Each is evaluated once at the end; summary.json holds every tested
    /// task's figures under "tasks", and the target's as its headline.
    #[arg(long = "task-test", value_name = "NAME=PATH", help_heading = "Tasks")]
    pub task_test: Vec<common::data::tasks::TaskFile>,

    #[command(flatten)]
    pub tls: common::tls::TlsFiles,
    /// Where checkpoints, metrics and the model go (default runs/<timestamp>). One run at a
    /// time: a second run there is refused while the first runs. A directory that holds other
    /// files and no run is refused too, unless --run-dir-force.
    #[arg(long, help_heading = "Output")]
    pub run_dir: Option<PathBuf>,
    /// Start the run in a --run-dir that already holds files that are not a run's (they stay
    /// beside the run's files).
    #[arg(long, help_heading = "Output")]
    pub run_dir_force: bool,
    /// The command line this run was started with (saved for --resume).
    #[arg(skip)]
    pub command: Vec<String>,
    /// Continue the unfinished run in --run-dir from its checkpoint (set by --resume).
    #[arg(skip)]
    pub resume: bool,
}

/// `--lr-schedule`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Linear,
}

impl ScheduleKind {
    pub fn is_constant(&self) -> bool {
        *self == ScheduleKind::Constant
    }
}

/// The model and optimisation options.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Passes over the training data.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Training")]
    pub epochs: u64,
    /// Examples per optimizer step, over all workers [default: 32; 16 with --encoder-mode
    /// finetune].
    #[arg(long, value_parser = at_least(1), help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = learning_rate, help_heading = "Training")]
    pub lr: f64,
    /// Clip the gradient to this L2 norm (off by default, as the reference).
    #[arg(long, value_parser = positive, help_heading = "Training")]
    pub clip_norm: Option<f32>,
    /// The learning rate's schedule: constant, or linear: from 0 up to --lr over the first
    /// --warmup of the planned steps, then down to 0 at the last (Hugging Face's
    /// get_linear_schedule_with_warmup). Planned steps: --epochs × the batches of an epoch as
    /// estimated before training (exact without augmentation or balance). Its position is the
    /// optimizer's step count, so --resume and a recovering worker continue it. [default:
    /// constant; linear with --encoder-mode finetune]
    #[arg(long, value_enum, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<ScheduleKind>,
    /// With --lr-schedule linear: the fraction of the planned steps that warm up (default 0.1).
    #[arg(long, value_name = "FRACTION", value_parser = common::values::fraction, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// AdamW's decoupled weight decay, on every parameter [default: 0; 0.01 with
    /// --encoder-mode finetune].
    #[arg(long, value_name = "DECAY", value_parser = common::values::fraction, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Which epoch's model is kept: `loss` (the lowest validation loss) or `accuracy` (the
    /// highest validation accuracy, ties to the lower loss) [default: loss; accuracy with
    /// --encoder-mode finetune]. Without a validation set, the last epoch's.
    #[arg(long, value_enum, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select_by: Option<SelectBy>,
    /// Weigh each class's loss: `balanced` (n / (classes × n_class), from the training
    /// originals) or explicit `LABEL=W,LABEL=W` (unlisted classes weigh 1).
    #[arg(long, value_name = "balanced|LABEL=W,...", help_heading = "Training")]
    pub class_weights: Option<String>,
    /// Stop when the validation figure of --select-by (the loss, or the accuracy) has not
    /// improved for this many epochs (needs --eval or --eval-split).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Training")]
    pub patience: Option<u64>,
    /// Embedding width.
    #[arg(long, default_value_t = 100, value_parser = at_least(1), help_heading = "Model")]
    pub embedding_dim: usize,
    /// LSTM units per direction.
    #[arg(long, default_value_t = 200, value_parser = at_least(1), help_heading = "Model")]
    pub hidden_dim: usize,
    /// Stacked BiLSTM layers.
    #[arg(long, default_value_t = 1, value_parser = at_least(1), help_heading = "Model")]
    pub layers: usize,
    /// Dropout between layers and before the output layer.
    #[arg(long, default_value_t = 0.0, value_parser = dropout, help_heading = "Model")]
    pub dropout: f32,
    /// Start the embedding table from these word vectors (word2vec/GloVe text format: `word v1
    /// v2 …` a line, optional `count dim` header; --embedding-dim must match); words not in
    /// the file start random, and are counted in the log. Fine-tuned like the rest.
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub init_embeddings: Option<PathBuf>,
    /// Put a pretrained BERT-family encoder under the BiLSTM: a directory with config.json,
    /// model.safetensors and tokenizer.json (e.g. models/all-MiniLM-L6-v2 from
    /// models/fetch.sh). Sentences are cut into its WordPiece tokens (at most 64, [CLS] and
    /// [SEP] included; --max-len and --embedding-dim do not apply). Workers read it at the
    /// same path, or receive it from the coordinator when they have no identical copy.
    #[arg(long, value_name = "DIR", help_heading = "Model")]
    pub encoder: Option<PathBuf>,
    /// How --encoder is used: `features` (the frozen encoder's last-layer token vectors are
    /// the BiLSTM's input), `embeddings` (its token-embedding table initialises the
    /// embedding layer, fine-tuned unless --freeze-embeddings), or `finetune` (every weight
    /// of the encoder trains with the head). Fine-tuning follows the usual protocol unless
    /// told otherwise: AdamW with --weight-decay 0.01, --encoder-lr 5e-5 for the encoder and
    /// --lr for the head, both on --lr-schedule linear with 10% warm-up, --batch-size 16,
    /// --epochs 10, the epoch of the best validation accuracy kept (--select-by accuracy), and
    /// --head mean.
    #[arg(long, value_enum, default_value = "features", help_heading = "Model")]
    pub encoder_mode: EncoderMode,
    /// What turns the token vectors into one sentence vector: `bilstm` (the seed's BiLSTM) or
    /// `mean` (their mean, as a fine-tuned encoder's usual head) [default: bilstm; mean with
    /// --encoder-mode finetune, whose reference figures favour it: 88.0% against 87.4%].
    #[arg(long, value_enum, help_heading = "Model")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadKind>,
    /// With --encoder-mode finetune: the learning rate of the encoder's weights (the head's is
    /// --lr) [default: 5e-5].
    #[arg(long, value_name = "LR", value_parser = learning_rate, help_heading = "Model")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_lr: Option<f64>,
    /// With --encoder-mode finetune: train only the top K transformer blocks (and the head);
    /// the embeddings and the blocks below stay as they are and run without dropout. Their
    /// outputs are computed again each step (not cached).
    #[arg(long, value_name = "K", value_parser = at_least(1), help_heading = "Model")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_layers: Option<usize>,
    /// With --encoder-mode finetune: draw the encoder's weights from its config.json, as BERT
    /// initialises them, instead of reading its model.safetensors (which may be absent). For
    /// speed checks (`gpu/check.sh`), as the reference's --random-init: the model learns from
    /// scratch, so its accuracy means nothing.
    #[arg(long, help_heading = "Model")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encoder_random_init: bool,
    /// Memory per worker for the encoder's vectors of augmented sentences (those of the
    /// original sentences are always kept), MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 1024,
        help_heading = "Model"
    )]
    pub encoder_cache_mb: usize,
    /// Keep the embedding table as initialised (--init-embeddings, --encoder-mode embeddings;
    /// with finetune, the encoder's word-embedding table).
    #[arg(long, help_heading = "Model")]
    pub freeze_embeddings: bool,
}

/// `--select-by`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectBy {
    Loss,
    Accuracy,
}

/// `--head`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Bilstm,
    Mean,
}

impl TrainConfig {
    /// Whether the encoder's weights train (`--encoder-mode finetune`), which changes the
    /// defaults below to the fine-tuning protocol's.
    pub fn finetunes(&self) -> bool {
        self.encoder.is_some() && self.encoder_mode == EncoderMode::Finetune
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
            .unwrap_or(if self.finetunes() { 16 } else { 32 })
    }

    pub fn lr_schedule(&self) -> ScheduleKind {
        self.lr_schedule.unwrap_or(match self.finetunes() {
            true => ScheduleKind::Linear,
            false => ScheduleKind::Constant,
        })
    }

    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
            .unwrap_or(if self.finetunes() { 0.01 } else { 0.0 })
    }

    pub fn select_by(&self) -> SelectBy {
        self.select_by.unwrap_or(match self.finetunes() {
            true => SelectBy::Accuracy,
            false => SelectBy::Loss,
        })
    }

    pub fn head(&self) -> HeadKind {
        self.head.unwrap_or(match self.finetunes() {
            true => HeadKind::Mean,
            false => HeadKind::Bilstm,
        })
    }

    pub fn encoder_lr(&self) -> f64 {
        self.encoder_lr.unwrap_or(5e-5)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: None,
            lr: 1e-3,
            clip_norm: None,
            lr_schedule: None,
            warmup: None,
            weight_decay: None,
            select_by: None,
            class_weights: None,
            patience: None,
            embedding_dim: 100,
            hidden_dim: 200,
            layers: 1,
            dropout: 0.0,
            init_embeddings: None,
            encoder: None,
            encoder_mode: EncoderMode::Features,
            head: None,
            encoder_lr: None,
            finetune_layers: None,
            encoder_random_init: false,
            encoder_cache_mb: 1024,
            freeze_embeddings: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_a_count_or_addresses() {
        assert!("x,y".parse::<Workers>().is_err());
        assert_eq!("2".parse::<Workers>().unwrap(), Workers::Local(2));
    }

    #[test]
    fn worker_daemon_addresses_are_host_and_port() {
        let list = "10.0.0.7:50052, worker-1.workers.svc:50052,[::1]:50052";
        assert_eq!(
            list.parse::<Workers>().unwrap(),
            Workers::Remote(vec![
                "10.0.0.7:50052".into(),
                "worker-1.workers.svc:50052".into(),
                "[::1]:50052".into()
            ])
        );
        for (bad, why) in [
            ("host1:notaport", "port"),
            ("host1:0", "port"),
            ("host1:70000", "port"),
            (":5000", "host"),
            ("not a host:5000", "host"),
            ("host1:50052,host2", "host:port"),
        ] {
            let e = bad.parse::<Workers>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
