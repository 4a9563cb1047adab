//! The ring's fast path when every rank runs on the same host: dense sums and sparse gathers
//! through one shared-memory segment instead of loopback TCP.
//!
//! Why: on a 2-core machine a 1.9 MB all-reduce over loopback TCP takes 1.3 ms (four copies
//! through the kernel, and the writer threads compete with the compute threads for the two
//! cores); through shared memory it is a few memory copies. NCCL takes the same route between
//! GPUs of one host.
//!
//! Layout: a header (one cache line of run facts, one with the `broken` flag, then one line
//! per rank), then two banks of `world` slots of `capacity` floats. Call k uses bank k mod 2,
//! so no third barrier is needed before a slot is reused: a rank can start writing bank b for
//! call k+2 only after every rank has arrived at call k+1, i.e. finished reading call k.
//!
//! Dense sum, rank r of n, the buffer cut into n chunks: copy every chunk but chunk r into its
//! slot, arrive; sum chunk r across the ranks, in the TCP ring's order (its own first), into
//! its buffer and its slot, arrive; copy every other chunk from its owner's slot. Sparse gather: write ids and rows into its slot, arrive, read and merge everyone's.
//! A rank arrives by bumping its sequence word and waking futex waiters on it.
//!
//! Peers are trusted no more than over TCP: call numbers, shapes and counts they publish are
//! checked before use, and a slot is only read after its writer has arrived. A peer that dies
//! is noticed by the caller's liveness check (its TCP link closes) or by its pid vanishing; one
//! that hangs, by the I/O timeout or an abort of the ring.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::sparse::{self, Contribution};
use super::{check_sparse_input, CollectiveError};

const MAGIC: u64 = u64::from_le_bytes(*b"STXSHM01");
const LINE: usize = 64;
/// Busy-wait this many times before sleeping on the futex: a peer that is about to arrive
/// costs no system call, one that is still computing costs no core.
const SPINS: u32 = 2_000;
/// How long one futex sleep lasts before the abort flag and peer liveness are checked again.
const POLL: Duration = Duration::from_millis(2);
const NONE: u64 = u64::MAX;
/// Segment files are named `{SEGMENT_PREFIX}{creator pid}-{random}`.
const SEGMENT_PREFIX: &str = "smalltext-ring-";
/// A segment is unlinked within its ring's set-up, bounded by the I/O timeout; one this old
/// whose creator is gone was left by a rank 0 that died during a set-up.
const LEAKED_AFTER: Duration = Duration::from_secs(600);

/// What [`SharedRing::create`] hands to the other ranks (over the authenticated ring) so they
/// can open the same segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invitation {
    pub path: PathBuf,
    pub nonce: [u8; 16],
    pub world: usize,
    pub capacity: usize,
}

impl Invitation {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&(self.world as u64).to_le_bytes());
        out.extend_from_slice(&(self.capacity as u64).to_le_bytes());
        out.extend_from_slice(self.path.as_os_str().as_encoded_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (nonce, rest) = bytes.split_first_chunk::<16>()?;
        let (world, rest) = rest.split_first_chunk::<8>()?;
        let (capacity, path) = rest.split_first_chunk::<8>()?;
        let path = std::str::from_utf8(path).ok()?;
        Some(Self {
            path: PathBuf::from(path),
            nonce: *nonce,
            world: usize::try_from(u64::from_le_bytes(*world)).ok()?,
            capacity: usize::try_from(u64::from_le_bytes(*capacity)).ok()?,
        })
    }
}

/// This rank's view of the segment.
pub(crate) struct SharedRing {
    /// Kept for its lifetime: `base` points into it.
    _map: MmapMut,
    base: *mut u8,
    rank: usize,
    world: usize,
    capacity: usize,
    /// Barriers this rank has passed; every rank passes the same ones in the same order.
    arrivals: u32,
    /// Shared-memory collectives this rank has made (picks the bank).
    calls: u64,
    io_timeout: Duration,
}

impl std::fmt::Debug for SharedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRing")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Per rank, per bank: what the rank's slot holds this call.
#[derive(Clone, Copy)]
struct Published {
    call: u64,
    shape: u64,
    count: u64,
}

