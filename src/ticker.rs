//! A periodic tick that wakes the thread once per period.
//!
//! tokio's timer wheel files a deadline more than 64 ms ahead in a coarser
//! level and wakes at that level's slot to re-file it, so a 250 ms
//! `tokio::time::interval` wakes its thread twice per tick. A primary ticks
//! its heartbeat all day, so it uses a kernel timer (timerfd) instead: one
//! wakeup per period. Where timerfd is unavailable it falls back to tokio's
//! interval.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

pub struct Ticker {
    period: Duration,
    inner: Inner,
}

enum Inner {
    Kernel(AsyncFd<OwnedFd>),
    Tokio(tokio::time::Interval),
}

impl Ticker {
    /// The first tick completes at once, then one per `period` (like
    /// `tokio::time::interval`; ticks missed while busy are merged). Must be
    /// called inside a tokio runtime.
    pub fn new(period: Duration) -> Ticker {
        let inner = match timerfd(period) {
            Ok(fd) => Inner::Kernel(fd),
            Err(e) => {
                tracing::debug!("no timerfd ({e}); using tokio's interval");
                Inner::Tokio(tokio::time::interval(period))
            }
        };
        Ticker { period, inner }
    }

    pub async fn tick(&mut self) {
        let fd = match &mut self.inner {
            Inner::Tokio(interval) => {
                interval.tick().await;
                return;
            }
            Inner::Kernel(fd) => fd,
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                break;
            };
            let mut expirations = [0u8; 8];
            let read = guard.try_io(|fd| {
                use std::os::fd::AsRawFd;
                let n = unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!("reading the heartbeat timer failed ({e}); using tokio's");
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        let mut interval = tokio::time::interval(self.period);
        interval.tick().await;
        self.inner = Inner::Tokio(interval);
    }
}

fn timerfd(period: Duration) -> std::io::Result<AsyncFd<OwnedFd>> {
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let period = period.max(Duration::from_millis(1));
    let spec = libc::itimerspec {
        it_interval: timespec(period),
        // The first expiry at once (a zero value would disarm the timer).
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 1,
        },
    };
    if unsafe { libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns the descriptor, so it stays open while it is
    // registered.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_at_once_then_per_period() {
        // At once: with a period of a minute, a first tick that waited a
        // period would miss the generous bound (no tight timing, which a
        // loaded machine would break).
        let mut slow = Ticker::new(Duration::from_secs(60));
        assert!(
            matches!(slow.inner, Inner::Kernel(_)),
            "timerfd works in tests"
        );
        tokio::time::timeout(Duration::from_secs(10), slow.tick())
            .await
            .expect("the first tick comes at once");
        // Then once per period: three more ticks never come sooner.
        let mut t = Ticker::new(Duration::from_millis(30));
        let start = std::time::Instant::now();
        t.tick().await;
        for _ in 0..3 {
            t.tick().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(85),
            "{:?}",
            start.elapsed()
        );
    }
}
