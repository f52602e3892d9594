//! A gap-free event stream (see docs/design.md, Events and subscribers): SUB on the primary's PUB socket,
//! repaired from the store.
//!
//! PUB/SUB drops messages by design (slow joiner, queue overflow, failover).
//! Every durable event carries its `seq`; the subscriber delivers them in
//! order, and whenever it sees a hole — a later seq, a heartbeat whose
//! `last_seq` is ahead, a reconnect to a new primary — it reads the missing
//! rows from its own read-only store connection. So no subscriber misses a
//! durable event, ever.

use crate::paths::Workspace;
use crate::primary_record::PrimaryWatch;
use crate::protocol::{Event, EventData, decode, now_ms};
use crate::store::Reader;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv};

/// Back-off between attempts to subscribe to a live primary that refused.
const RETRY_MIN: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_secs(1);
const CATCH_UP_BATCH: usize = 1000;

/// What a subscriber knows of the primary's health, shared with its owner.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms when the last heartbeat arrived (0: none yet).
    last_heartbeat: AtomicU64,
    /// Epoch of the primary we are subscribed to.
    epoch: AtomicU64,
    /// Unix ms when the current subscription was made (0: none yet).
    subscribed_at: AtomicU64,
    /// How often events this subscriber still needed had been pruned from
    /// the store (it fell further behind than the retention).
    pruned_gaps: AtomicU64,
}

impl Health {
    /// Time since the last heartbeat — or, when none arrived yet on the
    /// current subscription, since it was made (a primary that stops right
    /// after we subscribed is silent too).
    pub fn heartbeat_age_ms(&self) -> Option<u64> {
        match self.last_heartbeat.load(Ordering::Relaxed) {
            0 => match self.subscribed_at.load(Ordering::Relaxed) {
                0 => None,
                at => Some(now_ms().saturating_sub(at)),
            },
            at => Some(now_ms().saturating_sub(at)),
        }
    }
    /// Grows each time the stream skipped events that were pruned before
    /// they could be delivered; raised before the first event after the
    /// gap is sent. A consumer that keeps state from events must then
    /// re-read that state from the store.
    pub fn pruned_gaps(&self) -> u64 {
        self.pruned_gaps.load(Ordering::Relaxed)
    }
}

pub struct Subscription {
    pub events: mpsc::Receiver<Event>,
    pub health: Arc<Health>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a subscription that delivers every durable event with
/// `seq >= first_seq` in order, plus transient events (`task.output`,
/// heartbeats) as they arrive.
pub fn subscribe(ws: &Workspace, first_seq: u64) -> Subscription {
    subscribe_to(ws, first_seq, Interest::All)
}

/// What a subscriber delivers. Decoding every event costs its consumer's
/// event loop more than anything else it does with most of them, and on
/// the primary that loop is the one that answers requests.
#[derive(Debug, Clone, Copy)]
pub enum Interest {
    /// Every event: durable ones gap-free, transient ones as they come.
    All,
    /// Heartbeats only (a member watching its primary's health): the PUB
    /// socket sends nothing else, and the store is never read.
    Heartbeats,
}

/// The heartbeat's topic (`EventData::Heartbeat`).
const HEARTBEAT: &str = "instance.heartbeat";

/// [`subscribe`], delivering only what `interest` names.
pub fn subscribe_to(ws: &Workspace, first_seq: u64, interest: Interest) -> Subscription {
    let (tx, rx) = mpsc::channel(4096);
    let health = Arc::new(Health::default());
    let cursor = Cursor {
        next: first_seq.max(1),
        reader: None,
        ws: ws.clone(),
        health: health.clone(),
        interest,
    };
    let task = tokio::spawn(run(ws.clone(), cursor, tx, health.clone()));
    Subscription {
        events: rx,
        health,
        task,
    }
}

struct Cursor {
    next: u64,
    reader: Option<Reader>,
    ws: Workspace,
    health: Arc<Health>,
    interest: Interest,
}

impl Cursor {
    /// Delivers every stored event from `next` on. Returns false when the
    /// receiver is gone.
    async fn catch_up(&mut self, tx: &mpsc::Sender<Event>) -> bool {
        loop {
            if self.reader.is_none() {
                match Reader::open(&self.ws.db_path()) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        tracing::debug!("cannot open the store to catch up yet: {e}");
                        return true;
                    }
                }
            }
            let Some(reader) = self.reader.as_ref() else {
                return true;
            };
            let batch = match reader.events_from(self.next, CATCH_UP_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("catching up from the store failed: {e}");
                    self.reader = None;
                    return true;
                }
            };
            let n = batch.len();
            if let Some(first) = batch.first()
                && first.seq > self.next
            {
                // Only when this subscriber fell further behind than the
                // store's event retention (see `event_retention`).
                tracing::warn!(
                    "events {}..{} were pruned before this subscriber caught up",
                    self.next,
                    first.seq - 1
                );
                self.health.pruned_gaps.fetch_add(1, Ordering::Relaxed);
            }
            for event in batch {
                self.next = event.seq + 1;
                if tx.send(event).await.is_err() {
                    return false;
                }
            }
            if n < CATCH_UP_BATCH {
                return true;
            }
        }
    }
}

