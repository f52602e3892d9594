//! An ACP engine's agent, relayed to the editor: when a session's mode is
//! an `acp` engine, its prompts are turns of one kept agent session that a
//! task's shim holds (`spawn --session`), and the agent's updates reach the
//! editor as themselves — message and thought chunks, tool calls with
//! their diffs, plans, modes, commands — read from the durable event
//! stream, so a failover loses none. The agent's permission requests are
//! asked of the editor and its answer goes back as a control. The editor's
//! `session/cancel` interrupts its prompt (`task.control interrupt`): a
//! prompt still queued is withdrawn, a running turn is cancelled, and the
//! session stays open, idle, holding no slot; a new session's task whose
//! first turn has not begun is cancelled. Closing or killing the editor
//! leaves the agent working; `session/load` replays the whole
//! conversation and follows a turn still running. One follower at a time
//! shows a session's updates in a window (`View`).

use super::Shared;
use super::error::AcpError;
use crate::protocol::{
    ControlKind, EventData, Method, NewTask, ReplyBody, TaskControl, TaskStatus,
};
use agent_client_protocol_schema::v1 as schema;
use schema::{SessionId, StopReason};
use serde_json::Value;
use std::cell::Cell;
use std::rc::Rc;
use tokio::sync::Notify;

/// Whether prompts in `engine` are relayed to an ACP agent.
pub fn is_acp_engine(agent: &Shared, engine: &str) -> bool {
    agent
        .borrow()
        .config
        .engines
        .get(engine)
        .is_some_and(|e| e.kind == crate::config::EngineKind::Acp)
}

/// One prompt of the editor, as a turn of the session's agent.
pub async fn run_turn(
    agent: &Shared,
    session: &SessionId,
    text: &str,
    engine: &str,
    cancel: &Notify,
) -> StopReason {
    let out = agent.borrow().out.clone();
    match start_turn(agent, session, text, engine).await {
        Ok((task_id, from, created)) => {
            let prompt = Prompt {
                text,
                created,
                cancel,
            };
            follow(agent, session, &task_id, from, Following::Prompt(prompt)).await
        }
        Err(e) => {
            out.say(
                session,
                format!("Could not give the agent this prompt: {e}"),
            )
            .await;
            StopReason::EndTurn
        }
    }
}

/// Gives the session's agent its next turn: a follow-up to its idle (or
/// busy: queued) session, the resume of a paused one, or a new kept
/// session when there is none. Returns the task, the first event seq
/// that can belong to the turn, and whether the task is new.
async fn start_turn(
    agent: &Shared,
    session: &SessionId,
    text: &str,
    engine: &str,
) -> Result<(String, u64, bool), AcpError> {
    let ws = agent.borrow().ws.clone().ok_or(AcpError::NoWorkspace)?;
    let reader = crate::store::Reader::open(&ws.db_path())?;
    let from = reader.last_seq()? + 1;
    let current = session_task(agent, &reader, session)?;
    let created = current.is_none();
    let method = match current {
        Some(t) if t.status == TaskStatus::Paused => Method::TaskResume {
            id: t.id.clone(),
            instructions: Some(text.to_string()),
            changes: Default::default(),
        },
        Some(t) => Method::TaskControl(TaskControl {
            id: t.id.clone(),
            kind: ControlKind::Say,
            option: None,
            text: Some(text.to_string()),
            ask: None,
        }),
        None => Method::TaskCreate(NewTask {
            prompt: text.to_string(),
            engine: Some(engine.to_string()),
            session_id: Some(session.to_string()),
            tags: vec!["acp".into()],
            keep_session: true,
            // The editor's own checkout, never a worktree (see prompt.rs).
            worktree: Some(crate::protocol::WorktreeAsk::default()),
            ..Default::default()
        }),
    };
    let task = match super::call(agent, method).await? {
        ReplyBody::Task(t) => *t,
        other => return Err(AcpError::UnexpectedReply(format!("{other:?}"))),
    };
    if let Some(s) = agent.borrow_mut().sessions.get_mut(&*session.0) {
        s.agent_task = Some(task.id.clone());
    }
    Ok((task.id, from, created))
}

