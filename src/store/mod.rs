//! The SQLite store (see docs/design.md, Store).
//!
//! - The primary owns the only read-write connection, inside the store
//!   thread ([`writer`]); every write goes through it.
//! - Every other reader (secondaries, CLI clients, the primary's own readers)
//!   opens the file with `SQLITE_OPEN_READ_ONLY` through [`Reader`] and keeps
//!   its read transactions short, so WAL checkpoints are never starved.

pub mod agent;
pub mod ceiling;
pub mod counters;
pub mod crash_guard;
pub mod promotions;
mod rows;
pub mod schema;
pub mod tasks;
mod txn;
mod upkeep;
mod wal_sync;
mod wal_vfs;
pub mod writer;

pub use promotions::Promotion;

/// How long the read-write connection waits for a lock held by another
/// connection (a reader's checkpoint-blocking transaction, a predecessor's
/// last commit) before the write fails.
const WRITER_BUSY: Duration = Duration::from_secs(10);
/// How long a reader waits for a lock (the writer's checkpoint) before the
/// read fails; readers retry.
const READER_BUSY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;

use crate::protocol::{Event, EventData, TaskRecord, TaskStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store at {0}: no grove has run in this workspace yet")]
    Missing(String),
    /// Deleted between grove's look at it and SQLite's open of it.
    #[error("the store {0} was deleted while grove opened it")]
    Vanished(String),
    #[error(
        "the store {path} is empty: {why}. grove will not start a fresh store in its place, which would silently forget every task. \
         Restore it from a backup; or, to start anew on purpose, move it aside (`mv {path} {path}.broken`) and run grove again"
    )]
    Emptied { path: String, why: String },
    #[error(transparent)]
    Untrusted(#[from] crate::trust::Untrusted),
    /// The store may not take writes now; the caller retries elsewhere.
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot create the store {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row in the store: {0}")]
    Corrupt(String),
    /// Written by a newer grove: migrating it down is not possible, and
    /// writing it with this schema would corrupt it.
    #[error(
        "the store has schema version {found}, newer than this grove ({supported}); upgrade grove"
    )]
    TooNew { found: i64, supported: i64 },
}

/// Opens the database read-write (primary only) and brings the schema up to
/// date. `epoch_floor` is the highest epoch recorded for the workspace
/// outside the store: proof, with other traces, that a store existed.
pub fn open_read_write(path: &Path, epoch_floor: u64) -> Result<Connection, StoreError> {
    process_settings();
    for p in store_files(path) {
        if let Some(meta) = crate::trust::check(&p, "the grove store")? {
            // It holds prompts and task environments: ours alone.
            crate::trust::tighten(&p, &meta, 0o600);
        }
    }
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
        Err(source) => return Err(create_error(path, source)),
        Ok(meta) if meta.len() == 0 => replace_empty(path, epoch_floor)?,
        Ok(_) => {}
    }
    let mut conn = open_existing(path)?;
    configure(&conn)?;
    // A file SQLite reads but that holds no grove schema is as empty as a
    // 0-byte one (grove only ever puts a fully created store in place).
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        drop(conn);
        replace_empty(path, epoch_floor)?;
        conn = open_existing(path)?;
        configure(&conn)?;
    }
    schema::migrate(&mut conn)?;
    // Every statement the store thread runs stays prepared: rusqlite keeps
    // 16 by default, fewer than the writes and upkeep use between them, and
    // a statement pushed out is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    Ok(conn)
}

/// Statements the writer's connection keeps prepared (see `open_read_write`).
const WRITER_STATEMENTS: usize = 96;

/// Opens a store file read-write that must already exist: SQLite is never
/// let to create one. Its default open creates a missing file, so a store
/// deleted between grove's look at it and the open (`rm -rf .grove` under
/// a promotion) came back as an empty `grove.db`, which every later member
/// then refused as a store emptied by damage: a workspace bricked by one
/// deletion. A file gone by the open is `Vanished`, which a member
/// rebuilding its state dir retries.
fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    process_settings();
    let opened = if wal_vfs::register() {
        Connection::open_with_flags_and_vfs(path, flags, wal_vfs::NAME)
    } else {
        Connection::open_with_flags(path, flags)
    };
    opened.map_err(|e| match path.try_exists() {
        Ok(false) => StoreError::Vanished(path.display().to_string()),
        _ => e.into(),
    })
}

