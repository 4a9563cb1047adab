//! [`RingAllReduce`]: the collective over plain TCP between workers. Rank r sends to rank
//! (r+1) mod n and receives from rank (r-1) mod n over two distinct, authenticated
//! connections. Dense sums run reduce-scatter then all-gather with pipelined segments; sparse
//! rows are all-gathered around the ring and merged locally. `README.md` beside this file has
//! the protocol in prose.
//!
//! Threads: the calling thread does all reading and arithmetic; one writer thread per ring
//! drains an unbounded queue of encoded frames into the right-hand socket. Because the caller
//! never blocks on a send, no cycle of ranks can wait on each other's writes, whatever the
//! world size and however small the socket buffers.

use std::borrow::Borrow;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::auth::{self, HandshakeError, RingAuth};
use super::chunk::chunk_range;
use super::frame::{
    begin_frame, finish_frame, read_frame, FrameHeader, FrameKind, ProtocolError, ReadError,
    HEADER_LEN, MAX_PAYLOAD,
};
use super::shm::{self, SharedRing};
use super::sparse::{self, Contribution};
use super::{check_sparse_input, Collective, CollectiveError, Peer};

/// How long to wait between attempts to reach a neighbour that is not listening yet.
const DIAL_RETRY: Duration = Duration::from_millis(50);
/// How often the acceptor polls its (non-blocking) listener.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Handshakes the acceptor runs at once; connections beyond it are closed at once, so a flood
/// of strangers costs threads only up to this.
const MAX_HANDSHAKES: usize = 16;
/// Cap on what is reserved up front for a peer's sparse contribution; beyond it the buffer
/// grows only as bytes actually arrive, so a bogus count cannot allocate gigabytes.
const MAX_SPARSE_PREALLOC: usize = 16 << 20;

/// Tuning of a ring; `Default` suits a LAN or loopback.
#[derive(Debug, Clone)]
pub struct RingOptions {
    /// How long [`RingAllReduce::connect`] keeps dialing and accepting before giving up.
    pub connect_timeout: Duration,
    /// Read and write timeout of every ring socket: a neighbour silent for this long is taken
    /// for dead. It must exceed the longest time one rank can wait for the slowest to enter
    /// the same collective (the skew of their compute), or a slow step reads as a failure.
    pub io_timeout: Duration,
    /// How long an accepted connection has to authenticate. Handshakes run side by side, so
    /// a silent stranger holds only its own connection, and only for this long.
    pub handshake_timeout: Duration,
    /// The segment size, in bytes, this rank cuts the chunks it originates into. Smaller
    /// segments overlap sending and receiving sooner; larger ones cost fewer frames. Clamped
    /// to 4 bytes..=[`MAX_PAYLOAD`] and rounded down to whole f32s.
    pub segment_bytes: usize,
    /// Mutual TLS on both links after the token handshake (certificates checked against the
    /// CA; the dialer checks that the right neighbour's certificate names its address).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Floats per rank of the shared-memory fast path (see `shm.rs`), used when every rank of
    /// the ring runs on this host and `shared_memory_dir` is a tmpfs they can all open; calls
    /// on larger buffers still go over TCP. 0 keeps every collective on TCP.
    pub shared_memory: usize,
    pub shared_memory_dir: std::path::PathBuf,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            segment_bytes: 128 << 10,
            tls: None,
            shared_memory: 0,
            shared_memory_dir: "/dev/shm".into(),
        }
    }
}

/// Lets another thread abort a ring: every socket is shut down, so a collective blocked in a
/// read returns [`CollectiveError::Aborted`] at once and the neighbours see the links close.
#[derive(Debug, Clone)]
pub struct RingAbort {
    inner: Arc<AbortInner>,
}

#[derive(Debug)]
struct AbortInner {
    aborted: AtomicBool,
    /// Clones of the ring's sockets; shutting a clone down shuts the connection down.
    streams: Vec<TcpStream>,
}

impl RingAbort {
    fn new(streams: Vec<TcpStream>) -> Self {
        Self {
            inner: Arc::new(AbortInner {
                aborted: AtomicBool::new(false),
                streams,
            }),
        }
    }

