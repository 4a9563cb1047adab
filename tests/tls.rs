//! Optional TLS: gRPC over TLS with client certificates required (mutual), and ring links over
//! mutual TLS. Workers without an acceptable certificate cannot join.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use smalltext_tests::{bin, coordinator, free_port, json, stderr, tls_files, trec_slice};

fn tls_args<'a>(ca: &'a Path, cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
}

#[test]
fn local_workers_train_over_tls_and_their_ring_links_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let (ca, cert, key) = tls_files(dir.path(), "node");
    let run = dir.path().join("run");
    let mut args = vec![
        "--workers",
        "2",
        "--threads",
        "1",
        "--data",
        train.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    args.extend(tls_args(&ca, &cert, &key));
    let o = coordinator(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("ring formed").count(), 2, "{err}");
    assert_eq!(err.matches("tls=true").count(), 2, "{err}");
    assert_eq!(json(&run.join("summary.json"))["workers"], 2);

    // A key that does not parse is named before anything starts.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let mut args = vec!["--data", train.to_str().unwrap(), "--epochs", "1"];
    args.extend(tls_args(&ca, &cert, &bad));
    let o = coordinator(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.key"), "{}", stderr(&o));
}

#[test]
fn a_tls_coordinator_takes_only_workers_with_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let (ca, cert, key) = tls_files(dir.path(), "node");
    let (_, stranger_cert, stranger_key) = tls_files(dir.path(), "stranger");
    let token = dir.path().join("join.token");
    std::fs::write(&token, "tls-join-token-for-the-tests\n").unwrap();
    let port = free_port();
    let run = dir.path().join("run");
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--listen",
        &listen,
        "--expect-workers",
        "2",
        "--token-file",
        token.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    args.extend(tls_args(&ca, &cert, &key));
    let mut coord = Command::new(bin("coordinator"))
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let https = format!("https://127.0.0.1:{port}");
    let http = format!("http://127.0.0.1:{port}");
    let worker = |url: &str, tls: &[&str]| {
        Command::new(bin("worker"))
            .args([
                "--coordinator",
                url,
                "--token-file",
                token.to_str().unwrap(),
            ])
            .args(["--threads", "1", "--connect-timeout", "3"])
            .args(tls)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // No client certificate, a certificate from another CA, no TLS at all: none gets in.
    let strangers = vec![
        worker(&https, &["--tls-ca", ca.to_str().unwrap()]),
        worker(&https, &tls_args(&ca, &stranger_cert, &stranger_key)),
        worker(&http, &[]),
    ];
    for w in strangers {
        let o = w.wait_with_output().unwrap();
        assert!(!o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot reach the coordinator"),
            "{}",
            stderr(&o)
        );
    }
    let members: Vec<_> = (0..2)
        .map(|_| worker(&https, &tls_args(&ca, &cert, &key)))
        .collect();
    for w in members {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("tls=true"), "{}", stderr(&o));
    }
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = coord.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(json(&run.join("summary.json"))["workers"], 2);
}

/// A worker daemon serving over TLS takes a job from a TLS coordinator, whose workers join it
/// at https:// with the daemon's certificate.
#[test]
fn a_tls_daemon_takes_a_job_from_a_tls_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 200);
    let (ca, cert, key) = tls_files(dir.path(), "node");
    let token = dir.path().join("join.token");
    std::fs::write(&token, "daemon-join-token-for-tls-tests\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Command::new(bin("worker"))
        .args(["--listen", &listen, "--token-file", token.to_str().unwrap()])
        .args(["--threads", "1"])
        .args(tls_args(&ca, &cert, &key))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = dir.path().join("run");
    let mut args = vec![
        "--workers",
        &listen,
        "--token-file",
        token.to_str().unwrap(),
        "--advertise-addr",
        "127.0.0.1",
        "--data",
        train.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    args.extend(tls_args(&ca, &cert, &key));
    // The daemon may still be starting: the coordinator retries enrolment for a while.
    std::thread::sleep(Duration::from_millis(300));
    let o = coordinator(&args);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("took the job"), "{}", stderr(&o));
    assert_eq!(json(&run.join("summary.json"))["workers"], 1);
}
