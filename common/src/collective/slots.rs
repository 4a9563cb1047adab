//! Sums over slots: a world of fewer ranks than slots computes bitwise the sums that a world of
//! one rank per slot computes.
//!
//! Why: a run deals each global batch into a fixed number of slots, one per worker it started
//! with. When it loses a worker, a survivor computes the lost worker's slot as well, each slot's
//! gradient on its own, and the sums must still come out as the full world's did, or the last
//! bits of the weights drift (Adam turns that drift into learning-rate-sized steps).
//!
//! The full world adds chunk `c` of `n` (cut by [`chunk_range`]) in the order `c, c+1, …, c-1`
//! (mod `n`): the TCP ring because chunk `c` starts at rank `c` and gains one rank's values per
//! hop, and the shared-memory path because it adds in that order on purpose. Sparse rows are
//! merged in rank order. So here every slot's values are gathered first, each through an
//! ordinary all-reduce to which only the slot's host contributes (adding zeros changes no value,
//! only the sign of a zero, which no later step can tell apart), and then added locally in the
//! full world's order. The traffic is `slots` times an ordinary all-reduce's, and the memory
//! `slots` gradients, paid only while the world is short. NCCL adds in its own order, so there the sums match up to rounding.

use super::chunk::chunk_range;
use super::sparse::{merge, Contribution};
use super::{Collective, CollectiveError};

/// The order in which a world of `n` ranks adds the contributions to chunk `c`.
pub(crate) fn ring_order(n: usize, c: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (c + k) % n)
}

fn check_hosted(first: usize, hosted: usize, slots: usize) -> Result<(), CollectiveError> {
    if hosted == 0 || first + hosted > slots {
        return Err(CollectiveError::InvalidInput(format!(
            "slots {first}..{} of {slots}",
            first + hosted
        )));
    }
    Ok(())
}

/// The element-wise sum over `slots` dense buffers, as a world of `slots` ranks would compute
/// it. This rank holds the buffers of slots `first..first + mine.len()`, all of one length (taken,
/// not copied); every rank gets the same bits.
pub fn all_reduce_dense_slots(
    collective: &mut dyn Collective,
    first: usize,
    slots: usize,
    mine: Vec<Vec<f32>>,
) -> Result<Vec<f32>, CollectiveError> {
    check_hosted(first, mine.len(), slots)?;
    let len = mine[0].len();
    if mine.iter().any(|b| b.len() != len) {
        return Err(CollectiveError::InvalidInput(
            "the hosted slots' buffers differ in length".into(),
        ));
    }
    // Slot by slot, each call as long as an ordinary all-reduce's, so that it fits wherever
    // that one does (the shared-memory segment holds one gradient per rank).
    let mut gathered = Vec::with_capacity(slots);
    let mut hosted = mine.into_iter();
    for s in 0..slots {
        let mut buf = match s >= first {
            true => hosted.next(),
            false => None,
        }
        .unwrap_or_else(|| vec![0f32; len]);
        collective.all_reduce_sum(&mut buf)?;
        gathered.push(buf);
    }
    let mut out = vec![0f32; len];
    for c in 0..slots {
        let range = chunk_range(len, slots, c);
        let dst = &mut out[range.clone()];
        for (k, s) in ring_order(slots, c).enumerate() {
            let src = &gathered[s][range.clone()];
            if k == 0 {
                dst.copy_from_slice(src);
            } else {
                dst.iter_mut().zip(src).for_each(|(d, x)| *d += x);
            }
        }
    }
    Ok(out)
}

