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
            // If this thread itself slept far too long, the whole process
            // was frozen (SIGSTOP, suspended VM): the loop was not hung, so
            // give it a fresh chance instead of killing a healthy primary.
            if slept_from.elapsed() > nap + timeout / 2 {
                self.tick();
            }
            let now = self.base.elapsed().as_millis() as u64;
            let stalled = now.saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
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
