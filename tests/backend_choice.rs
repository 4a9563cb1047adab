//! The coordinator's one choice of collective backend, over real gRPC, with two stand-in
//! workers that offer NCCL ids as GPU workers do: at the rendezvous and at every regroup alike,
//! NCCL with ring rank 0's id when every member offers one (a fresh id for each regrouped
//! ring), the TCP ring as soon as one member cannot use NCCL, the shared-memory ring for
//! members on one host unless `--ring-transport tcp`; and an id of the wrong size is refused.

use std::process::{Child, Command, Stdio};

use common::collective::Backend;
use common::pb;
use common::pb::coordinator_client::CoordinatorClient;
use smalltext_tests::{bin, connect_coordinator, free_port, trec_slice};
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "nccl-test-join-token";

fn join(name: &str, id: Vec<u8>) -> pb::JoinRequest {
    pb::JoinRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        token: TOKEN.into(),
        ring_addr: format!("127.0.0.1:{}", free_port()),
        hostname: name.into(),
        pid: 1,
        threads: 1,
        nccl_id: id,
        device: "cuda:0".into(),
    }
}

fn regroup(rank: u32, generation: u64, id: Vec<u8>) -> pb::RegroupRequest {
    pb::RegroupRequest {
        rank,
        token: TOKEN.into(),
        generation,
        reason: "test".into(),
        nccl_id: id,
        ..Default::default()
    }
}

/// Both workers regroup at once (the coordinator answers when all members have asked).
async fn regroup_both(
    a: &mut CoordinatorClient<Channel>,
    b: &mut CoordinatorClient<Channel>,
    ra: pb::RegroupRequest,
    rb: pb::RegroupRequest,
) -> (pb::RegroupReply, pb::RegroupReply) {
    let (x, y) = tokio::join!(a.regroup(ra), b.regroup(rb));
    (x.unwrap().into_inner(), y.unwrap().into_inner())
}

/// A coordinator waiting for two workers, with `extra` flags; its URL.
fn coordinator(dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let train = trec_slice(dir, "train.tsv", 0, 300);
    let token = dir.join("join.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let coord = Command::new(bin("coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--expect-workers", "2", "--heartbeat-timeout", "120"])
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--data", train.to_str().unwrap(), "--epochs", "1"])
        .args(["--run-dir", dir.join("run").to_str().unwrap()])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (coord, format!("http://127.0.0.1:{port}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn backend(b: Option<pb::Backend>) -> Backend {
    Backend::try_from(b).expect("every reply names a backend")
}

#[test]
fn nccl_with_ring_rank_zeros_id_at_rendezvous_and_at_every_regroup_else_the_tcp_ring() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator(dir.path(), &[]);
    runtime().block_on(async {
        let mut a = connect_coordinator(&url).await;
        let mut b = a.clone();

        let (id_a, id_b) = (vec![0xa1; 128], vec![0xb2; 128]);
        let (ja, jb) = tokio::join!(
            a.join(join("a", id_a.clone())),
            b.join(join("b", id_b.clone()))
        );
        let (ja, jb) = (ja.unwrap().into_inner(), jb.unwrap().into_inner());
        assert_eq!((ja.world_size, jb.world_size), (2, 2));
        let rank0_id = if ja.rank == 0 { &id_a } else { &id_b };
        let nccl = |id: &Vec<u8>| Backend::Nccl {
            unique_id: id.clone(),
        };
        assert_eq!(backend(ja.backend), nccl(rank0_id));
        assert_eq!(backend(jb.backend), nccl(rank0_id));
        let (rank_a, rank_b) = (ja.rank, jb.rank);

        let refused = a.regroup(regroup(rank_a, 0, vec![1; 5])).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains("128 bytes"), "{refused}");

        // Every member offers a fresh id: all get ring rank 0's.
        let (id_c, id_d) = (vec![0xc3; 128], vec![0xd4; 128]);
        let (ra, rb) = regroup_both(
            &mut a,
            &mut b,
            regroup(rank_a, 0, id_c.clone()),
            regroup(rank_b, 0, id_d.clone()),
        )
        .await;
        assert_eq!((ra.generation, rb.generation), (1, 1));
        assert_eq!((ra.world_size, rb.world_size), (2, 2));
        let new_rank0_id = if ra.ring_rank == 0 { &id_c } else { &id_d };
        assert_eq!(backend(ra.backend), nccl(new_rank0_id));
        assert_eq!(backend(rb.backend), nccl(new_rank0_id));

        // One member without NCCL, on other hosts: the new ring is the TCP ring for everyone.
        let (ra, rb) = regroup_both(
            &mut a,
            &mut b,
            regroup(rank_a, 1, vec![0xe5; 128]),
            regroup(rank_b, 1, Vec::new()),
        )
        .await;
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(backend(ra.backend), Backend::TcpRing);
        assert_eq!(backend(rb.backend), Backend::TcpRing);
    });
    coord.kill().unwrap();
    coord.wait().unwrap();
}

#[test]
fn workers_on_one_host_share_memory_at_rendezvous_and_regroup_unless_the_run_keeps_tcp() {
    for (extra, expected) in [
        (&[][..], Backend::SharedMemoryRing),
        (&["--ring-transport", "tcp"][..], Backend::TcpRing),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut coord, url) = coordinator(dir.path(), extra);
        runtime().block_on(async {
            let mut a = connect_coordinator(&url).await;
            let mut b = a.clone();
            let (ja, jb) = tokio::join!(
                a.join(join("same-host", Vec::new())),
                b.join(join("same-host", Vec::new()))
            );
            let (ja, jb) = (ja.unwrap().into_inner(), jb.unwrap().into_inner());
            assert_eq!(backend(ja.backend), expected, "{extra:?}");
            assert_eq!(backend(jb.backend), expected, "{extra:?}");
            let (ra, rb) = regroup_both(
                &mut a,
                &mut b,
                regroup(ja.rank, 0, Vec::new()),
                regroup(jb.rank, 0, Vec::new()),
            )
            .await;
            assert_eq!(backend(ra.backend), expected, "{extra:?}");
            assert_eq!(backend(rb.backend), expected, "{extra:?}");
        });
        coord.kill().unwrap();
        coord.wait().unwrap();
    }
}