/// The session's live agent task: the one this process knows, else the
/// newest kept session of the editor session in the store (another window
/// started it). A task that ended is not continued.
fn session_task(
    agent: &Shared,
    reader: &crate::store::Reader,
    session: &SessionId,
) -> Result<Option<crate::protocol::TaskRecord>, AcpError> {
    let known = agent
        .borrow()
        .sessions
        .get(&*session.0)
        .and_then(|s| s.agent_task.clone());
    let task = match known {
        Some(id) => reader.task(&id)?,
        None => live_agent_task(reader, session)?,
    };
    Ok(task.filter(|t| !t.status.is_terminal()))
}

/// The newest unfinished kept session of an editor session.
pub fn live_agent_task(
    reader: &crate::store::Reader,
    session: &SessionId,
) -> Result<Option<crate::protocol::TaskRecord>, AcpError> {
    let filter = crate::store::TaskFilter {
        session_id: Some(session.to_string()),
        ..Default::default()
    };
    Ok(reader
        .tasks(&filter)?
        .into_iter()
        .filter(|t| t.spec.keep_session && !t.status.is_terminal())
        .max_by_key(|t| t.created_at))
}

/// A window's view of one session's agent updates, held by one follower
/// at a time: two followers of one turn (a load while a turn runs, then a
/// prompt queued behind it; a load of a session whose prompt this window
/// follows) sent the editor every update twice.
pub struct View(Rc<Cell<bool>>);

