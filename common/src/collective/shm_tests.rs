//! The shared-memory fast path of the ring: same sums as over TCP, falls back to TCP for
//! what does not fit or where no segment can be shared, and fails fast when a rank goes.

use std::path::Path;
use std::time::{Duration, Instant};

use super::tests::{
    aborted_while_alone, check_dense, check_sparse, last_rank_dies_mid_sum, options, random_sparse,
    ring_with,
};
use super::*;

const CAPACITY: usize = 5000;

fn shm_rings(n: usize, dir: &Path, io_timeout: Duration) -> Vec<RingAllReduce> {
    ring_with(vec![
        RingOptions {
            shared_memory: CAPACITY,
            shared_memory_dir: dir.to_path_buf(),
            ..options(Duration::from_secs(10), io_timeout)
        };
        n
    ])
}

#[test]
fn sums_and_gathers_through_shared_memory_match_the_reference_and_fall_back_when_too_big() {
    for n in [2, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rings = shm_rings(n, dir.path(), Duration::from_secs(10));
        for r in &rings {
            assert_eq!(r.transport(), "shared memory", "world {n}");
        }
        // Every rank mapped the segment, so its name is already gone from the directory.
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "world {n}: {left:?}");
        // Lengths within a slot, then one beyond it (over TCP), then within again.
        for len in [0, 1, 5, 1000, CAPACITY, CAPACITY + 1, 4099] {
            check_dense(&mut rings, len);
        }
        let bytes: Vec<u64> = rings.iter_mut().map(|r| r.take_bytes_sent()).collect();
        assert!(bytes.iter().all(|&b| b > 0), "{bytes:?}");
        let small: Vec<_> = (0..n as u64)
            .map(|r| random_sparse(300 + r, 400, 60, 4))
            .collect();
        check_sparse(&mut rings, &small, 400, 4);
        // One rank's rows do not fit its slot (1 500 ids × 5 floats > 5 000): all use TCP.
        let mut big = small.clone();
        big[n - 1] = random_sparse(399, 3000, 2500, 4);
        assert!(big[n - 1].0.len() * 5 > CAPACITY);
        check_sparse(&mut rings, &big, 3000, 4);
        check_sparse(&mut rings, &small, 400, 4);
        check_dense(&mut rings, 777);
    }
}

#[test]
fn without_a_shared_directory_the_ring_stays_on_tcp() {
    let missing = Path::new("/nonexistent/smalltext-shm");
    let mut rings = shm_rings(2, missing, Duration::from_secs(10));
    for r in &rings {
        assert_eq!(r.transport(), "tcp");
    }
    check_dense(&mut rings, 1000);
}

#[test]
fn a_rank_that_leaves_mid_sum_fails_the_others_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io_timeout = Duration::from_secs(20);
    let rings = shm_rings(3, dir.path(), io_timeout);
    let (mut rings, results, took) = last_rank_dies_mid_sum(rings, 1000);
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // And the ring stays broken, as after a TCP failure.
    let mut buf = [1.0f32; 10];
    assert!(matches!(
        rings[0].all_reduce_sum(&mut buf),
        Err(CollectiveError::Broken(_))
    ));
}

#[test]
fn a_rank_that_never_arrives_is_a_timeout_and_an_abort_ends_a_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io_timeout = Duration::from_secs(1);
    let mut rings = shm_rings(2, dir.path(), io_timeout);
    let start = Instant::now();
    let err = rings[0]
        .all_reduce_sum(&mut [1.0; 100])
        .expect_err("rank 1 never joins");
    let elapsed = start.elapsed();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        elapsed >= io_timeout && elapsed < 3 * io_timeout,
        "{elapsed:?}"
    );

    let mut rings = shm_rings(2, dir.path(), Duration::from_secs(30));
    assert!(aborted_while_alone(&mut rings) < Duration::from_secs(2));
}

#[test]
fn a_segment_with_another_nonce_is_not_joined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = Duration::from_secs(1);
    let (_owner, invitation) =
        shm::SharedRing::create(dir.path(), 2, 64, timeout).expect("segment");
    let mut forged = invitation.clone();
    forged.nonce[3] ^= 1;
    let err = shm::SharedRing::join(&forged, 1, 2, timeout).expect_err("wrong nonce");
    assert!(err.contains("not this ring's segment"), "{err}");
    assert!(shm::SharedRing::join(&invitation, 1, 2, timeout).is_ok());
    assert!(shm::Invitation::decode(&invitation.encode()) == Some(invitation));
}

/// A segment left behind by a rank 0 that died between creating it and unlinking it (ring
/// set-up only) is removed by the next rank 0 on the host, once it is a minute old; segments
/// of live creators, fresh ones and other files are left alone.
#[test]
fn a_segment_whose_creator_died_is_swept_by_the_next_ring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    };
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let file = |name: &str, modified| {
        let path = dir.path().join(name);
        let f = std::fs::File::create(&path).expect("create");
        f.set_modified(modified).expect("mtime");
        path
    };
    let leaked = file(&format!("smalltext-ring-{dead}-00112233aabbccdd"), old);
    let fresh = file(
        &format!("smalltext-ring-{dead}-0011223344556677"),
        std::time::SystemTime::now(),
    );
    let alive = file(
        &format!("smalltext-ring-{}-8899aabbccddeeff", std::process::id()),
        old,
    );
    let other = file(&format!("other-{dead}-00112233aabbccdd"), old);
    let (_ring, invitation) =
        shm::SharedRing::create(dir.path(), 2, 64, Duration::from_secs(1)).expect("segment");
    assert!(
        !leaked.exists(),
        "the dead creator's old segment is still there"
    );
    for kept in [&fresh, &alive, &other, &invitation.path] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
}