    pub fn abort(&self) {
        self.inner.aborted.store(true, Ordering::SeqCst);
        self.close_sockets();
    }

    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::SeqCst)
    }

    fn close_sockets(&self) {
        for s in &self.inner.streams {
            // NotConnected once already shut down; nothing more to do either way.
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Ring all-reduce between `world_size` workers over authenticated TCP.
///
/// After any network or protocol error the ring is broken for good (streams may be
/// mid-frame, neighbours are told by closing the links): every later call returns
/// [`CollectiveError::Broken`] and the caller forms a new ring.
#[derive(Debug)]
pub struct RingAllReduce {
    rank: usize,
    world: usize,
    /// The collective call counter stamped on every frame, so ranks out of lock step are caught.
    step: u64,
    broken: Option<String>,
    abort: RingAbort,
    /// `None` for a world of one, where every collective is already complete.
    links: Option<Links>,
}

impl RingAllReduce {
    /// Forms this rank's part of the ring with default [`RingOptions`] and the given connect
    /// timeout. `peers[i]` is the ring address of rank i; `listener` is already bound by this
    /// rank on `peers[rank]` (pass a reference to keep it for forming a later ring).
    pub fn connect(
        rank: usize,
        peers: &[SocketAddr],
        listener: impl Borrow<TcpListener>,
        auth: &RingAuth,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        let options = RingOptions {
            connect_timeout: timeout,
            ..RingOptions::default()
        };
        Self::connect_with(rank, peers, listener, auth, &options)
    }

    /// Like [`RingAllReduce::connect`], with every option given. Dials the right neighbour
    /// (retrying until the connect timeout, since ranks start at different times) while
    /// accepting the left one; connections that fail authentication are logged, closed and
    /// waited past.
    pub fn connect_with(
        rank: usize,
        peers: &[SocketAddr],
        listener: impl Borrow<TcpListener>,
        auth: &RingAuth,
        options: &RingOptions,
    ) -> Result<Self, CollectiveError> {
        let world = peers.len();
        if rank >= world || u32::try_from(world).is_err() {
            return Err(CollectiveError::InvalidInput(format!(
                "rank {rank} is not in a ring of {world} peers"
            )));
        }
        if options.io_timeout.is_zero() {
            return Err(CollectiveError::InvalidInput(
                "the ring I/O timeout must be positive".into(),
            ));
        }
        if world == 1 {
            return Ok(Self {
                rank,
                world,
                step: 0,
                broken: None,
                abort: RingAbort::new(Vec::new()),
                links: None,
            });
        }

        let left = Peer {
            rank: (rank + world - 1) % world,
            addr: peers[(rank + world - 1) % world],
        };
        let right = Peer {
            rank: (rank + 1) % world,
            addr: peers[(rank + 1) % world],
        };
        let formation = Formation {
            me: rank as u32,
            world: world as u32,
            auth,
            options,
            deadline: Instant::now() + options.connect_timeout,
            give_up: AtomicBool::new(false),
        };
        // Dial and accept at once: every rank dialing first and accepting afterwards would
        // wait forever on challenges nobody sends.
        let (accepted, dialed) = thread::scope(|s| {
            let dialer = s.spawn(|| formation.cancel_unless_done(formation.dial(right)));
            let accepted = formation.cancel_unless_done(formation.accept(listener.borrow(), left));
            let dialed = dialer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (accepted, dialed)
        });
        let (left_stream, right_stream) = match (accepted, dialed) {
            (Ok(Some(l)), Ok(Some(r))) => (l, r),
            // An authentication failure explains a timeout on the other side, not vice versa.
            (Err(a), Err(d)) => {
                return Err(if matches!(d, CollectiveError::Auth { .. }) {
                    d
                } else {
                    a
                })
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
            _ => {
                return Err(CollectiveError::Broken(
                    "ring formation was cancelled without a cause".into(),
                ))
            }
        };

        let tls = options.tls.is_some();
        let links = Links::new(left, right, left_stream, right_stream, options)?;
        let mut ring = Self {
            rank,
            world,
            step: 0,
            broken: None,
            abort: links.abort.clone(),
            links: Some(links),
        };
        if options.shared_memory > 0 {
            ring.share_memory(options)?;
        }
        let transport = ring.transport();
        tracing::info!(rank, world, %left, %right, tls, transport, "ring formed");
        Ok(ring)
    }

    /// "shared memory" when the ring's collectives run through a segment all ranks mapped,
    /// else "tcp".
    pub fn transport(&self) -> &'static str {
        match self.links.as_ref().and_then(|l| l.shm.as_ref()) {
            Some(_) => "shared memory",
            None => "tcp",
        }
    }

    /// Rank 0 offers a shared-memory segment over the (authenticated) ring; it is used only
    /// if every rank could open it, i.e. all run on this host. Failing that is not an error:
    /// the ring stays on TCP. A failing ring is.
    fn share_memory(&mut self, options: &RingOptions) -> Result<(), CollectiveError> {
        let (rank, world) = (self.rank, self.world);
        let mut shared = None;
        let mut offer = Vec::new();
        let mut segment = None;
        if rank == 0 {
            match SharedRing::create(
                &options.shared_memory_dir,
                world,
                options.shared_memory,
                options.io_timeout,
            ) {
                Ok((ring, invitation)) => {
                    offer = invitation.encode();
                    segment = Some(invitation.path);
                    shared = Some(ring);
                }
                Err(why) => tracing::info!(%why, "no shared memory for the ring; it uses TCP"),
            }
        }
        let agreed = (|| {
            self.broadcast_bytes(0, &mut offer)?;
            if rank != 0 && !offer.is_empty() {
                let joined = shm::Invitation::decode(&offer)
                    .ok_or_else(|| "an unreadable invitation".to_string())
                    .and_then(|inv| SharedRing::join(&inv, rank, world, options.io_timeout));
                match joined {
                    Ok(ring) => shared = Some(ring),
                    Err(why) => {
                        tracing::info!(%why, "cannot share memory with rank 0; the ring uses TCP")
                    }
                }
            }
            let mut yes = [f32::from(u8::from(shared.is_some()))];
            self.all_reduce_sum(&mut yes)?;
            Ok(yes[0] == world as f32)
        })();
        // Every rank that could open the segment has: it lives on in their mappings only.
        if let Some(path) = segment {
            let _ = std::fs::remove_file(path);
        }
        if agreed? {
            if let Some(links) = self.links.as_mut() {
                links.shm = shared;
            }
        }
        Ok(())
    }

    /// A handle another thread can use to abort a collective stuck in this ring.
    pub fn abort_handle(&self) -> RingAbort {
        self.abort.clone()
    }

    /// Shuts every socket of the ring down (see [`RingAbort::abort`]).
    pub fn shutdown(&self) {
        self.abort.abort();
    }

    /// Runs one collective on the links, breaking the ring if it fails.
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Links, u64, usize, usize) -> Result<T, CollectiveError>,
    ) -> Result<Option<T>, CollectiveError> {
        if let Some(reason) = &self.broken {
            return Err(CollectiveError::Broken(reason.clone()));
        }
        let Some(links) = self.links.as_mut() else {
            return Ok(None);
        };
        self.step += 1;
        match op(links, self.step, self.rank, self.world) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::warn!(rank = self.rank, step = self.step, error = %e, "ring collective failed");
                self.broken = Some(e.to_string());
                // Closing the links tells both neighbours now, rather than at their timeout.
                links.abort.close_sockets();
                if let Some(shm) = &links.shm {
                    shm.break_ring();
                }
                Err(e)
            }
        }
    }
}

