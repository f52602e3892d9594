//! One task's change, written: a status change checked against the state
//! machine (and, for [`transition`], followed to the dependents), and the
//! save that writes the row and appends its `task.updated`.

use super::graph::cascade;
use super::{Ctx, Res, ok};
use crate::lifecycle::check_transition;
use crate::protocol::{ErrorCode, EventData, FailureReason, TaskRecord, TaskStatus, now_ms};
use crate::store::rows;
use crate::store::txn::{append_event, refused};

/// The one path of every status change: checks the state machine, saves,
/// and applies the consequences of a terminal status to the dependents.
pub(super) fn transition(
    c: &mut Ctx<'_>,
    task: TaskRecord,
    to: TaskStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    pid: Option<u32>,
) -> Res {
    let id = task.id.clone();
    let result = set_status(c, task, to, reason, exit_code, pid)?;
    cascade(c, &id, to)?;
    Ok(result)
}

/// One task's status change, checked against the state machine; no
/// consequences for other tasks (that is [`cascade`]).
pub(super) fn set_status(
    c: &mut Ctx<'_>,
    task: TaskRecord,
    to: TaskStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    pid: Option<u32>,
) -> Res {
    check_transition(task.status, to)
        .map_err(|m| refused(ErrorCode::Conflict, format!("task {}: {m}", task.id)))?;
    save(c, with_status(task, to, reason, exit_code, pid))
}

/// Applies a status change and its side fields (timestamps, exit code).
fn with_status(
    mut task: TaskRecord,
    status: TaskStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    pid: Option<u32>,
) -> TaskRecord {
    let now = now_ms();
    if status == TaskStatus::Running && task.started_at.is_none() {
        task.started_at = Some(now);
    }
    if status.is_terminal() {
        task.finished_at = Some(now);
    }
    if status == TaskStatus::Failed {
        task.failure_reason = reason.or(Some(FailureReason::ExitCode));
    }
    if exit_code.is_some() {
        task.exit_code = exit_code;
    }
    if pid.is_some() {
        task.pid = pid;
    }
    task.status = status;
    task
}

/// Writes back a changed task and appends `task.updated`.
pub(super) fn save(c: &mut Ctx<'_>, mut task: TaskRecord) -> Res {
    task.updated_at = now_ms();
    rows::update(c.tx, &task)?;
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskUpdated { task: task.clone() },
    )?);
    ok(task)
}
