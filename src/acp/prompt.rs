//! One `session/prompt`: it runs as an orchestrator task of the session.
//! The task shows as a `tool_call` (kind `execute`) with updates for its
//! status and progress; its output, tailed from the task's log file (the
//! durable record, so nothing is lost across a failover), streams as
//! `agent_message_chunk`; the turn ends when the task does.

use super::{INVALID_PARAMS, Out, Shared};
use crate::protocol::{Method, NewTask, ReplyBody, TaskRecord, TaskStatus};
use crate::shim::RunFiles;
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::Notify;

const POLL: Duration = Duration::from_millis(100);
/// History replay sends at most this much of each task's log.
const REPLAY_LOG_BYTES: u64 = 64 * 1024;

/// The slash commands advertised with `available_commands_update`.
pub fn available_commands() -> Value {
    let cmd = |name: &str, description: &str, hint: Option<&str>| {
        let mut c = json!({"name": name, "description": description});
        if let Some(h) = hint {
            c["input"] = json!({"hint": h});
        }
        c
    };
    json!({
        "sessionUpdate": "available_commands_update",
        "availableCommands": [
            cmd("spawn", "Start a background task in this session without waiting", Some("what the task should do")),
            cmd("tasks", "List this session's tasks", None),
            cmd("wait", "Wait for this session's unfinished tasks (or the given ids)", Some("task ids (optional)")),
            cmd("cancel", "Cancel a task", Some("task id")),
            cmd("status", "Show the grove: primary, members, task counts", None),
        ],
    })
}

/// Calls the primary over RPC (a fresh client follows any failover).
pub async fn call(agent: &Shared, method: Method) -> Result<ReplyBody, String> {
    let (ws, config) = {
        let a = agent.borrow();
        let ws = a.ws.clone().ok_or("no workspace yet")?;
        (ws, a.config.clone())
    };
    let mut client = crate::client::Client::new(&ws, &config, "acp");
    client.call(method).await.map_err(|e| e.to_string())
}

/// Starts a prompt; its response is sent when the turn ends.
pub fn start(agent: &Shared, id: Value, params: &Value) {
    let out = agent.borrow().out.clone();
    let Some(session) = params.get("sessionId").and_then(Value::as_str) else {
        return out.error(&id, INVALID_PARAMS, "sessionId is required");
    };
    let Some(blocks) = params.get("prompt").and_then(Value::as_array) else {
        return out.error(
            &id,
            INVALID_PARAMS,
            "prompt must be an array of content blocks",
        );
    };
    let text = prompt_text(blocks);
    let cancel = Rc::new(Notify::new());
    let engine = {
        let mut a = agent.borrow_mut();
        let Some(s) = a.sessions.get_mut(session) else {
            return out.error(&id, INVALID_PARAMS, format!("unknown session {session}"));
        };
        if s.cancel.is_some() {
            return out.error(
                &id,
                INVALID_PARAMS,
                "a prompt is already running in this session",
            );
        }
        s.cancel = Some(cancel.clone());
        s.engine.clone()
    };
    let agent = agent.clone();
    let session = session.to_string();
    tokio::task::spawn_local(async move {
        let stop = run_turn(&agent, &session, &text, &engine, &cancel).await;
        if let Some(s) = agent.borrow_mut().sessions.get_mut(&session) {
            s.cancel = None;
        }
        out.respond(&id, json!({"stopReason": stop}));
    });
}

/// The text of the prompt: text blocks, and the text of embedded resources.
fn prompt_text(blocks: &[Value]) -> String {
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.extend(b.get("text").and_then(Value::as_str).map(str::to_string)),
            Some("resource") => parts.extend(
                b.pointer("/resource/text")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            Some("resource_link") => parts.extend(
                b.get("uri")
                    .and_then(Value::as_str)
                    .map(|u| format!("<{u}>")),
            ),
            _ => {}
        }
    }
    parts.join("\n")
}

/// Runs one turn and returns its stop reason.
async fn run_turn(
    agent: &Shared,
    session: &str,
    text: &str,
    engine: &str,
    cancel: &Notify,
) -> &'static str {
    let out = agent.borrow().out.clone();
    if let Some(command) = text.trim().strip_prefix('/') {
        return slash(agent, session, command, cancel).await;
    }
    if text.trim().is_empty() {
        out.say(session, "The prompt is empty.");
        return "end_turn";
    }
    // Probe first: a dead primary is replaced before we continue; a hung one
    // is reported instead of hanging the editor.
    if let Err(e) = call(agent, Method::Ping {}).await {
        out.say(session, &format!("grove is unavailable: {e}"));
        return "end_turn";
    }
    let task = match spawn(agent, session, text, Some(engine)).await {
        Ok(t) => t,
        Err(e) => {
            out.say(session, &format!("Could not start the task: {e}"));
            return "end_turn";
        }
    };
    follow(agent, session, &task, cancel).await
}

