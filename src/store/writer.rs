//! The primary's store thread: the only writer (DESIGN §4).
//!
//! Requests queue on a channel. The thread takes whatever is queued (up to
//! [`MAX_BATCH`]) and group-commits it: one `BEGIN IMMEDIATE`, a savepoint per
//! write so that one failing write does not abort its neighbours, one
//! `COMMIT`. Only after the commit are the callers answered and the events
//! handed to the publisher, in `seq` order.
//!
//! Each write records `request id → reply` in the ledger inside its own
//! savepoint, so a retried request (same id, to this or a later primary) gets
//! the recorded reply and is never applied twice.

use super::{StoreError, get_task};
use crate::lifecycle::check_transition;
use crate::protocol::{
    ErrorCode, Event, EventData, FailureReason, MemberInfo, Method, NewTask, ReplyBody, TaskRecord,
    TaskStatus, WireError, decode, encode, now_ms,
};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Test hook (only with `GROVE_DEBUG_HOOKS=1`): a `task.create` with this
/// prompt makes the primary die right after COMMIT and before answering, the
/// exact window in which a client must retry and get the recorded reply.
pub const CRASH_AFTER_COMMIT_PROMPT: &str = "__grove_crash_after_commit__";

pub type WriteResult = Result<ReplyBody, WireError>;

// Jobs are moved once through a channel; boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    Write {
        request_id: String,
        from: String,
        method: Method,
        reply: oneshot::Sender<WriteResult>,
    },
    /// Records `instance.shutdown`, then the thread exits.
    Shutdown {
        instance_id: String,
        done: oneshot::Sender<()>,
    },
}

/// Handle to the running store thread.
pub struct StoreThread {
    pub jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the thread to finish its queue (after `Shutdown` or after
    /// every sender is dropped).
    pub fn join(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// The outcome of taking over the store as a new primary.
pub struct Promotion {
    pub conn: Connection,
    pub epoch: u64,
    pub promoted: Event,
}

/// First steps of a promotion (DESIGN §2): open read-write, migrate, then
/// `epoch += 1` and append `instance.promoted` in one transaction.
pub fn promote(
    path: &std::path::Path,
    instance_id: &str,
    pid: u32,
) -> Result<Promotion, StoreError> {
    let mut conn = super::open_read_write(path)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let epoch: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })?;
    let epoch = epoch as u64 + 1;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
        [epoch as i64],
    )?;
    let promoted = append_event(
        &tx,
        epoch,
        EventData::Promoted {
            instance_id: instance_id.to_string(),
            pid,
            epoch,
        },
    )?;
    tx.commit()?;
    Ok(Promotion {
        conn,
        epoch,
        promoted,
    })
}

/// Starts the store thread. Committed events go to `published`, in order.
pub fn spawn(
    conn: Connection,
    epoch: u64,
    published: tokio::sync::mpsc::UnboundedSender<Event>,
) -> std::io::Result<StoreThread> {
    let (jobs, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("grove-store".into())
        .spawn(move || run(conn, epoch, rx, published))?;
    Ok(StoreThread { jobs, thread })
}

struct Done {
    reply: oneshot::Sender<WriteResult>,
    result: WriteResult,
}

fn run(
    mut conn: Connection,
    epoch: u64,
    rx: mpsc::Receiver<Job>,
    published: tokio::sync::mpsc::UnboundedSender<Event>,
) {
    let crash_hook = std::env::var("GROVE_DEBUG_HOOKS").is_ok_and(|v| v == "1");
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut shutdown = None;
        match commit_batch(&mut conn, epoch, &mut batch, &mut shutdown) {
            Ok((done, events)) => {
                if crash_hook && events.iter().any(is_crash_marker) {
                    tracing::warn!("debug hook: dying after commit, before replying");
                    unsafe { libc::_exit(137) };
                }
                for e in events {
                    let _ = published.send(e);
                }
                for d in done {
                    let _ = d.reply.send(d.result);
                }
            }
            Err(e) => {
                // The whole transaction failed (disk full, I/O error): nothing
                // was applied, so every caller gets an error and may retry.
                tracing::error!("group commit failed: {e}");
                for job in batch.drain(..) {
                    if let Job::Write { reply, .. } = job {
                        let _ = reply.send(Err(WireError::new(
                            ErrorCode::Internal,
                            format!("the store could not commit: {e}"),
                        )));
                    }
                }
            }
        }
        if let Some(done) = shutdown {
            let _ = done.send(());
            return;
        }
    }
}

