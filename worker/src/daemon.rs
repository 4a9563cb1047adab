//! Daemon mode (`worker --listen ADDR`): serves the WorkerDaemon API and the standard gRPC
//! health service, and runs one training job at a time for the coordinators that enroll it.
//!
//! A job is this very binary started as `worker --coordinator URL` with the daemon's options,
//! the code path of a worker started by hand, in a process of its own: a job that fails,
//! however it fails (an error, a lost coordinator, a crash), leaves the daemon up for the next.
//! Its log goes to the daemon's stderr. Stopping the daemon (SIGTERM, Ctrl-C) kills the job.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use common::constant_time_eq;
use common::pb;
use common::pb::worker_daemon_server::{WorkerDaemon, WorkerDaemonServer};
use tokio::process::{Child, Command};
use tonic::{Request, Response, Status};

use crate::{Args, LogFormat};

/// The id of the job in progress, if any.
#[derive(Default)]
struct Slot(Mutex<Option<u64>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<u64>> {
        // The guarded value is a plain id: a panic elsewhere cannot leave it inconsistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Daemon {
    token: String,
    /// This binary, started once per job.
    exe: PathBuf,
    /// The options every job gets besides `--coordinator URL`.
    job_args: Vec<String>,
    job: Arc<Slot>,
    jobs_started: AtomicU64,
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve(args: &Args, listen: &str, token: String) -> Result<()> {
    if token.is_empty() {
        bail!("the join token is empty; a worker daemon needs one (--token-file FILE or SMALLTEXT_TOKEN)");
    }
    let exe = std::env::current_exe().context("locating the worker binary")?;
    let job = Arc::new(Slot::default());
    let daemon = Daemon {
        token,
        exe,
        job_args: job_args(args),
        job: job.clone(),
        jobs_started: AtomicU64::new(0),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<WorkerDaemonServer<Daemon>>().await;
    tracing::info!(
        "worker daemon listening on {addr}; each job: {} compute threads, ring address {}:{}",
        args.threads,
        args.advertise_addr,
        match args.ring_port {
            0 => "any".to_string(),
            p => p.to_string(),
        }
    );
    let incoming = common::idle::incoming(listener);
    let mut builder = common::idle::grpc_server();
    if let Some(tls) = args.tls.load()? {
        if args.tls.cert.is_some() {
            builder = builder
                .tls_config(tls.grpc_server()?)
                .context("the daemon's TLS settings")?;
        }
    }
    builder
        .add_service(health)
        .add_service(WorkerDaemonServer::new(daemon))
        .serve_with_incoming_shutdown(incoming, common::shutdown::signal())
        .await
        .context("serving gRPC")?;
    // Returning drops the runtime and with it the job's process handle, which kills the job.
    if let Some(id) = *job.lock() {
        tracing::warn!("job {id} is stopped with the daemon");
    }
    tracing::info!("worker daemon stopped");
    Ok(())
}

/// The options a job is started with, besides `--coordinator URL`: the daemon's own.
fn job_args(args: &Args) -> Vec<String> {
    let log_format = match args.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    [
        ("--threads", args.threads.to_string()),
        ("--device", args.device.to_string()),
        ("--advertise-addr", args.advertise_addr.clone()),
        ("--ring-port", args.ring_port.to_string()),
        ("--connect-timeout", args.connect_timeout.to_string()),
        ("--heartbeat-timeout", args.heartbeat_timeout.to_string()),
        ("--log-format", log_format.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .chain(
        args.tls
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned()),
    )
    .collect()
}

/// Why `url` cannot be a coordinator to join, if it cannot.
fn check_url(url: &str) -> Result<(), String> {
    if url.len() > 1024 {
        return Err("the coordinator URL is too long".into());
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!(
            "coordinator URL {url:?}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    }
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map(|_| ())
        .map_err(|e| format!("coordinator URL {url:?} is not usable: {e}"))
}

#[tonic::async_trait]
impl WorkerDaemon for Daemon {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollReply>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        let req = request.into_inner();
        if req.protocol_version != pb::PROTOCOL_VERSION {
            tracing::warn!(
                "enroll from {peer} refused: protocol version {} (this worker speaks {})",
                req.protocol_version,
                pb::PROTOCOL_VERSION
            );
            return Err(Status::failed_precondition(format!(
                "protocol version {} not supported; this worker daemon speaks {}",
                req.protocol_version,
                pb::PROTOCOL_VERSION
            )));
        }
        if !constant_time_eq(req.token.as_bytes(), self.token.as_bytes()) {
            tracing::warn!("enroll from {peer} refused: wrong or missing join token");
            return Err(Status::permission_denied("join token refused"));
        }
        let url = req.coordinator_url;
        if let Err(why) = check_url(&url) {
            tracing::warn!("enroll from {peer} refused: {why}");
            return Err(Status::invalid_argument(why));
        }
        let mut job = self.job.lock();
        if let Some(id) = *job {
            tracing::warn!("enroll from {peer} refused: job {id} is still running");
            return Err(Status::resource_exhausted(format!(
                "this worker daemon is in a job (job {id}) and takes one at a time"
            )));
        }
        let id = self.jobs_started.fetch_add(1, Ordering::Relaxed) + 1;
        let child = Command::new(&self.exe)
            .arg("--coordinator")
            .arg(&url)
            .args(&self.job_args)
            .env("SMALLTEXT_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                tracing::error!("job {id}: cannot start {}: {e}", self.exe.display());
                Status::internal("the worker daemon could not start the job")
            })?;
        *job = Some(id);
        drop(job);
        tracing::info!(
            "job {id}: enrolled by {peer}; worker process {} joins the coordinator at {url}",
            child.id().unwrap_or(0)
        );
        tokio::spawn(supervise(child, id, self.job.clone()));
        Ok(Response::new(pb::EnrollReply {}))
    }
}

/// Waits for job `id` to end, says how it went, and frees the daemon for the next job.
async fn supervise(mut child: Child, id: u64, slot: Arc<Slot>) {
    match child.wait().await {
        Ok(status) if status.success() => tracing::info!("job {id} finished"),
        Ok(status) => tracing::warn!("job {id} failed ({status}); ready for the next job"),
        Err(e) => tracing::error!("job {id}: lost track of the worker process: {e}"),
    }
    *slot.lock() = None;
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn coordinator_urls() {
        assert!(check_url("http://127.0.0.1:50051").is_ok());
        assert!(check_url("http://coordinator:50051").is_ok());
        assert!(check_url("127.0.0.1:50051").is_err());
        assert!(check_url("--threads").is_err());
        assert!(check_url(&format!("http://{}", "a".repeat(2000))).is_err());
    }
}