impl View {
    /// The session's view, unless another follower holds it.
    pub fn take(agent: &Shared, session: &SessionId) -> Option<View> {
        let held = agent.borrow().sessions.get(&*session.0)?.viewed.clone();
        // Built only when taken: a `View` dropped unheld would free it.
        (!held.replace(true)).then(|| View(held))
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// What a follower follows.
pub enum Following<'a> {
    /// A turn that ran when the window loaded the session.
    Loaded(View),
    /// This window's prompt.
    Prompt(Prompt<'a>),
}

/// A prompt of this window, as its turn.
pub struct Prompt<'a> {
    text: &'a str,
    /// Its task was created for it (a new agent session).
    created: bool,
    /// The editor's `session/cancel`.
    cancel: &'a Notify,
}

/// Relays task `task_id`'s updates from seq `from` until its turn ends.
/// A prompt's turn starts at its `prompt` update: the end of a turn still
/// running when the prompt was queued is not its end; that turn's updates
/// are shown only while no other follower shows them.
pub async fn follow(
    agent: &Shared,
    session: &SessionId,
    task_id: &str,
    from: u64,
    following: Following<'_>,
) -> StopReason {
    let Some(ws) = agent.borrow().ws.clone() else {
        return StopReason::EndTurn;
    };
    let out = agent.borrow().out.clone();
    let mut sub = crate::subscriber::subscribe(&ws, from);
    let (mut view, prompt) = match following {
        Following::Loaded(view) => (Some(view), None),
        Following::Prompt(p) => (View::take(agent, session), Some(p)),
    };
    let mut cancelled = false;
    let mut started = prompt.is_none();
    loop {
        let cancel = prompt.as_ref().map(|p| p.cancel);
        let event = tokio::select! {
            e = sub.events.recv() => e,
            _ = async { cancel.unwrap().notified().await }, if cancel.is_some() && !cancelled => {
                cancelled = true;
                let prompt = prompt.as_ref().expect("a prompt's cancel");
                if let Err(e) = interrupt(agent, task_id, prompt, started).await {
                    out.say(session, format!("Could not cancel the turn: {e}")).await;
                }
                // Withdrawn before it began: no update of it will come.
                if !started {
                    return StopReason::Cancelled;
                }
                continue;
            }
        };
        let Some(event) = event else {
            out.say(session, "The event stream ended.").await;
            return StopReason::EndTurn;
        };
        match event.data {
            EventData::TaskAgentUpdate { id, kind, acp, .. } if id == task_id => {
                // A loaded turn's follower ends with it: the next turn
                // (begun or not) is another follower's.
                if prompt.is_none() && matches!(kind.as_str(), "prompt" | "idle") {
                    return StopReason::EndTurn;
                }
                // Our turn is our prompt's, not another window's queued
                // before it (a new task's first turn is ours).
                if let Some(p) = &prompt
                    && kind == "prompt"
                    && (p.created || prompt_text(&acp).as_deref() == Some(p.text))
                {
                    started = true;
                }
                if view.is_none() {
                    view = View::take(agent, session);
                }
                if !started && view.is_none() {
                    continue; // another follower shows the turn before ours
                }
                let stop = relay_update(agent, session, task_id, &kind, &acp).await;
                if let Some(stop) = stop.filter(|_| started) {
                    return stop;
                }
            }
            EventData::TaskUpdated { task } if task.id == task_id && task.status.is_terminal() => {
                if task.status != TaskStatus::Completed && !cancelled {
                    out.say(session, format!("\n{}\n", super::cards::describe(&task)))
                        .await;
                }
                return match task.status {
                    TaskStatus::Cancelled => StopReason::Cancelled,
                    _ => StopReason::EndTurn,
                };
            }
            EventData::TaskDeleted { id } if id == task_id => {
                out.say(session, "The task was deleted.").await;
                return StopReason::EndTurn;
            }
            _ => {}
        }
    }
}

/// The editor cancelled `prompt`: a new session whose first turn has not
/// begun is cancelled whole (there is no conversation to keep, and its
/// queued or starting task would otherwise run the prompt); otherwise the
/// prompt is interrupted, which withdraws it while it waits and cancels
/// its turn once it runs, keeping the session (see `ControlKind::Interrupt`).
async fn interrupt(
    agent: &Shared,
    task_id: &str,
    prompt: &Prompt<'_>,
    started: bool,
) -> Result<ReplyBody, AcpError> {
    let id = task_id.to_string();
    if prompt.created && !started {
        return super::call(agent, Method::TaskCancel { id }).await;
    }
    // Named always: an interrupt of "whatever runs" sent as the turn
    // ended would cut the next one (a goal's iteration, another window's).
    let control = TaskControl {
        id,
        kind: ControlKind::Interrupt,
        option: started.then(|| crate::protocol::INTERRUPT_RUNNING.to_string()),
        text: Some(prompt.text.to_string()),
        ask: None,
    };
    super::call(agent, Method::TaskControl(control)).await
}

/// The text of a stored `prompt` update.
fn prompt_text(acp: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Prompt {
        text: String,
    }
    serde_json::from_str::<Prompt>(acp).ok().map(|p| p.text)
}

/// Sends one live update to the editor; `Some` when it ends the turn.
async fn relay_update(
    agent: &Shared,
    session: &SessionId,
    task_id: &str,
    kind: &str,
    acp: &str,
) -> Option<StopReason> {
    let value: Value = serde_json::from_str(acp).unwrap_or(Value::Null);
    match kind {
        "turn_end" => Some(stop_reason(&value)),
        crate::store::agent::PERMISSION_REQUEST => {
            // Asked beside the relay: the turn's other updates (an answer
            // from another window, the turn's end) keep flowing.
            let (a, s, t) = (agent.clone(), session.clone(), task_id.to_string());
            agent.borrow_mut().spawn(async move {
                ask_editor(&a, &s, &t, &value).await;
            });
            None
        }
        _ => {
            forward(agent, session, &value).await;
            None
        }
    }
}

/// An update of the agent's session as the editor gets it: ACP session
/// updates as themselves; grove's own (prompts, permission answers,
/// notes, the session's set-up) are not the editor's.
async fn forward(agent: &Shared, session: &SessionId, value: &Value) {
    if value.get("sessionUpdate").is_none() {
        return;
    }
    match serde_json::from_value::<schema::SessionUpdate>(value.clone()) {
        Ok(update) => {
            let out = agent.borrow().out.clone();
            out.update(session, update).await;
        }
        Err(e) => tracing::debug!("acp: an agent update the editor cannot take: {e}"),
    }
}

fn stop_reason(turn_end: &Value) -> StopReason {
    match turn_end["stopReason"].as_str() {
        Some("cancelled") => StopReason::Cancelled,
        Some("refusal") => StopReason::Refusal,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("max_turn_requests") => StopReason::MaxTurnRequests,
        _ => StopReason::EndTurn,
    }
}

/// Asks the editor a request that was waiting when it loaded the session
/// (`update`: the stored `permission_request` update).
pub async fn ask_pending(agent: &Shared, session: &SessionId, task_id: &str, update: &str) {
    let value: Value = serde_json::from_str(update).unwrap_or(Value::Null);
    ask_editor(agent, session, task_id, &value).await;
}

/// Asks the editor the agent's permission request (`update`: the stored
/// `permission_request` update) and answers the task with what the editor
/// chose (a reject option denies; no choice denies), for that request only:
/// if it was answered meanwhile (another window, the timeout), the store
/// refuses this answer rather than apply it to a later request.
async fn ask_editor(agent: &Shared, session: &SessionId, task_id: &str, update: &Value) {
    let ask = update["ask"].as_u64();
    let mut request = update["request"].clone();
    request["sessionId"] = Value::String(session.to_string());
    let parsed = match serde_json::from_value::<schema::RequestPermissionRequest>(request.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("acp: a permission request the editor cannot take: {e}");
            return;
        }
    };
    let (id, answer) = agent.borrow_mut().ask();
    let out = agent.borrow().out.clone();
    out.request(id, schema::AgentRequest::RequestPermissionRequest(parsed))
        .await;
    let chosen = match answer.await {
        Ok(Ok(v)) => serde_json::from_value::<schema::RequestPermissionResponse>(v)
            .ok()
            .and_then(|r| match r.outcome {
                schema::RequestPermissionOutcome::Selected(s) => Some(s.option_id.to_string()),
                _ => None,
            }),
        _ => None,
    };
    let rejects = |option: &str| {
        request["options"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| {
                o["optionId"] == option
                    && o["kind"].as_str().is_some_and(|k| k.starts_with("reject"))
            })
    };
    let kind = match &chosen {
        Some(o) if !rejects(o) => ControlKind::Approve,
        _ => ControlKind::Deny,
    };
    let control = TaskControl {
        id: task_id.to_string(),
        kind,
        option: chosen,
        text: None,
        ask,
    };
    // Refused when another window answered first: that answer stands.
    if let Err(e) = super::call(agent, Method::TaskControl(control)).await {
        tracing::info!("acp: the editor's permission answer was not applied: {e}");
    }
}

/// Replays task `task`'s conversation up to seq `upto` (its prompts as the
/// user's messages, the agent's updates as themselves).
pub async fn replay(
    agent: &Shared,
    reader: &crate::store::Reader,
    session: &SessionId,
    task: &str,
    upto: u64,
) -> Result<(), AcpError> {
    let out = agent.borrow().out.clone();
    for (_, kind, acp) in reader.agent_updates(task, upto)? {
        let value: Value = serde_json::from_str(&acp).unwrap_or(Value::Null);
        if kind == "prompt" {
            let text = value["text"].as_str().unwrap_or_default().to_string();
            let chunk = schema::ContentChunk::new(text.into());
            out.update(session, schema::SessionUpdate::UserMessageChunk(chunk))
                .await;
        } else {
            forward(agent, session, &value).await;
        }
    }
    Ok(())
}
