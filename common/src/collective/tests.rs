//! Ring tests over real TCP on 127.0.0.1: one thread per rank, port-0 listeners. Impostors
//! and broken peers are built from the crate-private handshake so they can get past
//! authentication and then misbehave on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::auth::{self, HandshakeError};
use super::frame::{FrameHeader, FrameKind, HEADER_LEN};
use super::*;

const TOKEN: &[u8] = b"join-token-for-tests";
const RUN: u64 = 42;

pub(super) fn listeners(n: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().expect("addr")).collect();
    (ls, addrs)
}

pub(super) fn options(connect_timeout: Duration, io_timeout: Duration) -> RingOptions {
    RingOptions {
        connect_timeout,
        io_timeout,
        ..RingOptions::default()
    }
}

/// Forms a ring on given listeners, one thread per rank; returns each rank's outcome.
pub(super) fn form_on(
    ls: Vec<TcpListener>,
    addrs: &[SocketAddr],
    auths: &[RingAuth],
    opts: &[RingOptions],
) -> Vec<Result<RingAllReduce, CollectiveError>> {
    thread::scope(|s| {
        let handles: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(r, l)| {
                s.spawn(move || RingAllReduce::connect_with(r, addrs, l, &auths[r], &opts[r]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

pub(super) fn ring_with(opts: Vec<RingOptions>) -> Vec<RingAllReduce> {
    let n = opts.len();
    let (ls, addrs) = listeners(n);
    let auths = vec![RingAuth::new(TOKEN, RUN); n];
    form_on(ls, &addrs, &auths, &opts)
        .into_iter()
        .map(|r| r.expect("ring forms"))
        .collect()
}

pub(super) fn ring(n: usize) -> Vec<RingAllReduce> {
    ring_with(vec![
        options(
            Duration::from_secs(10),
            Duration::from_secs(10)
        );
        n
    ])
}

/// Runs `f` on every rank at once, one thread each, and collects the results in rank order.
pub(super) fn each<T: Send>(
    rings: &mut [RingAllReduce],
    f: impl Fn(&mut RingAllReduce) -> T + Sync,
) -> Vec<T> {
    let f = &f;
    thread::scope(|s| {
        let handles: Vec<_> = rings.iter_mut().map(|r| s.spawn(move || f(r))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

pub(super) fn random_vec(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// All-reduces per-rank random buffers of `len` and checks the sum and identical bits.
pub(super) fn check_dense(rings: &mut [RingAllReduce], len: usize) {
    let n = rings.len();
    let inputs: Vec<Vec<f32>> = (0..n)
        .map(|r| random_vec((r * 1_000_000 + len) as u64, len))
        .collect();
    let outputs = each(rings, |ring| {
        let mut buf = inputs[ring.rank()].clone();
        ring.all_reduce_sum(&mut buf).map(|()| buf)
    });
    let outputs: Vec<Vec<f32>> = outputs
        .into_iter()
        .map(|o| o.expect("all-reduce succeeds"))
        .collect();
    for i in 0..len {
        let want: f64 = inputs.iter().map(|v| f64::from(v[i])).sum();
        let got = outputs[0][i];
        assert!(
            (f64::from(got) - want).abs() < 1e-5,
            "world {n} len {len} [{i}]: {got} vs {want}"
        );
        for (r, out) in outputs.iter().enumerate().skip(1) {
            assert_eq!(
                out[i].to_bits(),
                got.to_bits(),
                "world {n} len {len} [{i}]: rank {r} differs from rank 0"
            );
        }
    }
}

#[test]
fn dense_sum_for_world_sizes_1_to_4_and_awkward_lengths() {
    for n in 1..=4 {
        let mut rings = ring(n);
        for len in [0, 1, 5, 1000, 1_000_003] {
            check_dense(&mut rings, len);
        }
    }
}

#[test]
fn dense_sum_with_small_segments_chosen_differently_per_rank() {
    // Each rank cuts the chunks it originates its own way; receivers must follow the sender.
    let opts = (0..3)
        .map(|r| RingOptions {
            segment_bytes: 12 + 40 * r,
            ..options(Duration::from_secs(10), Duration::from_secs(10))
        })
        .collect();
    let mut rings = ring_with(opts);
    for len in [7, 1000, 4099] {
        check_dense(&mut rings, len);
    }
}

#[test]
fn bytes_sent_follow_the_ring_schedule() {
    let mut rings = ring(4);
    let len = 4000;
    check_dense(&mut rings, len);
    for r in &mut rings {
        let bytes = r.take_bytes_sent();
        // 2(n-1)/n of the buffer in f32s, plus frame headers.
        let data = 2 * 3 * (len / 4) * 4;
        assert!(bytes as usize >= data, "{bytes} < {data}");
        assert!((bytes as usize) < data + 64 * HEADER_LEN, "{bytes}");
        assert_eq!(r.take_bytes_sent(), 0, "take resets the counter");
    }
}

/// Bytes whose f32 readings would not survive arithmetic: -0.0, NaN payloads, subnormals.
#[test]
fn broadcast_bytes_arrive_unchanged_from_any_root() {
    let mut payload: Vec<u8> = Vec::new();
    for bits in [
        0x8000_0000u32,
        0x7fa0_0001,
        0xffc0_1234,
        0x0000_0001,
        0x3f80_0000,
    ] {
        payload.extend_from_slice(&bits.to_le_bytes());
    }
    payload.extend((0..100_001u32).map(|i| (i * 7919 % 251) as u8));
    for n in [1, 2, 3] {
        let mut rings = ring(n);
        let root = n - 1;
        let got = each(&mut rings, |r| {
            let mut bytes = if r.rank() == root {
                payload.clone()
            } else {
                vec![9u8; 17]
            };
            r.broadcast_bytes(root, &mut bytes).map(|()| bytes)
        });
        for (rank, bytes) in got.into_iter().enumerate() {
            assert!(
                bytes.expect("broadcast") == payload,
                "world {n}, rank {rank}"
            );
        }
    }
    let mut rings = ring(2);
    let err = rings[0].broadcast_bytes(2, &mut Vec::new());
    assert!(
        matches!(err, Err(CollectiveError::InvalidInput(_))),
        "{err:?}"
    );
}

#[test]
fn local_is_a_no_op() {
    let mut local = Local;
    let mut buf = vec![1.0, 2.0];
    local.all_reduce_sum(&mut buf).expect("no-op");
    assert_eq!(buf, vec![1.0, 2.0]);
    let (mut ids, mut rows) = (vec![3, 1], vec![0.0; 2]);
    assert!(matches!(
        local.all_reduce_sparse_rows(&mut ids, &mut rows, 1),
        Err(CollectiveError::InvalidInput(_))
    ));
    assert_eq!(
        (local.rank(), local.world_size(), local.take_bytes_sent()),
        (0, 1, 0)
    );
}

/// Sorted unique random ids below `range`, and random rows for them.
pub(super) fn random_sparse(
    seed: u64,
    range: u32,
    count: usize,
    row_len: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids: Vec<u32> = (0..count).map(|_| rng.gen_range(0..range)).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = random_vec(seed + 7, ids.len() * row_len);
    (ids, rows)
}

pub(super) fn check_sparse(
    rings: &mut [RingAllReduce],
    inputs: &[(Vec<u32>, Vec<f32>)],
    table: usize,
    row_len: usize,
) {
    let results = each(rings, |ring| {
        let (mut ids, mut rows) = inputs[ring.rank()].clone();
        ring.all_reduce_sparse_rows(&mut ids, &mut rows, row_len)
            .map(|()| (ids, rows))
    });
    let results: Vec<(Vec<u32>, Vec<f32>)> = results
        .into_iter()
        .map(|r| r.expect("sparse all-reduce succeeds"))
        .collect();
    // The dense reference: densifying is fine in a test.
    let mut dense = vec![0.0f64; table * row_len];
    let mut touched = vec![false; table];
    for (ids, rows) in inputs {
        for (k, &id) in ids.iter().enumerate() {
            touched[id as usize] = true;
            for j in 0..row_len {
                dense[id as usize * row_len + j] += f64::from(rows[k * row_len + j]);
            }
        }
    }
    let want_ids: Vec<u32> = (0..table as u32).filter(|&i| touched[i as usize]).collect();
    let (ids0, rows0) = &results[0];
    assert_eq!(ids0, &want_ids);
    for (k, &id) in ids0.iter().enumerate() {
        for j in 0..row_len {
            let (got, want) = (rows0[k * row_len + j], dense[id as usize * row_len + j]);
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "row {id}[{j}]: {got} vs {want}"
            );
        }
    }
    for (r, (ids, rows)) in results.iter().enumerate().skip(1) {
        assert_eq!(ids, ids0, "rank {r} ids");
        let same = rows
            .iter()
            .zip(rows0)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && rows.len() == rows0.len(),
            "rank {r} rows differ from rank 0"
        );
    }
}

#[test]
fn sparse_rows_match_the_dense_reference_and_send_far_fewer_bytes() {
    let (table, row_len) = (50_000, 64);
    let mut rings = ring(3);
    // Overlapping id sets: all drawn from the first 2000 rows of a 50 000-row table.
    let inputs: Vec<_> = (0..3)
        .map(|r| random_sparse(100 + r, 2000, 300, row_len))
        .collect();
    check_sparse(&mut rings, &inputs, table, row_len);
    let sparse_bytes: Vec<u64> = rings.iter_mut().map(|r| r.take_bytes_sent()).collect();

    let mut dense_rings = each(&mut rings, |ring| {
        let mut buf = vec![0.5f32; table * row_len];
        ring.all_reduce_sum(&mut buf)
            .map(|()| ring.take_bytes_sent())
    });
    let dense_bytes: Vec<u64> = dense_rings.drain(..).map(|b| b.expect("dense")).collect();
    for r in 0..3 {
        assert!(
            sparse_bytes[r] * 20 < dense_bytes[r],
            "rank {r}: sparse {} bytes vs dense {}",
            sparse_bytes[r],
            dense_bytes[r]
        );
    }
}

#[test]
fn sparse_rows_with_empty_contributions_and_other_world_sizes() {
    for n in [2, 4] {
        let mut rings = ring(n);
        let mut inputs: Vec<_> = (0..n as u64)
            .map(|r| random_sparse(200 + r, 500, 50, 3))
            .collect();
        inputs[1] = (Vec::new(), Vec::new());
        check_sparse(&mut rings, &inputs, 500, 3);
        // Dense and sparse calls interleave on one ring.
        check_dense(&mut rings, 1001);
        let empty = vec![(Vec::new(), Vec::new()); n];
        check_sparse(&mut rings, &empty, 500, 3);
    }
}

#[test]
fn sparse_rejects_unsorted_ids_before_touching_the_network() {
    let mut rings = ring(2);
    let (mut ids, mut rows) = (vec![2, 2], vec![0.0; 2]);
    let err = rings[0].all_reduce_sparse_rows(&mut ids, &mut rows, 1);
    assert!(
        matches!(err, Err(CollectiveError::InvalidInput(_))),
        "{err:?}"
    );
    // The ring is still usable: the bad call never reached the wire.
    check_dense(&mut rings, 10);
}

#[test]
fn shape_mismatch_between_ranks_is_a_protocol_error() {
    let mut rings = ring(2);
    let results = each(&mut rings, |ring| {
        let mut buf = vec![1.0f32; 10 + ring.rank()];
        ring.all_reduce_sum(&mut buf)
    });
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(
        results.iter().any(|r| matches!(
            r,
            Err(CollectiveError::Protocol {
                cause: ProtocolError::ShapeMismatch { .. },
                ..
            })
        )),
        "{results:?}"
    );
    // A failed ring stays failed.
    let again = rings[0].all_reduce_sum(&mut [1.0]);
    assert!(
        matches!(again, Err(CollectiveError::Broken(_))),
        "{again:?}"
    );
}

#[test]
fn mismatched_tokens_fail_with_an_authentication_error() {
    let (ls, addrs) = listeners(2);
    let auths = [RingAuth::new(b"wrong", RUN), RingAuth::new(TOKEN, RUN)];
    let opts = vec![options(Duration::from_secs(2), Duration::from_secs(2)); 2];
    for r in form_on(ls, &addrs, &auths, &opts) {
        let e = r.expect_err("must not form");
        assert!(matches!(e, CollectiveError::Auth { .. }), "{e:?}");
        assert!(e.to_string().contains("authentication"), "{e}");
    }
}

#[test]
fn a_different_run_id_is_refused() {
    let (ls, addrs) = listeners(2);
    let auths = [RingAuth::new(TOKEN, RUN), RingAuth::new(TOKEN, RUN + 1)];
    let opts = vec![options(Duration::from_secs(2), Duration::from_secs(2)); 2];
    for r in form_on(ls, &addrs, &auths, &opts) {
        assert!(matches!(r, Err(CollectiveError::Auth { .. })), "{r:?}");
    }
}

/// An impostor connects to `target` first, so the acceptor meets it before the real peer.
fn impostor(
    target: SocketAddr,
    auth: RingAuth,
    claimed_rank: u32,
) -> thread::JoinHandle<HandshakeError> {
    let stream = TcpStream::connect(target).expect("impostor connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    thread::spawn(move || {
        auth::dial(&stream, &auth, claimed_rank, 1, 2).expect_err("impostor must be refused")
    })
}

#[test]
fn wrong_token_is_refused_and_the_real_ring_still_forms() {
    let (ls, addrs) = listeners(2);
    // Rank 1's left neighbour is rank 0: the attacker pretends to be rank 0.
    let attacker = impostor(addrs[1], RingAuth::new(b"guessed", RUN), 0);
    let auths = vec![RingAuth::new(TOKEN, RUN); 2];
    let opts = vec![options(Duration::from_secs(10), Duration::from_secs(10)); 2];
    let mut rings: Vec<RingAllReduce> = form_on(ls, &addrs, &auths, &opts)
        .into_iter()
        .map(|r| r.expect("the real ring forms"))
        .collect();
    match attacker.join().expect("attacker thread") {
        HandshakeError::Auth(reason) => assert!(reason.contains("rejected"), "{reason}"),
        other => panic!("expected an authentication refusal, got {other:?}"),
    }
    check_dense(&mut rings, 1000);
}

#[test]
fn right_token_but_wrong_rank_is_refused() {
    let (ls, addrs) = listeners(2);
    let attacker = impostor(addrs[1], RingAuth::new(TOKEN, RUN), 1);
    let auths = vec![RingAuth::new(TOKEN, RUN); 2];
    let opts = vec![options(Duration::from_secs(10), Duration::from_secs(10)); 2];
    let mut rings: Vec<RingAllReduce> = form_on(ls, &addrs, &auths, &opts)
        .into_iter()
        .map(|r| r.expect("the real ring forms"))
        .collect();
    assert!(matches!(
        attacker.join().expect("attacker thread"),
        HandshakeError::Auth(_)
    ));
    check_dense(&mut rings, 10);
}

#[test]
fn a_stray_connection_speaking_garbage_is_dropped_and_the_ring_still_forms() {
    let (ls, addrs) = listeners(2);
    let mut stray = TcpStream::connect(addrs[0]).expect("stray connects");
    stray
        .write_all(b"GET / HTTP/1.1\r\nHost: ring\r\n\r\n")
        .expect("stray writes");
    let auths = vec![RingAuth::new(TOKEN, RUN); 2];
    let opts = vec![options(Duration::from_secs(10), Duration::from_secs(10)); 2];
    let mut rings: Vec<RingAllReduce> = form_on(ls, &addrs, &auths, &opts)
        .into_iter()
        .map(|r| r.expect("the real ring forms"))
        .collect();
    check_dense(&mut rings, 100);
}

/// Idle strangers on both ring ports, more of them than the connect timeout has handshake
/// timeouts for: handled one after another they would stop the ring from forming. Each is
/// dropped after the handshake timeout, while the real neighbours' handshakes go on beside it.
#[test]
fn idle_strangers_on_the_ring_ports_neither_stall_the_ring_nor_stay_connected() {
    let (ls, addrs) = listeners(2);
    let strangers: Vec<TcpStream> = (0..8)
        .map(|i| TcpStream::connect(addrs[i % 2]).expect("a stranger connects"))
        .collect();
    let opts = vec![
        RingOptions {
            handshake_timeout: Duration::from_secs(2),
            ..options(Duration::from_secs(6), Duration::from_secs(30))
        };
        2
    ];
    let auths = vec![RingAuth::new(TOKEN, RUN); 2];
    let mut rings: Vec<RingAllReduce> = form_on(ls, &addrs, &auths, &opts)
        .into_iter()
        .map(|r| r.expect("the real ring forms beside the strangers"))
        .collect();
    check_dense(&mut rings, 100);
    for mut s in strangers {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        // The challenge may come first; then the connection must end, not hang.
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(ended, "a stranger stays connected");
    }
}

#[test]
fn an_absent_neighbour_is_a_timeout_not_a_hang() {
    let (mut ls, addrs) = listeners(2);
    let l0 = ls.remove(0);
    drop(ls); // rank 1 never listens
    let start = Instant::now();
    let r = RingAllReduce::connect(
        0,
        &addrs,
        l0,
        &RingAuth::new(TOKEN, RUN),
        Duration::from_millis(500),
    );
    assert!(matches!(r, Err(CollectiveError::Timeout { .. })), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// Rank 0 real, rank 1 a fake that authenticates properly and then writes `bytes` to rank 0.
/// Returns rank 0's error from an all-reduce of 10 floats.
fn rank0_error_after(bytes: Vec<u8>) -> CollectiveError {
    let (mut ls, addrs) = listeners(2);
    let l1 = ls.pop().expect("listener 1");
    let l0 = ls.pop().expect("listener 0");
    let rank0_addr = addrs[0];
    let fake = thread::spawn(move || {
        let auth = RingAuth::new(TOKEN, RUN);
        let to_rank0 = TcpStream::connect(rank0_addr).expect("fake dials rank 0");
        auth::dial(&to_rank0, &auth, 1, 0, 2).expect("fake authenticates as dialer");
        let (from_rank0, _) = l1.accept().expect("fake accepts rank 0");
        auth::accept(&from_rank0, &auth, 1, 0, 2).expect("fake authenticates as acceptor");
        (to_rank0, from_rank0)
    });
    let mut ring0 = RingAllReduce::connect_with(
        0,
        &addrs,
        l0,
        &RingAuth::new(TOKEN, RUN),
        &options(Duration::from_secs(10), Duration::from_secs(5)),
    )
    .expect("rank 0 forms its ring with the fake");
    // Keep both fake streams open until rank 0 has read, so it fails on the bytes, not on EOF.
    let (mut to_rank0, _from_rank0) = fake.join().expect("fake thread");
    to_rank0.write_all(&bytes).expect("fake writes");
    let mut buf = vec![1.0f32; 10];
    ring0
        .all_reduce_sum(&mut buf)
        .expect_err("rank 0 must fail")
}

fn header(kind: FrameKind, step: u64, shape: u64, len: u32) -> Vec<u8> {
    FrameHeader {
        kind,
        step,
        shape,
        len,
    }
    .encode()
    .to_vec()
}

/// Whether a protocol error is the one a malformed-frame case should produce.
type IsExpected = fn(&ProtocolError) -> bool;

#[test]
fn malformed_frames_are_protocol_errors() {
    let mut oversize = header(FrameKind::ReduceScatter, 1, 10, 0);
    oversize[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut odd = header(FrameKind::ReduceScatter, 1, 10, 7);
    odd.extend_from_slice(&[0; 7]);
    let mut too_long = header(FrameKind::ReduceScatter, 1, 10, 40);
    too_long.extend_from_slice(&[0; 40]);
    let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        (
            "garbage",
            b"this is not a ring frame at all, no".to_vec(),
            |e| matches!(e, ProtocolError::BadMagic(_)),
        ),
        ("oversize", oversize, |e| {
            matches!(e, ProtocolError::Oversize { .. })
        }),
        ("odd length", odd, |e| {
            matches!(e, ProtocolError::Malformed(_))
        }),
        ("past the chunk", too_long, |e| {
            matches!(e, ProtocolError::Malformed(_))
        }),
        (
            "wrong shape",
            header(FrameKind::ReduceScatter, 1, 11, 0),
            |e| {
                matches!(
                    e,
                    ProtocolError::ShapeMismatch {
                        ours: 10,
                        theirs: 11,
                        ..
                    }
                )
            },
        ),
        (
            "wrong step",
            header(FrameKind::ReduceScatter, 9, 10, 0),
            |e| {
                matches!(
                    e,
                    ProtocolError::StepMismatch {
                        expected: 1,
                        got: 9
                    }
                )
            },
        ),
        ("wrong kind", header(FrameKind::AllGather, 1, 10, 0), |e| {
            matches!(e, ProtocolError::UnexpectedKind { .. })
        }),
    ];
    for (name, bytes, expected) in cases {
        match rank0_error_after(bytes) {
            CollectiveError::Protocol {
                peer,
                cause: source,
            } => {
                assert_eq!(peer.rank, 1, "{name}");
                assert!(expected(&source), "{name}: {source:?}");
            }
            other => panic!("{name}: expected a protocol error, got {other:?}"),
        }
    }
}

/// The last rank dies (its ring is dropped) 100 ms into an all-reduce of `len` that the
/// others are making; returns their results and how long they took.
pub(super) fn last_rank_dies_mid_sum(
    mut rings: Vec<RingAllReduce>,
    len: usize,
) -> (
    Vec<RingAllReduce>,
    Vec<Result<(), CollectiveError>>,
    Duration,
) {
    let dead = rings.pop().expect("a last rank");
    let start = Instant::now();
    let results = thread::scope(|s| {
        s.spawn(move || {
            thread::sleep(Duration::from_millis(100));
            drop(dead);
        });
        each(&mut rings, |ring| {
            let mut buf = vec![1.0f32; len];
            ring.all_reduce_sum(&mut buf)
        })
    });
    (rings, results, start.elapsed())
}

#[test]
fn a_peer_that_dies_mid_reduction_fails_the_others_within_the_timeout() {
    let io_timeout = Duration::from_secs(2);
    let rings = ring_with(vec![options(Duration::from_secs(10), io_timeout); 3]);
    // Rank 2's sockets close while the others are mid-way through a reduction.
    let (_, results, took) = last_rank_dies_mid_sum(rings, 1_000_000);
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(took < 2 * io_timeout, "took {took:?}");
}

#[test]
fn a_hung_peer_is_a_timeout_not_a_hang() {
    let io_timeout = Duration::from_secs(1);
    let mut rings = ring_with(vec![options(Duration::from_secs(10), io_timeout); 3]);
    let hung = rings.pop().expect("rank 2");
    let start = Instant::now();
    let results = each(&mut rings, |ring| {
        let mut buf = vec![1.0f32; 1000];
        ring.all_reduce_sum(&mut buf)
    });
    let elapsed = start.elapsed();
    // Rank 0 reads from the hung rank 2 and times out; rank 1 learns when rank 0 closes.
    assert!(
        matches!(results[0], Err(CollectiveError::Timeout { .. })),
        "{results:?}"
    );
    assert!(results[1].is_err(), "{results:?}");
    assert!(elapsed < 4 * io_timeout, "took {elapsed:?}");
    drop(hung);
}

/// Rank 0 all-reduces alone (rank 1 never joins, so only an abort can end it) while another
/// thread aborts the ring after 200 ms; checks the call was aborted and returns how long it took.
pub(super) fn aborted_while_alone(rings: &mut [RingAllReduce]) -> Duration {
    let abort = rings[0].abort_handle();
    let start = Instant::now();
    let result = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(200));
            abort.abort();
        });
        rings[0].all_reduce_sum(&mut [1.0; 100])
    });
    assert!(
        matches!(result, Err(CollectiveError::Aborted)),
        "{result:?}"
    );
    start.elapsed()
}

#[test]
fn another_thread_can_abort_a_stuck_collective() {
    assert!(aborted_while_alone(&mut ring(2)) < Duration::from_secs(5));
}
