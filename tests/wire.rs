//! Strangers and bad messages on the coordinator's gRPC port while a run trains: each is
//! refused with its own status, and the run ends exactly as an undisturbed one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pb;
use smalltext_tests::{
    bin, connect_coordinator, coordinator, free_port, max_weight_diff, stderr, trec_slice,
};
use tonic::Code;

const TOKEN: &str = "the-real-token-of-this-run";

#[test]
fn bad_messages_are_refused_and_the_run_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 1500);
    let token = dir.path().join("join.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let common_args = |run: &std::path::Path| -> Vec<String> {
        [
            "--data",
            train.to_str().unwrap(),
            "--epochs",
            "3",
            "--seed",
            "5",
            "--run-dir",
            run.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let quiet = dir.path().join("quiet");
    let mut args: Vec<String> = ["--workers", "1", "--threads", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(common_args(&quiet));
    let o = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let noisy = dir.path().join("noisy");
    let coord = Command::new(bin("coordinator"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--expect-workers",
            "1",
        ])
        .args(["--token-file", token.to_str().unwrap()])
        .args(common_args(&noisy))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = Command::new(bin("worker"))
        .args([
            "--coordinator",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args(["--threads", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = connect_coordinator(&url).await;
        // Wait until the real worker trains.
        loop {
            let s = client
                .run_status(pb::StatusRequest {
                    token: TOKEN.into(),
                })
                .await
                .unwrap()
                .into_inner();
            if s.workers == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the worker never joined");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let join = |token: &str, version: u32| pb::JoinRequest {
            protocol_version: version,
            token: token.into(),
            ring_addr: "127.0.0.1:1".into(),
            hostname: "intruder".into(),
            ..Default::default()
        };
        let refused = client
            .join(join("guess", pb::PROTOCOL_VERSION))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        let refused = client
            .join(join(TOKEN, pb::PROTOCOL_VERSION + 1))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        // The run's state is for those who hold the token.
        let refused = client
            .run_status(pb::StatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        // Forged weights for rank 0: with the wrong token, and too large to be read at all.
        let forged = |token: &str, bytes: usize| pb::EpochReport {
            rank: 0,
            token: token.into(),
            epoch: 0,
            weights: vec![7; bytes],
            ..Default::default()
        };
        let refused = client
            .report_epoch(forged("guess", 1000))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        let huge = pb::MAX_MESSAGE_BYTES + 1024;
        let refused = client
            .report_epoch(forged("guess", huge))
            .await
            .unwrap_err();
        assert!(
            matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{refused}"
        );
        let refused = client
            .heartbeat(pb::HeartbeatRequest {
                rank: 9,
                token: TOKEN.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    });

    let coord = coord.wait_with_output().unwrap();
    let mut worker = worker;
    assert!(worker.wait().unwrap().success());
    assert!(coord.status.success(), "{}", stderr(&coord));
    assert!(stderr(&coord).contains("refused"), "{}", stderr(&coord));
    let diff = max_weight_diff(
        &quiet.join("checkpoint/weights.safetensors"),
        &noisy.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-6, "the disturbed run's weights differ by {diff}");
}
