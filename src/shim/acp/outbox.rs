//! The shim's outbox of session updates: coalesced into batches, each
//! batch written to the run dir before it is sent, sent to whoever is
//! primary with a request id of its own and resent with that id until it is
//! acknowledged — so every update is stored once, in order, whatever member
//! dies meanwhile. The outbox is bounded: when it is full, the transport
//! stops reading the agent's stdout (backpressure) instead of dropping.
//!
//! One batch is in flight at a time, and what arrives meanwhile is the
//! next batch: an update waits for no timer when the store is idle (a
//! chunk reaches the editor in about a round trip), while a chatty agent's
//! words are merged into a batch per round trip, so the store's load from
//! one agent is bounded by its own speed, not by the agent's.

use crate::client::{Client, ClientError};
use crate::protocol::{AgentUpdate, AgentUpdates, ErrorCode, Method};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A batch is sealed at this size even inside the window.
pub const BATCH_BYTES: usize = 128 * 1024;
/// One update larger than this is stored as a stub (the transcript in the
/// log keeps it whole); the wire's frame limit is 1 MiB.
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;
/// The bound of what is not acknowledged yet; at it, the agent is not read.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_PENDING_BATCHES: usize = 64;
/// The store's own bound on updates per batch.
const MAX_BATCH_UPDATES: usize = 1000;
/// With no primary answering for this long after the run ended, the shim
/// stops waiting; the unsent batches stay in the run dir.
const GIVE_UP: Duration = Duration::from_secs(600);

struct Batch {
    n: u64,
    updates: Vec<AgentUpdate>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    open: Vec<AgentUpdate>,
    open_bytes: usize,
    opened_at: Option<Instant>,
    sealed: VecDeque<Batch>,
    sealed_bytes: usize,
    next: u64,
    closed: bool,
}

pub struct Outbox {
    task_id: String,
    run_id: String,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Woken when room was made (a batch acknowledged).
    room: Notify,
    /// Woken when there is something to send, or the outbox closed.
    work: Notify,
}

impl Outbox {
    /// `dir` receives one file per unacknowledged batch.
    pub fn new(task_id: &str, run_id: &str, dir: PathBuf) -> Outbox {
        Outbox {
            task_id: task_id.into(),
            run_id: run_id.into(),
            dir,
            inner: Mutex::new(Inner {
                next: 1,
                ..Inner::default()
            }),
            room: Notify::new(),
            work: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one update; consecutive text chunks of the same kind and
    /// message are merged.
    pub fn push(&self, kind: &str, mut acp: serde_json::Value) {
        let mut inner = self.lock();
        if let Some(last) = inner.open.last_mut()
            && let Some(merged) = merge_chunk(last, kind, &acp)
        {
            inner.open_bytes += merged;
        } else {
            let mut text = acp.to_string();
            if text.len() > MAX_UPDATE_BYTES {
                acp = serde_json::json!({
                    "sessionUpdate": kind,
                    // A permission request keeps its number: it can still
                    // be answered (the task's log has the rest).
                    "ask": acp["ask"],
                    "_grove": {"omitted_bytes": text.len(), "see": "the task's log"},
                });
                text = acp.to_string();
            }
            inner.open_bytes += text.len();
            inner.open.push(AgentUpdate {
                kind: kind.into(),
                acp: text,
            });
        }
        inner.opened_at.get_or_insert_with(Instant::now);
        if inner.open_bytes >= BATCH_BYTES || inner.open.len() >= MAX_BATCH_UPDATES {
            self.seal(&mut inner);
        }
        drop(inner);
        self.work.notify_one();
    }

    /// Adds one update and seals its batch at once: what a human must see
    /// (a permission request) does not wait for the window.
    pub fn push_now(&self, kind: &str, acp: serde_json::Value) {
        self.push(kind, acp);
        let mut inner = self.lock();
        self.seal(&mut inner);
        drop(inner);
        self.work.notify_one();
    }

    fn seal(&self, inner: &mut Inner) {
        if inner.open.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut inner.open);
        let bytes = std::mem::take(&mut inner.open_bytes);
        inner.opened_at = None;
        let n = inner.next;
        inner.next += 1;
        let batch = Batch { n, updates, bytes };
        // On disk before it is sent: what the shim holds survives in the
        // run dir while no primary answers. Not synced: it matters while
        // the shim lives (a power loss ends the agent's turn anyway), and
        // a flush per batch would be on the path that reads the agent.
        if let Err(e) = std::fs::create_dir_all(&self.dir)
            .and_then(|_| crate::runs::write_json_volatile(&self.file(n), &batch.updates))
        {
            errln!(
                "grove shim: cannot keep batch {n} in {}: {e}",
                self.dir.display()
            );
        }
        inner.sealed_bytes += batch.bytes;
        inner.sealed.push_back(batch);
    }

    fn file(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:08}.json"))
    }

    fn has_room(&self) -> bool {
        let inner = self.lock();
        inner.sealed_bytes + inner.open_bytes < MAX_PENDING_BYTES
            && inner.sealed.len() < MAX_PENDING_BATCHES
    }

