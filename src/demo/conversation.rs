//! The demo's agent conversation: a task of an `acp` engine (grove's own
//! `bench-agent`, on the official ACP crate, so the demo needs nothing but
//! this binary) that keeps its session. Its first turn streams across the
//! primary's `kill -9`; when it goes idle, another window says a follow-up
//! (the next turn of the same agent session), then closes it. Checked from
//! the store: every chunk of both turns stored once, in order, one session.

use crate::client::Client;
use crate::protocol::TaskStatus;
use crate::protocol::{ControlKind, Method, NewTask, ReplyBody, TaskControl, TaskRecord};

/// The first turn: 60 chunks, one per 50 ms (3 s, across the kill).
const FIRST: (usize, &str) = (60, "latency 60 50 /dev/null");
/// The follow-up said from another window when the session is idle.
const SECOND: (usize, &str) = (5, "latency 5 10 /dev/null");

/// The engine the conversation runs with: this very binary's agent.
pub fn engine_config() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find grove itself: {e}"))?;
    Ok(format!(
        "[engines.agent]\nkind = \"acp\"\ncommand = [{:?}, \"bench-agent\"]\n",
        exe.display().to_string()
    ))
}

/// Where the conversation stands.
pub struct Conversation {
    pub id: String,
    turns_ended: usize,
    closed: bool,
}

impl Conversation {
    pub async fn start(window: &mut Client) -> Result<Conversation, String> {
        let new = NewTask {
            prompt: FIRST.1.into(),
            engine: Some("agent".into()),
            keep_session: true,
            tags: vec!["demo".into(), "agent".into()],
            ..Default::default()
        };
        match window.call(Method::TaskCreate(new)).await {
            Ok(ReplyBody::Task(t)) => Ok(Conversation {
                id: t.id,
                turns_ended: 0,
                closed: false,
            }),
            Ok(other) => Err(format!("unexpected reply to task.create: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Steers the conversation on its task's update: the follow-up after
    /// the first turn, the close after the second. Returns what to narrate.
    pub async fn on_update(
        &mut self,
        window: &mut Client,
        task: &TaskRecord,
    ) -> Result<Option<String>, String> {
        if task.status != TaskStatus::Idle {
            return Ok(None);
        }
        self.turns_ended += 1;
        let (kind, text, said) = match self.turns_ended {
            1 => (
                ControlKind::Say,
                Some(SECOND.1.to_string()),
                "idle; window 3 says a follow-up",
            ),
            2 if !self.closed => (
                ControlKind::Close,
                None,
                "idle again; window 3 closes the session",
            ),
            _ => return Ok(None),
        };
        self.closed |= kind == ControlKind::Close;
        let control = TaskControl {
            id: self.id.clone(),
            kind,
            option: None,
            text,
            ask: None,
        };
        window
            .call(Method::TaskControl(control))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(said.to_string()))
    }

    /// The stored conversation: every chunk of both turns once and in
    /// order, one agent session, two turns.
    pub fn check(&self, reader: &crate::store::Reader) -> Result<(bool, String), String> {
        let last = reader.last_seq().map_err(|e| e.to_string())?;
        let updates = reader
            .agent_updates(&self.id, last)
            .map_err(|e| e.to_string())?;
        let count = |kind: &str| updates.iter().filter(|(_, k, _)| k == kind).count();
        let text = message_text(&updates);
        let markers: Vec<usize> = text
            .split('#')
            .filter_map(|m| m.split(':').next()?.parse().ok())
            .collect();
        let expected: Vec<usize> = (0..FIRST.0).chain(0..SECOND.0).collect();
        let ok = markers == expected && count("session") == 1 && count("turn_end") == 2;
        Ok((
            ok,
            format!(
                "the agent's conversation: {} chunks in 2 turns of 1 session, each stored once, in order, across the kill",
                markers.len()
            ),
        ))
    }
}

/// The agent's message, all its chunks joined, from a task's stored updates
/// (seq, kind, ACP JSON).
pub fn message_text(updates: &[(u64, String, String)]) -> String {
    updates
        .iter()
        .filter(|(_, k, _)| k == "agent_message_chunk")
        .filter_map(|(_, _, acp)| {
            let v: serde_json::Value = serde_json::from_str(acp).ok()?;
            v["content"]["text"].as_str().map(str::to_string)
        })
        .collect()
}