impl Collective for RingAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.run(|links, step, rank, world| links.all_reduce(buf, step, rank, world))
            .map(|_| ())
    }

    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError> {
        check_sparse_input(ids, rows, row_len)?;
        let merged = self
            .run(|links, step, rank, world| links.sparse(ids, rows, row_len, step, rank, world))?;
        if let Some((merged_ids, merged_rows)) = merged {
            *ids = merged_ids;
            *rows = merged_rows;
        }
        Ok(())
    }

    fn take_bytes_sent(&mut self) -> u64 {
        self.links
            .as_mut()
            .map_or(0, |l| std::mem::take(&mut l.bytes_sent))
    }
}

/// Forming the two links of one rank: shared by the dialing and the accepting thread.
struct Formation<'a> {
    me: u32,
    world: u32,
    auth: &'a RingAuth,
    options: &'a RingOptions,
    deadline: Instant,
    /// Set by whichever side fails first, so the other stops waiting for a ring that cannot form.
    give_up: AtomicBool,
}

impl Formation<'_> {
    fn cancel_unless_done<T>(
        &self,
        r: Result<Option<T>, CollectiveError>,
    ) -> Result<Option<T>, CollectiveError> {
        if !matches!(r, Ok(Some(_))) {
            self.give_up.store(true, Ordering::SeqCst);
        }
        r
    }

    /// The timeout for one handshake step: the handshake timeout, but never past the deadline.
    fn handshake_timeout(&self) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.options
            .handshake_timeout
            .min(self.options.io_timeout)
            .min(left)
            .max(Duration::from_millis(1))
    }

    /// Dials the right neighbour until it answers and authenticates, or the deadline passes.
    /// `Ok(None)` means the accepting side failed and asked this one to stop.
    fn dial(&self, right: Peer) -> Result<Option<Link<dyn Write + Send>>, CollectiveError> {
        let mut last_error: Option<io::Error> = None;
        loop {
            if self.give_up.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= self.deadline {
                tracing::warn!(%right, last_error = ?last_error, "could not reach the right neighbour");
                return Err(CollectiveError::Timeout {
                    peer: right,
                    during: "dialing the right neighbour",
                    after: self.options.connect_timeout,
                });
            }
            let attempt = (self.deadline - now).min(Duration::from_secs(1));
            match TcpStream::connect_timeout(&right.addr, attempt) {
                Ok(stream) => {
                    let handshake = configure(&stream, self.handshake_timeout())
                        .map_err(HandshakeError::Io)
                        .and_then(|()| {
                            auth::dial(&stream, self.auth, self.me, right.rank as u32, self.world)
                        });
                    match handshake {
                        Ok(()) => return Link::dialed(stream, right, self.options).map(Some),
                        Err(HandshakeError::Auth(reason)) => {
                            return Err(CollectiveError::Auth {
                                peer: right,
                                reason,
                            })
                        }
                        Err(HandshakeError::Protocol(source)) => {
                            return Err(CollectiveError::Protocol {
                                peer: right,
                                cause: source,
                            })
                        }
                        // The neighbour may have restarted or dropped a stale connection: retry.
                        Err(HandshakeError::Io(e)) => {
                            tracing::debug!(%right, error = %e, "ring handshake interrupted, retrying");
                            last_error = Some(e);
                        }
                    }
                }
                Err(e) => last_error = Some(e),
            }
            thread::sleep(DIAL_RETRY.min(self.deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Accepts connections until one authenticates as the left neighbour, or the deadline
    /// passes. Impostors and strays are logged and dropped. The listener is left blocking, as
    /// it came, so the caller can use it for a later ring.
    fn accept(
        &self,
        listener: &TcpListener,
        left: Peer,
    ) -> Result<Option<Link<dyn Read + Send>>, CollectiveError> {
        listener
            .set_nonblocking(true)
            .map_err(|source| CollectiveError::Io {
                peer: left,
                during: "preparing the ring listener",
                cause: source,
            })?;
        let result = self.accept_loop(listener, left);
        let _ = listener.set_nonblocking(false);
        result
    }

    fn accept_loop(
        &self,
        listener: &TcpListener,
        left: Peer,
    ) -> Result<Option<Link<dyn Read + Send>>, CollectiveError> {
        let mut auth_failures = 0usize;
        let mut last_auth_failure = String::new();
        // Each accepted connection authenticates on a thread of its own and reports here.
        let (done, finished) =
            mpsc::channel::<(SocketAddr, Result<Link<dyn Read + Send>, HandshakeError>)>();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            while let Ok((from, outcome)) = finished.try_recv() {
                match outcome {
                    Ok(link) => return Ok(Some(link)),
                    Err(HandshakeError::Auth(reason)) => {
                        tracing::warn!(%from, expected = %left, %reason, "rejected a ring connection: authentication failed");
                        auth_failures += 1;
                        last_auth_failure = reason;
                    }
                    Err(HandshakeError::Protocol(e)) => {
                        tracing::warn!(%from, expected = %left, error = %e, "dropped a ring connection that does not speak the protocol");
                    }
                    Err(HandshakeError::Io(e)) => {
                        tracing::warn!(%from, expected = %left, error = %e, "dropped a ring connection during the handshake");
                    }
                }
            }
            let given_up = self.give_up.load(Ordering::SeqCst);
            if (given_up || Instant::now() >= self.deadline) && auth_failures > 0 {
                // The likely reason the ring did not form, whichever side noticed first.
                return Err(CollectiveError::Auth {
                    peer: left,
                    reason: format!(
                        "no connection authenticated as the left neighbour; \
                         {auth_failures} connection(s) failed authentication, the last because {last_auth_failure}"
                    ),
                });
            }
            if given_up {
                return Ok(None);
            }
            if Instant::now() >= self.deadline {
                return Err(CollectiveError::Timeout {
                    peer: left,
                    during: "waiting for the left neighbour to connect",
                    after: self.options.connect_timeout,
                });
            }
            let (stream, from) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(ACCEPT_POLL);
                    continue;
                }
                Err(e) => {
                    // E.g. out of file descriptors, or a connection reset before accept: transient.
                    tracing::warn!(error = %e, "accepting a ring connection failed");
                    thread::sleep(ACCEPT_POLL);
                    continue;
                }
            };
            if in_flight.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                tracing::warn!(%from, "dropped a ring connection: {MAX_HANDSHAKES} handshakes already under way");
                continue;
            }
            in_flight.fetch_add(1, Ordering::SeqCst);
            let handshake = AcceptedHandshake {
                auth: self.auth.clone(),
                options: self.options.clone(),
                me: self.me,
                world: self.world,
                left,
                timeout: self.handshake_timeout(),
            };
            let (done, in_flight) = (done.clone(), in_flight.clone());
            let spawned = thread::Builder::new()
                .name("ring-handshake".into())
                .spawn(move || {
                    let outcome = handshake.run(stream);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    // The acceptor may have its neighbour already and be gone: then this
                    // connection is simply dropped.
                    let _ = done.send((from, outcome));
                });
            if let Err(e) = spawned {
                tracing::warn!(%from, error = %e, "dropped a ring connection: no thread for its handshake");
            }
        }
    }
}

