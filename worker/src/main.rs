//! `worker`: joins a coordinator, trains its share of every step, all-reduces gradients with
//! its ring neighbours, and exits 0 when the run ends.

mod client;
mod trainer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

/// A training worker. Started by `coordinator --workers N` on one machine, or by hand (or by
/// Kubernetes) with `--coordinator URL` to join a listening coordinator.
#[derive(Parser, Debug)]
#[command(name = "worker", version, about)]
pub struct Args {
    /// The coordinator's gRPC address, e.g. http://coordinator:50051.
    #[arg(long)]
    pub coordinator: String,
    /// File holding the join token (trailing newline ignored); or set SMALLTEXT_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Compute threads.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    pub threads: usize,
    /// Address ring peers dial to reach this worker (in Kubernetes: the pod IP).
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise_addr: String,
    /// Port of the ring listener (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub ring_port: u16,
    /// Seconds to keep retrying while the coordinator is unreachable, at start and later.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Seconds without an answer from the coordinator after which this worker gives up.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Exit status when the coordinator refused the join token.
const EXIT_REFUSED: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if e.downcast_ref::<client::Refused>().is_some() {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn read_token(args: &Args) -> Result<String> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    std::env::var("SMALLTEXT_TOKEN")
        .context("no join token: give --token-file FILE or set SMALLTEXT_TOKEN")
}

fn run(args: &Args) -> Result<()> {
    common::model::set_threads(args.threads);
    let token = read_token(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    trainer::run(args, &token, &rt)
}
