//! Worker daemons on loopback: `worker --listen` daemons that coordinators started with
//! `--workers host:port,...` enroll, job after job; their health service; the refusals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pb;
use common::pb::worker_daemon_client::WorkerDaemonClient;
use smalltext_tests::{bin, free_port, json, stderr, trec_slice};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKEN: &str = "s3cret-token-of-the-daemons";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A `worker --listen 127.0.0.1:PORT` daemon logging to a file. Dropping it stops it (SIGTERM,
/// which stops its job too, then SIGKILL), so a failing test leaves no daemon behind.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon and waits until its health service says SERVING.
    fn start(dir: &Path, token: &Path, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = dir.join(format!("daemon-{port}.log"));
        let child = Command::new(bin("worker"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
            .arg(token)
            .args(["--threads", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.health("") != Some(ServingStatus::Serving) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the daemon exited ({status}):\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not serve within 30 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the daemon's gRPC health service says of `service` ("" = the whole server); None
    /// when it does not answer.
    fn health(&self, service: &str) -> Option<ServingStatus> {
        runtime().block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(self.url())
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut client = HealthClient::new(channel);
            let reply = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .ok()?;
            ServingStatus::try_from(reply.into_inner().status).ok()
        })
    }

    /// Waits until the daemon's log contains `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the daemon's log lacks {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_on_daemons(daemons: &str, token: &Path, data: &Path, run: &Path) -> std::process::Output {
    Command::new(bin("coordinator"))
        .args(["--workers", daemons, "--token-file"])
        .arg(token)
        .arg("--data")
        .arg(data)
        .args(["--epochs", "1", "--join-timeout", "60", "--run-dir"])
        .arg(run)
        .output()
        .unwrap()
}

#[test]
fn daemons_take_job_after_job_serve_health_and_refuse_a_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let token = write(dir.path(), "join.token", &format!("{TOKEN}\n"));
    let wrong = write(dir.path(), "wrong.token", "a-wrong-guess-of-the-token\n");
    let daemons = [
        Daemon::start(dir.path(), &token, &[]),
        Daemon::start(dir.path(), &token, &[]),
    ];
    for d in &daemons {
        assert_eq!(
            d.health("smalltext.v1.WorkerDaemon"),
            Some(ServingStatus::Serving)
        );
    }
    let list = format!("{},{}", daemons[0].addr(), daemons[1].addr());

    // Two jobs in a row on the same daemons: they stay up between jobs.
    for job in 1..=2 {
        let run = dir.path().join(format!("run{job}"));
        let out = run_on_daemons(&list, &token, &train, &run);
        assert!(
            out.status.success(),
            "job {job} failed:\n{}\n--- daemon 0:\n{}\n--- daemon 1:\n{}",
            stderr(&out),
            daemons[0].log(),
            daemons[1].log()
        );
        // Every daemon is on loopback: so is the coordinator's own port.
        assert!(
            stderr(&out).contains("coordinator listening on 127.0.0.1:"),
            "{}",
            stderr(&out)
        );
        assert_eq!(json(&run.join("summary.json"))["workers"], 2);
        assert_eq!(
            json(&run.join("model/model.json"))["training"]["workers"],
            2
        );
    }
    for d in &daemons {
        d.wait_for_log("job 2 finished");
        assert!(d.log().contains("job 1 finished"), "{}", d.log());
        assert_eq!(d.health(""), Some(ServingStatus::Serving));
    }

    // A coordinator with the wrong token is refused by the daemons, says which, and fails.
    let out = run_on_daemons(&list, &wrong, &train, &dir.path().join("run-wrong"));
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "worker daemon {} refused the job: join token refused",
            daemons[0].addr()
        )),
        "{log}"
    );
    for d in &daemons {
        d.wait_for_log("refused: wrong or missing join token");
        assert_eq!(d.health(""), Some(ServingStatus::Serving));
    }
}

