//! A Unix stream that asks the kernel to wake it for writability only while a
//! write is actually blocked (grove patch, see GROVE-PATCH.md).
//!
//! tokio's `UnixStream` registers every socket for read *and* write readiness,
//! edge-triggered. A Unix socket's writer is woken each time its peer drains
//! the receive queue, so a PUB socket with a hundred subscribers got an
//! EPOLLOUT edge for every subscriber that read a heartbeat: the idle primary
//! woke 20–30 times a second although it had nothing to write. Here the
//! socket is registered for reads only; a write goes straight to the
//! non-blocking socket, and only when it would block is a duplicate of the fd
//! registered for writability, until that one write gets through. Registering
//! after EAGAIN loses no wakeup: adding an fd to epoll reports readiness that
//! already holds.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub(crate) struct QuietUnixStream {
    /// The socket, registered for read readiness only.
    stream: AsyncFd<UnixStream>,
    /// A duplicate of the socket registered for write readiness while a write
    /// is blocked; `None` otherwise.
    blocked_write: Option<AsyncFd<UnixStream>>,
}

impl QuietUnixStream {
    pub(crate) fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream: register(stream, Interest::READABLE)?,
            blocked_write: None,
        })
    }
}

/// Registers a socket this stream owns with the reactor.
fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: the `AsyncFd` owns `stream`, so its fd stays open and names the
    // same socket until the `AsyncFd` (which deregisters first) is dropped.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts().1)
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(waiter) = &this.blocked_write {
                let mut guard = ready!(waiter.poll_write_ready(cx))?;
                match guard.try_io(|s| s.get_ref().write(buf)) {
                    Ok(result) => {
                        // The write got through: stop listening for
                        // writability until the next one blocks.
                        this.blocked_write = None;
                        return Poll::Ready(result);
                    }
                    Err(_would_block) => continue,
                }
            }
            match this.stream.get_ref().write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = this.stream.get_ref().try_clone()?;
                    this.blocked_write = Some(register(dup, Interest::WRITABLE)?);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: a write either reached the socket or is
        // still pending in `poll_write`.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}
