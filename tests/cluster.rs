//! Cluster mode on loopback: a listening coordinator, workers that join it by URL with the
//! join token, and one that brings the wrong token.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smalltext_tests::{bin, free_port, json, trec_slice};

#[test]
fn workers_join_a_listening_coordinator_and_a_wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let token = dir.path().join("join.token");
    std::fs::write(&token, "s3cret-token-for-the-cluster\n").unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "a-wrong-guess-of-the-token\n").unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let run = dir.path().join("run");
    let coord = Command::new(bin("coordinator"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--expect-workers",
            "2",
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args([
            "--data",
            train.to_str().unwrap(),
            "--epochs",
            "1",
            "--run-dir",
            run.to_str().unwrap(),
            "--join-timeout",
            "60",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The intruder is refused at once, says so, and exits non-zero (2) without retrying.
    let start = Instant::now();
    let intruder = Command::new(bin("worker"))
        .args([
            "--coordinator",
            &url,
            "--token-file",
            wrong.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        intruder.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&intruder.stderr)
    );
    let said = String::from_utf8_lossy(&intruder.stderr);
    assert!(said.contains("token was refused"), "{said}");
    assert!(start.elapsed() < Duration::from_secs(30));

    // The real workers (one started before, one after) train the run and exit 0.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(bin("worker"))
                .args([
                    "--coordinator",
                    &url,
                    "--token-file",
                    token.to_str().unwrap(),
                    "--threads",
                    "1",
                ])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let out = coord.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("refused: wrong or missing join token"),
        "the coordinator logs the refusal: {log}"
    );
    assert_eq!(json(&run.join("summary.json"))["workers"], 2);
    assert_eq!(
        json(&run.join("model/model.json"))["training"]["workers"],
        2
    );
}

/// When not every expected worker comes, the coordinator gives up after --join-timeout,
/// saying how many came and which; the one that came is let go.
#[test]
fn a_join_timeout_names_who_came_and_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 100);
    let token = dir.path().join("join.token");
    std::fs::write(&token, "s3cret-token-for-the-cluster\n").unwrap();
    let port = free_port();
    let coord = Command::new(bin("coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--expect-workers", "2", "--join-timeout", "4"])
        .args(["--token-file", token.to_str().unwrap(), "--data"])
        .arg(&train)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = Command::new(bin("worker"))
        .args(["--coordinator", &format!("http://127.0.0.1:{port}")])
        .args(["--token-file", token.to_str().unwrap(), "--threads", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = coord.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("1 of 2 workers joined within 4 s ("), "{log}");
    assert!(log.contains(&format!("pid {})", worker.id())), "{log}");
    let start = Instant::now();
    while worker.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker that came is still waiting"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