/// Only a freshly applied marker (one that produced an event) crashes; the
/// retry, answered from the ledger, must not.
fn is_crash_marker(event: &Event) -> bool {
    matches!(&event.data, EventData::TaskCreated { task } if task.prompt == CRASH_AFTER_COMMIT_PROMPT)
}

/// Applies every job of `batch` in one transaction. Returns the answers and
/// the events to publish; answers are only sent by the caller after COMMIT.
fn commit_batch(
    conn: &mut Connection,
    epoch: u64,
    batch: &mut Vec<Job>,
    shutdown: &mut Option<oneshot::Sender<()>>,
) -> Result<(Vec<Done>, Vec<Event>), StoreError> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    // On error we must hand the jobs back to the caller untouched, so work
    // on them in place and only drain after the commit succeeded.
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter() {
        match job {
            Job::Write {
                request_id,
                from,
                method,
                ..
            } => {
                let result =
                    apply_idempotent(&mut tx, epoch, request_id, from, method, &mut events)?;
                results.push(Some(result));
            }
            Job::Shutdown { instance_id, .. } => {
                events.push(append_event(
                    &tx,
                    epoch,
                    EventData::Shutdown {
                        instance_id: instance_id.clone(),
                        epoch,
                    },
                )?);
                results.push(None);
            }
        }
    }
    tx.commit()?;
    for (job, result) in batch.drain(..).zip(results) {
        match (job, result) {
            (Job::Write { reply, .. }, Some(result)) => done.push(Done { reply, result }),
            (Job::Shutdown { done: d, .. }, _) => *shutdown = Some(d),
            (Job::Write { .. }, None) => unreachable!("every write has a result"),
        }
    }
    Ok((done, events))
}

/// Looks the request up in the ledger; applies it under a savepoint if new.
/// A returned `Err` is an SQLite failure that dooms the whole transaction;
/// an `Ok(Err(..))` is this request's own error reply.
fn apply_idempotent(
    tx: &mut Transaction<'_>,
    epoch: u64,
    request_id: &str,
    from: &str,
    method: &Method,
    events: &mut Vec<Event>,
) -> Result<WriteResult, StoreError> {
    let recorded: Option<Vec<u8>> = tx
        .prepare_cached("SELECT reply FROM ledger WHERE request_id = ?1")?
        .query_row([request_id], |r| r.get(0))
        .optional()?;
    if let Some(bytes) = recorded {
        return Ok(decode::<WriteResult>(&bytes).unwrap_or_else(|e| {
            Err(WireError::new(
                ErrorCode::Internal,
                format!("recorded reply unreadable: {e}"),
            ))
        }));
    }
    let mut sp = tx.savepoint()?;
    let mut own_events = Vec::new();
    let result = match apply(&sp, epoch, method, &mut own_events) {
        Ok(r) => r,
        Err(Applied::Refused(e)) => Err(e),
        Err(Applied::Sqlite(e)) => return Err(e.into()),
    };
    if result.is_err() {
        // Undo partial effects of a refused write but keep the savepoint
        // open so the ledger row below is still recorded.
        sp.rollback()?;
        own_events.clear();
    }
    sp.prepare_cached(
        "INSERT INTO ledger (request_id, from_instance, method, at, reply) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![request_id, from, method.name(), now_ms() as i64, encode(&result)],
    )?;
    sp.commit()?;
    events.extend(own_events);
    Ok(result)
}

