//! One `session/prompt`: it runs as an orchestrator task of the session
//! (or, in an ACP engine's mode, as a turn of its agent: relay.rs). The
//! task shows as a tool card (cards.rs) with updates for its status and
//! progress; its output, tailed from the task's log file (the durable
//! record, so nothing is lost across a failover), is the card's content, a
//! code block; the turn ends when the task does.

use super::cards::{self, Card};
use super::error::AcpError;
use super::framing::Out;
use super::{Shared, slash};
use crate::protocol::{Method, NewTask, ReplyBody, TaskRecord, TaskStatus};
use crate::runs::RunFiles;
use crate::runs::log::LogReader;
use agent_client_protocol_schema::v1 as schema;
use schema::{AgentResponse, ContentBlock, RequestId, SessionId, StopReason};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tokio::sync::Notify;

/// History replay sends at most this much of each task's log.
const REPLAY_LOG_BYTES: u64 = 64 * 1024;
/// The most of a log one chunk message carries.
pub const LOG_READ: usize = 64 * 1024;

/// Starts a prompt; its response is sent when the turn ends.
pub async fn start(agent: &Shared, id: RequestId, req: schema::PromptRequest) {
    let out = agent.borrow().out.clone();
    let session = req.session_id;
    let cancel = Rc::new(Notify::new());
    let engine = match claim(agent, &session, &cancel) {
        Ok(engine) => engine,
        Err(e) => return out.fail(id, &e).await,
    };
    let text = prompt_text(&req.prompt);
    let turn_agent = agent.clone();
    agent.borrow_mut().spawn(async move {
        let stop = run_turn(&turn_agent, &session, &text, &engine, &cancel).await;
        if let Some(s) = turn_agent.borrow_mut().sessions.get_mut(&*session.0) {
            s.cancel = None;
        }
        let response = schema::PromptResponse::new(stop);
        out.respond(id, AgentResponse::PromptResponse(response))
            .await;
    });
}

/// Marks the session busy with this turn; returns its engine.
fn claim(agent: &Shared, session: &SessionId, cancel: &Rc<Notify>) -> Result<String, AcpError> {
    let mut a = agent.borrow_mut();
    let s = a
        .sessions
        .get_mut(&*session.0)
        .ok_or_else(|| AcpError::UnknownSession(session.to_string()))?;
    if s.cancel.is_some() {
        return Err(AcpError::PromptRunning);
    }
    s.cancel = Some(cancel.clone());
    Ok(s.engine.clone())
}

/// The text of the prompt: text blocks, the text of embedded resources,
/// and links as `<uri>`.
fn prompt_text(blocks: &[ContentBlock]) -> String {
    let mut parts = Vec::new();
    for b in blocks {
        match b {
            ContentBlock::Text(t) => parts.push(t.text.clone()),
            ContentBlock::Resource(r) => {
                if let schema::EmbeddedResourceResource::TextResourceContents(t) = &r.resource {
                    parts.push(t.text.clone());
                }
            }
            ContentBlock::ResourceLink(l) => parts.push(format!("<{}>", l.uri)),
            _ => {}
        }
    }
    parts.join("\n")
}

/// Runs one turn and returns its stop reason.
async fn run_turn(
    agent: &Shared,
    session: &SessionId,
    text: &str,
    engine: &str,
    cancel: &Notify,
) -> StopReason {
    let out = agent.borrow().out.clone();
    if let Some(command) = text.trim().strip_prefix('/') {
        return slash::run(agent, session, command, cancel).await;
    }
    if text.trim().is_empty() {
        out.say(session, "The prompt is empty.").await;
        return StopReason::EndTurn;
    }
    // Probe first: a dead primary is replaced before we continue; a hung one
    // is reported instead of hanging the editor.
    if let Err(e) = super::call(agent, Method::Ping {}).await {
        out.say(session, e.to_string()).await;
        return StopReason::EndTurn;
    }
    if super::relay::is_acp_engine(agent, engine) {
        return super::relay::run_turn(agent, session, text, engine, cancel).await;
    }
    let task = match create_task(agent, session, text, Some(engine)).await {
        Ok(t) => t,
        Err(e) => {
            out.say(session, format!("Could not start the task: {e}"))
                .await;
            return StopReason::EndTurn;
        }
    };
    follow(agent, session, &task, cancel).await
}

