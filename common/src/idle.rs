//! Connections that fall silent are closed: a stranger who connects to one of our gRPC ports
//! and sends nothing (or stops halfway) holds a socket and a task only for [`IDLE_TIMEOUT`].
//!
//! A live peer is never silent that long: the servers send HTTP/2 pings every
//! [`KEEPALIVE_INTERVAL`], and a client's answer is a read like any other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a connection may send nothing before the server closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idle HTTP/2 connection is pinged (and how long the answer may take).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A stream whose reads fail with `TimedOut` after `timeout` without a byte.
pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received for {} s", self.timeout.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for IdleTimeout<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A gRPC server that pings idle connections, so that live peers are never silent for
/// [`IDLE_TIMEOUT`] and dead ones are noticed, with HTTP/2 windows that let a model's state
/// stream at full speed (see [`crate::state_transfer::STREAM_WINDOW`]).
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_INTERVAL))
        .initial_stream_window_size(Some(crate::state_transfer::STREAM_WINDOW))
        .initial_connection_window_size(Some(crate::state_transfer::CONNECTION_WINDOW))
}

/// The connections `listener` accepts, each closed after [`IDLE_TIMEOUT`] of silence: the
/// incoming stream for `tonic`'s `serve_with_incoming`.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = io::Result<IdleTimeout<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(|conn| conn.map(|s| IdleTimeout::new(s, IDLE_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_ends_a_read_and_bytes_put_it_off() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 4];
        tokio::time::advance(Duration::from_secs(8)).await;
        b.write_all(b"hi").await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), 2);
        // The deadline moved with the bytes: 8 s more is still within it.
        let early = tokio::time::timeout(Duration::from_secs(8), a.read(&mut buf)).await;
        assert!(early.is_err(), "no timeout yet");
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