/// The union of `slots` sparse contributions with their rows summed, as a world of `slots`
/// ranks would merge them (see [`Collective::all_reduce_sparse_rows`]). This rank holds the
/// contributions of slots `first..first + mine.len()`, each as sorted unique ids and their
/// rows.
pub fn all_reduce_sparse_slots(
    collective: &mut dyn Collective,
    first: usize,
    slots: usize,
    mine: &[(&[u32], &[f32])],
    row_len: usize,
) -> Result<(Vec<u32>, Vec<f32>), CollectiveError> {
    check_hosted(first, mine.len(), slots)?;
    let mut parts = Vec::with_capacity(slots);
    for s in 0..slots {
        let (mut ids, mut rows) = match s.checked_sub(first).and_then(|i| mine.get(i)) {
            Some((ids, rows)) => (ids.to_vec(), rows.to_vec()),
            None => (Vec::new(), Vec::new()),
        };
        collective.all_reduce_sparse_rows(&mut ids, &mut rows, row_len)?;
        parts.push(Contribution { ids, rows });
    }
    Ok(merge(&parts, row_len))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{each, options, random_vec, ring, ring_with};
    use super::super::{Local, RingAllReduce, RingOptions};
    use super::*;

    /// Values of widely different magnitudes, so that the order of addition shows in the bits.
    fn gradient(seed: u64, len: usize) -> Vec<f32> {
        random_vec(seed, len)
            .into_iter()
            .enumerate()
            .map(|(i, x)| x * 10f32.powi((i % 7) as i32 - 3))
            .collect()
    }

    fn sparse(seed: u64) -> (Vec<u32>, Vec<f32>) {
        let ids: Vec<u32> = (0..40u32)
            .filter(|i| !(i * 7 + seed as u32).is_multiple_of(3))
            .collect();
        let rows = gradient(seed + 100, ids.len() * 5);
        (ids, rows)
    }

    /// Three ranks, one slot each: the sums every later case must reproduce.
    fn full_world(rings: &mut [RingAllReduce], len: usize) -> (Vec<f32>, (Vec<u32>, Vec<f32>)) {
        let out = each(rings, |ring| {
            let r = ring.rank() as u64;
            let mut dense = gradient(r, len);
            ring.all_reduce_sum(&mut dense).unwrap();
            let (mut ids, mut rows) = sparse(r);
            ring.all_reduce_sparse_rows(&mut ids, &mut rows, 5).unwrap();
            (dense, (ids, rows))
        });
        for o in &out[1..] {
            assert_eq!(o.0, out[0].0);
        }
        out.into_iter().next().unwrap()
    }

    #[test]
    fn a_short_world_sums_its_slots_as_the_full_world_did() {
        let len = 1000;
        let (dense, (ids, rows)) = full_world(&mut ring(3), len);
        // Through shared memory the full world adds in the same order as over TCP.
        let dir = tempfile::tempdir().unwrap();
        let shm = RingOptions {
            shared_memory: 4 * len,
            shared_memory_dir: dir.path().to_path_buf(),
            ..options(Duration::from_secs(10), Duration::from_secs(10))
        };
        let mut rings = ring_with(vec![shm; 3]);
        assert_eq!(rings[0].transport(), "shared memory");
        assert_eq!(
            full_world(&mut rings, len),
            (dense.clone(), (ids.clone(), rows.clone()))
        );
        // The full world's order is not rank order: adding slot 0, 1, 2 in turn differs.
        let naive: Vec<f32> = (0..len)
            .map(|i| gradient(0, len)[i] + gradient(1, len)[i] + gradient(2, len)[i])
            .collect();
        assert_ne!(naive, dense, "the test's values do not show the order");

        // Two ranks: rank 0 hosts slots 0 and 1, rank 1 slot 2.
        let mut rings = ring(2);
        let out = each(&mut rings, |ring| {
            let (first, hosted): (usize, Vec<u64>) = match ring.rank() {
                0 => (0, vec![0, 1]),
                _ => (2, vec![2]),
            };
            let bufs: Vec<Vec<f32>> = hosted.iter().map(|&s| gradient(s, len)).collect();
            let d = all_reduce_dense_slots(ring, first, 3, bufs).unwrap();
            let parts: Vec<(Vec<u32>, Vec<f32>)> = hosted.iter().map(|&s| sparse(s)).collect();
            let views: Vec<(&[u32], &[f32])> = parts
                .iter()
                .map(|(i, r)| (i.as_slice(), r.as_slice()))
                .collect();
            let s = all_reduce_sparse_slots(ring, first, 3, &views, 5).unwrap();
            (d, s)
        });
        for (d, (i, r)) in out {
            assert_eq!(d, dense);
            assert_eq!(
                (i.as_slice(), r.as_slice()),
                (ids.as_slice(), rows.as_slice())
            );
        }

        // One rank alone hosts all three.
        let bufs: Vec<Vec<f32>> = (0..3).map(|s| gradient(s, len)).collect();
        assert_eq!(
            all_reduce_dense_slots(&mut Local, 0, 3, bufs).unwrap(),
            dense
        );
    }

    #[test]
    fn hosted_slots_outside_the_run_are_refused() {
        let err = all_reduce_dense_slots(&mut Local, 2, 2, vec![vec![1.0]]).unwrap_err();
        assert!(matches!(err, CollectiveError::InvalidInput(_)), "{err}");
        let err = all_reduce_dense_slots(&mut Local, 0, 2, Vec::new()).unwrap_err();
        assert!(matches!(err, CollectiveError::InvalidInput(_)), "{err}");
    }
}