/// What one accepted connection needs to authenticate as the left neighbour, owned, so the
/// handshake can run on a thread of its own.
struct AcceptedHandshake {
    auth: RingAuth,
    options: RingOptions,
    me: u32,
    world: u32,
    left: Peer,
    timeout: Duration,
}

impl AcceptedHandshake {
    fn run(self, stream: TcpStream) -> Result<Link<dyn Read + Send>, HandshakeError> {
        stream
            .set_nonblocking(false)
            .and_then(|()| configure(&stream, self.timeout))
            .map_err(HandshakeError::Io)?;
        auth::accept(
            &stream,
            &self.auth,
            self.me,
            self.left.rank as u32,
            self.world,
        )?;
        Link::accepted(stream, self.left, &self.options)
            .map_err(|e| HandshakeError::Auth(e.to_string()))
    }
}

/// One link of the ring: the socket (timeouts, shutdown) and the stream the data goes
/// through: the socket itself, or a TLS session over it.
struct Link<T: ?Sized> {
    socket: TcpStream,
    data: Box<T>,
}

impl Link<dyn Write + Send> {
    fn dialed(
        socket: TcpStream,
        right: Peer,
        options: &RingOptions,
    ) -> Result<Self, CollectiveError> {
        let clone = socket.try_clone().map_err(|source| CollectiveError::Io {
            peer: right,
            during: "setting up the link",
            cause: source,
        })?;
        let data: Box<dyn Write + Send> = match &options.tls {
            Some(tls) => {
                tls.ring_dial(clone, right.addr.ip())
                    .map_err(|e| CollectiveError::Auth {
                        peer: right,
                        reason: e.to_string(),
                    })?
            }
            None => Box::new(clone),
        };
        Ok(Link { socket, data })
    }
}

