//! The steering tools: cancel, pause, resume, retry, relaunch, say, and
//! for the caller's own task, progress and conclude.

use super::tasks::IdParams;
use super::{Answer, GroveMcp, MAX_TIMEOUT_SECS, reply, seconds, summary};
use crate::protocol::{
    Conclusion, ConclusionSource, ConclusionStatus, ControlKind, Method, TaskChanges, TaskControl,
};
use crate::store::TaskFilter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelParams {
    /// Task id (full, or a unique prefix).
    pub id: String,
    /// Cancel every unfinished task below it too (its children, theirs...).
    #[serde(default)]
    pub tree: bool,
}

/// How long a rerun tool blocks: `None` without `wait`; with it, the
/// given seconds (bounded like the `wait` tool's) or its default.
fn waiting(wait: bool, seconds: Option<f64>) -> Result<Option<std::time::Duration>, String> {
    if !wait {
        return Ok(None);
    }
    let ms = super::seconds(
        Some(seconds.unwrap_or(super::tasks::WAIT_DEFAULT_SECS)),
        "wait_seconds",
        super::tasks::WAIT_MAX_SECS,
    )?;
    Ok(ms.map(std::time::Duration::from_millis))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeParams {
    /// Task id of a paused task.
    pub id: String,
    /// More instructions, appended to its prompt (a task that had started
    /// is rerun with them).
    pub prompt: Option<String>,
    /// A new model (a started task is rerun with it).
    pub model: Option<String>,
    /// A new timeout in seconds (a started task is rerun with it).
    pub timeout_seconds: Option<f64>,
    /// New tags, replacing the old ones.
    pub tags: Option<Vec<String>>,
    /// Block until the task ends and return it with its conclusion.
    #[serde(default)]
    pub wait: bool,
    /// With `wait`: the most seconds to block (default 600, at most 3600);
    /// the answer then says `timed_out`, and `wait` goes on waiting.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryParams {
    /// Id of a finished task: a new task (a new id) tries it again, told why
    /// the last attempt failed.
    pub id: String,
    /// Block until the new attempt ends and return it.
    #[serde(default)]
    pub wait: bool,
    /// With `wait`: the most seconds to block (default 600, at most 3600);
    /// the answer then says `timed_out`, and `wait` goes on waiting.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RelaunchParams {
    /// Id of a finished task, rerun under the same id.
    pub id: String,
    /// A new prompt, replacing the old one.
    pub prompt: Option<String>,
    /// A new engine (see `engines`).
    pub engine: Option<String>,
    pub model: Option<String>,
    pub timeout_seconds: Option<f64>,
    /// New tags, replacing the old ones.
    pub tags: Option<Vec<String>>,
    /// Block until the rerun ends and return it.
    #[serde(default)]
    pub wait: bool,
    /// With `wait`: the most seconds to block (default 600, at most 3600);
    /// the answer then says `timed_out`, and `wait` goes on waiting.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SayParams {
    /// Id of a running task whose engine holds a conversation (kind acp).
    pub id: String,
    /// A follow-up prompt, sent in the same agent session when its current
    /// turn ends.
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressParams {
    /// 0 to 100.
    pub percent: u8,
    /// What you are doing now.
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcludeParams {
    /// success, partial, failed or blocked.
    pub status: String,
    /// What you did and found, in a few sentences.
    pub summary: String,
    /// Files, branches or URLs you produced.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// What is left to do.
    #[serde(default)]
    pub follow_up: Vec<String>,
    /// How sure you are, 0 to 1.
    pub confidence: Option<f64>,
}

#[tool_router(router = control_router, vis = "pub(super)")]
impl GroveMcp {
    /// Cancel a task (its processes are killed); with `tree`, every
    /// unfinished task below it too.
    #[tool(name = "cancel")]
    async fn cancel(&self, Parameters(p): Parameters<CancelParams>) -> CallToolResult {
        reply(self.do_cancel(p).await)
    }

    /// Pause a task: a running one is stopped (it keeps its slot, its
    /// timeout clock stops); a waiting one is held back.
    #[tool(name = "pause")]
    async fn pause(&self, Parameters(p): Parameters<IdParams>) -> CallToolResult {
        reply(self.simple(&p.id, |id| Method::TaskPause { id }).await)
    }

    /// Continue a paused task, optionally with more instructions, a new
    /// model, timeout or tags.
    #[tool(name = "resume")]
    async fn resume(
        &self,
        Parameters(p): Parameters<ResumeParams>,
        call: RequestContext<RoleServer>,
    ) -> CallToolResult {
        reply(self.do_resume(p, &call).await)
    }

    /// Try a finished task again as a new task; its agent is told why the
    /// last attempt failed.
    #[tool(name = "retry")]
    async fn retry(
        &self,
        Parameters(p): Parameters<RetryParams>,
        call: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let wait = match waiting(p.wait, p.wait_seconds) {
            Ok(wait) => wait,
            Err(e) => return reply(Err(e)),
        };
        let answer = match self.find(&p.id).await {
            Ok(t) => {
                self.rerun(Method::TaskRetry { id: t.id }, wait, &call)
                    .await
            }
            Err(e) => Err(e),
        };
        reply(answer)
    }

    /// Rerun a finished task under the same id, optionally with a new
    /// prompt, engine, model, timeout or tags.
    #[tool(name = "relaunch")]
    async fn relaunch(
        &self,
        Parameters(p): Parameters<RelaunchParams>,
        call: RequestContext<RoleServer>,
    ) -> CallToolResult {
        reply(self.do_relaunch(p, &call).await)
    }

    /// Send a follow-up prompt to a running conversation task (ACP engine),
    /// delivered when its current turn ends.
    #[tool(name = "say")]
    async fn say(&self, Parameters(p): Parameters<SayParams>) -> CallToolResult {
        reply(self.do_say(p).await)
    }

    /// Report the progress of your own task (the one this server runs in).
    #[tool(name = "progress")]
    async fn progress(&self, Parameters(p): Parameters<ProgressParams>) -> CallToolResult {
        reply(self.do_progress(p).await)
    }

    /// Record your own task's conclusion, for the agent that delegated it:
    /// status, summary, artifacts, follow-up, confidence.
    #[tool(name = "conclude")]
    async fn conclude(&self, Parameters(p): Parameters<ConcludeParams>) -> CallToolResult {
        reply(self.do_conclude(p).await)
    }
}

impl GroveMcp {
    async fn simple(&self, id: &str, method: impl FnOnce(String) -> Method) -> Answer {
        let task = self.find(id).await?;
        Ok(summary(&self.write_task(method(task.id)).await?))
    }

    async fn do_cancel(&self, p: CancelParams) -> Answer {
        let root = self.find(&p.id).await?;
        let (cancelled, failed) = if p.tree {
            let done = super::tree::cancel_with_descendants(self.grove.as_ref(), &root.id, None);
            let done = done.await?;
            (done.cancelled, done.failed)
        } else if root.status.is_terminal() {
            (Vec::new(), Vec::new())
        } else {
            match self
                .grove
                .call(Method::TaskCancel {
                    id: root.id.clone(),
                })
                .await
            {
                Ok(_) => (vec![root.id.clone()], Vec::new()),
                // It finished meanwhile.
                Err(e) if e.contains("already") => (Vec::new(), Vec::new()),
                Err(e) => return Err(e),
            }
        };
        if cancelled.is_empty() && !failed.is_empty() {
            return Err(format!("nothing could be cancelled: {}", failed.join("; ")));
        }
        if cancelled.is_empty() && failed.is_empty() {
            return Err(format!(
                "task {} is already {}{}: nothing to cancel",
                root.id,
                root.status.as_str(),
                if p.tree {
                    ", and so is every task below it"
                } else {
                    ""
                }
            ));
        }
        Ok(json!({ "cancelled": cancelled, "failed": failed }))
    }

    async fn do_resume(&self, p: ResumeParams, call: &RequestContext<RoleServer>) -> Answer {
        let task = self.find(&p.id).await?;
        let changes = TaskChanges {
            model: p.model,
            timeout_ms: seconds(p.timeout_seconds, "timeout_seconds", MAX_TIMEOUT_SECS)?,
            tags: p.tags,
            ..Default::default()
        };
        let method = Method::TaskResume {
            id: task.id,
            instructions: p.prompt,
            changes,
        };
        self.rerun(method, waiting(p.wait, p.wait_seconds)?, call)
            .await
    }

    async fn do_relaunch(&self, p: RelaunchParams, call: &RequestContext<RoleServer>) -> Answer {
        let task = self.find(&p.id).await?;
        if p.prompt.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return Err("the new prompt is empty; leave `prompt` out to keep the old one".into());
        }
        let changes = TaskChanges {
            prompt: p.prompt,
            engine: p.engine,
            model: p.model,
            timeout_ms: seconds(p.timeout_seconds, "timeout_seconds", MAX_TIMEOUT_SECS)?,
            tags: p.tags,
        };
        self.rerun(
            Method::TaskRelaunch {
                id: task.id,
                instructions: None,
                changes,
            },
            waiting(p.wait, p.wait_seconds)?,
            call,
        )
        .await
    }

    /// A write that answers with a task, then with `wait` its end, or its
    /// state once `wait` is over: a run that never ends must not hold the
    /// calling agent's tool call for ever.
    async fn rerun(
        &self,
        method: Method,
        wait: Option<std::time::Duration>,
        call: &RequestContext<RoleServer>,
    ) -> Answer {
        let task = self.write_task(method).await?;
        let Some(within) = wait else {
            return Ok(summary(&task));
        };
        let ids = [task.id.clone()];
        let outcome = (self.wait_for(&ids, crate::waiter::Policy::All, Some(within), call)).await?;
        match outcome.tasks.get(&task.id).cloned().flatten() {
            Some(t) if outcome.timed_out => {
                let mut answer = summary(&t);
                answer["timed_out"] = true.into();
                answer["hint"] = format!(
                    "still {} after {} s; `wait` with ids [\"{}\"] to go on waiting",
                    t.status.as_str(),
                    within.as_secs_f64(),
                    t.id
                )
                .into();
                Ok(answer)
            }
            Some(t) => Ok(summary(&t)),
            None => Err(format!("task {} was deleted while waiting", task.id)),
        }
    }

    async fn do_say(&self, p: SayParams) -> Answer {
        if p.text.trim().is_empty() {
            return Err("the text is empty; say what the agent should do next".into());
        }
        let task = self.find(&p.id).await?;
        let kind = (self.grove.config().engines.get(&task.spec.engine)).map(|e| e.kind);
        if kind != Some(crate::config::EngineKind::Acp) {
            return Err(format!(
                "task {} runs engine '{}', which takes its prompt once at start: `say` reaches only conversation (acp) engines; relaunch it with a new prompt instead",
                task.id, task.spec.engine
            ));
        }
        let control = TaskControl {
            id: task.id.clone(),
            kind: ControlKind::Say,
            option: None,
            text: Some(p.text),
            ask: None,
        };
        self.grove.call(Method::TaskControl(control)).await?;
        Ok(json!({ "id": task.id, "queued": true }))
    }

    async fn do_progress(&self, p: ProgressParams) -> Answer {
        if p.percent > 100 {
            return Err(format!("percent is 0 to 100, got {}", p.percent));
        }
        let me = self.own_task("progress").await?;
        let method = Method::TaskSetProgress {
            id: me.id,
            percent: Some(p.percent),
            text: p.text,
        };
        Ok(summary(&self.write_task(method).await?))
    }

    async fn do_conclude(&self, p: ConcludeParams) -> Answer {
        let status = ConclusionStatus::parse(&p.status).ok_or_else(|| {
            format!(
                "unknown status '{}'; one of success, partial, failed, blocked",
                p.status
            )
        })?;
        if p.summary.trim().is_empty() {
            return Err("the summary is empty; say what you did and found".into());
        }
        if p.confidence.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            return Err("confidence is a number from 0 to 1".into());
        }
        let me = self.own_task("conclude").await?;
        let conclusion = Conclusion {
            status,
            summary: p.summary.trim().to_string(),
            artifacts: p.artifacts,
            follow_up: p.follow_up,
            confidence: p.confidence,
            source: ConclusionSource::Reported,
            error: None,
            progress: None,
            next_step: None,
            blocked_reason: None,
        };
        let method = Method::TaskConclude {
            id: me.id,
            conclusion,
        };
        Ok(summary(&self.write_task(method).await?))
    }
}

/// Unfinished children of a task (for the info tools' counts).
pub(super) fn open_children(reader: &crate::store::Reader, id: &str) -> usize {
    reader
        .tasks(&TaskFilter {
            parent_id: Some(id.to_string()),
            ..Default::default()
        })
        .map(|c| c.iter().filter(|t| !t.status.is_terminal()).count())
        .unwrap_or(0)
}
