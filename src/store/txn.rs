//! What a write is, inside the store thread's transaction: its outcome
//! ([`WriteResult`], or [`Applied`] when it cannot be applied) and the
//! appending of its durable event. Shared by the store thread (`writer`)
//! and the task transitions (`tasks`), so neither depends on the other's
//! internals: `writer` → `tasks` → `txn`.

use super::StoreError;
use crate::protocol::{ErrorCode, Event, EventData, ReplyBody, WireError, encode, now_ms};
use rusqlite::{Connection, params};

/// The reply to one write, as it is recorded in the ledger.
pub type WriteResult = Result<ReplyBody, WireError>;

/// Why a write was not applied: refused (its own error reply; the batch
/// goes on) or an SQLite failure (dooms the whole transaction).
pub(crate) enum Applied {
    Refused(WireError),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Applied {
    fn from(e: rusqlite::Error) -> Self {
        Applied::Sqlite(e)
    }
}

impl From<StoreError> for Applied {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sqlite(e) => Applied::Sqlite(e),
            other => Applied::Refused(WireError::new(ErrorCode::Internal, other.to_string())),
        }
    }
}

pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Applied {
    Applied::Refused(WireError::new(code, message))
}

/// The task whose conversation an event is part of: such events are read
/// by task and outlive the event retention while their task exists.
fn conversation_of(data: &EventData) -> Option<&str> {
    match data {
        EventData::TaskAgentUpdate { id, .. } | EventData::TaskControlled { id, .. } => Some(id),
        _ => None,
    }
}

/// Appends a durable event in the current transaction and returns it with
/// its `seq`.
pub(crate) fn append_event(
    tx: &Connection,
    epoch: u64,
    data: EventData,
) -> rusqlite::Result<Event> {
    let at = now_ms();
    tx.prepare_cached(
        "INSERT INTO events (epoch, at, topic, payload, task_id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        epoch as i64,
        at as i64,
        data.topic(),
        encode(&data),
        conversation_of(&data)
    ])?;
    Ok(Event {
        seq: tx.last_insert_rowid() as u64,
        epoch,
        at,
        data,
    })
}
