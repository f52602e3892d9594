//! What a write is, inside the store thread's transaction: its outcome
//! ([`WriteResult`], or [`Applied`] when it cannot be applied) and the
//! appending of its durable event. Shared by the store thread (`writer`)
//! and the task transitions (`tasks`), so neither depends on the other's
//! internals: `writer` → `tasks` → `txn`.

use super::StoreError;
use crate::protocol::{
    ErrorCode, Event, EventData, ReplyBody, StoredData, WireError, encode, now_ms,
};
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

/// A batch's transaction (`BEGIN IMMEDIATE` … `COMMIT`), its two
/// statements prepared once per connection: rusqlite's `Transaction`
/// parses both on every batch, which at one write a batch was ~3 % of the
/// store thread. Dropped without `commit` (a write doomed the batch, or
/// the commit failed), it rolls back.
pub(crate) struct Immediate<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Immediate<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<Immediate<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Immediate { conn, open: true })
    }

    /// The connection, to apply the batch through.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        // Only when nothing is committed: after a failed `COMMIT` SQLite
        // may have rolled back already, and then this reports an error
        // nobody needs.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A savepoint: one write's changes inside the batch's transaction,
/// undone alone when the write is refused. Its three statements are
/// prepared once per connection; rusqlite's `Savepoint` parses its SQL on
/// every use, three parses per write. Savepoints of one name nest: a
/// release or rollback acts on the innermost. Dropped without `release`,
/// its changes are rolled back.
pub(crate) struct Savepoint<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Savepoint<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<Savepoint<'c>> {
        conn.prepare_cached("SAVEPOINT write")?.execute([])?;
        Ok(Savepoint { conn, open: true })
    }

    /// The connection, to apply the write through.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// Undoes the changes made since `begin`; the savepoint stays open.
    pub(crate) fn rollback(&mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
        Ok(())
    }

    /// Keeps the changes (they commit with the transaction).
    pub(crate) fn release(mut self) -> rusqlite::Result<()> {
        self.open = false;
        self.conn.prepare_cached("RELEASE write")?.execute([])?;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failure here leaves the transaction itself failing: the
            // batch's commit reports it.
            let _ = self.rollback();
            let _ = self
                .conn
                .prepare_cached("RELEASE write")
                .and_then(|mut s| s.execute([]));
        }
    }
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
    let stored: std::sync::Arc<[u8]> = encode(&data).into();
    tx.prepare_cached(
        "INSERT INTO events (epoch, at, topic, payload, task_id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        epoch as i64,
        at as i64,
        data.topic(),
        &*stored,
        conversation_of(&data)
    ])?;
    Ok(Event {
        seq: tx.last_insert_rowid() as u64,
        epoch,
        at,
        data,
        // The publisher writes the frame around these bytes.
        stored: StoredData(Some(stored)),
    })
}
