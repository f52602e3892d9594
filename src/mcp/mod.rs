//! `grove mcp`: an MCP server on stdio (the official `rmcp` SDK) through
//! which an agent delegates work: spawn tasks, follow and steer them, wait
//! for their conclusions. It is a client like the CLI: writes go to the
//! primary over RPC (a member is started when none runs), reads come from
//! its own read-only store connection. Run from inside a task
//! (`GROVE_TASK_ID`), the tasks it spawns are that task's children.
//!
//! Every refusal is a tool error (`isError`) whose text says what to do,
//! so the agent can correct itself; malformed arguments too (rmcp answers
//! those as tool errors). Tools by area: `tasks.rs` (spawn, get, list,
//! output, wait), `control.rs` (cancel, pause, resume, retry, relaunch,
//! say, progress, conclude), `info.rs` (stats, engines, personas,
//! projects), `awaits.rs` (await, awaits, await_cancel); `tree.rs` cancels a task
//! with everything below it (also for the command line).

mod awaits;
mod control;
mod info;
pub mod slot_loan;
mod tasks;
pub mod tree;

use crate::config::Config;
use crate::paths::Workspace;
use crate::protocol::{Method, ReplyBody, TaskRecord};
use crate::store::{FindTask, Reader};
use futures::future::BoxFuture;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ServerHandler, ServiceExt, tool_handler};
use serde_json::Value;
use std::sync::Arc;

/// What the server needs of grove: the workspace, its configuration, and
/// the primary (reached, and started when none runs, by the front end that
/// runs the server).
pub trait Grove: Send + Sync + 'static {
    fn workspace(&self) -> &Workspace;
    /// The configuration as the files say now.
    fn config(&self) -> Config;
    /// One write, applied at most once; the error says what to do.
    fn call(&self, method: Method) -> BoxFuture<'_, Result<ReplyBody, String>> {
        self.call_keyed(method, None)
    }
    /// One write with this request id (`None`: a fresh one), so that a
    /// resend of the same request is applied once.
    fn call_keyed<'a>(
        &'a self,
        method: Method,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReplyBody, String>>;
    /// Makes sure a member runs (a read before any write needs its store).
    fn ensure_member(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Run beside a wait: keeps a member running (starting one when the
    /// last is gone) and resolves only when waiting has become hopeless,
    /// with why.
    fn keep_member(&self) -> BoxFuture<'_, String>;
}

/// The server: grove, the caller's task, and the tools.
#[derive(Clone)]
pub struct GroveMcp {
    grove: Arc<dyn Grove>,
    /// `GROVE_TASK_ID` of the process: the task this server serves.
    caller: Option<String>,
    tool_router: ToolRouter<GroveMcp>,
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn serve(grove: Arc<dyn Grove>) -> Result<(), String> {
    let caller = std::env::var("GROVE_TASK_ID")
        .ok()
        .filter(|s| !s.is_empty());
    let server = GroveMcp {
        grove,
        caller,
        tool_router: GroveMcp::tasks_router()
            + GroveMcp::control_router()
            + GroveMcp::info_router()
            + GroveMcp::awaits_router(),
    };
    let grove = server.grove.clone();
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP session did not start: {e}"))?;
    // The session ends (the client went away) or the process is told to
    // stop while tool calls may still wait: their slots are taken back
    // before it ends (see `slot_loan::give_back_all`).
    let ended = tokio::select! {
        ended = running.waiting() => ended.map(|_| ()).map_err(|e| format!("MCP session ended: {e}")),
        signal = slot_loan::stop_signal(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) => {
            slot_loan::give_back_all(grove.as_ref()).await;
            std::process::exit(128 + signal);
        }
    };
    slot_loan::give_back_all(grove.as_ref()).await;
    ended
}

#[tool_handler(
    router = self.tool_router,
    name = "grove",
    instructions = "grove runs agent tasks for this workspace. Delegate work with `spawn` (each task you spawn is your child), follow it with `get`, `list` (parent = \"self\"), `output`, and collect results with `wait` (blocking), which returns each task's conclusion, or — better for long work — `await` and end your turn: you are resumed with the results. Steer with `say`, `cancel`, `pause`, `resume`, `retry`, `relaunch`. Inside a task, report with `progress` and `conclude`. To run a task in another workspace, pass `project` to `spawn` (see `projects`)."
)]
impl ServerHandler for GroveMcp {}