/// Why the segment could not be set up; the ring then uses TCP.
pub(crate) type Unavailable = String;

fn header_len(world: usize) -> usize {
    2 * LINE + world * LINE
}

fn segment_len(world: usize, capacity: usize) -> Option<usize> {
    capacity
        .checked_mul(4)?
        .checked_mul(world)?
        .checked_mul(2)?
        .checked_add(header_len(world))
}

impl SharedRing {
    /// Rank 0: creates the segment in `dir` (0600, reserved up front so that a full tmpfs is
    /// an error now, not a SIGBUS later) and returns the invitation for the others.
    pub fn create(
        dir: &Path,
        world: usize,
        capacity: usize,
        io_timeout: Duration,
    ) -> Result<(Self, Invitation), Unavailable> {
        if !cfg!(target_os = "linux") {
            return Err("shared memory is implemented for Linux only".into());
        }
        let len = segment_len(world, capacity).ok_or("segment size overflows")?;
        sweep_leaked(dir);
        let nonce: [u8; 16] = rand::random();
        let path = dir.join(format!(
            "{SEGMENT_PREFIX}{}-{}",
            std::process::id(),
            hex::encode(&nonce[..8])
        ));
        let file = open(&path, true).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let reserved = reserve(&file, len);
        let map = reserved.and_then(|()| map(&file));
        let mut map = match map {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(format!("preparing {} ({len} bytes): {e}", path.display()));
            }
        };
        let mut ring = Self {
            base: map.as_mut_ptr(),
            _map: map,
            rank: 0,
            world,
            capacity,
            arrivals: 0,
            calls: 0,
            io_timeout,
        };
        ring.write_facts(&nonce);
        ring.announce_pid();
        let invitation = Invitation {
            path,
            nonce,
            world,
            capacity,
        };
        Ok((ring, invitation))
    }

    /// Any other rank: opens the segment rank 0 created, if it is on this host.
    pub fn join(
        invitation: &Invitation,
        rank: usize,
        world: usize,
        io_timeout: Duration,
    ) -> Result<Self, Unavailable> {
        if invitation.world != world || rank == 0 || rank >= world {
            return Err(format!(
                "an invitation for {} ranks, this is rank {rank} of {world}",
                invitation.world
            ));
        }
        let len = segment_len(world, invitation.capacity).ok_or("segment size overflows")?;
        let path = &invitation.path;
        let file = open(path, false).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let actual = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if actual != len as u64 {
            return Err(format!(
                "{} has {actual} bytes, {len} expected",
                path.display()
            ));
        }
        let mut map = map(&file).map_err(|e| format!("mapping {}: {e}", path.display()))?;
        let ring = Self {
            base: map.as_mut_ptr(),
            _map: map,
            rank,
            world,
            capacity: invitation.capacity,
            arrivals: 0,
            calls: 0,
            io_timeout,
        };
        // A same-named file on another host, or left over, does not carry our nonce.
        if !ring.facts_match(&invitation.nonce) {
            return Err(format!(
                "{} is not this ring's segment (another host?)",
                path.display()
            ));
        }
        ring.announce_pid();
        Ok(ring)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Marks the segment broken and wakes every waiter, so the other ranks fail now rather
    /// than at their timeout.
    pub fn break_ring(&self) {
        self.broken().store(1, Ordering::SeqCst);
        for j in 0..self.world {
            futex_wake(self.seq(j));
        }
    }

    /// Element-wise sum of `buf` across the ranks (`buf.len() ≤ capacity`). Returns the bytes
    /// this rank published. `alive` is asked while waiting whether the ring still stands.
    pub fn all_reduce(
        &mut self,
        buf: &mut [f32],
        step: u64,
        alive: &dyn Fn() -> Result<(), CollectiveError>,
    ) -> Result<u64, CollectiveError> {
        let (n, r, len) = (self.world, self.rank, buf.len());
        debug_assert!(len <= self.capacity);
        let bank = self.bank();
        let own = super::chunk::chunk_range(len, n, r);
        let slots: Vec<*mut f32> = (0..n).map(|j| self.slot(bank, j)).collect();
        // Only the chunks other ranks sum go out; ours stays in `buf`.
        for c in (0..n).filter(|&c| c != r) {
            let range = super::chunk::chunk_range(len, n, c);
            // SAFETY: our own slot is written only by us, and no rank reads it until we arrive.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf[range.clone()].as_ptr(),
                    slots[r].add(range.start),
                    range.len(),
                );
            }
        }
        self.publish(
            bank,
            Published {
                call: step,
                shape: len as u64,
                count: 0,
            },
        );
        self.arrive();
        self.wait_all(alive, "waiting for the ranks' gradients")?;
        for j in 0..n {
            let p = self.published(bank, j);
            if p.call != step || p.shape != len as u64 {
                return Err(self.mismatch(j, step, len as u64, p));
            }
        }
        const BLOCK: usize = 1024;
        let mut acc = [0f32; BLOCK];
        for start in own.clone().step_by(BLOCK) {
            let end = (start + BLOCK).min(own.end);
            let acc = &mut acc[..end - start];
            // In the order the TCP ring adds chunk r (r, r+1, …, r-1; see `slots.rs`), so
            // that the transport never changes a sum's bits.
            for (k, j) in super::slots::ring_order(n, r).enumerate() {
                let slot = slots[j];
                let src = if j == r {
                    &buf[start..end]
                } else {
                    // SAFETY: rank j has arrived, so its slot holds this call's values, and
                    // nobody writes chunk r of its slot before the next call.
                    unsafe { std::slice::from_raw_parts(slot.add(start).cast_const(), end - start) }
                };
                if k == 0 {
                    acc.copy_from_slice(src);
                } else {
                    for (a, b) in acc.iter_mut().zip(src) {
                        *a += b;
                    }
                }
            }
            buf[start..end].copy_from_slice(acc);
            // SAFETY: chunk r of our slot is read by the others only after our next arrival.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), slots[r].add(start), acc.len()) };
        }
        self.arrive();
        self.wait_all(alive, "waiting for the ranks' sums")?;
        for c in (0..n).filter(|&c| c != r) {
            let range = super::chunk::chunk_range(len, n, c);
            // SAFETY: rank c finished its chunk before arriving; nobody writes this bank again
            // until every rank (us included) has arrived at the next call.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    slots[c].add(range.start).cast_const(),
                    buf[range.clone()].as_mut_ptr(),
                    range.len(),
                );
            }
        }
        self.calls += 1;
        Ok(4 * len as u64)
    }

    /// Gathers every rank's sparse rows and merges them in rank order, as the TCP path does.
    /// `Ok(None)`: some rank's rows do not fit a slot, so every rank takes the TCP path.
    #[allow(clippy::type_complexity)]
    pub fn sparse(
        &mut self,
        ids: &[u32],
        rows: &[f32],
        row_len: usize,
        step: u64,
        alive: &dyn Fn() -> Result<(), CollectiveError>,
    ) -> Result<Option<(Vec<u32>, Vec<f32>, u64)>, CollectiveError> {
        let (n, r) = (self.world, self.rank);
        let bank = self.bank();
        let fits = ids
            .len()
            .checked_mul(row_len + 1)
            .is_some_and(|need| need <= self.capacity);
        if fits {
            let slot = self.slot(bank, r);
            // SAFETY: our own slot, read by nobody until we arrive; ids travel as f32 bits.
            unsafe {
                std::ptr::copy_nonoverlapping(ids.as_ptr().cast::<f32>(), slot, ids.len());
                std::ptr::copy_nonoverlapping(rows.as_ptr(), slot.add(ids.len()), rows.len());
            }
        }
        self.publish(
            bank,
            Published {
                call: step,
                shape: row_len as u64,
                count: if fits { ids.len() as u64 } else { NONE },
            },
        );
        self.arrive();
        self.wait_all(alive, "waiting for the ranks' sparse rows")?;
        self.calls += 1;
        let published: Vec<Published> = (0..n).map(|j| self.published(bank, j)).collect();
        for (j, p) in published.iter().enumerate() {
            if p.call != step || p.shape != row_len as u64 {
                return Err(self.mismatch(j, step, row_len as u64, *p));
            }
        }
        if published.iter().any(|p| p.count == NONE) {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(n);
        for (j, p) in published.iter().enumerate() {
            if j == r {
                parts.push(Contribution {
                    ids: ids.to_vec(),
                    rows: rows.to_vec(),
                });
                continue;
            }
            let count = usize::try_from(p.count)
                .ok()
                .filter(|&c| c.checked_mul(row_len + 1).is_some_and(|need| need <= self.capacity))
                .ok_or_else(|| {
                    CollectiveError::Backend(format!(
                        "shared-memory ring: rank {j} announces {} sparse rows, more than a slot holds",
                        p.count
                    ))
                })?;
            let slot = self.slot(bank, j).cast_const();
            // SAFETY: rank j wrote its slot before arriving and writes this bank again only
            // after we arrive at the next call; `count` was checked against the slot size.
            let (their_ids, their_rows) = unsafe {
                (
                    std::slice::from_raw_parts(slot.cast::<u32>(), count).to_vec(),
                    std::slice::from_raw_parts(slot.add(count), count * row_len).to_vec(),
                )
            };
            check_sparse_input(&their_ids, &their_rows, row_len).map_err(|e| {
                CollectiveError::Backend(format!("shared-memory ring: rank {j}'s sparse rows: {e}"))
            })?;
            parts.push(Contribution {
                ids: their_ids,
                rows: their_rows,
            });
        }
        let (merged_ids, merged_rows) = sparse::merge(&parts, row_len);
        Ok(Some((
            merged_ids,
            merged_rows,
            4 * (ids.len() + rows.len()) as u64,
        )))
    }

    fn bank(&self) -> usize {
        (self.calls % 2) as usize
    }

    fn mismatch(&self, j: usize, step: u64, shape: u64, p: Published) -> CollectiveError {
        CollectiveError::Backend(format!(
            "shared-memory ring: rank {j} is at call {} with shape {}, rank {} at call {step} with shape {shape}",
            p.call, p.shape, self.rank
        ))
    }

    /// Bumps our sequence word and wakes whoever waits on it.
    fn arrive(&mut self) {
        self.arrivals = self.arrivals.wrapping_add(1);
        let seq = self.seq(self.rank);
        seq.store(self.arrivals, Ordering::Release);
        futex_wake(seq);
    }

    /// Waits until every rank has arrived as often as we have.
    fn wait_all(
        &self,
        alive: &dyn Fn() -> Result<(), CollectiveError>,
        during: &'static str,
    ) -> Result<(), CollectiveError> {
        let deadline = Instant::now() + self.io_timeout;
        for j in (0..self.world).filter(|&j| j != self.rank) {
            let seq = self.seq(j);
            let mut spins = 0;
            loop {
                let seen = seq.load(Ordering::Acquire);
                // Wrapping comparison: "seen is at or past our count".
                if (seen.wrapping_sub(self.arrivals) as i32) >= 0 {
                    break;
                }
                if self.broken().load(Ordering::Acquire) != 0 {
                    return Err(CollectiveError::Backend(format!(
                        "shared-memory ring: another rank broke the ring while this one was {during}"
                    )));
                }
                if spins < SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                futex_wait(seq, seen, POLL);
                alive()?;
                if !self.pid_alive(j) {
                    return Err(CollectiveError::Backend(format!(
                        "shared-memory ring: rank {j}'s process exited while this one was {during}"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(CollectiveError::Backend(format!(
                        "shared-memory ring: timed out after {:?} {during} (rank {j} is dead, hung or far behind)",
                        self.io_timeout
                    )));
                }
            }
        }
        Ok(())
    }

    fn pid_alive(&self, j: usize) -> bool {
        let pid = self.pid(j).load(Ordering::Acquire);
        pid <= 0 || process_alive(pid)
    }

    // The header. Words are reached through atomics: other processes share them.

    fn word64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= header_len(self.world));
        // SAFETY: in bounds and aligned (the mapping is page-aligned); shared words are only
        // ever accessed atomically.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= header_len(self.world));
        // SAFETY: as in `word64`.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    /// The header's first words: what identifies this ring's segment.
    fn facts(&self, nonce: &[u8; 16]) -> [u64; 5] {
        let (lo, hi) = nonce.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        [
            MAGIC,
            word(lo),
            word(hi),
            self.world as u64,
            self.capacity as u64,
        ]
    }

    fn write_facts(&mut self, nonce: &[u8; 16]) {
        for (i, w) in self.facts(nonce).into_iter().enumerate() {
            self.word64(8 * i).store(w, Ordering::Release);
        }
    }

    fn facts_match(&self, nonce: &[u8; 16]) -> bool {
        self.facts(nonce)
            .iter()
            .enumerate()
            .all(|(i, &w)| self.word64(8 * i).load(Ordering::Acquire) == w)
    }

    fn broken(&self) -> &AtomicU32 {
        self.word32(LINE)
    }

    fn rank_line(&self, j: usize) -> usize {
        2 * LINE + j * LINE
    }

    fn seq(&self, j: usize) -> &AtomicU32 {
        self.word32(self.rank_line(j))
    }

    fn pid(&self, j: usize) -> &AtomicI32 {
        // SAFETY: an AtomicU32's memory viewed as an AtomicI32 (same size and alignment).
        unsafe { &*std::ptr::from_ref(self.word32(self.rank_line(j) + 4)).cast::<AtomicI32>() }
    }

    fn announce_pid(&self) {
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        self.pid(self.rank).store(pid, Ordering::Release);
    }

    fn record(&self, bank: usize, j: usize) -> usize {
        self.rank_line(j) + 8 + 24 * bank
    }

    fn publish(&self, bank: usize, p: Published) {
        let at = self.record(bank, self.rank);
        self.word64(at).store(p.call, Ordering::Relaxed);
        self.word64(at + 8).store(p.shape, Ordering::Relaxed);
        self.word64(at + 16).store(p.count, Ordering::Relaxed);
    }

    fn published(&self, bank: usize, j: usize) -> Published {
        let at = self.record(bank, j);
        Published {
            call: self.word64(at).load(Ordering::Relaxed),
            shape: self.word64(at + 8).load(Ordering::Relaxed),
            count: self.word64(at + 16).load(Ordering::Relaxed),
        }
    }

    /// The first float of rank `j`'s slot in `bank`.
    fn slot(&self, bank: usize, j: usize) -> *mut f32 {
        let offset = header_len(self.world) + 4 * self.capacity * (bank * self.world + j);
        // SAFETY: within the mapping, whose length `segment_len` checked; 4-byte aligned.
        unsafe { self.base.add(offset).cast::<f32>() }
    }
}

// SAFETY: the mapping is owned by this value; the raw pointers derived from it are only used
// through `&self`/`&mut self`, and the data other processes share is guarded by the barriers.
unsafe impl Send for SharedRing {}

/// Whether process `pid` may exist (one of another user counts as existing).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the segments in `dir` that a rank 0 created and never unlinked because it died
/// during its ring's set-up: the creator in the name is gone and the file is older than any
/// set-up. Best effort: what cannot be read or removed (another user's) stays.
fn sweep_leaked(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= LEAKED_AFTER);
        if old && !process_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                "removed {}, a shared-memory segment left by a ring whose set-up failed",
                entry.path().display()
            );
        }
    }
}

fn open(path: &Path, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        use std::os::unix::fs::OpenOptionsExt;
        o.create_new(true).mode(0o600);
    }
    o.open(path)
}

fn reserve(file: &File, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a valid open descriptor; posix_fallocate returns the error number.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the file is private to this run's ranks (0600, random name, unlinked once all
    // have opened it), and every access to the mapping follows the protocol above.
    unsafe { MmapMut::map_mut(file) }
}

#[cfg(target_os = "linux")]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a live, aligned u32 in a shared mapping (hence no FUTEX_PRIVATE_FLAG);
    // FUTEX_WAIT returns at once if the value is no longer `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(target_os = "linux")]
fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; waking has no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn futex_wait(_: &AtomicU32, _: u32, timeout: Duration) {
    std::thread::sleep(timeout.min(Duration::from_micros(50)));
}

#[cfg(not(target_os = "linux"))]
fn futex_wake(_: &AtomicU32) {}
