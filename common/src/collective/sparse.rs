//! The local half of the sparse all-reduce: a rank's contribution (sorted row ids and their
//! rows) as bytes on the wire, and the merge that sums all contributions. The merge adds in
//! rank order on every rank, so every rank computes bitwise the same result.

use super::frame::ProtocolError;

/// One rank's contribution: `ids.len() × row_len` row values.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Contribution {
    pub ids: Vec<u32>,
    pub rows: Vec<f32>,
}

/// Bytes of a contribution with `count` ids: the ids (u32) then the rows (f32), little-endian.
/// `None` when that does not fit in memory arithmetic at all (only a hostile count does that).
pub(crate) fn blob_len(count: u64, row_len: usize) -> Option<usize> {
    let count = usize::try_from(count).ok()?;
    let per_id = row_len.checked_add(1)?.checked_mul(4)?;
    count.checked_mul(per_id)
}

pub(crate) fn encode(ids: &[u32], rows: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * (ids.len() + rows.len()));
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for v in rows {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes a contribution of `count` ids from a blob of exactly [`blob_len`] bytes, checking
/// the ids are strictly increasing (the merge relies on it).
pub(crate) fn decode(
    blob: &[u8],
    count: usize,
    origin: usize,
) -> Result<Contribution, ProtocolError> {
    let split = count
        .checked_mul(4)
        .filter(|&n| n <= blob.len())
        .ok_or_else(|| {
            ProtocolError::Malformed(format!(
                "sparse contribution of rank {origin}: {count} ids do not fit in {} bytes",
                blob.len()
            ))
        })?;
    let (id_bytes, row_bytes) = blob.split_at(split);
    if row_bytes.len() % 4 != 0 {
        return Err(ProtocolError::Malformed(format!(
            "sparse contribution of rank {origin}: row bytes not a multiple of 4"
        )));
    }
    let ids: Vec<u32> = id_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        return Err(ProtocolError::Malformed(format!(
            "sparse contribution of rank {origin}: row ids not sorted and unique ({} then {})",
            w[0], w[1]
        )));
    }
    let rows = row_bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Contribution { ids, rows })
}

/// Union of the ids (sorted) and the rows summed in rank order (`parts[0]` first).
pub(crate) fn merge(parts: &[Contribution], row_len: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids: Vec<u32> = parts.iter().flat_map(|p| p.ids.iter().copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows = vec![0.0f32; ids.len() * row_len];
    if row_len == 0 {
        return (ids, rows);
    }
    for part in parts {
        // Both id lists are sorted, so one forward walk finds every row's slot.
        let mut slot = 0;
        for (id, row) in part.ids.iter().zip(part.rows.chunks_exact(row_len)) {
            while ids[slot] != *id {
                slot += 1;
            }
            let dst = &mut rows[slot * row_len..(slot + 1) * row_len];
            for (d, s) in dst.iter_mut().zip(row) {
                *d += *s;
            }
        }
    }
    (ids, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let ids = vec![1, 5, 9];
        let rows: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let blob = encode(&ids, &rows);
        assert_eq!(Some(blob.len()), blob_len(3, 2));
        let c = decode(&blob, 3, 0).expect("decodes");
        assert_eq!(c, Contribution { ids, rows });
    }

    #[test]
    fn decode_rejects_unsorted_and_short() {
        let blob = encode(&[5, 1], &[0.0, 0.0]);
        assert!(decode(&blob, 2, 1).is_err());
        assert!(decode(&blob[..4], 2, 1).is_err());
        assert!(decode(&blob, usize::MAX, 1).is_err());
    }

    #[test]
    fn hostile_count_does_not_overflow() {
        assert_eq!(blob_len(u64::MAX, 300), None);
        assert_eq!(blob_len(3, usize::MAX), None);
    }

    #[test]
    fn merge_sums_overlapping_rows() {
        let a = Contribution {
            ids: vec![0, 2],
            rows: vec![1.0, 1.0, 2.0, 2.0],
        };
        let b = Contribution {
            ids: vec![2, 3],
            rows: vec![10.0, 10.0, 3.0, 3.0],
        };
        let (ids, rows) = merge(&[a, b], 2);
        assert_eq!(ids, vec![0, 2, 3]);
        assert_eq!(rows, vec![1.0, 1.0, 12.0, 12.0, 3.0, 3.0]);
    }
}
