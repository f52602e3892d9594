//! The board's live updates: server-sent events from the workspace's
//! gap-free event stream (`subscriber.rs`: the bus, holes repaired from
//! the store). Each durable event goes out with `id: <seq>`, so a page
//! that reconnects — to this primary or, after a failover, to the next one
//! on the same port — sends `Last-Event-ID` and gets exactly what it
//! missed, read from the store's event log.
//!
//! Output chunks go out without an id (they are not in the log, and must
//! not move the page's `Last-Event-ID`); they only tell the page to read
//! the log file again. Heartbeats are not sent: the keep-alive comments
//! keep the connection open.

use super::api::Board;
use crate::protocol::{EventData, now_ms};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Deserialize)]
pub struct Since {
    /// The first seq wanted when the page connects the first time (the
    /// `last_seq` of its `/api/state` plus one).
    since: Option<u64>,
}

/// `GET /api/events`: every durable event from `Last-Event-ID + 1` (a
/// reconnect) or `since` (a first connection), then live.
pub async fn events(
    State(board): State<Arc<Board>>,
    headers: HeaderMap,
    Query(q): Query<Since>,
) -> axum::response::sse::Sse<impl futures::Stream<Item = Result<Sse, Infallible>>> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let first = match (last_id, q.since) {
        (Some(seen), _) => seen + 1,
        (None, Some(since)) => since,
        (None, None) => 1,
    };
    let sub = crate::subscriber::subscribe(&board.ws, first);
    let state = Stream {
        sub,
        pruned: 0,
        board,
        opened: true,
        pending: None,
    };
    let stream = futures::stream::unfold(state, next);
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

struct Stream {
    sub: crate::subscriber::Subscription,
    /// The subscriber's pruned-gap count already told to the page.
    pruned: u64,
    board: Arc<Board>,
    /// The first message still to send: how soon to reconnect.
    opened: bool,
    /// A message held back behind a `resync`.
    pending: Option<Sse>,
}

/// The next message for the page, or `None` when the stream ended.
async fn next(mut s: Stream) -> Option<(Result<Sse, Infallible>, Stream)> {
    if s.opened {
        s.opened = false;
        // Reconnect soon after a failover: the next primary binds the port
        // within a second or so.
        let hello = Sse::default()
            .event("hello")
            .retry(RECONNECT)
            .data(format!("{{\"at\":{}}}", now_ms()));
        return Some((Ok(hello), s));
    }
    if let Some(message) = s.pending.take() {
        return Some((Ok(message), s));
    }
    loop {
        let event = s.sub.events.recv().await?;
        // An open page counts as use: an autostarted member does not exit
        // under it (heartbeats arrive several times a second).
        s.board.last_request.store(now_ms(), Ordering::Relaxed);
        let message = match &event.data {
            EventData::Heartbeat { .. } => continue,
            EventData::TaskOutput { id, .. } => Sse::default()
                .event("output")
                .data(serde_json::json!({ "id": id }).to_string()),
            _ => Sse::default()
                .id(event.seq.to_string())
                .data(serde_json::to_string(&event).unwrap_or_default()),
        };
        let pruned = s.sub.health.pruned_gaps();
        if pruned != s.pruned {
            // Events the page needed were pruned: it must read the whole
            // state again rather than trust a stream with a hole.
            s.pruned = pruned;
            s.pending = Some(message);
            let resync = Sse::default().event("resync").data("{}");
            return Some((Ok(resync), s));
        }
        return Some((Ok(message), s));
    }
}

const KEEP_ALIVE: Duration = Duration::from_secs(10);
const RECONNECT: Duration = Duration::from_millis(500);
