//! Launch on worker daemons (`--workers host:port,...`): every daemon (`worker --listen ADDR`)
//! is asked to join this coordinator (WorkerDaemon.Enroll); the run then proceeds as with
//! `--expect-workers`, one worker per daemon.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::pb;
use common::pb::worker_daemon_client::WorkerDaemonClient;
use tonic::transport::Endpoint;
use tonic::Code;

/// How long a daemon may stay busy before enrollment gives up on it: a daemon still finishing
/// the previous job (its worker exits moments after the previous coordinator) frees up soon.
const BUSY_GRACE: Duration = Duration::from_secs(15);

/// The host part of `host:port`, `[v6]:port` or `scheme://host:port`.
fn host_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The address the daemons dial back: `given`, else 127.0.0.1 when every daemon address is
/// loopback, else this machine's host name.
pub fn advertise_addr(given: Option<&str>, daemons: &[String]) -> Result<String> {
    if let Some(addr) = given {
        return Ok(addr.to_string());
    }
    if daemons.iter().all(|d| is_loopback(host_of(d))) {
        return Ok("127.0.0.1".into());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()));
    match name {
        Some(name) => Ok(name),
        None => bail!("cannot tell this machine's host name: give --advertise-addr HOST, the address the worker daemons reach this coordinator at"),
    }
}

/// Where the coordinator listens unless told: loopback when every daemon is on loopback (no
/// other machine has any business on the port), else every interface.
pub fn default_listen(daemons: &[String]) -> &'static str {
    if daemons.iter().all(|d| is_loopback(host_of(d))) {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    }
}

/// `SCHEME://HOST:PORT`, with brackets around an IPv6 address.
pub fn url(scheme: &str, host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

fn daemon_url(addr: &str, scheme: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    }
}

/// Enrolls every daemon in the run at `coordinator_url`, all at once. The error names each
/// daemon that could not be reached or refused.
pub async fn enroll_all(
    daemons: &[String],
    coordinator_url: &str,
    token: &str,
    tls: Option<&common::tls::Tls>,
) -> Result<()> {
    for (i, d) in daemons.iter().enumerate() {
        if daemons[..i].contains(d) {
            bail!(
                "worker daemon {d} is listed twice in --workers; a daemon runs one worker per job"
            );
        }
    }
    let tasks: Vec<_> = daemons
        .iter()
        .map(|d| {
            tokio::spawn(enroll(
                d.clone(),
                coordinator_url.to_string(),
                token.to_string(),
                tls.map(|t| t.grpc_client()),
            ))
        })
        .collect();
    let mut failures = Vec::new();
    for (d, task) in daemons.iter().zip(tasks) {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("worker daemon {d}: enrollment stopped: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} of {} worker daemons did not take the job: {}",
            failures.len(),
            daemons.len(),
            failures.join("; ")
        )
    }
}

async fn enroll(
    daemon: String,
    coordinator_url: String,
    token: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(daemon_url(&daemon, scheme))
        .with_context(|| format!("worker daemon {daemon:?} is not a usable address"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS for worker daemon {daemon}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach worker daemon {daemon}"))?;
    let mut client = WorkerDaemonClient::new(channel);
    let req = pb::EnrollRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        token,
        coordinator_url,
    };
    let deadline = Instant::now() + BUSY_GRACE;
    loop {
        let status = match client.enroll(req.clone()).await {
            Ok(_) => {
                tracing::info!("worker daemon {daemon} took the job");
                return Ok(());
            }
            Err(status) => status,
        };
        let msg = status.message();
        match status.code() {
            Code::ResourceExhausted if Instant::now() < deadline => {
                tracing::debug!("worker daemon {daemon} is still in a job ({msg}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Code::ResourceExhausted => bail!(
                "worker daemon {daemon} refused the job: it is busy with another job ({msg})"
            ),
            Code::PermissionDenied => bail!(
                "worker daemon {daemon} refused the job: {msg}; give the token the daemons were started with"
            ),
            Code::FailedPrecondition | Code::InvalidArgument => {
                bail!("worker daemon {daemon} refused the job: {msg}")
            }
            Code::Unimplemented => bail!(
                "{daemon} is not a worker daemon (it does not serve WorkerDaemon; start one with `worker --listen ADDR`)"
            ),
            Code::Unavailable | Code::DeadlineExceeded => {
                bail!("cannot reach worker daemon {daemon}: {msg}")
            }
            code => bail!("worker daemon {daemon}: enrollment failed ({code:?}: {msg})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_daemon_addresses() {
        assert_eq!(host_of("127.0.0.1:50052"), "127.0.0.1");
        assert_eq!(host_of("[::1]:50052"), "::1");
        assert_eq!(host_of("http://node-3:50052"), "node-3");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("LocalHost"));
        assert!(!is_loopback("10.0.0.7") && !is_loopback("node-3"));
    }

    #[test]
    fn advertise_address_defaults() {
        let local = vec!["127.0.0.1:1".to_string(), "localhost:2".to_string()];
        assert_eq!(advertise_addr(None, &local).unwrap(), "127.0.0.1");
        assert_eq!(
            advertise_addr(Some("10.1.2.3"), &local).unwrap(),
            "10.1.2.3"
        );
        let remote = vec!["127.0.0.1:1".to_string(), "node-2:50052".to_string()];
        let name = advertise_addr(None, &remote).unwrap();
        assert!(!name.is_empty() && name != "127.0.0.1");
        assert_eq!(default_listen(&local), "127.0.0.1:0");
        assert_eq!(default_listen(&remote), "0.0.0.0:0");
    }

    #[test]
    fn coordinator_urls() {
        assert_eq!(url("http", "10.0.0.1", 50051), "http://10.0.0.1:50051");
        assert_eq!(url("https", "fd00::1", 7), "https://[fd00::1]:7");
        assert_eq!(daemon_url("h:1", "http"), "http://h:1");
        assert_eq!(daemon_url("h:1", "https"), "https://h:1");
        assert_eq!(daemon_url("https://h:1", "http"), "https://h:1");
    }
}
