//! Talking to the coordinator: connecting with retries, joining, heartbeats from their own
//! task so a long compute step never starves them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::collective::Abort;
use common::pb;
use common::pb::coordinator_client::CoordinatorClient;
use common::state_transfer::{self, ModelState, Outgoing};
use tonic::transport::Channel;
use tonic::Code;

pub type Client = CoordinatorClient<Channel>;

/// The coordinator refused this worker (wrong token, other protocol version): retrying
/// cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the coordinator refused this worker: {0}")]
pub struct Refused(pub String);

/// Connects and joins, retrying with backoff while the coordinator is unreachable, never
/// after a refusal.
pub async fn join(
    url: &str,
    req: pb::JoinRequest,
    timeout: Duration,
    tls: Option<&common::tls::Tls>,
) -> Result<(Client, pb::JoinReply)> {
    let tls = match (url.starts_with("https://"), tls) {
        (true, Some(t)) => Some(t.grpc_client()),
        (true, None) => bail!("{url} is served over TLS: give --tls-ca (the CA that signed the coordinator's certificate)"),
        (false, Some(_)) => bail!("--tls-* given but the coordinator URL {url} is not https://"),
        (false, None) => None,
    };
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    // A worker often starts before its coordinator: say so once, then keep quiet until the
    // deadline, when the error says why.
    let mut said_waiting = false;
    let mut waiting = |why: &dyn std::fmt::Display| {
        match said_waiting {
            false => tracing::info!(
                "the coordinator at {url} is not reachable yet ({why}); retrying for up to {} s \
                 (--connect-timeout)",
                timeout.as_secs()
            ),
            true => tracing::debug!("coordinator at {url} not reachable yet: {why}; retrying"),
        }
        said_waiting = true;
    };
    loop {
        let attempt = async {
            let mut endpoint = Channel::from_shared(url.to_string())
                .with_context(|| format!("bad coordinator address {url:?}"))?
                .connect_timeout(Duration::from_secs(5))
                .initial_stream_window_size(state_transfer::STREAM_WINDOW)
                .initial_connection_window_size(state_transfer::CONNECTION_WINDOW);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).context("TLS settings")?;
            }
            let channel = endpoint.connect().await?;
            let mut client = CoordinatorClient::new(channel)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
            let reply = client.join(req.clone()).await;
            anyhow::Ok((client, reply))
        };
        match attempt.await {
            Ok((client, Ok(reply))) => return Ok((client, reply.into_inner())),
            Ok((_, Err(status))) => match status.code() {
                Code::PermissionDenied => bail!(Refused(format!(
                    "the join token was refused ({})",
                    status.message()
                ))),
                Code::FailedPrecondition | Code::ResourceExhausted | Code::InvalidArgument => {
                    bail!(Refused(status.message().to_string()))
                }
                _ if Instant::now() > deadline => {
                    bail!("cannot reach the coordinator at {url}: {}", chain(&status))
                }
                _ => waiting(&chain(&status)),
            },
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("cannot reach the coordinator at {url}")))
            }
            Err(e) => waiting(&common::error::chain_without_repeats(&format!("{e:#}"))),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A status with the errors under it (a TLS refusal is several layers down).