impl Link<dyn Read + Send> {
    fn accepted(
        socket: TcpStream,
        left: Peer,
        options: &RingOptions,
    ) -> Result<Self, crate::tls::TlsError> {
        let clone = socket
            .try_clone()
            .map_err(|source| crate::tls::TlsError::Handshake {
                peer: left.to_string(),
                cause: source,
            })?;
        let data: Box<dyn Read + Send> = match &options.tls {
            Some(tls) => tls.ring_accept(clone, &left.to_string())?,
            None => Box::new(clone),
        };
        Ok(Link { socket, data })
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    // Segments are written whole; Nagle would only delay the last small one of each chunk.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// An I/O error as the caller should see it: a timeout is its own variant.
fn io_failure(
    peer: Peer,
    during: &'static str,
    e: io::Error,
    timeout: Duration,
) -> CollectiveError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CollectiveError::Timeout {
            peer,
            during,
            after: timeout,
        },
        _ => CollectiveError::Io {
            peer,
            during,
            cause: e,
        },
    }
}

/// Whether a socket is still open: false once the peer closed it, without consuming data.
fn peek(socket: &TcpStream) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a valid descriptor and a one-byte buffer; MSG_PEEK leaves the data queued and
    // MSG_DONTWAIT keeps the socket's blocking mode untouched.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            std::ptr::from_mut(&mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(true)
            } else {
                Err(e)
            }
        }
    }
}

/// What to do with a received dense segment.
#[derive(Clone, Copy)]
enum Segment {
    /// Add it into our buffer, then send the sum on as `then` (reduce-scatter).
    Reduce { then: FrameKind },
    /// Overwrite our buffer with it, forwarding it unchanged if `forward` (all-gather).
    Copy { forward: bool },
}

/// The two connections of one rank and the writer thread of the right one.
struct Links {
    left: Peer,
    right: Peer,
    io_timeout: Duration,
    segment_bytes: usize,
    /// Read by the calling thread only.
    left_stream: Box<dyn Read + Send>,
    /// The frame last read; a whole frame, so it can be forwarded verbatim.
    frame: Vec<u8>,
    outbox: Outbox,
    bytes_sent: u64,
    abort: RingAbort,
    /// The left socket, to notice while waiting in shared memory that the neighbour is gone.
    left_socket: TcpStream,
    shm: Option<SharedRing>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("left", &self.left)
            .field("right", &self.right)
            .field("bytes_sent", &self.bytes_sent)
            .finish_non_exhaustive()
    }
}

impl Links {
    fn new(
        left: Peer,
        right: Peer,
        left_link: Link<dyn Read + Send>,
        right_link: Link<dyn Write + Send>,
        options: &RingOptions,
    ) -> Result<Self, CollectiveError> {
        let (left_stream, left_data) = (left_link.socket, left_link.data);
        let (right_stream, right_data) = (right_link.socket, right_link.data);
        let setup = |peer: Peer| {
            move |source| CollectiveError::Io {
                peer,
                during: "setting up the link",
                cause: source,
            }
        };
        configure(&left_stream, options.io_timeout).map_err(setup(left))?;
        configure(&right_stream, options.io_timeout).map_err(setup(right))?;
        let abort = RingAbort::new(vec![
            left_stream.try_clone().map_err(setup(left))?,
            right_stream.try_clone().map_err(setup(right))?,
        ]);
        let wake = left_stream.try_clone().map_err(setup(left))?;
        let left_socket = left_stream.try_clone().map_err(setup(left))?;
        let outbox = Outbox::spawn(right_data, right_stream, wake).map_err(setup(right))?;
        Ok(Self {
            left,
            right,
            io_timeout: options.io_timeout,
            segment_bytes: (options.segment_bytes.clamp(4, MAX_PAYLOAD as usize)) / 4 * 4,
            left_stream: left_data,
            frame: Vec::new(),
            outbox,
            bytes_sent: 0,
            abort,
            left_socket,
            shm: None,
        })
    }

