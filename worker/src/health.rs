//! `worker --coordinator URL --health-addr ADDR`: the standard gRPC health service beside a
//! training worker, SERVING while the process runs, for Kubernetes' gRPC probes.

use anyhow::{Context, Result};

/// Stops the health server when dropped.
pub struct Health(tokio::task::JoinHandle<()>);

impl Drop for Health {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` and serves the health service on it in the background.
pub async fn serve(addr: &str) -> Result<Health> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--health-addr: listening on {addr}"))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tracing::info!(
        "health service on {}",
        listener.local_addr().context("the health address")?
    );
    let incoming = common::idle::incoming(listener);
    Ok(Health(tokio::spawn(async move {
        let result = common::idle::grpc_server()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!("health service: {e}");
        }
    })))
}
