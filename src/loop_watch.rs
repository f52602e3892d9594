//! Keeps event-loop stalls visible. A member runs every RPC, event and timer
//! on one current-thread runtime, so one slow `poll` (a blocking file read,
//! an SQLite query, a long CPU loop) delays every request behind it. The rule
//! is that blocking work leaves the loop (the store thread, the shim,
//! `spawn_blocking`); this module measures every poll of the member's futures
//! so that a regression shows: the longest one is reported in `ping`'s answer
//! (and so by `grove status --json` and `grove bench`), and a poll longer than
//! [`STALL_WARN`] is logged with the name of the future that took it.
//!
//! Two clock reads per poll (a vDSO call each, ~20 ns) are the whole cost.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A single poll longer than this is a stall worth a warning: it is about
/// a hundred write round trips, and far beyond any poll that only moves
/// bytes between sockets and channels.
pub const STALL_WARN: Duration = Duration::from_millis(50);

/// At most one stall warning per this interval, so a machine that is
/// swapping does not also fill the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

static LONGEST_POLL_US: AtomicU64 = AtomicU64::new(0);
static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);

/// The longest single poll of a watched future in this process so far.
pub fn longest_poll() -> Duration {
    Duration::from_micros(LONGEST_POLL_US.load(Ordering::Relaxed))
}

/// Runs `future` with each of its polls timed under `name`.
pub fn watched<F: Future>(name: &'static str, future: F) -> Watched<F> {
    Watched { name, future }
}

/// Spawns `future` on the current runtime with each poll timed.
pub fn spawn<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(watched(name, future))
}

pin_project_lite::pin_project! {
    /// A future whose polls are timed (see the module comment).
    pub struct Watched<F> {
        name: &'static str,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let started = Instant::now();
        let result = this.future.poll(cx);
        record(this.name, started.elapsed());
        result
    }
}

fn record(name: &'static str, took: Duration) {
    let us = took.as_micros().min(u64::MAX as u128) as u64;
    LONGEST_POLL_US.fetch_max(us, Ordering::Relaxed);
    if took > STALL_WARN && warn_allowed() {
        tracing::warn!(
            future = name,
            ms = took.as_secs_f64() * 1000.0,
            "event loop stalled: one poll took longer than {} ms, delaying every request behind it",
            STALL_WARN.as_millis()
        );
    }
}

fn warn_allowed() -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64
        && LAST_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_poll_is_remembered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(watched("test", async {
            std::thread::sleep(Duration::from_millis(3));
            tokio::task::yield_now().await;
        }));
        assert!(longest_poll() >= Duration::from_millis(3));
    }
}