    /// Whether the ring still stands, for waits in shared memory: not aborted, and the left
    /// neighbour's link not closed (a process that dies closes its sockets).
    fn liveness(&self) -> impl Fn() -> Result<(), CollectiveError> + '_ {
        move || {
            if self.abort.is_aborted() {
                return Err(CollectiveError::Aborted);
            }
            match peek(&self.left_socket) {
                Ok(true) => Ok(()),
                Ok(false) => Err(CollectiveError::Io {
                    peer: self.left,
                    during: "waiting in shared memory",
                    cause: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the left neighbour closed its link",
                    ),
                }),
                Err(source) => Err(CollectiveError::Io {
                    peer: self.left,
                    during: "waiting in shared memory",
                    cause: source,
                }),
            }
        }
    }

    /// The error to report when the writer thread is gone or a read failed: an abort first,
    /// then a failed write to the right (the root cause when it woke the reader), then the read.
    fn failure(&self, read: Option<(ReadError, &'static str)>) -> CollectiveError {
        let read = match read {
            // Bad bytes are the left neighbour's fault whatever else is going on.
            Some((ReadError::Protocol(source), _)) => {
                return CollectiveError::Protocol {
                    peer: self.left,
                    cause: source,
                }
            }
            Some((ReadError::Io(e), during)) => Some((e, during)),
            None => None,
        };
        if self.abort.is_aborted() {
            return CollectiveError::Aborted;
        }
        if let Some(e) = self.outbox.take_failure() {
            return io_failure(self.right, "sending", e, self.io_timeout);
        }
        match read {
            Some((e, during)) => io_failure(self.left, during, e, self.io_timeout),
            None => CollectiveError::Io {
                peer: self.right,
                during: "sending",
                cause: io::Error::other("the ring's writer thread stopped"),
            },
        }
    }

    fn send(&mut self, frame: Vec<u8>) -> Result<(), CollectiveError> {
        self.bytes_sent += frame.len() as u64;
        self.outbox.send(frame).map_err(|()| self.failure(None))
    }

    fn send_f32(
        &mut self,
        kind: FrameKind,
        step: u64,
        shape: u64,
        vals: &[f32],
    ) -> Result<(), CollectiveError> {
        let mut frame = self.outbox.buffer();
        begin_frame(&mut frame, kind, step, shape);
        frame.resize(HEADER_LEN + 4 * vals.len(), 0);
        for (dst, v) in frame[HEADER_LEN..].chunks_exact_mut(4).zip(vals) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        finish_frame(&mut frame);
        self.send(frame)
    }

    fn send_bytes(
        &mut self,
        kind: FrameKind,
        step: u64,
        shape: u64,
        payload: &[u8],
    ) -> Result<(), CollectiveError> {
        let mut frame = self.outbox.buffer();
        begin_frame(&mut frame, kind, step, shape);
        frame.extend_from_slice(payload);
        finish_frame(&mut frame);
        self.send(frame)
    }

    /// Sends the frame last received on, unchanged.
    fn forward(&mut self) -> Result<(), CollectiveError> {
        let mut frame = self.outbox.buffer();
        frame.clear();
        frame.extend_from_slice(&self.frame);
        self.send(frame)
    }

    /// Reads the next frame, which must be of `kind`, for `step`, with our `shape`; its
    /// payload is then `self.frame[HEADER_LEN..]`.
    fn recv(
        &mut self,
        kind: FrameKind,
        step: u64,
        shape: u64,
        shape_name: &'static str,
        during: &'static str,
    ) -> Result<FrameHeader, CollectiveError> {
        let header = read_frame(&mut self.left_stream, &mut self.frame)
            .map_err(|e| self.failure(Some((e, during))))?;
        let mismatch = if header.kind != kind {
            Some(ProtocolError::UnexpectedKind {
                expected: kind,
                got: header.kind,
            })
        } else if header.step != step {
            Some(ProtocolError::StepMismatch {
                expected: step,
                got: header.step,
            })
        } else if header.shape != shape {
            Some(ProtocolError::ShapeMismatch {
                what: shape_name,
                ours: shape,
                theirs: header.shape,
            })
        } else {
            None
        };
        match mismatch {
            Some(source) => Err(self.protocol(source)),
            None => Ok(header),
        }
    }

    fn protocol(&self, source: ProtocolError) -> CollectiveError {
        CollectiveError::Protocol {
            peer: self.left,
            cause: source,
        }
    }

    /// Dense ring all-reduce: n-1 reduce-scatter steps leave rank r owning the complete sum of
    /// chunk (r+1) mod n; n-1 all-gather steps pass each owner's chunk around the ring. Each
    /// received segment is sent on as soon as it is processed, so the steps pipeline.
    fn all_reduce(
        &mut self,
        buf: &mut [f32],
        step: u64,
        rank: usize,
        world: usize,
    ) -> Result<(), CollectiveError> {
        if let Some(mut shm) = self.shm.take() {
            let done = if buf.len() <= shm.capacity() {
                Some(shm.all_reduce(buf, step, &self.liveness()))
            } else {
                None
            };
            self.shm = Some(shm);
            if let Some(sent) = done {
                self.bytes_sent += sent?;
                return Ok(());
            }
        }
        let (n, r) = (world, rank);
        let shape = buf.len() as u64;
        // Reduce-scatter step 0: our own chunk, cut into our segments. An empty chunk still
        // travels as one empty frame, so every rank checks every other's shape.
        let own = chunk_range(buf.len(), n, r);
        if own.is_empty() {
            self.send_f32(FrameKind::ReduceScatter, step, shape, &[])?;
        }
        let seg = self.segment_bytes / 4;
        for start in own.clone().step_by(seg) {
            let end = (start + seg).min(own.end);
            self.send_f32(FrameKind::ReduceScatter, step, shape, &buf[start..end])?;
        }
        for s in 0..n - 1 {
            // Received at step s, sent on at step s+1; the last one completes our own chunk,
            // which opens the all-gather.
            let then = if s + 1 < n - 1 {
                FrameKind::ReduceScatter
            } else {
                FrameKind::AllGather
            };
            let c = (r + n - s - 1) % n;
            self.recv_chunk(
                buf,
                chunk_range(buf.len(), n, c),
                step,
                Segment::Reduce { then },
            )?;
        }
        for s in 0..n - 1 {
            let c = (r + n - s) % n;
            self.recv_chunk(
                buf,
                chunk_range(buf.len(), n, c),
                step,
                Segment::Copy {
                    forward: s + 1 < n - 1,
                },
            )?;
        }
        Ok(())
    }

    /// Receives the chunk `range` in the segments its originator chose and applies `mode`.
    fn recv_chunk(
        &mut self,
        buf: &mut [f32],
        range: Range<usize>,
        step: u64,
        mode: Segment,
    ) -> Result<(), CollectiveError> {
        let (kind, during) = match mode {
            Segment::Reduce { .. } => (
                FrameKind::ReduceScatter,
                "receiving a reduce-scatter segment",
            ),
            Segment::Copy { .. } => (FrameKind::AllGather, "receiving an all-gather segment"),
        };
        let shape = buf.len() as u64;
        let mut at = range.start;
        loop {
            let header = self.recv(kind, step, shape, "the dense buffer length", during)?;
            let len = header.payload_len();
            let left = range.end - at;
            // An empty chunk is one empty frame; otherwise frames hold whole, at least one,
            // f32s and never run past the chunk.
            let fits = if left == 0 {
                len == 0
            } else {
                len > 0 && len % 4 == 0 && len / 4 <= left
            };
            if !fits {
                return Err(self.protocol(ProtocolError::Malformed(format!(
                    "a {kind} segment of {len} bytes does not fit the {left} elements left of chunk {range:?}"
                ))));
            }
            let seg = at..at + len / 4;
            let payload = self.frame[HEADER_LEN..].chunks_exact(4);
            match mode {
                Segment::Reduce { then } => {
                    for (dst, src) in buf[seg.clone()].iter_mut().zip(payload) {
                        *dst += f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                    }
                    self.send_f32(then, step, shape, &buf[seg.clone()])?;
                }
                Segment::Copy { forward } => {
                    for (dst, src) in buf[seg.clone()].iter_mut().zip(payload) {
                        *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                    }
                    if forward {
                        self.forward()?;
                    }
                }
            }
            at = seg.end;
            if at == range.end {
                return Ok(());
            }
        }
    }

    /// Sparse all-reduce: every rank's contribution travels once around the ring (an
    /// all-gather: n-1 steps, each forwarding what arrived in the previous one), then each
    /// rank merges all n in rank order. Bytes scale with the rows touched, not the table.
    fn sparse(
        &mut self,
        ids: &[u32],
        rows: &[f32],
        row_len: usize,
        step: u64,
        rank: usize,
        world: usize,
    ) -> Result<(Vec<u32>, Vec<f32>), CollectiveError> {
        if let Some(mut shm) = self.shm.take() {
            let done = shm.sparse(ids, rows, row_len, step, &self.liveness());
            self.shm = Some(shm);
            if let Some((ids, rows, sent)) = done? {
                self.bytes_sent += sent;
                return Ok((ids, rows));
            }
        }
        let (n, r) = (world, rank);
        let shape = row_len as u64;
        let mut meta = [0u8; 12];
        meta[..4].copy_from_slice(&(r as u32).to_le_bytes());
        meta[4..].copy_from_slice(&(ids.len() as u64).to_le_bytes());
        self.send_bytes(FrameKind::SparseMeta, step, shape, &meta)?;
        let blob = sparse::encode(ids, rows);
        for piece in blob.chunks(self.segment_bytes) {
            self.send_bytes(FrameKind::SparseData, step, shape, piece)?;
        }

        let mut parts = vec![Contribution::default(); n];
        parts[r] = Contribution {
            ids: ids.to_vec(),
            rows: rows.to_vec(),
        };
        for s in 0..n - 1 {
            let origin = (r + n - s - 1) % n;
            let forward = s + 1 < n - 1;
            let header = self.recv(
                FrameKind::SparseMeta,
                step,
                shape,
                "the sparse row length",
                "receiving a sparse contribution",
            )?;
            if header.payload_len() != meta.len() {
                return Err(self.protocol(ProtocolError::WrongLength {
                    what: "sparse contribution header",
                    expected: meta.len(),
                    got: header.payload_len(),
                }));
            }
            let p = &self.frame[HEADER_LEN..];
            let claimed = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
            let count = u64::from_le_bytes([p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]]);
            if claimed != origin {
                return Err(self.protocol(ProtocolError::Malformed(format!(
                    "expected rank {origin}'s sparse contribution at ring step {s}, got rank {claimed}'s"
                ))));
            }
            let (Some(total), Ok(count)) =
                (sparse::blob_len(count, row_len), usize::try_from(count))
            else {
                return Err(self.protocol(ProtocolError::Malformed(format!(
                    "rank {origin} announces {count} sparse rows of length {row_len}: too large"
                ))));
            };
            if forward {
                self.forward()?;
            }
            let mut blob = Vec::with_capacity(total.min(MAX_SPARSE_PREALLOC));
            while blob.len() < total {
                let header = self.recv(
                    FrameKind::SparseData,
                    step,
                    shape,
                    "the sparse row length",
                    "receiving a sparse contribution",
                )?;
                let len = header.payload_len();
                let left = total - blob.len();
                // Non-empty frames only, or a peer could keep us reading nothing forever.
                if len == 0 || len > left {
                    return Err(self.protocol(ProtocolError::Malformed(format!(
                        "a sparse data frame of {len} bytes does not fit the {left} bytes left of rank {origin}'s contribution"
                    ))));
                }
                blob.extend_from_slice(&self.frame[HEADER_LEN..]);
                if forward {
                    self.forward()?;
                }
            }
            parts[origin] = sparse::decode(&blob, count, origin).map_err(|e| self.protocol(e))?;
        }
        Ok(sparse::merge(&parts, row_len))
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        // Let the writer flush what the right neighbour still needs to finish the last
        // collective (bounded by the write timeout), then close both links.
        self.outbox.close();
        self.abort.close_sockets();
        if let Some(shm) = &self.shm {
            shm.break_ring();
        }
    }
}

