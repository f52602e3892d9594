//! The board's changes: the same writes the CLI sends (`task.create`,
//! `task.cancel`, …, `task.control`), through the same client, so they
//! get the same checks, the ledger and the events; and `merge` / `discard`
//! of a worktree, as `grove merge` / `grove discard` do them. A page may
//! send a `request_id`: a retry after a failover is then applied once.

use super::api::{Board, Failure, find, read};
use crate::client::{Client, ClientError};
use crate::protocol::{ControlKind, ErrorCode, Method, NewTask, TaskControl};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The body of `POST /api/tasks` and of every action (fields unused by an
/// action are ignored).
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Ask {
    prompt: String,
    engine: Option<String>,
    tags: Vec<String>,
    dependencies: Vec<String>,
    worktree: Option<bool>,
    /// `resume` instructions, a `say` text.
    text: Option<String>,
    /// `approve`: the option id (default: the narrowest allow option).
    option: Option<String>,
    /// `approve`, `deny`: the permission request answered (its `ask`
    /// number); refused when another was answered meanwhile.
    ask: Option<u64>,
    /// `merge`: one commit instead of the history.
    squash: bool,
    request_id: Option<String>,
}

/// `POST /api/tasks`: spawn.
pub async fn spawn(
    State(board): State<Arc<Board>>,
    Json(ask): Json<Ask>,
) -> Result<Json<Value>, Failure> {
    if ask.prompt.trim().is_empty() {
        return Err(bad("a task needs a prompt"));
    }
    let new = NewTask {
        prompt: ask.prompt,
        engine: ask.engine.filter(|e| !e.is_empty()),
        tags: ask.tags,
        dependencies: ask.dependencies,
        worktree: ask.worktree.map(|enabled| crate::protocol::WorktreeAsk {
            enabled,
            base: None,
        }),
        ..NewTask::default()
    };
    call(&board, Method::TaskCreate(new), ask.request_id).await
}

/// `POST /api/tasks/{id}/{action}`.
pub async fn act(
    State(board): State<Arc<Board>>,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<Ask>>,
) -> Result<Json<Value>, Failure> {
    let ask = body.map(|Json(a)| a).unwrap_or_default();
    let id = read(&board, move |r| Ok(find(r, &id)?.id)).await?;
    let control = |kind, option, text| {
        Method::TaskControl(TaskControl {
            id: id.clone(),
            kind,
            option,
            text,
            ask: ask.ask,
        })
    };
    let method = match action.as_str() {
        "cancel" => Method::TaskCancel { id: id.clone() },
        "pause" => Method::TaskPause { id: id.clone() },
        "resume" => Method::TaskResume {
            id: id.clone(),
            instructions: ask.text.filter(|t| !t.trim().is_empty()),
            changes: Default::default(),
        },
        "retry" => Method::TaskRetry { id: id.clone() },
        "relaunch" => Method::TaskRelaunch {
            id: id.clone(),
            instructions: None,
            changes: Default::default(),
        },
        "approve" => control(ControlKind::Approve, ask.option, None),
        "deny" => control(ControlKind::Deny, None, None),
        "close" => control(ControlKind::Close, None, None),
        "say" => match ask.text.filter(|t| !t.trim().is_empty()) {
            Some(text) => control(ControlKind::Say, None, Some(text)),
            None => return Err(bad("say needs a text")),
        },
        "merge" | "discard" => return worktree(&board, &id, &action, ask.squash).await,
        other => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no action '{other}'"),
            ));
        }
    };
    call(&board, method, ask.request_id).await
}

fn bad(why: &str) -> Failure {
    Failure(StatusCode::BAD_REQUEST, why.to_string())
}

async fn call(
    board: &Board,
    method: Method,
    request_id: Option<String>,
) -> Result<Json<Value>, Failure> {
    let config = board.live.current();
    let mut client = Client::new(&board.ws, &config, "web");
    let id = request_id
        .filter(|r| !r.is_empty())
        .unwrap_or_else(crate::client::new_request_id);
    match client.call_with_id(&id, method).await {
        Ok(reply) => Ok(Json(json!({ "ok": reply }))),
        Err(e) => Err(refused(e)),
    }
}

fn refused(e: ClientError) -> Failure {
    let status = match &e {
        ClientError::Refused(w) => match w.code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::InvalidParams | ErrorCode::BadRequest | ErrorCode::TooLarge => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        },
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Failure(status, e.to_string())
}

/// How long the board's merge or discard may take, every git it runs and
/// what they start included: a clean filter, hook or configuration of the
/// repository that never ends (which a task's agent may write) must not
/// hold a board thread, and the request, for good. A stop is safe at any
/// point (`worktree::merge::merge`, `worktree::remove`); `grove merge` and
/// `grove discard` in a terminal have no deadline.
const WORKTREE_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

fn worktree_within() -> std::time::Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(within) = crate::test_hooks::merge_within() {
        return within;
    }
    WORKTREE_WITHIN
}

/// `merge` or `discard` of a finished task's worktree, on the blocking
/// pool (git runs meanwhile), within [`WORKTREE_WITHIN`]: stopped there,
/// it answers 504 with what was left. Refused while its agent may still
/// write.
async fn worktree(
    board: &Board,
    id: &str,
    action: &str,
    squash: bool,
) -> Result<Json<Value>, Failure> {
    let ws = board.ws.clone();
    let root = board.ws.root.clone();
    let state_dir = board.ws.state_dir.clone();
    let copied = board.live.current().setup.copy.clone();
    let id = id.to_string();
    let action = action.to_string();
    let merge = action == "merge";
    let within = worktree_within();
    read(board, move |r| {
        let until = std::time::Instant::now() + within;
        let task = find(r, &id)?;
        let Some(w) = task.spec.worktree.clone() else {
            return Err(bad(&format!("task {id} has no worktree of its own")));
        };
        if task.runs_by_its_row() {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "task {id} is {}: its agent may still change the worktree; wait for it or cancel it first",
                    task.status.as_str()
                ),
            ));
        }
        if crate::runs::RunFiles::still_going(&ws, &task.id, task.run_id.as_deref()) {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "task {id}'s processes are still being stopped and may still write in its worktree; {action} once they are gone (a moment)"
                ),
            ));
        }
        let failed = |e: crate::worktree::WorktreeError| match e {
            crate::worktree::WorktreeError::Stopped(left) => Failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the board's {action} of task {id} did not end within its {within:?} and was stopped, with every git it started (a clean filter, hook or configuration of the repository that never ends?): {left}. `grove {action} {id}` in a terminal has no deadline: run it there to see what git waits for"
                ),
            ),
            e => Failure(StatusCode::CONFLICT, e.to_string()),
        };
        if !merge {
            crate::worktree::remove(&root, &w, Some(until)).map_err(failed)?;
            return Ok(Json(json!({ "discarded": w })));
        }
        let title: String = task.spec.prompt.lines().next().unwrap_or("").trim().chars().take(72).collect();
        let message = if squash {
            format!("{title}\n\ngrove task {id}")
        } else {
            format!("Merge {} (grove task {id})\n\n{title}", w.branch)
        };
        let ask = crate::worktree::merge::MergeAsk {
            root: &root,
            state_dir: &state_dir,
            worktree: &w,
            squash,
            message,
            snapshot_message: format!("{title}\n\nLeft uncommitted by grove task {id}"),
            into: None,
            copied: &copied,
            until: Some(until),
        };
        let merged = crate::worktree::merge::merge(&ask).map_err(failed)?;
        Ok(Json(json!({ "merged": merged })))
    })
    .await
}