#[test]
fn a_daemon_refuses_bad_enrollments_takes_one_job_at_a_time_and_outlives_a_failed_job() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "join.token", TOKEN);
    // Its jobs give up on an unreachable coordinator after 1 s.
    let daemon = Daemon::start(dir.path(), &token, &["--connect-timeout", "1"]);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let request = |token: &str, version: u32, url: &str| pb::EnrollRequest {
        protocol_version: version,
        token: token.into(),
        coordinator_url: url.into(),
    };
    let v1 = pb::PROTOCOL_VERSION;
    runtime().block_on(async {
        let mut client = WorkerDaemonClient::connect(daemon.url()).await.unwrap();
        for (r, code) in [
            (request(TOKEN, v1 + 1, &nobody), Code::FailedPrecondition),
            (request("guess", v1, &nobody), Code::PermissionDenied),
            (request(TOKEN, v1, "127.0.0.1:1"), Code::InvalidArgument),
        ] {
            let refused = client
                .enroll(r)
                .await
                .expect_err("the daemon should refuse");
            assert_eq!(refused.code(), code, "{refused}");
        }

        // A job that cannot reach its coordinator: the daemon is busy until it gives up ...
        client.enroll(request(TOKEN, v1, &nobody)).await.unwrap();
        let busy = client
            .enroll(request(TOKEN, v1, &nobody))
            .await
            .expect_err("one job at a time");
        assert_eq!(busy.code(), Code::ResourceExhausted);
        // ... then takes the next one.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.enroll(request(TOKEN, v1, &nobody)).await {
                Ok(_) => break,
                Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(s) => panic!("enrolling after the failed job: {s}"),
            }
        }
    });
    daemon.wait_for_log("job 1 failed");
    assert_eq!(daemon.health(""), Some(ServingStatus::Serving));
}

#[test]
fn worker_modes_are_exclusive_and_an_unreachable_daemon_is_named() {
    let both = Command::new(bin("worker"))
        .args([
            "--coordinator",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    // Values the worker cannot use are refused before it dials anyone.
    for (flag, value) in [
        ("--coordinator", "coordinator:50051"),
        ("--coordinator", "http://not a host:50051"),
        ("--coordinator", "http://coordinator:port"),
        ("--advertise-addr", "not an ip"),
        ("--advertise-addr", "10.0.0.7:50052"),
        ("--heartbeat-timeout", "0"),
    ] {
        let mut args = vec![flag, value];
        if flag != "--coordinator" {
            args.extend_from_slice(&["--coordinator", "http://127.0.0.1:1"]);
        }
        let o = Command::new(bin("worker")).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
    }
    // While the coordinator cannot be reached the worker says so at once, not only when it
    // gives up.
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "join.token", TOKEN);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let o = Command::new(bin("worker"))
        .args(["--coordinator", &nobody, "--connect-timeout", "1"])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    let said = stderr(&o);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains(&format!("the coordinator at {nobody} is not reachable yet"))
            && said.contains("retrying for up to 1 s")
            && !said.contains("tcp connect error: tcp connect error")
            && said.contains(&format!("cannot reach the coordinator at {nobody}")),
        "{said}"
    );
    // An empty SMALLTEXT_TOKEN (an unset variable in a template) is no token, as an empty
    // token file is none: it would let in anyone who sends an empty one.
    let o = Command::new(bin("worker"))
        .args(["--coordinator", "http://127.0.0.1:1"])
        .env("SMALLTEXT_TOKEN", "")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("SMALLTEXT_TOKEN is empty"),
        "{}",
        stderr(&o)
    );
    let neither = Command::new(bin("worker")).output().unwrap();
    let said = stderr(&neither);
    assert!(!neither.status.success());
    assert!(
        said.contains("required") && said.contains("--coordinator") && said.contains("--listen"),
        "{said}"
    );

    let train = trec_slice(dir.path(), "train.tsv", 0, 100);
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = run_on_daemons(&nobody, &token, &train, &dir.path().join("run"));
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!("cannot reach worker daemon {nobody}")),
        "{log}"
    );
    assert!(!log.contains("connect error: tcp connect error"), "{log}");
}