/// A tool's answer: its JSON, or why not and what to do.
type Answer = Result<Value, String>;

fn reply(answer: Answer) -> CallToolResult {
    match answer {
        Ok(v) => CallToolResult::structured(v),
        Err(why) => CallToolResult::error(vec![ContentBlock::text(why)]),
    }
}

impl GroveMcp {
    /// The store, read-only; a member is started first when there is none.
    async fn reader(&self) -> Result<Reader, String> {
        let path = self.grove.workspace().db_path();
        match Reader::open(&path) {
            Ok(r) => Ok(r),
            Err(crate::store::StoreError::Missing(_)) => {
                self.grove.ensure_member().await?;
                Reader::open(&path).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// A task by full id or unique prefix.
    async fn find(&self, id: &str) -> Result<TaskRecord, String> {
        let id = id.trim();
        if id.is_empty() {
            return Err("the task id is empty; give a task id (see `list`)".into());
        }
        match self
            .reader()
            .await?
            .find_task(id)
            .map_err(|e| e.to_string())?
        {
            FindTask::Found(t) => Ok(*t),
            FindTask::Missing => Err(format!("no task {id}; see `list` for the task ids")),
            FindTask::Ambiguous => Err(format!(
                "task id prefix '{id}' matches several tasks; give more characters"
            )),
        }
    }

    /// The caller's own task, for the tools that act on it.
    async fn own_task(&self, tool: &str) -> Result<TaskRecord, String> {
        match &self.caller {
            None => Err(format!(
                "`{tool}` reports on the task this server runs in, and GROVE_TASK_ID is not set: only an agent that grove runs as a task can use it"
            )),
            Some(id) => self.find(id).await.map_err(|e| {
                format!("GROVE_TASK_ID names a task of another workspace or none ({e})")
            }),
        }
    }

    /// The caller's task when it belongs to this workspace: the parent of
    /// what it spawns.
    async fn parent(&self) -> Option<String> {
        let id = self.caller.as_ref()?;
        self.reader().await.ok()?.task(id).ok()?.map(|t| t.id)
    }

    /// One write whose reply is a task.
    async fn write_task(&self, method: Method) -> Result<TaskRecord, String> {
        match self.grove.call(method).await? {
            ReplyBody::Task(t) => Ok(*t),
            other => Err(format!("unexpected reply from grove: {other:?}")),
        }
    }
}

/// A task as a tool returns it: everything but the bulk (the full prompt is
/// in `get`).
fn summary(t: &TaskRecord) -> Value {
    let prompt: String = t.spec.prompt.chars().take(200).collect();
    serde_json::json!({
        "id": t.id,
        "status": t.status,
        "failure_reason": t.failure_reason,
        "exit_code": t.exit_code,
        "engine": t.spec.engine,
        "prompt": prompt,
        "parent_id": t.spec.parent_id,
        "tags": t.spec.tags,
        "progress_pct": t.progress_pct,
        "progress_text": t.progress_text,
        "conclusion": t.conclusion,
    })
}

/// Seconds as an agent gives them, checked: positive, at most `max`.
fn seconds(v: Option<f64>, name: &str, max: f64) -> Result<Option<u64>, String> {
    match v {
        Some(s) if !(s.is_finite() && s > 0.0 && s <= max) => Err(format!(
            "`{name}` must be a positive number of seconds, at most {max}; got {s}"
        )),
        Some(s) => Ok(Some((s * 1000.0).ceil() as u64)),
        None => Ok(None),
    }
}

/// A year: more than any task needs, far from the store's 64-bit column.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;
