//! The SQLite store (DESIGN §4).
//!
//! - The primary owns the only read-write connection, inside the store
//!   thread ([`writer`]); every write goes through it.
//! - Every other reader (secondaries, CLI clients, the primary's own readers)
//!   opens the file with `SQLITE_OPEN_READ_ONLY` through [`Reader`] and keeps
//!   its read transactions short, so WAL checkpoints are never starved.

pub mod crash_guard;
pub mod schema;
pub mod tasks;
pub mod writer;

use crate::protocol::{Event, EventData, FailureReason, TaskRecord, TaskStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store at {0}: no grove has run in this workspace yet")]
    Missing(String),
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row in the store: {0}")]
    Corrupt(String),
}

/// Opens the database read-write (primary only) and brings the schema up to
/// date.
pub fn open_read_write(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL + NORMAL: a commit survives the crash of any process (the WAL is
    // in the page cache); only an OS crash can lose the last commits.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // After a checkpoint, shrink the WAL file back instead of keeping its
    // high-water mark (readers are short, so checkpoints do complete).
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only view of the store, usable by any process.
pub struct Reader {
    conn: Connection,
}

const TASK_COLUMNS: &str = "id, prompt, engine, model, work_dir, persona, status, failure_reason,
    dependencies, tags, priority, timeout_ms, progress_pct, progress_text, exit_code, pid,
    session_id, created_at, updated_at, started_at, finished_at, retry_of, attempt,
    extra_args, env, run_id";

/// Filters for listing tasks.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub tag: Option<String>,
    pub text: Option<String>,
    pub session_id: Option<String>,
}

/// A registered member, as recorded by `hello`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberRow {
    pub instance_id: String,
    pub pid: u32,
    pub kind: String,
    pub started_at: u64,
    pub joined_at: u64,
    pub epoch: u64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Reader { conn })
    }

    pub fn epoch(&self) -> Result<u64, StoreError> {
        Ok(schema::read_meta(&self.conn, "epoch")?.unwrap_or(0) as u64)
    }

    pub fn last_seq(&self) -> Result<u64, StoreError> {
        last_seq(&self.conn)
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        get_task(&self.conn, id)
    }

    /// Finds a task by full id or by a unique id prefix (as users type them).
    pub fn find_task(&self, id_or_prefix: &str) -> Result<FindTask, StoreError> {
        if let Some(t) = self.task(id_or_prefix)? {
            return Ok(FindTask::Found(Box::new(t)));
        }
        // A range on the primary key: the prefix is taken literally (no
        // LIKE wildcards: `%` is not "any task") and the lookup uses the index.
        let upper = format!("{id_or_prefix}\u{10FFFF}");
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM tasks WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 2")?;
        let ids: Vec<String> = stmt
            .query_map([id_or_prefix, upper.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(match ids.as_slice() {
            [one] => match self.task(one)? {
                Some(t) => FindTask::Found(Box::new(t)),
                None => FindTask::Missing,
            },
            [] => FindTask::Missing,
            _ => FindTask::Ambiguous,
        })
    }

    pub fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        // Only the filters given go into the SQL, so that `status = ?` can
        // use its index (the orchestrator asks for running/queued tasks after
        // every commit; a scan of every task would grow with history).
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1");
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
        let status = filter.status.map(|s| s.as_str());
        if let Some(s) = &status {
            sql.push_str(" AND status = ?");
            args.push(s);
        }
        if let Some(tag) = &filter.tag {
            sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(tasks.tags) WHERE value = ?)");
            args.push(tag);
        }
        if let Some(text) = &filter.text {
            sql.push_str(" AND instr(lower(prompt), lower(?)) > 0");
            args.push(text);
        }
        if let Some(session) = &filter.session_id {
            sql.push_str(" AND session_id = ?");
            args.push(session);
        }
        sql.push_str(" ORDER BY rowid");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args.as_slice(), task_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Number of tasks in each status (every status present, zero or not).
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts: BTreeMap<String, u64> = crate::protocol::TASK_STATUSES
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            counts.insert(status, n as u64);
        }
        Ok(counts)
    }

    /// Durable events with `seq >= from`, in order, at most `limit`.
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, epoch, at, payload FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, epoch, at, payload) = row?;
            let data: EventData = crate::protocol::decode(&payload)
                .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
            out.push(Event {
                seq: seq as u64,
                epoch: epoch as u64,
                at: at as u64,
                data,
            });
        }
        Ok(out)
    }

    pub fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT instance_id, pid, kind, started_at, joined_at, epoch FROM members
             ORDER BY joined_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MemberRow {
                instance_id: r.get(0)?,
                pid: r.get::<_, i64>(1)? as u32,
                kind: r.get(2)?,
                started_at: r.get::<_, i64>(3)? as u64,
                joined_at: r.get::<_, i64>(4)? as u64,
                epoch: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// The cwd of a recorded ACP session.
    pub fn session_cwd(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT cwd FROM sessions WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Whether a request id is in the idempotency ledger.
    pub fn ledger_has(&self, request_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM ledger WHERE request_id = ?1")?
            .query_row([request_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Number of ledger rows (applied writes) — used by checks and benches.
    pub fn ledger_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

pub enum FindTask {
    Found(Box<TaskRecord>),
    Missing,
    Ambiguous,
}

pub(crate) fn last_seq(conn: &Connection) -> Result<u64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

pub(crate) fn get_task(conn: &Connection, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    match stmt.query_row([id], task_from_row).optional()? {
        Some(t) => Ok(Some(t?)),
        None => Ok(None),
    }
}

/// Maps a row to a task. The outer result is SQLite's, the inner one catches
/// values that SQLite stored fine but that grove cannot read back.
fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Result<TaskRecord, StoreError>> {
    let id: String = r.get(0)?;
    let status: String = r.get(6)?;
    let reason: Option<String> = r.get(7)?;
    let deps: String = r.get(8)?;
    let tags: String = r.get(9)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("task {id}: bad {what}"));
    let Some(status) = TaskStatus::parse(&status) else {
        return Ok(Err(corrupt("status")));
    };
    let failure_reason = match reason.as_deref().map(FailureReason::parse) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => return Ok(Err(corrupt("failure reason"))),
    };
    let Ok(dependencies) = serde_json::from_str(&deps) else {
        return Ok(Err(corrupt("dependencies")));
    };
    let Ok(tags) = serde_json::from_str(&tags) else {
        return Ok(Err(corrupt("tags")));
    };
    let Ok(extra_args) = serde_json::from_str(&r.get::<_, String>(23)?) else {
        return Ok(Err(corrupt("extra_args")));
    };
    let Ok(env) = serde_json::from_str(&r.get::<_, String>(24)?) else {
        return Ok(Err(corrupt("env")));
    };
    let opt_u64 = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
    };
    Ok(Ok(TaskRecord {
        id: id.clone(),
        prompt: r.get(1)?,
        engine: r.get(2)?,
        model: r.get(3)?,
        work_dir: r.get(4)?,
        persona: r.get(5)?,
        status,
        failure_reason,
        dependencies,
        tags,
        priority: r.get(10)?,
        timeout_ms: opt_u64(11)?,
        progress_pct: r.get::<_, Option<i64>>(12)?.map(|v| v.clamp(0, 100) as u8),
        progress_text: r.get(13)?,
        exit_code: r.get(14)?,
        pid: r.get::<_, Option<i64>>(15)?.map(|v| v as u32),
        session_id: r.get(16)?,
        created_at: r.get::<_, i64>(17)? as u64,
        updated_at: r.get::<_, i64>(18)? as u64,
        started_at: opt_u64(19)?,
        finished_at: opt_u64(20)?,
        retry_of: r.get(21)?,
        attempt: r.get::<_, i64>(22)? as u32,
        extra_args,
        env,
        run_id: r.get(25)?,
    }))
}
