//! Strangers and bad messages on the coordinator's gRPC port while a run trains: each is
//! refused with its own status, and the run ends exactly as an undisturbed one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pb;
use common::pb::coordinator_client::CoordinatorClient;
use common::state_transfer::{self, ModelState};
use smalltext_tests::{
    bin, connect_coordinator, coordinator, free_port, max_weight_diff, stderr, trec_slice,
};
use tonic::transport::Channel;
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
        // Only this protocol version: a worker sending weights in one message is refused.
        let refused = client
            .join(join(TOKEN, pb::ProtocolVersion::V2 as u32))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        // The run's initial state (this run has none) is for those who hold the token.
        let fetch = |token: &str| pb::FetchStateRequest {
            rank: 0,
            token: token.into(),
        };
        let refused = client
            .fetch_initial_state(fetch("guess"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        let refused = client.fetch_initial_state(fetch(TOKEN)).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused}");

        // Forged reports of rank 0, weights announced then sent in chunks: with the wrong token,
        // and with the real one but a transfer that is not the one announced. None of them
        // reaches the run (its weights end as the undisturbed run's).
        let state = ModelState::new(vec![7; 3000], vec![9; 5000]);
        let header = state.header();
        let chunks = |size: usize| -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            state.outgoing().send_chunks(size, |c| {
                out.push(c.data);
                true
            });
            out
        };
        let report = |token: &str, state: Option<&pb::StateHeader>| pb::EpochReport {
            rank: 0,
            token: token.into(),
            epoch: 0,
            state: state.cloned(),
            ..Default::default()
        };
        let refused = send_report(&client, report("guess", Some(&header)), chunks(1000))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        // Truncated: the last chunk is missing.
        let mut truncated = chunks(1000);
        truncated.pop();
        let refused = send_report(&client, report(TOKEN, Some(&header)), truncated)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(
            refused
                .message()
                .contains("truncated: 7000 of the announced 8000 bytes"),
            "{refused}"
        );
        // More than announced: one byte after the whole state.
        let mut longer = chunks(1000);
        longer.push(vec![1]);
        let refused = send_report(&client, report(TOKEN, Some(&header)), longer)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(
            refused
                .message()
                .contains("more than the announced 8000 bytes"),
            "{refused}"
        );
        // Chunks after a report that announced none.
        let refused = send_report(&client, report(TOKEN, None), chunks(1000))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        // The announced size, but not the announced bytes.
        let mut corrupt = chunks(1000);
        corrupt[3][10] ^= 1;
        let refused = send_report(&client, report(TOKEN, Some(&header)), corrupt)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains("SHA-256"), "{refused}");
        // A chunk over the chunk limit, and one too large to be read at all.
        let big = ModelState::new(vec![7; pb::MAX_MESSAGE_BYTES + 1024], Vec::new());
        let big_header = big.header();
        for (len, codes) in [
            (
                state_transfer::CHUNK_BYTES + 1,
                &[Code::InvalidArgument][..],
            ),
            (
                pb::MAX_MESSAGE_BYTES + 1024,
                &[Code::OutOfRange, Code::ResourceExhausted][..],
            ),
        ] {
            let refused = send_report(
                &client,
                report(TOKEN, Some(&big_header)),
                vec![big.weights[..len].to_vec()],
            )
            .await
            .unwrap_err();
            assert!(codes.contains(&refused.code()), "{len}: {refused}");
        }
        drop(big);
        // Checkpoint uploads: the token first, and a state announced and sent whole.
        let upload = |token: &str, state: Option<&pb::StateHeader>| pb::CheckpointUpload {
            rank: 0,
            token: token.into(),
            epoch: 0,
            steps_done: 1,
            state: state.cloned(),
            ..Default::default()
        };
        let refused = send_checkpoint(&client, upload("guess", Some(&header)), chunks(4096))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        let refused = send_checkpoint(&client, upload(TOKEN, None), Vec::new())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        let mut truncated = chunks(4096);
        truncated.pop();
        let refused = send_checkpoint(&client, upload(TOKEN, Some(&header)), truncated)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains("truncated"), "{refused}");
        let mut longer = chunks(4096);
        longer.push(vec![0; 10]);
        let refused = send_checkpoint(&client, upload(TOKEN, Some(&header)), longer)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        // A stream that does not start with the report.
        let parts = [pb::EpochReportPart {
            kind: Some(pb::epoch_report_part::Kind::Chunk(pb::StateChunk {
                data: vec![1],
            })),
        }];
        let refused = client
            .clone()
            .report_epoch(tokio_stream::iter(parts))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
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

/// Sends `report` followed by `chunks` as ReportEpoch's stream.
async fn send_report(
    client: &CoordinatorClient<Channel>,
    report: pb::EpochReport,
    chunks: Vec<Vec<u8>>,
) -> Result<(), tonic::Status> {
    use pb::epoch_report_part::Kind;
    let parts = std::iter::once(Kind::Report(report))
        .chain(
            chunks
                .into_iter()
                .map(|data| Kind::Chunk(pb::StateChunk { data })),
        )
        .map(|kind| pb::EpochReportPart { kind: Some(kind) });
    client
        .clone()
        .report_epoch(tokio_stream::iter(parts))
        .await
        .map(|_| ())
}

/// Sends `upload` followed by `chunks` as UploadCheckpoint's stream.
async fn send_checkpoint(
    client: &CoordinatorClient<Channel>,
    upload: pb::CheckpointUpload,
    chunks: Vec<Vec<u8>>,
) -> Result<(), tonic::Status> {
    use pb::checkpoint_part::Kind;
    let parts = std::iter::once(Kind::Upload(upload))
        .chain(
            chunks
                .into_iter()
                .map(|data| Kind::Chunk(pb::StateChunk { data })),
        )
        .map(|kind| pb::CheckpointPart { kind: Some(kind) });
    client
        .clone()
        .upload_checkpoint(tokio_stream::iter(parts))
        .await
        .map(|_| ())
}
