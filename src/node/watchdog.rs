//! The primary's watchdog (see docs/design.md, Serving as primary): a hung
//! primary keeps the lock, so no one else can take over. The event loop
//! ticks a shared clock (with each heartbeat); this thread aborts the process
//! when the clock stops for `timeout`, which releases the lock and lets a
//! secondary promote.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Watchdog {
    base: Instant,
    last_tick_ms: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts the watchdog thread.
    pub fn start(timeout: Duration) -> std::io::Result<Watchdog> {
        let dog = Watchdog {
            base: Instant::now(),
            last_tick_ms: Arc::new(AtomicU64::new(0)),
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let watcher = dog.clone();
        std::thread::Builder::new()
            .name("grove-watchdog".into())
            .spawn(move || watcher.watch(timeout))?;
        Ok(dog)
    }

    /// Called by the event loop: "I am alive".
    pub fn tick(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_tick_ms.store(now, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Sleeps until the moment the loop would count as hung if it did not
    /// tick meanwhile, so a healthy primary wakes this thread about once
    /// per `timeout`, not on a short period.
    fn watch(&self, timeout: Duration) {
        let timeout_ms = timeout.as_millis() as u64;
        while !self.stopped.load(Ordering::Relaxed) {
            let now = self.base.elapsed().as_millis() as u64;
            let since_tick = now.saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
            let nap = Duration::from_millis(timeout_ms.saturating_sub(since_tick).max(10) + 1);
            let slept_from = Instant::now();
            std::thread::sleep(nap);
            // If this thread itself slept longer than it asked, the whole
            // process was frozen meanwhile (SIGSTOP, Ctrl-Z then `fg`, a
            // suspended VM): the loop could not tick either, so it gets a
            // fresh `timeout` from now instead of a healthy primary being
            // killed. Any freeze counts, not only a long one: a stop of
            // 5–7 s that began mid-nap overslept by less than half a
            // timeout, and the loop's stall, counted through the stop,
            // killed it before it could tick again. The slack is what a
            // busy machine may add to a sleep; a loop that is really hung
            // is caught by the next nap, which this thread sleeps on time.
            if slept_from.elapsed() > nap + oversleep_slack(timeout) {
                self.tick();
            }
            let now = self.base.elapsed().as_millis() as u64;
            let seen = self.last_tick_ms.load(Ordering::Relaxed);
            let stalled = now.saturating_sub(seen);
            if stalled > timeout_ms && self.ticks_within(seen, confirm_grace(timeout)) {
                // Frozen with the process, and ticking again: not hung.
                continue;
            }
            let stalled = (self.base.elapsed().as_millis() as u64)
                .saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
            if stalled > timeout_ms && !self.stopped.load(Ordering::Relaxed) {
                tracing::error!(
                    "watchdog: the event loop has not ticked for {stalled} ms; aborting so that a secondary can take over"
                );
                errln!("grove: watchdog: event loop hung for {stalled} ms, aborting");
                // _exit: no atexit handlers, no locks to take in a hung process.
                unsafe { libc::_exit(70) };
            }
        }
    }
}

impl Watchdog {
    /// Whether the loop ticks (after the tick `seen`) within `grace`.
    fn ticks_within(&self, seen: u64, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(grace));
            if self.last_tick_ms.load(Ordering::Relaxed) != seen {
                return true;
            }
        }
        false
    }
}

/// How long a loop that looks hung is given to tick before the process is
/// aborted: a loop that was frozen with its whole process (a stop that
/// began just after this thread's nap did, which its own oversleep does
/// not show) ticks at once when continued, its heartbeat overdue; a hung
/// one does not. A real hang is aborted this much later.
fn confirm_grace(timeout: Duration) -> Duration {
    (timeout / 5).max(Duration::from_millis(200))
}

/// How much longer than asked the watchdog's nap may last before the
/// process counts as having been frozen: what scheduling on a loaded
/// machine adds to a sleep, well under a stop anyone would make.
fn oversleep_slack(timeout: Duration) -> Duration {
    (timeout / 10).max(Duration::from_millis(200))
}