fn chain(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The state the join reply announced (`header`), fetched in chunks.
pub async fn fetch_initial_state(
    client: &mut Client,
    token: &str,
    rank: u32,
    header: &pb::StateHeader,
) -> Result<ModelState> {
    let mut chunks = client
        .fetch_initial_state(pb::FetchStateRequest {
            rank,
            token: token.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!(s))
        .context("asking for the run's initial weights")?
        .into_inner();
    state_transfer::receive(header, &mut chunks, Some)
        .await
        .context("receiving the run's initial weights")
}

/// Sends an epoch report and the state it announces (the weights and optimizer state after
/// the epoch, when the coordinator asked for them), in chunks made as they are sent.
pub fn report_epoch(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    mut report: pb::EpochReport,
    state: Option<&Outgoing<'_>>,
) -> Result<(), tonic::Status> {
    use pb::epoch_report_part::Kind;
    report.state = state.map(Outgoing::header);
    let mut client = client.clone();
    stream_parts(
        rt,
        Kind::Report(report),
        state,
        Kind::Chunk,
        |kind| pb::EpochReportPart { kind: Some(kind) },
        move |parts| async move { client.report_epoch(parts).await.map(|_| ()) },
    )
}

/// Sends a checkpoint upload and the state it announces, in chunks made as they are sent.
pub fn upload_checkpoint(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    mut upload: pb::CheckpointUpload,
    state: &Outgoing<'_>,
) -> Result<(), tonic::Status> {
    use pb::checkpoint_part::Kind;
    upload.state = Some(state.header());
    let mut client = client.clone();
    stream_parts(
        rt,
        Kind::Upload(upload),
        Some(state),
        Kind::Chunk,
        |kind| pb::CheckpointPart { kind: Some(kind) },
        move |parts| async move { client.upload_checkpoint(parts).await.map(|_| ()) },
    )
}

/// Runs the client-streaming call `call` on `rt` while this thread feeds it `first` and then
/// `state`'s chunks through a short queue: a chunk is made only when the call has room for it,
/// so the state is never one buffer (the pieces borrow the model, which is why this thread
/// makes them and the call only sends them).
fn stream_parts<K, P, F, Fut>(
    rt: &tokio::runtime::Runtime,
    first: K,
    state: Option<&Outgoing<'_>>,
    chunk: impl Fn(pb::StateChunk) -> K,
    part: impl Fn(K) -> P,
    call: F,
) -> Result<(), tonic::Status>
where
    P: Send + 'static,
    F: FnOnce(tokio_stream::wrappers::ReceiverStream<P>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let sending = rt.spawn(call(tokio_stream::wrappers::ReceiverStream::new(rx)));
    // A send fails only when the call ended early; its own error says why.
    if tx.blocking_send(part(first)).is_ok() {
        if let Some(state) = state {
            state.send_chunks(state_transfer::CHUNK_BYTES, |c| {
                tx.blocking_send(part(chunk(c))).is_ok()
            });
        }
    }
    drop(tx);
    rt.block_on(sending)
        .map_err(|e| tonic::Status::internal(format!("the upload task failed: {e}")))?
}

/// Where training stands, shared between the training loop and the heartbeat task.
#[derive(Default)]
pub struct TrainingProgress {
    pub epoch: AtomicU64,
    pub step: AtomicU64,
    pub examples: AtomicU64,
    pub loss_milli: AtomicU64,
}

/// The worker's ring generation, and the handle that aborts its ring (TCP or NCCL): shared
/// with the heartbeat task, which aborts the ring when the coordinator announces a newer
/// generation (a worker was lost), so a worker blocked in an all-reduce regroups at once.
#[derive(Default)]
pub struct RingGeneration {
    pub generation: AtomicU64,
    abort: Mutex<Option<Arc<dyn Abort>>>,
}

impl RingGeneration {
    pub fn set_abort(&self, abort: Option<Arc<dyn Abort>>) {
        match self.abort.lock() {
            Ok(mut a) => *a = abort,
            Err(poisoned) => *poisoned.into_inner() = abort,
        }
    }

    fn abort_if_behind(&self, generation: u64) {
        if generation <= self.generation.load(Ordering::SeqCst) {
            return;
        }
        let abort = match self.abort.lock() {
            Ok(mut a) => a.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(abort) = abort {
            tracing::warn!(
                "the coordinator moved to ring generation {generation}: leaving this ring"
            );
            abort.abort();
        }
    }
}

/// Sends a heartbeat every second. When the coordinator has not answered for `timeout`, or
/// says the run is over while we still train, the worker cannot go on: it says so and exits.
pub async fn heartbeats(
    mut client: Client,
    token: String,
    rank: u32,
    progress: Arc<TrainingProgress>,
    membership: Arc<RingGeneration>,
    timeout: Duration,
) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let req = pb::HeartbeatRequest {
            rank,
            token: token.clone(),
            epoch: progress.epoch.load(Ordering::Relaxed),
            step: progress.step.load(Ordering::Relaxed),
            loss_sum: progress.loss_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            examples: progress.examples.load(Ordering::Relaxed),
        };
        match tokio::time::timeout(Duration::from_secs(2), client.heartbeat(req)).await {
            Ok(Ok(reply)) => {
                last_ok = Instant::now();
                membership.abort_if_behind(reply.into_inner().generation);
            }
            Ok(Err(status)) if status.code() == Code::PermissionDenied => {
                tracing::error!(
                    "the coordinator no longer accepts this worker: {}",
                    status.message()
                );
                std::process::exit(3);
            }
            _ if last_ok.elapsed() > timeout => {
                tracing::error!(
                    "lost the coordinator: no answer for {} s; exiting",
                    timeout.as_secs()
                );
                std::process::exit(3);
            }
            _ => {}
        }
    }
}