async fn spawn(
    agent: &Shared,
    session: &str,
    text: &str,
    engine: Option<&str>,
) -> Result<TaskRecord, String> {
    let new = NewTask {
        prompt: text.to_string(),
        engine: engine.map(str::to_string),
        session_id: Some(session.to_string()),
        tags: vec!["acp".into()],
        ..Default::default()
    };
    match call(agent, Method::TaskCreate(new)).await? {
        ReplyBody::Task(t) => Ok(*t),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

fn title(prompt: &str) -> String {
    let first = prompt.lines().next().unwrap_or("");
    let mut t: String = first.chars().take(80).collect();
    if first.chars().count() > 80 || prompt.lines().count() > 1 {
        t.push('…');
    }
    t
}

fn tool_status(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Paused => "pending",
        TaskStatus::Running => "in_progress",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed | TaskStatus::Cancelled => "failed",
    }
}

fn tool_call(t: &TaskRecord) -> Value {
    json!({
        "sessionUpdate": "tool_call",
        "toolCallId": t.id,
        "title": title(&t.prompt),
        "kind": "execute",
        "status": tool_status(t.status),
        "rawInput": {"prompt": t.prompt, "engine": t.engine},
    })
}

fn describe(t: &TaskRecord) -> String {
    let mut s = format!("task {} {}", &t.id[..12.min(t.id.len())], t.status.as_str());
    if let Some(r) = t.failure_reason {
        s.push_str(&format!(" ({})", r.as_str()));
    }
    if let Some(c) = t.exit_code {
        s.push_str(&format!(", exit code {c}"));
    }
    s
}

/// Streams the task until it ends; cancels it on `session/cancel`.
async fn follow(agent: &Shared, session: &str, task: &TaskRecord, cancel: &Notify) -> &'static str {
    let out = agent.borrow().out.clone();
    let Some(ws) = agent.borrow().ws.clone() else {
        return "end_turn";
    };
    out.update(session, tool_call(task));
    let log = RunFiles::log(&ws, &task.id);
    let mut offset = 0u64;
    let mut last = (task.status, task.progress_pct, task.progress_text.clone());
    let mut cancelled = false;
    let mut reader = None;
    loop {
        tokio::select! {
            _ = cancel.notified(), if !cancelled => {
                cancelled = true;
                if let Err(e) = call(agent, Method::TaskCancel { id: task.id.clone() }).await {
                    out.say(session, &format!("Could not cancel: {e}"));
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        if reader.is_none() {
            reader = crate::store::Reader::open(&ws.db_path()).ok();
        }
        // Status before output: what was written before the end is in the
        // file once the end is visible.
        let now = reader
            .as_ref()
            .and_then(|r| r.task(&task.id).ok())
            .flatten();
        offset = stream_log(&out, session, &log, offset);
        let Some(t) = now else {
            out.say(session, "The task was deleted.");
            return if cancelled { "cancelled" } else { "end_turn" };
        };
        let state = (t.status, t.progress_pct, t.progress_text.clone());
        if state != last {
            let mut update = json!({
                "sessionUpdate": "tool_call_update",
                "toolCallId": t.id,
                "status": tool_status(t.status),
            });
            if let Some(p) = t.progress_pct {
                let text = format!("{p}% {}", t.progress_text.as_deref().unwrap_or(""));
                update["content"] = json!([{"type": "content", "content": {"type": "text", "text": text.trim_end()}}]);
            }
            out.update(session, update);
            last = state;
        }
        if t.status.is_terminal() {
            if t.status != TaskStatus::Completed && !cancelled {
                out.say(session, &format!("\n{}\n", describe(&t)));
            }
            return if cancelled { "cancelled" } else { "end_turn" };
        }
    }
}

/// Sends what the log gained since `offset`; returns the new offset.
fn stream_log(out: &Out, session: &str, path: &std::path::Path, mut offset: u64) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return offset;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if f.seek(SeekFrom::Start(offset)).is_err() {
            return offset;
        }
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return offset,
            Ok(n) => {
                offset += n as u64;
                out.say(session, &String::from_utf8_lossy(&buf[..n]));
            }
        }
    }
}