/// One query plan per statement, whatever values are bound to it. Without
/// this SQLite re-prepares a cached statement whenever a new value is bound
/// to a parameter its plan looked at — `status = ? ORDER BY rowid`, asked
/// for each status in turn by every pass of the orchestrator, was parsed
/// and planned again each time (a fifth of the orchestrator's CPU while
/// tasks start). grove's statements get the same plans either way.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// How much of a savepoint's journal SQLite keeps in memory before it
/// moves it to a temporary file. Every write runs under a savepoint (see
/// `writer`), whose journal holds the original of each page the write
/// changes that its batch had changed before it: a `task.create` late in a
/// batch of 16 journals more than SQLite's default 64 KiB, and each such
/// write then created, wrote and closed a temporary file. Below 128 KiB on
/// purpose: SQLite keeps the in-memory journal in chunks of this size and
/// writes each whole when it spills, and its unix VFS masks a write's
/// length to 17 bits (`seekAndWriteFd`), so a 256 KiB chunk was written as
/// 0 bytes and the spill failed with SQLITE_FULL (a cancel cascading
/// through 8,000 dependents, in `grove bench rpc`). A bigger cascade still
/// spills rather than grow the primary's memory (every MiB it holds delays
/// a failover, see `configure`).
const SAVEPOINT_JOURNAL_IN_MEMORY: std::ffi::c_int = 120 << 10;
const _: () = assert!(
    SAVEPOINT_JOURNAL_IN_MEMORY < 1 << 17,
    "SQLite writes at most 128 KiB - 1 at once"
);

/// SQLite's process-wide settings, made before the first connection of
/// this process (SQLite takes them only until it is initialized; every
/// open of the store goes through here first).
pub fn process_settings() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        // SAFETY: this option takes one int; SQLite refuses it (without
        // harm) once initialized.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_STMTJRNL_SPILL,
                SAVEPOINT_JOURNAL_IN_MEMORY,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!("SQLite was initialized before its settings: {rc}");
        }
        // SAFETY: set before SQLite is initialized, from one thread (the
        // `Once`); the callback is a plain function that only logs.
        if let Err(e) = unsafe { rusqlite::trace::config_log(Some(sqlite_said)) } {
            tracing::debug!("SQLite's log could not be routed: {e}");
        }
        if !wal_vfs::register() {
            tracing::warn!("the WAL-gathering VFS could not be registered; the store writes its WAL frame by frame");
        }
    });
}