/// The writer thread of the right-hand link and its queues.
#[derive(Debug)]
struct Outbox {
    /// Encoded frames for the writer; dropping it tells the writer to finish and exit.
    queue: Option<mpsc::Sender<Vec<u8>>>,
    /// Buffers the writer is done with, reused so a steady state allocates nothing.
    recycled: mpsc::Receiver<Vec<u8>>,
    /// The write error that stopped the writer, if one did.
    failure: Arc<Mutex<Option<io::Error>>>,
    writer: Option<JoinHandle<()>>,
}

impl Outbox {
    /// `wake` is a clone of the left link: when a write fails the writer shuts it down, so a
    /// collective blocked reading from the left fails now instead of at its timeout.
    fn spawn(
        mut data: Box<dyn Write + Send>,
        stream: TcpStream,
        wake: TcpStream,
    ) -> io::Result<Self> {
        let (queue, frames) = mpsc::channel::<Vec<u8>>();
        let (recycle, recycled) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        let writer = thread::Builder::new()
            .name("ring-writer".into())
            .spawn(move || {
                for frame in frames {
                    if let Err(e) = data.write_all(&frame).and_then(|()| data.flush()) {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        let _ = stream.shutdown(Shutdown::Both);
                        let _ = wake.shutdown(Shutdown::Both);
                        return;
                    }
                    // The ring may be gone already; then the buffer is simply freed.
                    let _ = recycle.send(frame);
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            recycled,
            failure,
            writer: Some(writer),
        })
    }

    fn buffer(&self) -> Vec<u8> {
        self.recycled.try_recv().unwrap_or_default()
    }

    fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
        match &self.queue {
            Some(q) => q.send(frame).map_err(|_| ()),
            None => Err(()),
        }
    }

    fn take_failure(&self) -> Option<io::Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn close(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            // The writer never panics on network input; if it did, there is nothing to add.
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_range;

    #[test]
    fn chunks_cover_the_buffer_in_order() {
        for len in [0, 1, 5, 1000, 1_000_003] {
            for n in 1..=5 {
                let mut next = 0;
                for c in 0..n {
                    let r = chunk_range(len, n, c);
                    assert_eq!(r.start, next);
                    assert!(r.len() == len / n || r.len() == len / n + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
