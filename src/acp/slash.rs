//! Slash commands in a prompt: `/spawn`, `/tasks`, `/wait`, `/cancel`,
//! `/status`, advertised with `available_commands_update`.

use super::{Shared, cards};
use crate::paths::Workspace;
use crate::protocol::{Method, TaskRecord};
use crate::store::Reader;
use agent_client_protocol_schema::v1 as schema;
use schema::{AvailableCommand, SessionId, StopReason, UnstructuredCommandInput};

/// The slash commands, for `available_commands_update`.
pub fn available_commands() -> schema::AvailableCommandsUpdate {
    let cmd = |name: &str, description: &str, hint: Option<&str>| {
        let input = hint
            .map(|h| schema::AvailableCommandInput::Unstructured(UnstructuredCommandInput::new(h)));
        AvailableCommand::new(name, description).input(input)
    };
    schema::AvailableCommandsUpdate::new(vec![
        cmd(
            "spawn",
            "Start a background task in this session without waiting",
            Some("what the task should do"),
        ),
        cmd("tasks", "List this session's tasks", None),
        cmd(
            "wait",
            "Wait for this session's unfinished tasks (or the given ids)",
            Some("task ids (optional)"),
        ),
        cmd("cancel", "Cancel a task", Some("task id")),
        cmd(
            "status",
            "Show the grove: primary, members, task counts",
            None,
        ),
    ])
}

/// Where a command runs and what it may read.
struct Ctx<'a> {
    agent: &'a Shared,
    session: &'a SessionId,
    out: super::framing::Out,
    ws: Option<Workspace>,
    reader: Option<Reader>,
}

impl Ctx<'_> {
    async fn say(&self, text: impl Into<String>) {
        self.out.say(self.session, text).await
    }

    fn session_tasks(&self) -> Vec<TaskRecord> {
        let filter = crate::store::TaskFilter {
            session_id: Some(self.session.to_string()),
            ..Default::default()
        };
        self.reader
            .as_ref()
            .and_then(|r| r.tasks(&filter).ok())
            .unwrap_or_default()
    }
}

/// Runs `command` (the prompt without its `/`).
pub async fn run(
    agent: &Shared,
    session: &SessionId,
    command: &str,
    cancel: &tokio::sync::Notify,
) -> StopReason {
    let (name, arg) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let arg = arg.trim();
    let ws = agent.borrow().ws.clone();
    let ctx = Ctx {
        agent,
        session,
        out: agent.borrow().out.clone(),
        reader: ws.as_ref().and_then(|w| Reader::open(&w.db_path()).ok()),
        ws,
    };
    match name {
        "spawn" if !arg.is_empty() => spawn(&ctx, arg).await,
        "spawn" => ctx.say("Usage: /spawn <what the task should do>").await,
        "tasks" => tasks(&ctx).await,
        "wait" => return wait(&ctx, arg, cancel).await,
        "cancel" if !arg.is_empty() => cancel_task(&ctx, arg).await,
        "cancel" => ctx.say("Usage: /cancel <task id>").await,
        "status" => status(&ctx).await,
        other => {
            ctx.say(format!(
                "Unknown command /{other}. Available: /spawn, /tasks, /wait, /cancel, /status."
            ))
            .await
        }
    }
    StopReason::EndTurn
}

/// Starts a task (in the default engine) and ends the turn at once; its
/// card keeps following the task afterwards.
async fn spawn(ctx: &Ctx<'_>, prompt: &str) {
    match super::prompt::create_task(ctx.agent, ctx.session, prompt, None).await {
        Ok(t) => {
            ctx.out.update(ctx.session, cards::tool_call(&t)).await;
            ctx.say(format!("Spawned task {}.", t.id)).await;
            cards::follow_spawned(ctx.agent, ctx.session, &t);
        }
        Err(e) => ctx.say(format!("Could not start the task: {e}")).await,
    }
}

async fn tasks(ctx: &Ctx<'_>) {
    let tasks = ctx.session_tasks();
    if tasks.is_empty() {
        ctx.say("No tasks in this session yet.").await;
    }
    for t in tasks {
        let line = format!(
            "{}  {}\n",
            cards::describe(&t),
            cards::title(&t.spec.prompt)
        );
        ctx.say(line).await;
    }
}

/// Waits for the given tasks, or the session's unfinished ones.
async fn wait(ctx: &Ctx<'_>, arg: &str, cancel: &tokio::sync::Notify) -> StopReason {
    let ids: Vec<String> = if arg.is_empty() {
        ctx.session_tasks()
            .into_iter()
            .filter(|t| !t.status.is_terminal())
            .map(|t| t.id)
            .collect()
    } else {
        arg.split_whitespace().map(str::to_string).collect()
    };
    if ids.is_empty() {
        ctx.say("Nothing to wait for.").await;
        return StopReason::EndTurn;
    }
    let Some(ws) = &ctx.ws else {
        return StopReason::EndTurn;
    };
    let waiting = crate::waiter::wait(ws, &ids, crate::waiter::Policy::All, None, |_| {});
    let outcome = tokio::select! {
        r = waiting => r,
        _ = cancel.notified() => return StopReason::Cancelled,
    };
    match outcome {
        Ok(o) => {
            for t in o.tasks.values().flatten() {
                ctx.say(format!("{}\n", cards::describe(t))).await;
            }
        }
        Err(e) => ctx.say(format!("Cannot wait: {e}")).await,
    }
    StopReason::EndTurn
}

async fn cancel_task(ctx: &Ctx<'_>, id: &str) {
    let method = Method::TaskCancel { id: id.to_string() };
    match super::call(ctx.agent, method).await {
        Ok(_) => ctx.say(format!("Cancelled {id}.")).await,
        Err(e) => ctx.say(format!("Could not cancel {id}: {e}")).await,
    }
}

async fn status(ctx: &Ctx<'_>) {
    let primary = ctx
        .ws
        .as_ref()
        .and_then(crate::primary_record::PrimaryRecord::read);
    let text = match (primary, &ctx.reader) {
        (Some(p), Some(r)) => {
            let counts: Vec<String> = r
                .counts()
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!(
                "primary pid {} epoch {}; this agent is pid {}; tasks: {}",
                p.pid,
                p.epoch,
                std::process::id(),
                if counts.is_empty() {
                    "none".into()
                } else {
                    counts.join(", ")
                }
            )
        }
        _ => "no primary yet".into(),
    };
    ctx.say(text).await;
}