/// SQLite's own log, into the member's: where SQLite found damage (the
/// line of its source that did), an I/O error or a recovered WAL is what a
/// report of a damaged store needs, and SQLite says it nowhere else. Busy
/// and constraint notes are expected in a working store, and a file that
/// cannot be opened is reported by grove itself: those stay at debug.
fn sqlite_said(code: std::ffi::c_int, message: &str) {
    use rusqlite::ffi;
    match code & 0xff {
        ffi::SQLITE_CORRUPT | ffi::SQLITE_IOERR | ffi::SQLITE_NOTADB | ffi::SQLITE_FULL => {
            tracing::warn!(code, "SQLite: {message}")
        }
        ffi::SQLITE_NOTICE | ffi::SQLITE_WARNING => tracing::info!(code, "SQLite: {message}"),
        _ => tracing::debug!(code, "SQLite: {message}"),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(WRITER_BUSY)?;
    stable_plans(conn)?;
    // WAL + NORMAL: a commit survives the crash of any process (the WAL is
    // in the page cache); only an OS crash can lose the last commits.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // After a checkpoint, shrink the WAL file back instead of keeping its
    // high-water mark (readers are short, so checkpoints do complete).
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // A write's savepoint journal is kept in memory up to a bound
    // (`SAVEPOINT_JOURNAL_IN_MEMORY`), then in a temporary file. In memory
    // without a bound (`temp_store=MEMORY`) a cancel cascading through
    // thousands of dependents would hold every page it touched, in a
    // primary whose memory delays every failover (below).
    // SQLite's default page cache (2 MiB) is kept on purpose: a killed
    // process frees its memory before its descriptors are closed, so every
    // MiB the primary holds delays the election lock's release (see
    // docs/design.md, Promotion). A 32 MiB cache saved `pread`s of random
    // index leaves, and cost ~4 ms of failover once filled.
    conn.pragma_update(None, "foreign_keys", "ON")
}

/// The store and the files SQLite keeps beside it.
fn store_files(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates a new store: built and migrated under a temporary name, then
/// linked into place, so that `grove.db` never exists half made (an empty
/// `grove.db` is then always damage, never a store being born). The file
/// is created 0600 before SQLite opens it; SQLite gives the WAL and
/// shared-memory files the mode of the database file.
///
/// Two promotions may create at once, in one process or two: one begun on
/// a lock file that was replaced meanwhile (`.grove` deleted under running
/// members) gives up only before it commits. So the temporary name is this
/// call's alone, and the new store is linked in only where there is none
/// yet: a store another promotion put there first is kept, and opened,
/// rather than renamed over while that promotion writes to it (its
/// commits went into files nobody else could see, and the two creators
/// deleted each other's temporary file).
fn create(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!("grove.db.new-{}-{n}", std::process::id()));
    // A WAL or shared-memory file left from an older store would be
    // replayed into the new one. Removed only while there is no store, and
    // before this one is built: a store linked in meanwhile by another
    // promotion has its own files by the time this one is done.
    if !path.exists() {
        for p in &store_files(path)[1..] {
            let _ = std::fs::remove_file(p);
        }
    }
    for p in store_files(&tmp) {
        let _ = std::fs::remove_file(p);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| create_error(&tmp, e))?;
    let built = (|| {
        let mut conn = open_existing(&tmp)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        // Everything into the main file before it is linked in, and
        // checked: only that file is linked, and closing a connection
        // checkpoints without a word when it fails (a full disk left a
        // half-copied store in place that every later start called
        // malformed).
        let (busy, frames, copied): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if busy != 0 || copied < frames {
            return Err(create_error(
                &tmp,
                std::io::Error::other(format!(
                    "the new store's checkpoint copied {copied} of {frames} pages"
                )),
            ));
        }
        conn.close().map_err(|(_, e)| e)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| create_error(&tmp, e))
    })();
    let placed = built.and_then(|()| {
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another promotion's store is in place: that one is used.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(create_error(path, e)),
        }
    });
    for p in store_files(&tmp) {
        let _ = std::fs::remove_file(p);
    }
    placed
}

fn create_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Create {
        path: path.display().to_string(),
        source,
    }
}

