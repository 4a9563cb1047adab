//! `worker`: joins a coordinator, trains its share of every step, all-reduces gradients with
//! its ring neighbours, and exits 0 when the run ends. Or, with `--listen`, a daemon that
//! does the same for every coordinator that enrolls it, one job at a time.

mod client;
mod daemon;
mod encoder_files;
mod epoch_figures;
mod health;
mod selfcheck;
mod trainer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser};

/// A training worker. Started by `coordinator --workers N` on one machine, or by hand (or by
/// Kubernetes) with `--coordinator URL` to join a listening coordinator, or kept running as a
/// daemon with `--listen ADDR` for coordinators started with `--workers host:port,...`.
#[derive(Parser, Debug)]
#[command(
    name = "worker",
    version,
    about,
    group(
        ArgGroup::new("mode")
            .required(true)
            .args(["coordinator", "listen", "self_check"])
    )
)]
pub struct Args {
    /// Join this coordinator, train its run and exit, e.g. http://coordinator:50051.
    #[arg(long, value_name = "URL", value_parser = common::values::grpc_url)]
    pub coordinator: Option<String>,
    /// Run as a daemon: serve gRPC on this address (e.g. 0.0.0.0:50052) and train one job at a
    /// time for each coordinator that enrolls this worker (`coordinator --workers host:port,...`).
    #[arg(long, value_parser = common::values::listen_addr, value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the join token (trailing newline ignored); or set SMALLTEXT_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Compute threads (of every job, in daemon mode).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()), value_parser = common::values::at_least(1))]
    pub threads: usize,
    /// Address ring peers dial to reach this worker (in Kubernetes: the pod IP).
    #[arg(long, default_value = "127.0.0.1", value_parser = common::values::host)]
    pub advertise_addr: String,
    /// Port of the ring listener (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub ring_port: u16,
    /// Seconds to keep retrying while the coordinator is unreachable, at start and later.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Seconds without an answer from the coordinator after which this worker gives up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_timeout: u64,
    /// Compute device: cpu, or cuda:N for GPU N (a worker built with gpu/build.sh). Workers
    /// on GPUs that all have NCCL all-reduce with it; otherwise over the TCP ring. A GPU
    /// worker holds the weights, gradients and optimizer state on the GPU; a CPU worker in
    /// host memory. SMALLTEXT_HOLD=device (in the environment) runs the GPU workers' path on
    /// the CPU, for checking it; SMALLTEXT_GPU_CELL=ops takes Candle's ops for the LSTM's
    /// cell instead of the fused kernels.
    #[arg(long, default_value = "cpu")]
    pub device: common::device::DeviceSpec,
    /// Check this build on --device and exit: the LSTM's gradients and a training step
    /// against the CPU, and (with NCCL) a one-rank all-reduce. For GPU machines (gpu/check.sh).
    #[arg(long)]
    pub self_check: bool,
    /// With --coordinator: serve the gRPC health service on this address (e.g. 0.0.0.0:50053)
    /// while the worker runs, for Kubernetes probes. (A daemon serves it on --listen.)
    #[arg(long, value_parser = common::values::listen_addr, value_name = "ADDR")]
    pub health_addr: Option<String>,
    #[command(flatten)]
    pub tls: common::tls::TlsFiles,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                "{}",
                common::error::chain_without_repeats(&format!("{e:#}"))
            );
            if e.downcast_ref::<client::Refused>().is_some() {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.self_check {
        common::kernels::set_threads(args.threads);
        return selfcheck::run(args.device);
    }
    let token = common::read_token(args.token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    match (&args.coordinator, &args.listen) {
        (Some(url), _) => {
            common::kernels::set_threads(args.threads);
            let _health = match &args.health_addr {
                Some(addr) => Some(rt.block_on(health::serve(addr))?),
                None => None,
            };
            trainer::run(args, url, &token, &rt)
        }
        (None, Some(addr)) => rt.block_on(daemon::serve(args, addr, token)),
        (None, None) => bail!("give --coordinator URL (join one run) or --listen ADDR (daemon)"),
    }
}

#[cfg(test)]
#[path = "../../tests/support/manifests.rs"]
mod manifests;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    /// A renamed or removed flag must not silently break the Kubernetes deployment.
    #[test]
    fn every_worker_container_in_the_manifests_parses() {
        let workers: Vec<_> = super::manifests::containers()
            .into_iter()
            .filter(|c| c.command.first().map(String::as_str) == Some("worker"))
            .collect();
        assert!(workers.len() >= 2, "the CPU and GPU worker manifests");
        for c in workers {
            let argv = std::iter::once("worker".to_string()).chain(c.args.iter().cloned());
            if let Err(e) = Args::try_parse_from(argv) {
                panic!("{}: worker {:?}: {e}", c.file.display(), c.args);
            }
        }
    }
}