/// Creates a task of the session (in `engine`, or the default one).
pub async fn create_task(
    agent: &Shared,
    session: &SessionId,
    text: &str,
    engine: Option<&str>,
) -> Result<TaskRecord, AcpError> {
    let new = NewTask {
        prompt: text.to_string(),
        engine: engine.map(str::to_string),
        session_id: Some(session.to_string()),
        tags: vec!["acp".into()],
        // The editor shows and edits its own checkout: a worktree (the
        // `worktree` setting) would hide the agent's edits from it.
        worktree: Some(crate::protocol::WorktreeAsk::default()),
        ..Default::default()
    };
    match super::call(agent, Method::TaskCreate(new)).await? {
        ReplyBody::Task(t) => Ok(*t),
        other => Err(AcpError::UnexpectedReply(format!("{other:?}"))),
    }
}

/// A turn's task as the turn shows it: its card and how much of its log
/// the client has.
struct Turn {
    agent: Shared,
    out: Out,
    session: SessionId,
    card: Card,
    log: PathBuf,
    offset: u64,
    cancelled: bool,
}

/// Streams the task until it ends; cancels it on `session/cancel`.
async fn follow(
    agent: &Shared,
    session: &SessionId,
    task: &TaskRecord,
    cancel: &Notify,
) -> StopReason {
    let Some(ws) = agent.borrow().ws.clone() else {
        return StopReason::EndTurn;
    };
    let mut turn = Turn {
        agent: agent.clone(),
        out: agent.borrow().out.clone(),
        session: session.clone(),
        card: Card::of(task),
        log: RunFiles::log(&ws, &task.id),
        offset: 0,
        cancelled: false,
    };
    turn.out.update(session, cards::tool_call(task)).await;
    let mut reader = None;
    loop {
        turn.pause(cancel).await;
        if reader.is_none() {
            reader = crate::store::Reader::open(&ws.db_path()).ok();
        }
        let Some(r) = &reader else { continue };
        let Ok(row) = r.task(&task.id) else { continue };
        let Some(t) = row else {
            return turn.gone().await;
        };
        if let Some(stop) = turn.show(&t).await {
            return stop;
        }
    }
}

impl Turn {
    /// Waits for the next look, cancelling the task if asked meanwhile.
    async fn pause(&mut self, cancel: &Notify) {
        tokio::select! {
            _ = cancel.notified(), if !self.cancelled => {
                self.cancelled = true;
                let id = self.card.task_id.clone();
                if let Err(e) = super::call(&self.agent, Method::TaskCancel { id }).await {
                    self.out.say(&self.session, format!("Could not cancel: {e}")).await;
                }
            }
            _ = tokio::time::sleep(cards::POLL) => {}
        }
    }

    /// Shows the task as read (`t`) and the output it gained; returns the
    /// stop reason once the task has ended. The card goes in progress
    /// before the output it produced and finishes after the last of it.
    /// `t` is read before the log: what the task wrote before it ended is
    /// in the file once the end is visible.
    async fn show(&mut self, t: &TaskRecord) -> Option<StopReason> {
        let ended = t.status.is_terminal();
        if !ended {
            self.show_card(t).await;
        }
        self.stream_output(ended).await;
        if !ended {
            return None;
        }
        self.show_card(t).await;
        if t.status != TaskStatus::Completed && !self.cancelled {
            let line = format!("\n{}\n", cards::describe(t));
            self.out.say(&self.session, line).await;
        }
        Some(self.stop_reason())
    }