    /// Returns when the outbox can take more: the transport awaits this
    /// before it reads the next line of the agent.
    pub async fn wait_room(&self) {
        loop {
            let woken = self.room.notified();
            if self.has_room() {
                return;
            }
            woken.await;
        }
    }

    /// No more updates: the sender sends what is left and ends.
    pub fn close(&self) {
        let mut inner = self.lock();
        self.seal(&mut inner);
        inner.closed = true;
        drop(inner);
        self.work.notify_one();
    }

    /// Sends the batches in order until the outbox is closed and empty (or
    /// nobody answered for [`GIVE_UP`] after the close).
    pub async fn send_all(&self, mut client: Client) {
        let mut backoff = Duration::from_millis(100);
        let mut closed_at: Option<Instant> = None;
        loop {
            let next = {
                let mut inner = self.lock();
                // Nothing in flight: what is open goes now.
                if inner.sealed.is_empty() {
                    self.seal(&mut inner);
                }
                if inner.closed {
                    closed_at.get_or_insert_with(Instant::now);
                }
                match inner.sealed.front() {
                    Some(b) => Some((b.n, b.updates.clone())),
                    None if inner.closed => return,
                    None => None,
                }
            };
            let Some((n, updates)) = next else {
                let woken = self.work.notified();
                if self.lock().open.is_empty() {
                    woken.await;
                }
                continue;
            };
            let method = Method::TaskAgentUpdates(AgentUpdates {
                id: self.task_id.clone(),
                run_id: self.run_id.clone(),
                batch: n,
                updates,
            });
            let request_id = format!("acp-{}-{n}", self.run_id);
            match client.call_with_id(&request_id, method).await {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.acknowledged(n);
                }
                Err(ClientError::Refused(e)) if !retryable(e.code) => {
                    // Only a bug makes a well-formed batch unacceptable;
                    // resending would loop forever.
                    errln!("grove shim: the primary refused update batch {n}: {e}");
                    self.acknowledged(n);
                }
                Err(e) => {
                    if closed_at.is_some_and(|at| at.elapsed() > GIVE_UP) {
                        errln!(
                            "grove shim: giving up sending updates ({e}); batches from {n} on stay in {}",
                            self.dir.display()
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn acknowledged(&self, n: u64) {
        let mut inner = self.lock();
        if inner.sealed.front().is_some_and(|b| b.n == n) {
            let b = inner.sealed.pop_front().expect("front exists");
            inner.sealed_bytes -= b.bytes;
        }
        drop(inner);
        let _ = std::fs::remove_file(self.file(n));
        self.room.notify_waiters();
    }

    /// Removes the batch dir once everything was sent.
    pub fn remove_dir(&self) {
        let inner = self.lock();
        if inner.sealed.is_empty() && inner.open.is_empty() {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Refusals that a later primary may not repeat (the rest are final).
fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StaleEpoch | ErrorCode::Unavailable | ErrorCode::Internal
    )
}

/// Appends `next` to `last` when both are text chunks of the same kind and
/// message; returns the bytes added.
fn merge_chunk(last: &mut AgentUpdate, kind: &str, next: &serde_json::Value) -> Option<usize> {
    if last.kind != kind || !matches!(kind, "agent_message_chunk" | "agent_thought_chunk") {
        return None;
    }
    let add = next["content"]["text"].as_str()?;
    if next["content"]["type"] != "text" || last.acp.len() + add.len() > BATCH_BYTES {
        return None;
    }
    let mut prev: serde_json::Value = serde_json::from_str(&last.acp).ok()?;
    if prev["content"]["type"] != "text" || prev.get("messageId") != next.get("messageId") {
        return None;
    }
    let text = prev["content"]["text"].as_str()?.to_string() + add;
    prev["content"]["text"] = text.into();
    let before = last.acp.len();
    last.acp = prev.to_string();
    Some(last.acp.len() - before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(text: &str) -> serde_json::Value {
        json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}})
    }

    #[test]
    fn text_chunks_merge_and_other_updates_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::new("t", "r", dir.path().join("out"));
        for w in ["Hel", "lo", " world"] {
            o.push("agent_message_chunk", chunk(w));
        }
        o.push(
            "tool_call",
            json!({"sessionUpdate": "tool_call", "toolCallId": "1"}),
        );
        o.push("agent_message_chunk", chunk("!"));
        o.close();
        let inner = o.lock();
        let b = &inner.sealed[0];
        assert_eq!(b.updates.len(), 3);
        let first: serde_json::Value = serde_json::from_str(&b.updates[0].acp).unwrap();
        assert_eq!(first["content"]["text"], "Hello world");
        assert!(o.file(1).exists(), "a sealed batch is kept on disk");
    }

    #[test]
    fn the_outbox_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::new("t", "r", dir.path().join("out"));
        let big = "x".repeat(BATCH_BYTES / 2);
        let mut pushed = 0;
        while o.has_room() {
            o.push("tool_call", json!({"sessionUpdate": "tool_call", "x": big}));
            pushed += 1;
            assert!(pushed < 1000, "never full");
        }
        assert!(o.lock().sealed_bytes <= MAX_PENDING_BYTES + BATCH_BYTES);
        o.acknowledged(1);
        assert!(o.has_room());
    }
}