/// Replays a session's history as `session/update`s (before the response
/// to `session/load`).
pub fn replay(agent: &Shared, reader: &crate::store::Reader, session: &str) -> Result<(), String> {
    let out = agent.borrow().out.clone();
    let Some(ws) = agent.borrow().ws.clone() else {
        return Ok(());
    };
    let filter = crate::store::TaskFilter {
        session_id: Some(session.to_string()),
        ..Default::default()
    };
    for t in reader.tasks(&filter).map_err(|e| e.to_string())? {
        out.update(
            session,
            json!({"sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": t.prompt}}),
        );
        out.update(session, tool_call(&t));
        let log = RunFiles::log(&ws, &t.id);
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        stream_log(&out, session, &log, len.saturating_sub(REPLAY_LOG_BYTES));
        if t.status.is_terminal() && t.status != TaskStatus::Completed {
            out.say(session, &format!("\n{}\n", describe(&t)));
        }
    }
    Ok(())
}

/// `/spawn`, `/tasks`, `/wait`, `/cancel`, `/status`.
async fn slash(agent: &Shared, session: &str, command: &str, cancel: &Notify) -> &'static str {
    let out = agent.borrow().out.clone();
    let (name, arg) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let arg = arg.trim();
    let ws = agent.borrow().ws.clone();
    let reader = ws
        .as_ref()
        .and_then(|w| crate::store::Reader::open(&w.db_path()).ok());
    let session_tasks = || -> Vec<TaskRecord> {
        let filter = crate::store::TaskFilter {
            session_id: Some(session.to_string()),
            ..Default::default()
        };
        reader
            .as_ref()
            .and_then(|r| r.tasks(&filter).ok())
            .unwrap_or_default()
    };
    match name {
        "spawn" if !arg.is_empty() => match spawn(agent, session, arg, None).await {
            Ok(t) => {
                out.update(session, tool_call(&t));
                out.say(session, &format!("Spawned task {}.", t.id));
            }
            Err(e) => out.say(session, &format!("Could not start the task: {e}")),
        },
        "spawn" => out.say(session, "Usage: /spawn <what the task should do>"),
        "tasks" => {
            let tasks = session_tasks();
            if tasks.is_empty() {
                out.say(session, "No tasks in this session yet.");
            }
            for t in tasks {
                out.say(
                    session,
                    &format!("{}  {}\n", describe(&t), title(&t.prompt)),
                );
            }
        }
        "wait" => {
            let ids: Vec<String> = if arg.is_empty() {
                session_tasks()
                    .into_iter()
                    .filter(|t| !t.status.is_terminal())
                    .map(|t| t.id)
                    .collect()
            } else {
                arg.split_whitespace().map(str::to_string).collect()
            };
            if ids.is_empty() {
                out.say(session, "Nothing to wait for.");
                return "end_turn";
            }
            let Some(ws) = ws else { return "end_turn" };
            let waiting = crate::waiter::wait(&ws, &ids, crate::waiter::Policy::All, None, |_| {});
            tokio::select! {
                r = waiting => match r {
                    Ok(o) => {
                        for t in o.tasks.values().flatten() {
                            out.say(session, &format!("{}\n", describe(t)));
                        }
                    }
                    Err(e) => out.say(session, &format!("Cannot wait: {e}")),
                },
                _ = cancel.notified() => return "cancelled",
            }
        }
        "cancel" if !arg.is_empty() => {
            match call(
                agent,
                Method::TaskCancel {
                    id: arg.to_string(),
                },
            )
            .await
            {
                Ok(_) => out.say(session, &format!("Cancelled {arg}.")),
                Err(e) => out.say(session, &format!("Could not cancel {arg}: {e}")),
            }
        }
        "cancel" => out.say(session, "Usage: /cancel <task id>"),
        "status" => {
            let text = match (
                ws.as_ref()
                    .and_then(crate::primary_record::PrimaryRecord::read),
                &reader,
            ) {
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
            out.say(session, &text);
        }
        other => out.say(
            session,
            &format!(
                "Unknown command /{other}. Available: /spawn, /tasks, /wait, /cancel, /status."
            ),
        ),
    }
    "end_turn"
}