enum Applied {
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

fn refused(code: ErrorCode, message: impl Into<String>) -> Applied {
    Applied::Refused(WireError::new(code, message))
}

fn apply(
    tx: &Connection,
    epoch: u64,
    method: &Method,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    match method {
        Method::Hello(member) => hello(tx, epoch, member, events),
        Method::TaskCreate(new) => create_task(tx, epoch, new, events),
        Method::TaskSetProgress { id, percent, text } => {
            let mut task = existing_task(tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is {}; progress is closed", task.status.as_str()),
                ));
            }
            if let Some(p) = percent {
                if *p > 100 {
                    return Err(refused(
                        ErrorCode::InvalidParams,
                        format!("progress must be 0..=100, got {p}"),
                    ));
                }
                task.progress_pct = Some(*p);
            }
            if let Some(t) = text {
                task.progress_text = Some(t.clone());
            }
            save_task(tx, epoch, task, events)
        }
        Method::TaskUpdateStatus {
            id,
            status,
            reason,
            exit_code,
            pid,
        } => {
            let task = existing_task(tx, id)?;
            check_transition(task.status, *status)
                .map_err(|m| refused(ErrorCode::Conflict, format!("task {id}: {m}")))?;
            let task = with_status(task, *status, *reason, *exit_code, *pid);
            save_task(tx, epoch, task, events)
        }
        Method::TaskDelete { id } => {
            let task = existing_task(tx, id)?;
            if task.status == TaskStatus::Running {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is running; cancel it before deleting it"),
                ));
            }
            tx.execute("DELETE FROM tasks WHERE id = ?1", [id])?;
            events.push(append_event(
                tx,
                epoch,
                EventData::TaskDeleted { id: id.clone() },
            )?);
            Ok(Ok(ReplyBody::Deleted { id: id.clone() }))
        }
        Method::Ping {} | Method::DebugStall { .. } => Err(refused(
            ErrorCode::Internal,
            "not a write: answered by the event loop",
        )),
    }
}

/// Applies a status change and its side fields (timestamps, exit code).
pub fn with_status(
    mut task: TaskRecord,
    status: TaskStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    pid: Option<u32>,
) -> TaskRecord {
    let now = now_ms();
    if status == TaskStatus::Running && task.started_at.is_none() {
        task.started_at = Some(now);
    }
    if status.is_terminal() {
        task.finished_at = Some(now);
    }
    if status == TaskStatus::Failed {
        task.failure_reason = reason.or(Some(FailureReason::ExitCode));
    }
    if exit_code.is_some() {
        task.exit_code = exit_code;
    }
    if pid.is_some() {
        task.pid = pid;
    }
    task.status = status;
    task
}

fn hello(
    tx: &Connection,
    epoch: u64,
    member: &MemberInfo,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    if member.instance_id.is_empty() || member.kind.is_empty() {
        return Err(refused(
            ErrorCode::InvalidParams,
            "hello needs instance_id and kind",
        ));
    }
    tx.execute(
        "INSERT INTO members (instance_id, pid, kind, started_at, joined_at, epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (instance_id) DO UPDATE SET
           pid = excluded.pid, kind = excluded.kind, joined_at = excluded.joined_at,
           epoch = excluded.epoch",
        params![
            member.instance_id,
            member.pid,
            member.kind,
            member.started_at as i64,
            now_ms() as i64,
            epoch as i64
        ],
    )?;
    let e = append_event(
        tx,
        epoch,
        EventData::InstanceJoined {
            member: member.clone(),
            epoch,
        },
    )?;
    let last_seq = e.seq;
    events.push(e);
    Ok(Ok(ReplyBody::Welcome { epoch, last_seq }))
}

