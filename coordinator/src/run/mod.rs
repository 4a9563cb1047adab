//! A training run from the coordinator's side: open the run directory, prepare the data,
//! serve the workers, train every epoch, test and record the selected model.

mod epochs;
mod finish;
mod gather;
mod opening;
mod prepare;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::pb;
use common::state_transfer::ModelState;
use tokio::net::TcpListener;

use crate::cli::{LocalDevice, RingTransport};
use crate::interrupt::StopNote;
use crate::local::Fleet;
use crate::plan::{TrainPlan, WorkerSource};
use crate::service::{EpochPlan, RunInfo, Service, Shared};
use crate::stored_state::StoredState;
use crate::summary::Summary;

/// Trains `plan` to its end, serving the workers on `listener`. When `shutdown` resolves
/// first (a signal, say), the run stops where it stands, its local workers with it, and the
/// error says where it was and what checkpoint is kept.
pub async fn run(
    plan: TrainPlan,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary> {
    let note = Arc::new(StopNote::default());
    crate::interrupt::until(note.clone(), train(plan, listener, note), shutdown).await
}

/// The runtime runs go on: two threads for the service and the run's own work (the compute
/// is in the workers).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn train(plan: TrainPlan, listener: TcpListener, note: Arc<StopNote>) -> Result<Summary> {
    let started = Instant::now();
    let args = &plan.args;
    let tls_files = args.tls.clone();
    let tls = tls_files.load()?;
    let server_tls = tls.as_ref().map(|t| t.grpc_server()).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let opened = opening::open(&plan, &note)?;
    let run_dir = &opened.run_dir;
    let (resumed_state, resumed) = match opened.checkpoint {
        Some(c) => (Some(c.state), Some(c.progress)),
        None => (None, None),
    };

    note.phase("preparing the training data");
    let mut prepared = prepare::prepare(&plan, resumed.is_some()).await?;
    let world = plan.world;
    let info = RunInfo {
        run_id: rand::random(),
        spec_json: serde_json::to_string(&prepared.spec)?,
        ring_shared_memory: args.ring_transport == RingTransport::Auto,
        vocab_json: serde_json::to_string(&prepared.vocab)?,
        labels: prepared.labels.clone(),
        // In a file, not kept in memory: the workers' state can be hundreds of MB.
        initial_state: Arc::new(match resumed_state {
            Some(state) => state,
            None => StoredState::new(
                ModelState::new(std::mem::take(&mut prepared.initial_weights), Vec::new()),
                run_dir.path(),
            )?,
        }),
        encoder_dir: prepared.spec.encoder.as_ref().map(|e| e.path.clone()),
        spool_dir: run_dir.path().to_path_buf(),
        start_epoch: resumed.as_ref().map_or(0, |p| p.epochs_done),
        start_step: resumed.as_ref().map_or(0, |p| p.step),
        start_applied: resumed.as_ref().map_or(0, |p| p.applied),
    };
    let (shared, mut inbox) = Shared::new(plan.token.clone(), world, info);
    let _metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-addr: listening on {addr}"))?;
            tracing::info!(
                "metrics at http://{}/metrics",
                listener.local_addr().context("the metrics address")?
            );
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                listener,
                shared.metrics.clone(),
            ))))
        }
        None => None,
    };

    let addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, shared.clone(), server_stopped, server_tls));
    tracing::info!("coordinator listening on {addr}, waiting for {world} workers");

    let local = plan.local_workers();
    if let (Some(n), LocalDevice::Cpu) = (local, args.device) {
        if let Some(warning) = oversubscribed(n, plan.threads, crate::plan::cores()) {
            tracing::warn!("{warning}");
        }
    }
    note.phase(format!("waiting for {world} workers to join"));
    if local.is_some() {
        note.workers_started();
    }
    let mut fleet = match local {
        Some(n) => Fleet::spawn(
            plan.worker_program.as_deref(),
            n,
            &format!("{scheme}://{addr}"),
            &plan.token,
            plan.threads,
            args.device,
            &tls_files,
        )?,
        None => Fleet::none(),
    };
    let result = async {
        if let WorkerSource::Daemons { addrs, advertise } = &plan.workers {
            let url = crate::daemons::url(scheme, advertise, addr.port());
            tracing::info!(
                "enrolling {} worker daemons; they join this coordinator at {url}",
                addrs.len()
            );
            crate::daemons::enroll_all(addrs, &url, &plan.token, tls.as_ref()).await?;
        }
        let crew = epochs::Crew {
            shared: &shared,
            inbox: &mut inbox,
            fleet: &mut fleet,
        };
        epochs::drive(&plan, crew, &prepared, run_dir, resumed, &note).await
    }
    .await;
    shared.close();
    let last_epoch = shared.plan.borrow().as_ref().map_or(0, |p| p.epoch + 1);
    shared
        .plan
        .send_replace(Some(Arc::new(EpochPlan::finished(last_epoch))));
    let outcome = match result {
        Ok(record) if local.is_some() => fleet.wait(Duration::from_secs(30)).await.map(|()| record),
        Ok(record) => {
            // Workers this coordinator did not start: serve until each has been told the run
            // is over, so none fails asking for an epoch that will not come.
            let deadline = Instant::now() + Duration::from_secs(10);
            let left = shared
                .members
                .borrow()
                .as_ref()
                .map_or(world, |m| m.members.len());
            while shared.told_finished.load(Ordering::Relaxed) < left && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(record)
        }
        Err(e) => {
            fleet.kill_all().await;
            Err(e)
        }
    };
    let _ = stop_server.send(());
    if tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .is_err()
    {
        tracing::warn!("the gRPC server did not stop within 10 s");
    }
    let record = outcome?;

    note.phase("testing and saving the final model");
    finish::finish(
        &plan,
        run_dir,
        record,
        prepared.tests,
        &prepared.pipeline,
        started,
    )
    .await
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Receiver<()>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::coordinator_server::CoordinatorServer<Service>>()
        .await;
    let service = pb::coordinator_server::CoordinatorServer::new(Service(shared))
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
    let incoming = common::idle::incoming(listener);
    let mut builder = common::idle::grpc_server();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("gRPC server TLS: {e}");
                return;
            }
        };
    }
    let result = builder
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("gRPC server: {e}");
    }
}

/// Stops a background task when the run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What to tell a user whose local CPU workers would run more compute threads than the
/// machine has cores: spinning thread pools then take turns on a core and every step waits
/// for the slowest.
fn oversubscribed(workers: usize, threads: usize, cores: usize) -> Option<String> {
    let total = workers * threads;
    (total > cores).then(|| {
        let fit = match cores / workers {
            0 => format!("at most {cores} --workers with --threads 1"),
            per_worker => format!("--threads {per_worker}"),
        };
        format!(
            "{workers} local workers × {threads} compute threads = {total} threads on {cores} \
             cores: they will slow each other down; {fit} would fit"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::oversubscribed;

    #[test]
    fn more_compute_threads_than_cores_is_named_with_what_would_fit() {
        assert_eq!(oversubscribed(2, 1, 2), None);
        assert_eq!(oversubscribed(1, 8, 8), None);
        let two_by_four = oversubscribed(2, 4, 2).unwrap();
        assert!(
            two_by_four.contains("8 threads on 2 cores"),
            "{two_by_four}"
        );
        assert!(
            two_by_four.contains("--threads 1 would fit"),
            "{two_by_four}"
        );
        let three = oversubscribed(3, 1, 2).unwrap();
        assert!(three.contains("at most 2 --workers"), "{three}");
    }
}
