//! The task tools: spawn, get, list, output, wait.

use super::{Answer, GroveMcp, MAX_TIMEOUT_SECS, reply, seconds, summary};
use crate::protocol::{Method, NewTask, TaskStatus};
use crate::store::TaskFilter;
use crate::waiter::Policy;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnParams {
    /// What the task should do: the agent's prompt (for the `shell` engine,
    /// a shell command).
    pub prompt: String,
    /// Engine to run it with (see the `engines` tool); default from the
    /// workspace's configuration.
    pub engine: Option<String>,
    /// Model for the engine (an alias from the configuration or a full name).
    pub model: Option<String>,
    /// A persona (see the `personas` tool), prepended to the prompt.
    pub persona: Option<String>,
    /// Ids of tasks this one waits for; it starts when all completed.
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i64,
    /// The task fails with reason `timeout` after this many seconds.
    pub timeout_seconds: Option<f64>,
    /// Working directory, absolute or relative to the workspace (default:
    /// the workspace).
    pub workdir: Option<String>,
    /// Conversation (acp) engines: keep the agent session open after each
    /// turn (the task goes idle, and `say` starts its next turn) until it
    /// is cancelled or idle too long.
    #[serde(default)]
    pub keep_session: bool,
    /// Ask the agent to end with a conclusion block (default true; never
    /// added to a `shell` command). The conclusion comes back from `get`
    /// and `wait` either way.
    pub conclusion: Option<bool>,
    /// Run the task in another workspace: its id, name or path (see the
    /// `projects` tool). The task you get back lives here and follows the
    /// one in that workspace: its output, result and conclusion are that
    /// task's, so `get` and `wait` work on it as on any child; cancelling
    /// it cancels the other. Engine, model, persona and workdir are that
    /// workspace's. Refused for a directory another user owns or others
    /// can write; the task there counts as deep as the one you get back
    /// (max_delegation_depth spans workspaces).
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdParams {
    /// Task id (full, or a unique prefix).
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tasks in this status: pending, queued, running, waiting,
    /// paused, completed, failed, cancelled.
    pub status: Option<String>,
    /// Only the children of this task; "self" for the tasks you spawned.
    pub parent: Option<String>,
    /// Only tasks with this tag.
    pub tag: Option<String>,
    /// Only tasks whose prompt contains this text (case-insensitive).
    pub text: Option<String>,
    /// At most this many, the newest (default 50, at most 500).
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputParams {
    /// Task id (full, or a unique prefix).
    pub id: String,
    /// Read from this byte offset (from a previous call's `next_offset`);
    /// without it, the last `max_bytes` of the output.
    pub offset: Option<u64>,
    /// At most this many bytes (default 4096, at most 65536).
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// Task ids to wait for; empty: every unfinished task you spawned.
    #[serde(default)]
    pub ids: Vec<String>,
    /// "all" (default): until every task ended; "any": until one ended;
    /// "quorum": until `quorum` ended (whatever their status: a failed
    /// task counts).
    pub policy: Option<String>,
    /// For policy "quorum": how many must end.
    pub quorum: Option<usize>,
    /// Give up after this many seconds (default 600, at most 3600); the
    /// answer then says `timed_out`.
    pub timeout_seconds: Option<f64>,
}

/// The longest a `wait` blocks by default, and at most.
pub(super) const WAIT_DEFAULT_SECS: f64 = 600.0;
pub(super) const WAIT_MAX_SECS: f64 = 3600.0;
const OUTPUT_DEFAULT: u64 = 4096;
const OUTPUT_MAX: u64 = 64 * 1024;

#[tool_router(router = tasks_router, vis = "pub(super)")]
impl GroveMcp {
    /// Start a task: an agent (or command) that runs on its own in this
    /// workspace. Spawned from inside a task, it is that task's child.
    /// Returns its id at once; use `wait` to collect its conclusion.
    #[tool(name = "spawn")]
    async fn spawn(&self, Parameters(p): Parameters<SpawnParams>) -> CallToolResult {
        reply(self.do_spawn(p).await)
    }

    /// One task in full: its prompt, status, failure reason, progress and
    /// conclusion, and the ids of its children.
    #[tool(name = "get")]
    async fn get(&self, Parameters(p): Parameters<IdParams>) -> CallToolResult {
        reply(self.do_get(p).await)
    }

    /// List tasks (newest last), filtered by status, parent ("self": yours),
    /// tag or prompt text.
    #[tool(name = "list")]
    async fn list(&self, Parameters(p): Parameters<ListParams>) -> CallToolResult {
        reply(self.do_list(p).await)
    }

    /// A task's output (its log): the tail, or from an offset to page
    /// through it.
    #[tool(name = "output")]
    async fn output(&self, Parameters(p): Parameters<OutputParams>) -> CallToolResult {
        reply(self.do_output(p).await)
    }

    /// Block until tasks end (all, any, or a quorum of them ended) or the
    /// timeout passes; returns each task with its conclusion. While you
    /// wait, your task's parallel slot is lent, so your children can run.
    #[tool(name = "wait")]
    async fn wait(
        &self,
        Parameters(p): Parameters<WaitParams>,
        call: RequestContext<RoleServer>,
    ) -> CallToolResult {
        reply(self.do_wait(p, &call).await)
    }
}

impl GroveMcp {
    async fn do_spawn(&self, p: SpawnParams) -> Answer {
        if p.prompt.trim().is_empty() {
            return Err("the prompt is empty; say what the task should do".into());
        }
        let mut dependencies = Vec::with_capacity(p.dependencies.len());
        for d in &p.dependencies {
            dependencies.push(self.find(d).await?.id);
        }
        let mut new = NewTask {
            prompt: p.prompt,
            engine: p.engine,
            model: p.model,
            work_dir: p.workdir,
            persona: p.persona,
            dependencies,
            tags: p.tags,
            priority: p.priority,
            timeout_ms: seconds(p.timeout_seconds, "timeout_seconds", MAX_TIMEOUT_SECS)?,
            parent_id: self.parent().await,
            want_conclusion: p.conclusion.unwrap_or(true),
            keep_session: p.keep_session,
            ..Default::default()
        };
        // The caller may be a task of another workspace whose MCP server
        // names this one: its level carries over.
        let cap = self.grove.config().max_delegation_depth.saturating_add(1);
        crate::projects::inherit_foreign_caller(&self.grove.workspace().root, cap, &mut new);
        let new = match &p.project {
            None => new,
            Some(query) => {
                let project = crate::projects::resolve(query)?;
                if project.path == self.grove.workspace().root {
                    new // this very workspace
                } else {
                    crate::projects::proxy_task(&project, new)?
                }
            }
        };
        let task = self.write_task(Method::TaskCreate(new)).await?;
        Ok(summary(&task))
    }

    async fn do_get(&self, p: IdParams) -> Answer {
        let task = self.find(&p.id).await?;
        let children = self
            .reader()
            .await?
            .tasks(&TaskFilter {
                parent_id: Some(task.id.clone()),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        let mut v = serde_json::to_value(&task).map_err(|e| e.to_string())?;
        let ids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
        v["children"] = json!(ids);
        Ok(v)
    }

    async fn do_list(&self, p: ListParams) -> Answer {
        let status = match &p.status {
            None => None,
            Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
                format!("unknown status '{s}'; one of pending, queued, running, waiting, paused, completed, failed, cancelled")
            })?),
        };
        let parent_id = match p.parent.as_deref() {
            None => None,
            Some("self") => Some(self.own_task("list parent=self").await?.id),
            Some(id) => Some(self.find(id).await?.id),
        };
        let filter = TaskFilter {
            status,
            tag: p.tag,
            text: p.text,
            parent_id,
            ..Default::default()
        };
        let tasks = self
            .reader()
            .await?
            .tasks(&filter)
            .map_err(|e| e.to_string())?;
        let limit = p.limit.unwrap_or(50).clamp(1, 500);
        let skip = tasks.len().saturating_sub(limit);
        let shown: Vec<_> = tasks[skip..].iter().map(summary).collect();
        Ok(json!({ "total": tasks.len(), "tasks": shown }))
    }

    async fn do_output(&self, p: OutputParams) -> Answer {
        use std::io::{Read, Seek, SeekFrom};
        let task = self.find(&p.id).await?;
        let max = p.max_bytes.unwrap_or(OUTPUT_DEFAULT).clamp(1, OUTPUT_MAX);
        let path = crate::runs::RunFiles::log(self.grove.workspace(), &task.id);
        let Ok(mut f) = std::fs::File::open(&path) else {
            return Ok(json!({
                "id": task.id, "status": task.status, "text": "", "offset": 0,
                "next_offset": 0, "size": 0, "note": "no output yet: the task has not started",
            }));
        };
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        let from = p.offset.unwrap_or(size.saturating_sub(max)).min(size);
        f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(max)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        Ok(json!({
            "id": task.id,
            "status": task.status,
            "text": String::from_utf8_lossy(&buf),
            "offset": from,
            "next_offset": from + buf.len() as u64,
            "size": size,
        }))
    }

    async fn do_wait(&self, p: WaitParams, call: &RequestContext<RoleServer>) -> Answer {
        let ids = self.wait_ids(&p.ids).await?;
        let policy = match (p.policy.as_deref().unwrap_or("all"), p.quorum) {
            ("all", _) => Policy::All,
            ("any", _) => Policy::Any,
            ("quorum", Some(n)) if n >= 1 && n <= ids.len() => Policy::Quorum(n),
            ("quorum", n) => {
                return Err(format!(
                    "policy quorum needs `quorum` between 1 and the number of tasks ({}), got {n:?}",
                    ids.len()
                ));
            }
            (other, _) => {
                return Err(format!("unknown policy '{other}'; one of all, any, quorum"));
            }
        };
        let timeout = seconds(
            Some(p.timeout_seconds.unwrap_or(WAIT_DEFAULT_SECS)),
            "timeout_seconds",
            WAIT_MAX_SECS,
        )?
        .map(std::time::Duration::from_millis);
        self.grove.ensure_member().await?;
        let outcome = self.wait_for(&ids, policy, timeout, call).await?;
        let tasks: Vec<_> = (outcome.tasks.iter())
            .map(|(id, t)| match t {
                Some(t) => summary(t),
                None => json!({ "id": id, "status": "deleted" }),
            })
            .collect();
        Ok(json!({
            "satisfied": outcome.satisfied,
            "timed_out": outcome.timed_out,
            "tasks": tasks,
        }))
    }

    /// Waits for `ids` as the caller's task, whose slot is lent meanwhile
    /// (`slot_loan`), until the client cancels the call (`call`: rmcp does
    /// not drop a handler whose request was cancelled, and a wait left
    /// behind would go on lending the slot of an agent that works on). A
    /// wait outlives the workspace's last member only by starting another
    /// (see `Grove::keep_member`).
    pub(super) async fn wait_for(
        &self,
        ids: &[String],
        policy: Policy,
        timeout: Option<std::time::Duration>,
        call: &RequestContext<RoleServer>,
    ) -> Result<crate::waiter::Outcome, String> {
        let ws = self.grove.workspace();
        let waited = async {
            tokio::select! {
                outcome = crate::waiter::wait(ws, ids, policy, timeout, |_| {}) => outcome,
                hopeless = self.grove.keep_member() => Err(hopeless),
                _ = call.ct.cancelled() => Err("the client cancelled this call".into()),
            }
        };
        let lender = super::slot_loan::Lender::of(self.parent().await);
        super::slot_loan::while_waiting(self.grove.as_ref(), lender, waited).await
    }

    /// The tasks a wait names, each once; none named: the caller's
    /// unfinished children.
    async fn wait_ids(&self, given: &[String]) -> Result<Vec<String>, String> {
        if given.is_empty() {
            let me = self
                .own_task("wait without ids")
                .await
                .map_err(|e| format!("{e}; name the tasks to wait for in `ids`"))?;
            let children = (self.reader().await?)
                .tasks(&TaskFilter {
                    parent_id: Some(me.id),
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?;
            let open: Vec<String> = (children.into_iter())
                .filter(|t| !t.status.is_terminal())
                .map(|t| t.id)
                .collect();
            if open.is_empty() {
                return Err(
                    "you have no unfinished tasks to wait for; see `list` with parent \"self\""
                        .into(),
                );
            }
            return Ok(open);
        }
        let mut ids: Vec<String> = Vec::with_capacity(given.len());
        for g in given {
            let id = self.find(g).await?.id;
            if ids.contains(&id) {
                return Err(format!(
                    "task {id} is named twice in `ids`; name each task once"
                ));
            }
            ids.push(id);
        }
        Ok(ids)
    }
}
