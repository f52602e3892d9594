//! The `tasks` table and [`TaskRecord`]: the one place that maps either to
//! the other. Each column is the record's field of the same name, as the
//! contract says (`ipc-schema/README.md`, the store section): strings and
//! enum names as TEXT, integers as INTEGER, nil as NULL, the lists and the
//! map (and the worktree, NULL when none) as JSON text. Rows are read by column name, so a column added by a
//! migration never shifts the others.

use super::StoreError;
use crate::protocol::{FailureReason, PermissionPolicy, TaskRecord, TaskSpec, TaskStatus};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};

/// A column and the value a record gives it.
type Column = (&'static str, Value);

/// The spec's columns (see [`TaskSpec`]).
fn spec_columns(s: &TaskSpec) -> [Column; 17] {
    [
        ("prompt", s.prompt.clone().into()),
        ("engine", s.engine.clone().into()),
        ("model", s.model.clone().into()),
        ("work_dir", s.work_dir.clone().into()),
        ("persona", s.persona.clone().into()),
        ("dependencies", json(&s.dependencies)),
        ("tags", json(&s.tags)),
        ("priority", s.priority.into()),
        ("timeout_ms", s.timeout_ms.map(int).into()),
        ("session_id", s.session_id.clone().into()),
        ("extra_args", json(&s.extra_args)),
        ("env", json(&s.env)),
        ("keep_session", s.keep_session.into()),
        (
            "permissions",
            s.permissions.map(|p| p.as_str().to_string()).into(),
        ),
        ("worktree", s.worktree.as_ref().map_or(Value::Null, json)),
        ("parent_id", s.parent_id.clone().into()),
        ("want_conclusion", s.want_conclusion.into()),
    ]
}

/// The run state's columns: everything a save may change, but the prompt.
fn run_columns(t: &TaskRecord) -> [Column; 14] {
    [
        ("status", t.status.as_str().to_string().into()),
        (
            "failure_reason",
            t.failure_reason.map(|r| r.as_str().to_string()).into(),
        ),
        ("progress_pct", t.progress_pct.into()),
        ("progress_text", t.progress_text.clone().into()),
        ("exit_code", t.exit_code.into()),
        ("pid", t.pid.into()),
        ("created_at", int(t.created_at).into()),
        ("updated_at", int(t.updated_at).into()),
        ("started_at", t.started_at.map(int).into()),
        ("finished_at", t.finished_at.map(int).into()),
        ("retry_of", t.retry_of.clone().into()),
        ("attempt", t.attempt.into()),
        ("run_id", t.run_id.clone().into()),
        (
            "conclusion",
            t.conclusion.as_ref().map_or(Value::Null, json),
        ),
    ]
}

fn int(v: u64) -> i64 {
    v as i64
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .into()
}

/// Inserts a new task and its dependency edges.
pub(crate) fn insert(tx: &Connection, t: &TaskRecord) -> rusqlite::Result<()> {
    let columns: Vec<Column> = std::iter::once(("id", t.id.clone().into()))
        .chain(spec_columns(&t.spec))
        .chain(run_columns(t))
        .collect();
    // The names never change: the statement is built once (formatting it
    // for every write showed in the store thread's profile).
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let slots: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO tasks ({}) VALUES ({})",
            names.join(", "),
            slots.join(", ")
        )
    });
    tx.prepare_cached(sql)?
        .execute(params_from_iter(columns.into_iter().map(|(_, v)| v)))?;
    for dep in &t.spec.dependencies {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO task_deps (task_at, task_id, dep_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(rusqlite::params![edge_key(t).0, t.id, dep])?;
    }
    Ok(())
}

/// Where a task's own dependency edges are: `task_deps` is keyed by the
/// dependent's creation time first, then its id (see the v14 migration in
/// `schema`), so that a batch's new edges append instead of landing on
/// random pages.
pub(crate) fn edge_key(task: &TaskRecord) -> (i64, &str) {
    (int(task.created_at), &task.id)
}

/// Writes back the task: the run state, and the spec, which a resume or a
/// relaunch may change (its prompt, engine, model, timeout, tags). The
/// dependency edges never change after creation.
pub(crate) fn update(tx: &Connection, t: &TaskRecord) -> rusqlite::Result<()> {
    let columns: Vec<Column> = (spec_columns(&t.spec).into_iter())
        .chain(run_columns(t))
        .collect();
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let sets: Vec<String> = (columns.iter().enumerate())
            .map(|(i, (name, _))| format!("{name} = ?{}", i + 2))
            .collect();
        format!("UPDATE tasks SET {} WHERE id = ?1", sets.join(", "))
    });
    let values = std::iter::once(Value::from(t.id.clone())).chain(columns.into_iter().map(|c| c.1));
    tx.prepare_cached(sql)?.execute(params_from_iter(values))?;
    Ok(())
}