fn create_task(
    tx: &Connection,
    epoch: u64,
    new: &NewTask,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    if new.prompt.trim().is_empty() {
        return Err(refused(ErrorCode::InvalidParams, "the prompt is empty"));
    }
    if new.timeout_ms == Some(0) {
        return Err(refused(ErrorCode::InvalidParams, "timeout must be > 0"));
    }
    let mut all_done = true;
    for dep in &new.dependencies {
        let status: Option<String> = tx
            .prepare_cached("SELECT status FROM tasks WHERE id = ?1")?
            .query_row([dep], |r| r.get(0))
            .optional()?;
        match status.as_deref() {
            None => {
                return Err(refused(
                    ErrorCode::InvalidParams,
                    format!("unknown dependency {dep}"),
                ));
            }
            Some(s) => all_done &= s == TaskStatus::Completed.as_str(),
        }
    }
    let now = now_ms();
    let task = TaskRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        prompt: new.prompt.clone(),
        engine: new.engine.clone().unwrap_or_else(|| "shell".to_string()),
        model: new.model.clone(),
        work_dir: new.work_dir.clone(),
        persona: new.persona.clone(),
        status: if all_done {
            TaskStatus::Queued
        } else {
            TaskStatus::Pending
        },
        failure_reason: None,
        dependencies: new.dependencies.clone(),
        tags: new.tags.clone(),
        priority: new.priority,
        timeout_ms: new.timeout_ms,
        progress_pct: None,
        progress_text: None,
        exit_code: None,
        pid: None,
        session_id: new.session_id.clone(),
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        retry_of: None,
        attempt: 1,
    };
    insert_task(tx, &task)?;
    events.push(append_event(
        tx,
        epoch,
        EventData::TaskCreated { task: task.clone() },
    )?);
    Ok(Ok(ReplyBody::Task(Box::new(task))))
}

fn existing_task(tx: &Connection, id: &str) -> Result<TaskRecord, Applied> {
    get_task(tx, id)?.ok_or_else(|| refused(ErrorCode::NotFound, format!("no task {id}")))
}

pub(crate) fn insert_task(tx: &Connection, t: &TaskRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tasks (id, prompt, engine, model, work_dir, persona, status, failure_reason,
            dependencies, tags, priority, timeout_ms, progress_pct, progress_text, exit_code, pid,
            session_id, created_at, updated_at, started_at, finished_at, retry_of, attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23)",
    )?
    .execute(params![
        t.id,
        t.prompt,
        t.engine,
        t.model,
        t.work_dir,
        t.persona,
        t.status.as_str(),
        t.failure_reason.map(|r| r.as_str()),
        serde_json::to_string(&t.dependencies).unwrap_or_else(|_| "[]".into()),
        serde_json::to_string(&t.tags).unwrap_or_else(|_| "[]".into()),
        t.priority,
        t.timeout_ms.map(|v| v as i64),
        t.progress_pct,
        t.progress_text,
        t.exit_code,
        t.pid,
        t.session_id,
        t.created_at as i64,
        t.updated_at as i64,
        t.started_at.map(|v| v as i64),
        t.finished_at.map(|v| v as i64),
        t.retry_of,
        t.attempt,
    ])?;
    Ok(())
}

/// Writes back a changed task and appends `task.updated`.
fn save_task(
    tx: &Connection,
    epoch: u64,
    mut task: TaskRecord,
    events: &mut Vec<Event>,
) -> Result<WriteResult, Applied> {
    task.updated_at = now_ms();
    tx.prepare_cached(
        "UPDATE tasks SET status = ?2, failure_reason = ?3, progress_pct = ?4, progress_text = ?5,
            exit_code = ?6, pid = ?7, updated_at = ?8, started_at = ?9, finished_at = ?10
         WHERE id = ?1",
    )?
    .execute(params![
        task.id,
        task.status.as_str(),
        task.failure_reason.map(|r| r.as_str()),
        task.progress_pct,
        task.progress_text,
        task.exit_code,
        task.pid,
        task.updated_at as i64,
        task.started_at.map(|v| v as i64),
        task.finished_at.map(|v| v as i64),
    ])?;
    events.push(append_event(
        tx,
        epoch,
        EventData::TaskUpdated { task: task.clone() },
    )?);
    Ok(Ok(ReplyBody::Task(Box::new(task))))
}

/// Appends a durable event in the current transaction and returns it with
/// its `seq`.
pub(crate) fn append_event(
    tx: &Connection,
    epoch: u64,
    data: EventData,
) -> rusqlite::Result<Event> {
    let at = now_ms();
    tx.prepare_cached("INSERT INTO events (epoch, at, topic, payload) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            epoch as i64,
            at as i64,
            data.topic(),
            encode(&data)
        ])?;
    Ok(Event {
        seq: tx.last_insert_rowid() as u64,
        epoch,
        at,
        data,
    })
}
