//! A grove task shown as an ACP tool call ("card", kind `execute`): its
//! first appearance, the updates that follow its status and progress, and
//! the tracker that keeps the cards of `/spawn`ed tasks up to date after
//! the turn that started them has ended.

use super::Shared;
use crate::protocol::{TaskRecord, TaskStatus};
use agent_client_protocol_schema::v1 as schema;
use schema::{SessionId, SessionUpdate, ToolCallStatus, ToolCallUpdate, ToolCallUpdateFields};
use std::time::Duration;

/// How often a card's task is re-read from the store.
pub const POLL: Duration = Duration::from_millis(100);

/// Longest card title, in characters.
const TITLE_CHARS: usize = 80;

pub fn status(s: TaskStatus) -> ToolCallStatus {
    match s {
        TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Paused => ToolCallStatus::Pending,
        TaskStatus::Running | TaskStatus::Waiting => ToolCallStatus::InProgress,
        // Idle: its turn is done; the session waits for a follow-up.
        TaskStatus::Completed | TaskStatus::Idle => ToolCallStatus::Completed,
        TaskStatus::Failed | TaskStatus::Cancelled => ToolCallStatus::Failed,
    }
}

/// The first line of the prompt, cut to `TITLE_CHARS`.
pub fn title(prompt: &str) -> String {
    let first = prompt.lines().next().unwrap_or("");
    let mut t: String = first.chars().take(TITLE_CHARS).collect();
    if first.chars().count() > TITLE_CHARS || prompt.lines().count() > 1 {
        t.push('…');
    }
    t
}

/// One line about a task: short id, status, why it failed, exit code.
pub fn describe(t: &TaskRecord) -> String {
    let mut s = format!("task {} {}", &t.id[..12.min(t.id.len())], t.status.as_str());
    if let Some(r) = t.failure_reason {
        s.push_str(&format!(" ({})", r.as_str()));
    }
    if let Some(c) = t.exit_code {
        s.push_str(&format!(", exit code {c}"));
    }
    s
}

/// The card's first appearance.
pub fn tool_call(t: &TaskRecord) -> SessionUpdate {
    let call = schema::ToolCall::new(t.id.clone(), title(&t.spec.prompt))
        .kind(schema::ToolKind::Execute)
        .status(status(t.status))
        .raw_input(serde_json::json!({"prompt": t.spec.prompt, "engine": t.spec.engine}));
    SessionUpdate::ToolCall(call)
}

/// What a card shows; an update goes out when it changes.
#[derive(Clone, PartialEq)]
pub struct Card {
    pub task_id: String,
    pub status: ToolCallStatus,
    progress: Option<(u8, Option<String>)>,
}

impl Card {
    /// The card as `tool_call(t)` showed it.
    pub fn of(t: &TaskRecord) -> Card {
        Card {
            task_id: t.id.clone(),
            status: status(t.status),
            progress: None,
        }
    }

    /// The update that brings the card to `t`'s state, if it changed.
    pub fn follow(&mut self, t: &TaskRecord) -> Option<SessionUpdate> {
        let progress = t.progress_pct.map(|p| (p, t.progress_text.clone()));
        let next = Card {
            task_id: self.task_id.clone(),
            status: status(t.status),
            progress,
        };
        if next == *self {
            return None;
        }
        *self = next;
        let mut fields = ToolCallUpdateFields::new().status(self.status);
        if let Some((pct, text)) = &self.progress {
            let line = format!("{pct}% {}", text.as_deref().unwrap_or(""));
            let content: schema::ToolCallContent = line.trim_end().to_string().into();
            fields = fields.content(vec![content]);
        }
        Some(self.update(fields))
    }

    /// Marks the card in progress (its task has output, so it ran even if
    /// no read of the store caught it running); `None` if it already is.
    pub fn running(&mut self) -> Option<SessionUpdate> {
        if self.status != ToolCallStatus::Pending {
            return None;
        }
        self.status = ToolCallStatus::InProgress;
        Some(self.update(ToolCallUpdateFields::new().status(self.status)))
    }

    /// The task is gone from the store (deleted or purged).
    pub fn gone(&mut self) -> SessionUpdate {
        self.status = ToolCallStatus::Failed;
        let note: schema::ToolCallContent = "the task was deleted".to_string().into();
        self.update(
            ToolCallUpdateFields::new()
                .status(self.status)
                .content(vec![note]),
        )
    }

    fn update(&self, fields: ToolCallUpdateFields) -> SessionUpdate {
        SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(self.task_id.clone(), fields))
    }
}

/// Cards of spawned tasks not finished yet, and whether the tracker runs.
#[derive(Default)]
pub struct Spawned {
    open: Vec<(SessionId, Card)>,
    tracking: bool,
}

/// Keeps the card of a task started by `/spawn` up to date until the task
/// ends (the turn that showed it has ended already).
pub fn follow_spawned(agent: &Shared, session: &SessionId, t: &TaskRecord) {
    let mut a = agent.borrow_mut();
    a.spawned.open.push((session.clone(), Card::of(t)));
    if !a.spawned.tracking {
        a.spawned.tracking = true;
        a.spawn(track(agent.clone()));
    }
}

/// One loop for every open spawned card; ends when none is left.
async fn track(agent: Shared) {
    // Cards are opened by prompts, which run only once a workspace is bound.
    let Some(ws) = agent.borrow().ws.clone() else {
        agent.borrow_mut().spawned.tracking = false;
        return;
    };
    let mut reader = None;
    loop {
        tokio::time::sleep(POLL).await;
        if reader.is_none() {
            reader = crate::store::Reader::open(&ws.db_path()).ok();
        }
        let Some(r) = &reader else { continue };
        let (updates, done) = step(&agent, r);
        let out = agent.borrow().out.clone();
        for (session, update) in updates {
            out.update(&session, update).await;
        }
        if done {
            return;
        }
    }
}

/// Reads every open card's task; returns the updates to send and whether
/// the tracker is done (no card left open: the next `/spawn` restarts it).
fn step(agent: &Shared, reader: &crate::store::Reader) -> (Vec<(SessionId, SessionUpdate)>, bool) {
    let mut a = agent.borrow_mut();
    let mut updates = Vec::new();
    a.spawned.open.retain_mut(|(session, card)| {
        let Ok(row) = reader.task(&card.task_id) else {
            return true; // unreadable now: try again next time
        };
        let Some(t) = row else {
            updates.push((session.clone(), card.gone()));
            return false;
        };
        updates.extend(card.follow(&t).map(|u| (session.clone(), u)));
        !t.status.is_terminal()
    });
    let done = a.spawned.open.is_empty();
    if done {
        a.spawned.tracking = false;
    }
    (updates, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(title("echo hi"), "echo hi");
        assert_eq!(title("a\nb"), "a…");
        assert_eq!(title(&"x".repeat(100)).chars().count(), TITLE_CHARS + 1);
    }
}