/// A task's status alone, without reading (and parsing) the whole row: a
/// new task checks each of its dependencies.
pub(crate) fn status(conn: &Connection, id: &str) -> Result<Option<TaskStatus>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT status FROM tasks WHERE id = ?1")?;
    let Some(name) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? else {
        return Ok(None);
    };
    TaskStatus::parse(&name)
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("task {id}: bad status {name:?}")))
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT * FROM tasks WHERE id = ?1")?;
    match stmt.query_row([id], read).optional()? {
        Some(t) => Ok(Some(t?)),
        None => Ok(None),
    }
}

/// Maps a row to a task, by column name. The outer result is SQLite's, the
/// inner one catches values that SQLite stored fine but that grove cannot
/// read back.
pub(crate) fn read(r: &Row<'_>) -> rusqlite::Result<Result<TaskRecord, StoreError>> {
    let id: String = r.get("id")?;
    match record(r) {
        Ok(task) => Ok(Ok(task)),
        Err(Unreadable::Sqlite(e)) => Err(e),
        Err(Unreadable::Bad(what)) => {
            Ok(Err(StoreError::Corrupt(format!("task {id}: bad {what}"))))
        }
    }
}

/// Why a row is not a task: SQLite failed, or the named value is not one
/// grove writes.
enum Unreadable {
    Sqlite(rusqlite::Error),
    Bad(&'static str),
}

impl From<rusqlite::Error> for Unreadable {
    fn from(e: rusqlite::Error) -> Self {
        Unreadable::Sqlite(e)
    }
}

fn record(r: &Row<'_>) -> Result<TaskRecord, Unreadable> {
    let status: String = r.get("status")?;
    let status = TaskStatus::parse(&status).ok_or(Unreadable::Bad("status"))?;
    let reason: Option<String> = r.get("failure_reason")?;
    let failure_reason = match reason.as_deref() {
        None => None,
        Some(name) => Some(FailureReason::parse(name).ok_or(Unreadable::Bad("failure reason"))?),
    };
    let opt_u64 = |name: &str| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(name)?.map(|v| v as u64))
    };
    Ok(TaskRecord {
        id: r.get("id")?,
        spec: spec(r)?,
        status,
        failure_reason,
        progress_pct: (r.get::<_, Option<i64>>("progress_pct")?).map(|v| v.clamp(0, 100) as u8),
        progress_text: r.get("progress_text")?,
        exit_code: r.get("exit_code")?,
        pid: r.get::<_, Option<i64>>("pid")?.map(|v| v as u32),
        created_at: r.get::<_, i64>("created_at")? as u64,
        updated_at: r.get::<_, i64>("updated_at")? as u64,
        started_at: opt_u64("started_at")?,
        finished_at: opt_u64("finished_at")?,
        retry_of: r.get("retry_of")?,
        attempt: r.get::<_, i64>("attempt")? as u32,
        run_id: r.get("run_id")?,
        conclusion: match r.get::<_, Option<String>>("conclusion")? {
            None => None,
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|_| Unreadable::Bad("conclusion"))?)
            }
        },
    })
}

fn spec(r: &Row<'_>) -> Result<TaskSpec, Unreadable> {
    fn parse<T: serde::de::DeserializeOwned>(
        r: &Row<'_>,
        name: &'static str,
    ) -> Result<T, Unreadable> {
        serde_json::from_str(&r.get::<_, String>(name)?).map_err(|_| Unreadable::Bad(name))
    }
    Ok(TaskSpec {
        prompt: r.get("prompt")?,
        engine: r.get("engine")?,
        model: r.get("model")?,
        work_dir: r.get("work_dir")?,
        persona: r.get("persona")?,
        dependencies: parse(r, "dependencies")?,
        tags: parse(r, "tags")?,
        priority: r.get("priority")?,
        timeout_ms: r.get::<_, Option<i64>>("timeout_ms")?.map(|v| v as u64),
        session_id: r.get("session_id")?,
        extra_args: parse(r, "extra_args")?,
        env: parse(r, "env")?,
        keep_session: r.get("keep_session")?,
        permissions: match r.get::<_, Option<String>>("permissions")? {
            None => None,
            Some(p) => Some(PermissionPolicy::parse(&p).ok_or(Unreadable::Bad("permissions"))?),
        },
        worktree: match r.get::<_, Option<String>>("worktree")? {
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|_| Unreadable::Bad("worktree"))?)
            }
            None => None,
        },
        parent_id: r.get("parent_id")?,
        want_conclusion: r.get("want_conclusion")?,
    })
}
