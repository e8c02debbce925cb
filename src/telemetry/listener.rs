//! The HTTP listener of `/metrics`, `/healthz` and `/readyz`, with limits:
//! a connection that sends nothing for [`Limits::idle`] is closed, none
//! lives longer than [`Limits::life`] (a client that trickles a byte at a
//! time), and above [`Limits::max`] open connections the oldest is closed
//! to make room for the new one. Without them about 1,000 idle
//! connections took every file descriptor of the process (issue 16,
//! finding 9), and `/healthz` itself stopped answering.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub idle: Duration,
    pub life: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max: 128,
            idle: Duration::from_secs(30),
            life: Duration::from_secs(300),
        }
    }
}

/// A TCP listener that hands out [`Guarded`] connections.
pub struct GuardedListener {
    inner: TcpListener,
    limits: Limits,
    /// One eviction switch per open connection, oldest first.
    open: VecDeque<oneshot::Sender<()>>,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            open: VecDeque::new(),
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    self.open.retain(|s| !s.is_closed());
                    while self.open.len() >= self.limits.max {
                        if let Some(oldest) = self.open.pop_front() {
                            let _ = oldest.send(());
                        }
                    }
                    let (evict, evicted) = oneshot::channel();
                    self.open.push_back(evict);
                    return (Guarded::new(stream, evicted, self.limits), addr);
                }
                // Out of descriptors or a connection reset before accept:
                // wait a little, as axum's own listener does.
                Err(e) => {
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One connection with its idle timer, its end of life and its eviction.
pub struct Guarded {
    inner: TcpStream,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    ends: Instant,
    evicted: Option<oneshot::Receiver<()>>,
}

impl Guarded {
    fn new(inner: TcpStream, evicted: oneshot::Receiver<()>, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            idle_for: limits.idle,
            ends: now + limits.life,
            evicted: Some(evicted),
        }
    }

    /// An error when the connection must close now.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(rx) = &mut self.evicted {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => {
                    return Some(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "closed to make room for a newer connection",
                    ))
                }
                Poll::Ready(Err(_)) => self.evicted = None,
                Poll::Pending => {}
            }
        }
        if Instant::now() >= self.ends {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection open too long",
            ));
        }
        None
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = (Instant::now() + self.idle_for).min(self.ends);
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle too long",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The endpoint on a free port with `limits`.
    async fn serve(limits: Limits) -> SocketAddr {
        let metrics = Arc::new(super::super::Metrics::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                GuardedListener::new(listener, limits),
                super::super::router(metrics, Arc::new(AtomicBool::new(true)), None),
            )
            .await
        });
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut text)).await;
        text
    }

    /// Issue 16, finding 9: 1,000 idle connections made `/healthz` fail.
    /// Here 300 idle ones (the test's own descriptors count too): the
    /// listener keeps at most 128 of them, closes the rest, and every
    /// probe is answered.
    #[tokio::test]
    async fn idle_floods_are_capped_and_probes_answered() {
        let addr = serve(Limits {
            max: 128,
            idle: Duration::from_secs(60),
            life: Duration::from_secs(600),
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..5 {
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut closed = 0;
        for c in &mut idle {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(5), c.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert!(
            closed >= 300 - 128,
            "only {closed} of 300 idle connections closed"
        );
    }

    #[tokio::test]
    async fn idle_and_trickling_connections_are_closed() {
        let addr = serve(Limits {
            max: 16,
            idle: Duration::from_millis(300),
            life: Duration::from_millis(1500),
        })
        .await;
        let mut quiet = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut b)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection is closed: {n:?}"
        );
        // A byte every 100 ms never idles, but its life ends.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        for c in
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
        {
            if slow.write_all(&[*c]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        assert!(started.elapsed() < Duration::from_secs(8));
    }
}
