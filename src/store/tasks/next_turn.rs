//! The one way to give an agent its next turn, shared by a parent resumed
//! after its await and a goal's next iteration: an open session gets a
//! `say` control (its next turn: queued if the agent is mid-turn, at once
//! if it is idle), written in the commit that decided it, so that the
//! decision and the turn are never apart.

use super::Ctx;
use super::change::{Change, transition};
use crate::protocol::{ControlKind, EventData, TaskRecord, TaskStatus};
use crate::store::txn::{Applied, append_event};

/// Whether the task's agent session is open: it can take another turn.
pub(super) fn session_open(task: &TaskRecord) -> bool {
    matches!(
        task.status,
        TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Idle
    ) || (task.status == TaskStatus::Paused && task.run_id.is_some())
}

/// Writes `text` as the next turn of `task`'s open session (the caller
/// checked [`session_open`]); an idle session runs again.
pub(super) fn give(c: &mut Ctx<'_>, task: TaskRecord, text: String) -> Result<(), Applied> {
    control(c, &task, ControlKind::Say, Some(text))?;
    if task.status == TaskStatus::Idle {
        transition(c, task, Change::to(TaskStatus::Running))?.map_err(Applied::Refused)?;
    }
    Ok(())
}

/// Ends `task`'s open session after its current turn (`close`).
pub(super) fn close(c: &mut Ctx<'_>, task: &TaskRecord) -> Result<(), Applied> {
    control(c, task, ControlKind::Close, None)
}

fn control(
    c: &mut Ctx<'_>,
    task: &TaskRecord,
    kind: ControlKind,
    text: Option<String>,
) -> Result<(), Applied> {
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskControlled {
            id: task.id.clone(),
            run_id: task.run_id.clone().unwrap_or_default(),
            kind,
            option: None,
            text,
            ask: None,
        },
    )?);
    Ok(())
}
