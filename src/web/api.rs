//! The board's routes and its reads: the page, its assets, and JSON views
//! of the store (tasks, one task with its conversation, its log, its
//! changes, the members). Reads open the store read-only on the blocking
//! pool: the member's own loop never waits for SQLite.

use super::{actions, auth, sse};
use crate::config::LiveConfig;
use crate::paths::Workspace;
use crate::protocol::now_ms;
use crate::store::{FindTask, Reader};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What every handler shares.
pub struct Board {
    pub ws: Workspace,
    pub live: Arc<LiveConfig>,
    pub token: String,
    pub port: u16,
    pub last_request: Arc<AtomicU64>,
}

impl Board {
    /// Counts as a request for the member's idle exit.
    pub fn touch(&self) {
        self.last_request.store(now_ms(), Ordering::Relaxed);
    }
}

pub fn router(board: Arc<Board>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/board.js", get(script))
        .route("/cluster.js", get(cluster_script))
        .route("/board.css", get(style))
        .route("/api/state", get(state))
        .route("/api/members", get(members))
        .route("/api/delegation", get(delegation))
        .route("/api/goals", get(goals))
        .route("/api/events", get(sse::events))
        .route("/api/tasks", post(actions::spawn))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/log", get(log))
        .route("/api/tasks/{id}/diff", get(diff))
        .route("/api/tasks/{id}/{action}", post(actions::act))
        .layer(axum::middleware::from_fn_with_state(
            board.clone(),
            auth::guard,
        ))
        .with_state(board)
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/board.js");
const CLUSTER_SCRIPT: &str = include_str!("assets/cluster.js");
const STYLE: &str = include_str!("assets/board.css");

/// The page, with the token for the `X-Grove-Token` header of its
/// changes: only a page served to a holder of the token gets it, and no
/// other origin can read it (no CORS).
async fn index(State(board): State<Arc<Board>>) -> Response {
    let page = INDEX.replace("{{TOKEN}}", &board.token).replace(
        "{{WORKSPACE}}",
        &super::escape_html(&board.ws.root.display().to_string()),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn script() -> Response {
    javascript(SCRIPT)
}

async fn cluster_script() -> Response {
    javascript(CLUSTER_SCRIPT)
}

fn javascript(text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// An error answer with a plain-text reason.
pub struct Failure(pub StatusCode, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Runs `f` with a read-only store connection on the blocking pool.
pub async fn read<T: Send + 'static>(
    board: &Board,
    f: impl FnOnce(&Reader) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let db = board.ws.db_path();
    tokio::task::spawn_blocking(move || f(&Reader::open(&db)?))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// A task by full id (or unique prefix), or 404.
pub fn find(reader: &Reader, id: &str) -> Result<crate::protocol::TaskRecord, Failure> {
    match reader.find_task(id)? {
        FindTask::Found(t) => Ok(*t),
        FindTask::Missing => Err(Failure(StatusCode::NOT_FOUND, format!("no task {id}"))),
        FindTask::Ambiguous => Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("'{id}' names more than one task"),
        )),
    }
}

/// Every task and the seq they are at least as new as: the page follows
/// the events after it. The seq is read first, so an event committed in
/// between is both in the rows and replayed, never lost (replaying a
/// task's whole record is harmless).
async fn state(State(board): State<Arc<Board>>) -> Result<Json<Value>, Failure> {
    let config = board.live.current();
    let engines: Vec<String> = config.engines.keys().cloned().collect();
    let default_engine = config.default_engine.clone();
    let root = board.ws.root.display().to_string();
    read(&board, move |r| {
        let last_seq = r.last_seq()?;
        let tasks = r.tasks(&Default::default())?;
        Ok(Json(json!({
            "workspace": root,
            "last_seq": last_seq,
            "epoch": r.epoch()?,
            "tasks": tasks,
            "engines": engines,
            "default_engine": default_engine,
        })))
    })
    .await
}

/// One task, its conversation up to a seq (the page takes later updates
/// from the event stream) and its pending permission request.
async fn task(
    State(board): State<Arc<Board>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Failure> {
    read(&board, move |r| {
        let upto = r.last_seq()?;
        let task = find(r, &id)?;
        let updates: Vec<Value> = r
            .agent_updates(&task.id, upto)?
            .into_iter()
            .map(|(seq, kind, acp)| json!({"seq": seq, "kind": kind, "acp": parse(&acp)}))
            .collect();
        let pending = if task.status == crate::protocol::TaskStatus::Waiting {
            r.last_agent_update(&task.id, crate::store::agent::PERMISSION_REQUEST)?
                .map(|acp| parse(&acp))
        } else {
            None
        };
        let goal = r.goal(&task.id)?;
        Ok(Json(json!({
            "task": task,
            "goal": goal,
            "upto": upto,
            "updates": updates,
            "permission": pending,
        })))
    })
    .await
}

fn parse(acp: &str) -> Value {
    serde_json::from_str(acp).unwrap_or_else(|_| Value::String(acp.to_string()))
}

#[derive(Deserialize)]
struct LogAsk {
    /// Read from this offset; absent: the last `LOG_TAIL` bytes.
    from: Option<u64>,
}

/// The most a log read returns; the page asks again from `next`.
const LOG_MAX: usize = 256 * 1024;
const LOG_TAIL: u64 = 64 * 1024;

/// A task's log from an offset: the page asks again from `next` whenever
/// the event stream says the task wrote output, so the file (durable) is
/// what it shows, not the chunks (which a full queue may drop).
async fn log(
    State(board): State<Arc<Board>>,
    Path(id): Path<String>,
    Query(ask): Query<LogAsk>,
) -> Result<Json<Value>, Failure> {
    let ws = board.ws.clone();
    read(&board, move |r| {
        let task = find(r, &id)?;
        let path = crate::runs::RunFiles::log(&ws, &task.id);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let from = ask.from.unwrap_or(len.saturating_sub(LOG_TAIL)).min(len);
        let mut bytes = Vec::new();
        if let Ok(mut reader) = crate::runs::log::LogReader::open(&path, from, LOG_MAX) {
            bytes = reader.peek().map(<[u8]>::to_vec).unwrap_or_default();
        }
        // Never a character cut in two: its rest comes with the next read.
        let whole = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(),
        };
        let text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
        Ok(Json(json!({
            "from": from,
            "next": from + whole as u64,
            "size": len,
            "text": text,
        })))
    })
    .await
}

/// The most of a task's patch (and of its file list) the board serves. A
/// task may write a file of gigabytes: git's output is read up to this and
/// git stopped there, so the primary never holds more; `grove diff` in a
/// terminal streams all of it.
const DIFF_MAX: usize = 8 << 20;

/// How long the board's diff may take, git and what it starts included:
/// copying the worktree into an index runs the repository's clean filters
/// and fsmonitor hook, and one that never ends must not hold a board thread
/// for good (see `worktree::bounded`).
const DIFF_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

fn diff_within() -> std::time::Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(within) = crate::test_hooks::diff_within() {
        return within;
    }
    DIFF_WITHIN
}

/// A worktree task's changes (`grove diff`), up to `DIFF_MAX`: then
/// `truncated` is set and `hint` says where to see the rest.
async fn diff(
    State(board): State<Arc<Board>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Failure> {
    let root = board.ws.root.clone();
    let copied = board.live.current().setup.copy.clone();
    read(&board, move |r| {
        let task = find(r, &id)?;
        let Some(w) = task.spec.worktree else {
            return Ok(Json(json!({"worktree": null})));
        };
        let form = crate::worktree::diff::Form::Patch;
        let limits = crate::worktree::diff::Limits {
            cap: DIFF_MAX,
            until: Some(std::time::Instant::now() + diff_within()),
        };
        let mut c = match crate::worktree::diff::changes(&root, &w, form, &copied, limits) {
            Ok(c) => c,
            Err(e) => return Ok(Json(json!({"worktree": w, "error": e.to_string()}))),
        };
        c.truncated |= fit_escaped(&mut c.text, DIFF_MAX);
        if !c.truncated {
            return Ok(Json(json!({"worktree": w, "changes": c})));
        }
        let hint = format!(
            "the changes are larger than the board shows: these are their first {} MiB; `grove diff {}` in a terminal shows all of them",
            DIFF_MAX >> 20,
            task.id
        );
        Ok(Json(json!({"worktree": w, "changes": c, "hint": hint})))
    })
    .await
}

/// Cuts `text` after its last whole line that keeps it within `max` bytes
/// as a JSON string; true when it cut. In JSON a control character takes
/// six bytes (`\u001b`), so a patch of ANSI-coloured logs within the
/// 8 MiB cap made an answer of several times that.
fn fit_escaped(text: &mut String, max: usize) -> bool {
    let (mut size, mut whole_lines) = (0, 0);
    for (at, ch) in text.char_indices() {
        size += match ch {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size > max {
            text.truncate(whole_lines);
            return true;
        }
        if ch == '\n' {
            whole_lines = at + 1;
        }
    }
    false
}

/// The primary, the live members, and the last promotions (failovers and
/// handovers) with what each measured: the lock won, the takeover, the old
/// primary's last heartbeat heard (see `store::promotions`).
async fn members(State(board): State<Arc<Board>>) -> Result<Json<Value>, Failure> {
    let record = crate::primary_record::PrimaryRecord::read(&board.ws);
    read(&board, move |r| {
        let members: Vec<Value> = r
            .members()?
            .into_iter()
            .map(|m| {
                let alive = crate::proc::running(m.pid);
                let primary = record
                    .as_ref()
                    .is_some_and(|p| p.instance_id == m.instance_id);
                let mut v = serde_json::to_value(&m).unwrap_or_default();
                v["alive"] = alive.into();
                v["primary"] = primary.into();
                v
            })
            .filter(|m| m["alive"] == true)
            .collect();
        let promotions = r.promotions(PROMOTIONS_SHOWN)?;
        Ok(Json(json!({
            "primary": record,
            "epoch": r.epoch()?,
            "members": members,
            "promotions": promotions,
            "counts": r.counts()?,
        })))
    })
    .await
}

const PROMOTIONS_SHOWN: usize = 20;

/// The delegation counters (as `grove stats --json` reports them), the
/// pending awaits (`grove awaits`) and the tasks that have a parent.
async fn delegation(State(board): State<Arc<Board>>) -> Result<Json<Value>, Failure> {
    read(&board, move |r| {
        let (awaits_pending, delegated, delegated_open) = r.delegation_counts()?;
        Ok(Json(json!({
            "last_seq": r.last_seq()?,
            "counters": r.counters()?,
            "awaits_pending": awaits_pending,
            "delegated_tasks": delegated,
            "delegated_open": delegated_open,
        })))
    })
    .await
}

/// Most goals the goals view lists (running first, then the newest).
const GOALS_SHOWN: usize = 100;

/// The goals: running ones first, then the most recent (`grove goals --all`).
async fn goals(State(board): State<Arc<Board>>) -> Result<Json<Value>, Failure> {
    read(&board, move |r| {
        Ok(Json(json!({
            "last_seq": r.last_seq()?,
            "goals": r.goals(true, GOALS_SHOWN)?,
        })))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::fit_escaped;

    #[test]
    fn a_patch_is_cut_to_its_size_as_json_after_a_whole_line() {
        let line = format!("+{}\n", "\u{1b}[31m".repeat(10));
        let mut text = line.repeat(100);
        let escaped = |t: &str| serde_json::to_string(t).unwrap().len() - 2;
        let max = 10 * escaped(&line) + 3;
        assert!(fit_escaped(&mut text, max));
        assert_eq!(text, line.repeat(10));
        assert!(escaped(&text) <= max);
        let mut plain = "+ordinary \"quoted\" text\n".repeat(3);
        let whole = plain.clone();
        assert!(!fit_escaped(&mut plain, escaped(&whole)));
        assert_eq!(plain, whole);
    }
}