async fn run(ws: Workspace, mut cursor: Cursor, tx: mpsc::Sender<Event>, health: Arc<Health>) {
    let mut watch = PrimaryWatch::new(&ws);
    let heartbeats_only = matches!(cursor.interest, Interest::Heartbeats);
    let filter = if heartbeats_only { HEARTBEAT } else { "" };
    let mut retry = RETRY_MIN;
    // A member's heartbeat view that followed a primary before: after a
    // failover it reconnects a moment later (`survivor_delay`).
    let mut followed = false;
    loop {
        watch.poll();
        let Some(record) = watch.current().cloned() else {
            watch.next_change().await;
            continue;
        };
        if heartbeats_only && followed {
            tokio::time::sleep(crate::primary_record::survivor_delay()).await;
            followed = false;
        }
        let mut sub = zeromq::SubSocket::new();
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, sub.connect(&record.pub_endpoint)).await;
        if !matches!(connected, Ok(Ok(()))) || sub.subscribe(filter).await.is_err() {
            // Gone already, or not reachable yet. A dead primary is replaced
            // by a new record: wait for it. A live one that refused us is
            // retried, backing off, in case the refusal was passing.
            if record.pid_alive() {
                tokio::select! {
                    _ = watch.next_change() => {}
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            } else {
                watch.next_change().await;
            }
            continue;
        }
        retry = RETRY_MIN;
        followed = true;
        health.epoch.store(record.epoch, Ordering::Relaxed);
        health.last_heartbeat.store(0, Ordering::Relaxed);
        health.subscribed_at.store(now_ms(), Ordering::Relaxed);
        // Anything published before the subscription took effect is in the
        // store: catch up after subscribing, then dedupe by seq.
        if !heartbeats_only && !cursor.catch_up(&tx).await {
            return;
        }
        loop {
            tokio::select! {
                msg = sub.recv() => {
                    let Ok(msg) = msg else { break };
                    let Some(payload) = msg.get(1) else { continue };
                    let topic = msg.get(0).map(|t| t.as_ref()).unwrap_or_default();
                    if heartbeats_only && topic != HEARTBEAT.as_bytes() {
                        continue; // sent before our subscription took effect
                    }
                    let event: Event = match decode(payload) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!("dropping an unreadable event: {e}");
                            continue;
                        }
                    };
                    if !deliver(event, &mut cursor, &tx, &health).await {
                        return;
                    }
                }
                _ = watch.notified() => {
                    if watch.poll() {
                        break; // a new primary: resubscribe on its endpoint
                    }
                }
            }
        }
    }
}

async fn deliver(
    event: Event,
    cursor: &mut Cursor,
    tx: &mpsc::Sender<Event>,
    health: &Health,
) -> bool {
    if let EventData::Heartbeat { last_seq, .. } = &event.data {
        health.last_heartbeat.store(now_ms(), Ordering::Relaxed);
        let behind = *last_seq >= cursor.next;
        if behind && !matches!(cursor.interest, Interest::Heartbeats) && !cursor.catch_up(tx).await
        {
            return false;
        }
        return tx.send(event).await.is_ok();
    }
    if !event.data.is_durable() {
        return tx.send(event).await.is_ok();
    }
    if event.seq < cursor.next {
        return true; // already delivered (from the store or a duplicate)
    }
    if event.seq > cursor.next {
        // A hole: the missing events are committed, read them.
        if !cursor.catch_up(tx).await {
            return false;
        }
        if event.seq != cursor.next {
            // Either delivered by the catch-up, or the store could not be
            // read: then the next heartbeat's `last_seq` triggers a retry.
            return true;
        }
    }
    cursor.next = event.seq + 1;
    tx.send(event).await.is_ok()
}

/// How long connecting the SUB to the recorded primary may take before
/// the record is looked at again (a dead primary's socket never answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
