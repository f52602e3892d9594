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
/// The most of a task's output its card shows (the end of it): a card's
/// content is resent whole with each update, so it is bounded.
pub const OUTPUT_TAIL: usize = 64 * 1024;

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

/// What a card shows; an update goes out when it changes. A command's
/// output is the card's content, as a code block (the terminal's text, not
/// Markdown for the editor to render as the agent's words).
#[derive(Clone, PartialEq)]
pub struct Card {
    pub task_id: String,
    pub status: ToolCallStatus,
    progress: Option<(u8, Option<String>)>,
    /// The end of the task's output so far (at most `OUTPUT_TAIL`).
    output: String,
}

impl Card {
    /// The card as `tool_call(t)` showed it.
    pub fn of(t: &TaskRecord) -> Card {
        Card {
            task_id: t.id.clone(),
            status: status(t.status),
            progress: None,
            output: String::new(),
        }
    }

    /// The card's content: the progress line, then the output block.
    fn content(&self) -> Vec<schema::ToolCallContent> {
        let mut content = Vec::new();
        if let Some((pct, text)) = &self.progress {
            let line = format!("{pct}% {}", text.as_deref().unwrap_or(""));
            content.push(line.trim_end().to_string().into());
        }
        if !self.output.is_empty() {
            // A fence longer than any run of backticks in the output.
            let longest = self
                .output
                .split(|c| c != '`')
                .map(str::len)
                .max()
                .unwrap_or(0);
            let fence = "`".repeat(longest.max(2) + 1);
            let block = format!("{fence}\n{}\n{fence}", self.output.trim_end_matches('\n'));
            content.push(block.into());
        }
        content
    }

    /// The task printed `text`: the update that shows it (in progress).
    pub fn output(&mut self, text: &str) -> SessionUpdate {
        self.output.push_str(text);
        if self.output.len() > OUTPUT_TAIL {
            let mut cut = self.output.len() - OUTPUT_TAIL;
            while !self.output.is_char_boundary(cut) {
                cut += 1;
            }
            self.output.drain(..cut);
        }
        if self.status == ToolCallStatus::Pending {
            self.status = ToolCallStatus::InProgress;
        }
        let fields = ToolCallUpdateFields::new()
            .status(self.status)
            .content(self.content());
        self.update(fields)
    }

    /// The update that brings the card to `t`'s state, if it changed.
    pub fn follow(&mut self, t: &TaskRecord) -> Option<SessionUpdate> {
        let progress = t.progress_pct.map(|p| (p, t.progress_text.clone()));
        let (status, changed) = (status(t.status), progress != self.progress);
        if status == self.status && !changed {
            return None;
        }
        self.status = status;
        self.progress = progress;
        let mut fields = ToolCallUpdateFields::new().status(self.status);
        if changed {
            fields = fields.content(self.content());
        }
        Some(self.update(fields))
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
