//! The board's connections, served with bounds.
//! See docs/design.md, Web board. `axum::serve` keeps every accepted connection open for as long
//! as its peer likes, even one that never sends a byte: another local user
//! could open connections until the primary ran out of file descriptors,
//! and with them its RPC socket, its store readers and every task start.
//! Here at most [`MAX_CONNECTIONS`] are open at once (the rest wait in the
//! kernel's backlog, costing us nothing), and a connection that has not
//! sent a whole request head within [`HEADER_TIMEOUT`] (at its start, or
//! idle between requests) is closed. A stream of events, once answered,
//! is not affected: its request was read long ago. Nor may a peer hold a
//! slot by never reading what it asked for (a request pipelined after
//! another, a refusal it ignores): a connection whose writes make no
//! progress for [`WRITE_STALL`] is closed ([`WriteDeadline`]); the event
//! stream's keep-alives keep a reading browser's stream well inside it.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections open at once: a few browser tabs need a handful each (one
/// event stream, a few reads).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send a request head, and stay idle
/// between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection's writes may make no progress before it is
/// closed (its peer reads nothing).
pub const WRITE_STALL: Duration = Duration::from_secs(30);

/// How long to pause after `accept` failed (out of descriptors, say), so
/// that a persistent failure does not spin the event loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until aborted; aborting it closes every
/// connection too (they live in its `JoinSet`), so a primary that hands
/// over stops serving the board at once.
pub async fn serve(listener: TcpListener, app: axum::Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut open = JoinSet::new();
    // At most one look-up per open connection waits.
    let (lookups, asked) = tokio::sync::mpsc::channel(MAX_CONNECTIONS);
    open.spawn(look_up_users(asked));
    let mut accept_failures = 0u64;
    loop {
        // Finished connections leave the set as they end, so it holds at
        // most `MAX_CONNECTIONS` entries.
        while open.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(
                        "web board: accepting a connection failed ({accept_failures} times so far): {e}"
                    );
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let lookups = lookups.clone();
        open.spawn(async move {
            let _slot = slot;
            if !from_our_user(&stream, peer, &lookups).await {
                return;
            }
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(WriteDeadline::new(stream, WRITE_STALL)),
                    service,
                );
            if let Err(e) = connection.await {
                tracing::debug!("web board: a connection ended: {e}");
            }
        });
    }
}

/// Whether the peer of `stream` runs as this user (or root): only then is
/// a byte of it read. Another local user reaches 127.0.0.1 as easily, and
/// the token is not enough to keep them out: browsers send a site's
/// cookies to every port of it, so a page of theirs on 127.0.0.1 is sent
/// the board's login cookie, and a listener of theirs on the board's port
/// while no primary holds it hears the token an open tab sends (see
/// docs/design.md, Web board). Their connection is closed unread, and
/// frees its slot at once. Off the event loop: it reads the kernel's
/// socket tables.
async fn from_our_user(
    stream: &tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    lookups: &tokio::sync::mpsc::Sender<Lookup>,
) -> bool {
    let Ok(ours) = stream.local_addr() else {
        return false;
    };
    let (answer, uid) = tokio::sync::oneshot::channel();
    if lookups.send((peer, ours, answer)).await.is_err() {
        return false;
    }
    let uid = uid.await.ok().flatten();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match uid {
        Some(uid) if uid == me || uid == 0 => true,
        Some(uid) => {
            tracing::debug!("web board: closed a connection of another user (uid {uid})");
            false
        }
        None => {
            // Said once loudly when the tables cannot be read at all (a
            // sandbox, WSL1): every connection is refused then.
            static UNREADABLE: std::sync::Once = std::sync::Once::new();
            if std::fs::metadata("/proc/net/tcp").is_err() {
                UNREADABLE.call_once(|| {
                    tracing::warn!(
                        "web board: /proc/net/tcp cannot be read here, so no connection's user can be told and every one is refused"
                    )
                });
            }
            tracing::debug!(
                "web board: closed a connection from {peer} unread: no open socket of it in /proc/net/tcp (closed already, or the tables cannot be read)"
            );
            false
        }
    }
}

/// A connection whose user is asked: its peer's address, ours, and where
/// the uid goes (`None`: not found).
type Lookup = (
    std::net::SocketAddr,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<Option<u32>>,
);

/// Answers the look-ups of connections' users, every one waiting at the
/// time with one read of the kernel's tables (`port_owner::peer_uids`):
/// another user holding thousands of sockets makes a read slow, and
/// connecting in a loop queued the board's own connections behind one
/// read each of theirs (requests took 10–20 s). One read at a time, off
/// the event loop: a flood of connections never turns into a flood of
/// blocking threads and descriptors.
async fn look_up_users(mut asked: tokio::sync::mpsc::Receiver<Lookup>) {
    while let Some(first) = asked.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = asked.try_recv() {
            batch.push(more);
        }
        let pairs: Vec<_> = batch.iter().map(|(peer, ours, _)| (*peer, *ours)).collect();
        let uids = tokio::task::spawn_blocking(move || super::port_owner::peer_uids(&pairs))
            .await
            .unwrap_or_default();
        for (i, (_, _, answer)) in batch.into_iter().enumerate() {
            let _ = answer.send(uids.get(i).copied().flatten());
        }
    }
}

/// A stream whose writes fail once none has made progress for `stall`:
/// hyper has a deadline for reading a request head, none for writing an
/// answer, and a peer that never reads would hold its connection slot
/// for as long as it likes.
struct WriteDeadline<S> {
    inner: S,
    stall: Duration,
    /// Running while a write waits; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, stall: Duration) -> Self {
        WriteDeadline {
            inner,
            stall,
            stalled: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {stall:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_stall_and_reading_resets_it() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(300));
        let chunk = [7u8; 1024];
        // The pipe fills; the peer reads a little now and then, under the
        // stall each time: every write goes through in the end.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            // Exactly what the three writes below send.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                theirs.read_exact(&mut buf).await.unwrap();
            }
            theirs
        });
        for _ in 0..3 {
            w.write_all(&chunk).await.expect("progress keeps it open");
        }
        let theirs = reader.await.unwrap();
        // Now nobody reads: the write fails once the stall has passed.
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(e) = w.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(theirs);
    }
}