    async fn show_card(&mut self, t: &TaskRecord) {
        if let Some(update) = self.card.follow(t) {
            self.out.update(&self.session, update).await;
        }
    }

    async fn stream_output(&mut self, ended: bool) {
        let len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        if len <= self.offset {
            return;
        }
        let (out, session) = (&self.out, &self.session);
        self.offset = stream_log(out, session, &mut self.card, &self.log, self.offset, ended).await;
    }

    async fn gone(&mut self) -> StopReason {
        let update = self.card.gone();
        self.out.update(&self.session, update).await;
        self.out.say(&self.session, "The task was deleted.").await;
        self.stop_reason()
    }

    fn stop_reason(&self) -> StopReason {
        if self.cancelled {
            StopReason::Cancelled
        } else {
            StopReason::EndTurn
        }
    }
}

/// Shows what the log gained since `offset` on the card, one read per
/// update (each send waits for room on stdout, so a slow client slows the
/// reading, not our memory); returns the new offset. A character cut by the
/// end of a read is left for the next one, unless `at_end` (nothing more
/// will come).
async fn stream_log(
    out: &Out,
    session: &SessionId,
    card: &mut Card,
    path: &Path,
    offset: u64,
    at_end: bool,
) -> u64 {
    let Ok(mut log) = LogReader::open(path, offset, LOG_READ) else {
        return offset;
    };
    loop {
        let (text, used) = match log.peek() {
            Ok(bytes) if !bytes.is_empty() => {
                let used = if at_end {
                    bytes.len()
                } else {
                    whole_chars(bytes)
                };
                (String::from_utf8_lossy(&bytes[..used]).into_owned(), used)
            }
            _ => return log.offset(),
        };
        if used == 0 {
            return log.offset(); // only part of a character so far
        }
        log.consume(used);
        out.update(session, card.output(&text)).await;
    }
}

/// How much of `bytes` to send now: all of it, except an incomplete UTF-8
/// sequence at its end (the rest of it is not read yet).
fn whole_chars(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    }
}

/// Replays a session's history up to seq `upto` as `session/update`s
/// (before the response to `session/load`): an ACP agent's conversation
/// whole, a command's task as its card and the end of its log.
pub async fn replay(
    agent: &Shared,
    reader: &crate::store::Reader,
    session: &SessionId,
    upto: u64,
) -> Result<(), AcpError> {
    let out = agent.borrow().out.clone();
    let ws = agent.borrow().ws.clone().ok_or(AcpError::NoWorkspace)?;
    let filter = crate::store::TaskFilter {
        session_id: Some(session.to_string()),
        ..Default::default()
    };
    let mut tasks = reader.tasks(&filter)?;
    tasks.sort_by_key(|t| t.created_at);
    for t in tasks {
        if t.spec.keep_session {
            super::relay::replay(agent, reader, session, &t.id, upto).await?;
            continue;
        }
        let prompt = schema::ContentChunk::new(t.spec.prompt.clone().into());
        out.update(session, schema::SessionUpdate::UserMessageChunk(prompt))
            .await;
        out.update(session, cards::tool_call(&t)).await;
        let log = RunFiles::log(&ws, &t.id);
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(REPLAY_LOG_BYTES);
        let mut card = Card::of(&t);
        stream_log(&out, session, &mut card, &log, from, true).await;
        if let Some(update) = card.follow(&t) {
            out.update(session, update).await;
        }
        if t.status.is_terminal() && t.status != TaskStatus::Completed {
            out.say(session, format!("\n{}\n", cards::describe(&t)))
                .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_character_waits_for_its_rest() {
        let e_acute = "é".as_bytes();
        assert_eq!(whole_chars(b"abc"), 3);
        assert_eq!(whole_chars(&[b'a', e_acute[0]]), 1);
        assert_eq!(whole_chars(&[e_acute[0]]), 0);
        // Invalid bytes are not waited for: they go out as U+FFFD.
        assert_eq!(whole_chars(&[0xff, b'a']), 2);
    }
}
