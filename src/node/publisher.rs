//! The primary's publisher: committed events to the PUB socket in `seq`
//! order, heartbeats in between (which also tick the watchdog), and the
//! orchestrator woken by every commit it acts on.

use super::watchdog::Watchdog;
use crate::protocol::{Event, EventData, now_ms};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use zeromq::{SocketSend, ZmqMessage};

/// Events on their way from the store thread (and the orchestrator's output
/// tail) to the PUB socket. Bounded like every queue: the store thread waits
/// for room (it never drops a durable event before publishing it), the
/// orchestrator drops output chunks when it is full (the log file is the
/// durable output). The publisher only hands each event to the socket,
/// whose per-subscriber queues drop at their own bound, so this queue is
/// normally near empty.
pub(super) const EVENT_QUEUE: usize = 4096;

/// What the publisher needs for its heartbeats.
pub(super) struct Heartbeat {
    pub(super) every: Duration,
    pub(super) instance_id: String,
    pub(super) epoch: u64,
    pub(super) watchdog: Watchdog,
}

/// Publishes committed events in order, plus heartbeats. The task events
/// also go, as they are, to this primary's notify follower (`notify`): it
/// runs in this process, so sending them through the PUB socket only to
/// decode them again would cost the event loop a decode per write.
pub(super) async fn publish_loop(
    mut publisher: zeromq::PubSocket,
    mut events: mpsc::Receiver<Event>,
    heartbeat: Heartbeat,
    last_seq: Arc<AtomicU64>,
    changed: Arc<crate::orchestrator::Wake>,
    notify: mpsc::Sender<Event>,
) {
    let mut notify_dropped = 0u64;
    let started = Instant::now();
    let mut last_trim = Instant::now();
    let mut beat = crate::ticker::Ticker::new(heartbeat.every);
    loop {
        let event = tokio::select! {
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = beat.tick() => {
                release_freed_memory(&mut last_trim);
                heartbeat.watchdog.tick();
                Event::new(
                    0,
                    heartbeat.epoch,
                    now_ms(),
                    EventData::Heartbeat {
                        instance_id: heartbeat.instance_id.clone(),
                        last_seq: last_seq.load(Ordering::Relaxed),
                        uptime_ms: started.elapsed().as_millis() as u64,
                    },
                )
            }
        };
        if event.seq > 0 {
            last_seq.store(event.seq, Ordering::Relaxed);
            // Wake the orchestrator only for what it acts on; a pending task
            // or a joining member needs no process work.
            let relevant = match &event.data {
                EventData::TaskCreated { task } => {
                    task.status == crate::protocol::TaskStatus::Queued
                }
                EventData::TaskUpdated { .. } | EventData::TaskDeleted { .. } => true,
                // A lent slot is a free one.
                EventData::TaskSlot { lent, .. } => *lent,
                // A control for an ACP task's shim: the orchestrator wakes
                // it (whoever wrote the control may be gone already).
                EventData::TaskControlled { id, .. } => {
                    changed.controlled(id);
                    false
                }
                _ => false,
            };
            if relevant {
                changed.changed();
            }
        }
        let mut msg = ZmqMessage::from(event.topic());
        msg.push_back(Bytes::from(event.to_frame()));
        if let Err(e) = publisher.send(msg).await {
            tracing::debug!("publish failed: {e}");
        }
        if crate::web::notify::follows(&event.data)
            && let Err(mpsc::error::TrySendError::Full(_)) = notify.try_send(event)
        {
            // Full only while the follower cannot keep up with thousands of
            // task events (a notification is not data: the store has it all).
            // Closed is the follower stopped with the role: nothing to say.
            notify_dropped += 1;
            if notify_dropped.is_power_of_two() {
                tracing::warn!("notify follower behind: {notify_dropped} task events not told");
            }
        }
    }
}

/// How often an idle-or-not primary hands freed heap back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns freed heap pages to the kernel. glibc keeps what a burst of
/// messages (a stopped subscriber's full queue, a big cascade) freed, so
/// without this the primary stays at its high-water mark for good.
fn release_freed_memory(last: &mut Instant) {
    if last.elapsed() < TRIM_EVERY {
        return;
    }
    *last = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