/// An empty store where one existed is refused; where nothing shows that
/// this workspace ever ran (a store from an older grove that died while
/// creating it), it is replaced by a new one.
fn replace_empty(path: &Path, epoch_floor: u64) -> Result<(), StoreError> {
    let state_dir = path.parent().unwrap_or(Path::new("."));
    let mut traces = Vec::new();
    if epoch_floor > 0 {
        traces.push(format!("epoch {epoch_floor} was recorded for it"));
    }
    if state_dir.join("primary.json").exists() {
        traces.push("a primary ran here (primary.json)".to_string());
    }
    let has_logs = std::fs::read_dir(state_dir.join("logs"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_logs {
        traces.push("task logs exist".to_string());
    }
    if !traces.is_empty() {
        return Err(StoreError::Emptied {
            path: path.display().to_string(),
            why: format!(
                "it was truncated or replaced, and this workspace had a store ({})",
                traces.join("; ")
            ),
        });
    }
    tracing::warn!(
        "{} is empty and nothing shows this workspace ran before: creating a new store",
        path.display()
    );
    std::fs::remove_file(path).map_err(|e| create_error(path, e))?;
    create(path)
}

/// A read-only view of the store, usable by any process.
pub struct Reader {
    conn: Connection,
}

/// The task `id` as the open connection `conn` sees it (the admission
/// checks a relaunch's changes against the task they change).
pub fn read_task(conn: &Connection, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    rows::get(conn, id)
}

/// Filters for listing tasks.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub tag: Option<String>,
    pub text: Option<String>,
    pub session_id: Option<String>,
    /// Only the children of this task.
    pub parent_id: Option<String>,
}

/// A queued task, as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    pub id: String,
    pub priority: i64,
    /// The task that spawned it here: a slot its parent lent is kept for
    /// it (see `tasks::slot_loans::reserving`).
    pub parent: Option<String>,
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
        process_settings();
        match std::fs::metadata(path) {
            Err(_) => return Err(StoreError::Missing(path.display().to_string())),
            Ok(m) if m.len() == 0 => {
                return Err(StoreError::Emptied {
                    path: path.display().to_string(),
                    why: "it was truncated or replaced".into(),
                });
            }
            Ok(_) => {}
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(READER_BUSY)?;
        stable_plans(&conn)?;
        Ok(Reader { conn })
    }

    /// Maps the shared WAL index with as little as SQLite can do: a read
    /// of the header (`user_version`), no schema parsed, so a connection
    /// kept open only to keep the index alive (`node::secondary`) costs a
    /// member next to no memory.
    pub fn map_wal_index(&self) -> Result<(), StoreError> {
        let _: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(())
    }

    pub fn epoch(&self) -> Result<u64, StoreError> {
        Ok(schema::read_meta(&self.conn, "epoch")?.unwrap_or(0) as u64)
    }

    pub fn last_seq(&self) -> Result<u64, StoreError> {
        last_seq(&self.conn)
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        rows::get(&self.conn, id)
    }

    /// How many levels below a top-level task `task` stands, levels it
    /// inherited from a workspace that delegated it included; counting
    /// stops at `cap` (see `tasks/lineage.rs::level`).
    pub fn delegation_level(&self, task: &TaskRecord, cap: u32) -> Result<u32, StoreError> {
        Ok(tasks::level(&self.conn, task, cap)?.total)
    }

    /// Pending awaits (and, with `all`, settled ones too), newest first.
    pub fn awaits(
        &self,
        all: bool,
        limit: usize,
    ) -> Result<Vec<crate::protocol::AwaitRecord>, StoreError> {
        Ok(tasks::awaits::list(&self.conn, all, limit)?)
    }

    /// The earliest deadline of a pending await or a running goal, Unix
    /// milliseconds (the orchestrator settles them then).
    pub fn next_await_deadline(&self) -> Result<Option<u64>, StoreError> {
        let awaits = tasks::awaits::next_deadline(&self.conn)?;
        let goals = tasks::goals::next_deadline(&self.conn)?;
        Ok(awaits.into_iter().chain(goals).min())
    }

    /// Goals, running first, then the most recent.
    pub fn goals(
        &self,
        all: bool,
        limit: usize,
    ) -> Result<Vec<crate::protocol::GoalRecord>, StoreError> {
        Ok(tasks::goals::list(&self.conn, all, limit)?)
    }

    /// The goal task `id` pursues, if any.
    pub fn goal(&self, id: &str) -> Result<Option<crate::protocol::GoalRecord>, StoreError> {
        Ok(tasks::goals::get(&self.conn, id)?)
    }

    /// The running tasks whose slot is lent at `now` (Unix ms) while they
    /// wait (see `tasks::slot_loans`).
    pub fn lent_slots(&self, now: u64) -> Result<Vec<String>, StoreError> {
        Ok(tasks::slot_loans::lent(&self.conn, now)?)
    }

    /// The lenders whose slot is kept for their children at `now`, each
    /// with its child to start first (see `tasks::slot_loans::reserving`).
    pub fn reserved_slots(&self, now: u64) -> Result<Vec<tasks::slot_loans::Reserved>, StoreError> {
        Ok(tasks::slot_loans::reserving(&self.conn, now)?)
    }

    /// Whether the task has a pending await (its shim keeps the session).
    pub fn is_awaiting(&self, task_id: &str) -> Result<bool, StoreError> {
        Ok(tasks::awaits::is_awaiting(&self.conn, task_id)?)
    }

    /// The tasks `ids` (`None`: no such task) and the seq of the last event
    /// they reflect, read in one transaction: every write commits its task
    /// rows and its events together, so following the events after that seq
    /// misses nothing and repeats nothing.
    pub fn snapshot(&self, ids: &[String]) -> Result<(Vec<Option<TaskRecord>>, u64), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let tasks = ids
            .iter()
            .map(|id| rows::get(&tx, id))
            .collect::<Result<Vec<_>, _>>()?;
        let seq = last_seq(&tx)?;
        tx.finish()?;
        Ok((tasks, seq))
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

    /// The next `limit` queued tasks to start: highest priority first, then
    /// oldest. Only three columns of the rows it returns are read, so a scheduling pass costs the same with 10 or 10,000
    /// tasks queued.
    pub fn next_queued(&self, limit: usize) -> Result<Vec<QueuedTask>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, priority, parent_id FROM tasks WHERE status = 'queued'
             ORDER BY priority DESC, rowid LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(QueuedTask {
                id: r.get(0)?,
                priority: r.get(1)?,
                parent: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        // Only the filters given go into the SQL, so that `status = ?` can
        // use its index (the orchestrator asks for running/queued tasks after
        // every commit; a scan of every task would grow with history).
        let mut sql = String::from("SELECT * FROM tasks WHERE 1");
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
        if let Some(parent) = &filter.parent_id {
            sql.push_str(" AND parent_id = ?");
            args.push(parent);
        }
        sql.push_str(" ORDER BY rowid");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let found = stmt.query_map(args.as_slice(), rows::read)?;
        let mut out = Vec::new();
        for row in found {
            out.push(row??);
        }
        Ok(out)
    }

    /// The tasks below `root` (children, their children, ...) in tree
    /// order (each task before its children, siblings oldest first), with
    /// their depth below it (1 for a child). A work list, not recursion:
    /// user data decides the depth.
    pub fn descendants(&self, root: &str) -> Result<Vec<(usize, TaskRecord)>, StoreError> {
        let mut out = Vec::new();
        let mut work = vec![(root.to_string(), 0usize)];
        let mut seen = std::collections::HashSet::from([root.to_string()]);
        while let Some((id, depth)) = work.pop() {
            let filter = TaskFilter {
                parent_id: Some(id.clone()),
                ..Default::default()
            };
            let children = self.tasks(&filter)?;
            for child in children.iter().rev() {
                if seen.insert(child.id.clone()) {
                    work.push((child.id.clone(), depth + 1));
                }
            }
            if id != root {
                let task = self.task(&id)?;
                out.extend(task.map(|t| (depth, t)));
            }
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

    /// The delegation counters and the warm hit rate (see `counters`).
    pub fn counters(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        Ok(counters::read(&self.conn)?)
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
            let data: EventData = crate::protocol::decode_stored(&payload)
                .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
            out.push(Event::new(seq as u64, epoch as u64, at as u64, data));
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

    /// The last `limit` promotions, newest first, with what each measured
    /// (see `promotions`). For the web board.
    pub fn promotions(&self, limit: usize) -> Result<Vec<Promotion>, StoreError> {
        promotions::read(&self.conn, limit)
    }

    /// What the board's delegation card shows beside the counters: pending
    /// awaits, and tasks with a parent (all, and those not ended).
    pub fn delegation_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let count = |sql: &str| -> Result<u64, StoreError> {
            Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok((
            count("SELECT COUNT(*) FROM awaits WHERE state = 'pending'")?,
            count("SELECT COUNT(*) FROM tasks WHERE parent_id IS NOT NULL")?,
            count(
                "SELECT COUNT(*) FROM tasks WHERE parent_id IS NOT NULL \
                 AND status NOT IN ('completed', 'failed', 'cancelled')",
            )?,
        ))
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
