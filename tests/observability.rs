//! What a cluster's monitoring sees: the coordinator's and a joining worker's gRPC health
//! services answer SERVING (Kubernetes' probes), and the coordinator's metrics endpoint
//! (OpenMetrics, scraped with an HTTP client) serves the run's metrics while it trains.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smalltext_tests::{bin, free_port, trec_slice};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn health(addr: &str) -> Option<ServingStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(reply.into_inner().status).ok()
    })
}

fn wait_for_health(addr: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if health(addr) == Some(ServingStatus::Serving) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An HTTP client that gives up after 5 s.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// The body of `GET /metrics`, or None when nothing answers.
fn scrape(addr: &str) -> Option<String> {
    let mut reply = client().get(format!("http://{addr}/metrics")).call().ok()?;
    let kind = reply.headers().get("content-type")?.to_str().ok()?;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    reply.body_mut().read_to_string().ok()
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("smalltext_{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn health_services_answer_serving_and_metrics_are_served_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 600);
    std::fs::write(dir.path().join("token"), "observability-join-token\n").unwrap();
    let token = dir.path().join("token");
    let (port, metrics_port, health_port) = (free_port(), free_port(), free_port());
    let grpc = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut coord = Command::new(bin("coordinator"))
        .args(["--listen", &grpc, "--expect-workers", "2", "--metrics-addr"])
        .arg(&metrics)
        .arg("--token-file")
        .arg(&token)
        .arg("--data")
        .arg(&train)
        .args(["--epochs", "4", "--run-dir"])
        .arg(dir.path().join("run"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_health(&grpc), "the coordinator's health service");
    let before = scrape(&metrics).expect("metrics before any worker joined");
    assert_eq!(metric(&before, "workers_alive"), Some(0.0), "{before}");
    match client().get(format!("http://{metrics}/other")).call() {
        Err(ureq::Error::StatusCode(404)) => {}
        other => panic!("GET /other: {other:?}"),
    }

    let worker = |extra: &[&str]| {
        Command::new(bin("worker"))
            .args(["--coordinator", &format!("http://{grpc}"), "--threads", "1"])
            .arg("--token-file")
            .arg(&token)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let health_addr = format!("127.0.0.1:{health_port}");
    let mut first = worker(&["--health-addr", &health_addr]);
    // The first worker waits for the second at the rendezvous, and says it is alive meanwhile.
    assert!(wait_for_health(&health_addr), "the worker's health service");
    let mut second = worker(&[]);

    let mut seen_workers = 0.0f64;
    let mut seen_epochs = 0.0f64;
    let mut seen_rate = 0.0f64;
    let mut last = String::new();
    let start = Instant::now();
    while coord.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(300) {
        if let Some(body) = scrape(&metrics) {
            seen_workers = seen_workers.max(metric(&body, "workers_alive").unwrap_or(0.0));
            seen_epochs = seen_epochs.max(metric(&body, "epochs_total").unwrap_or(0.0));
            seen_rate = seen_rate.max(metric(&body, "samples_per_second").unwrap_or(0.0));
            last = body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(coord.wait().unwrap().success());
    assert!(first.wait().unwrap().success() && second.wait().unwrap().success());
    assert_eq!(seen_workers, 2.0, "{last}");
    assert!(
        seen_epochs >= 1.0,
        "an epoch's figures while training: {last}"
    );
    assert!(seen_rate > 0.0, "{last}");
    for name in [
        "steps_per_second",
        "train_loss",
        "allreduce_seconds_per_step",
        "membership_changes_total",
        "steps_total",
    ] {
        assert!(metric(&last, name).is_some(), "{name} missing: {last}");
    }
    assert_eq!(metric(&last, "membership_changes_total"), Some(2.0));
    // The run is over: neither endpoint is left behind.
    assert!(scrape(&metrics).is_none());
    assert!(health(&health_addr).is_none());
}
