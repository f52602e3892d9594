//! One task's change, written: a status change checked against the state
//! machine (and, for [`transition`], followed to the dependents), and the
//! save that writes the row and appends its `task.updated`.

use super::graph::cascade;
use super::{Ctx, Res, ok};
use crate::lifecycle::check_transition;
use crate::protocol::{
    ErrorCode, EventData, FailureReason, ReplyBody, TaskRecord, TaskStatus, now_ms,
};
use crate::store::rows;
use crate::store::txn::{append_event, refused};

/// A status change, and what it records beside the status.
#[derive(Debug, Clone, Copy)]
pub(super) struct Change {
    pub to: TaskStatus,
    /// Why, when `to` is failed (`exit_code` when not given); ignored
    /// otherwise.
    pub reason: Option<FailureReason>,
    /// Recorded when given; the previous value stays otherwise.
    pub exit_code: Option<i32>,
    pub pid: Option<u32>,
}

impl Change {
    /// To `to`, recording nothing else.
    pub fn to(to: TaskStatus) -> Change {
        Change {
            to,
            reason: None,
            exit_code: None,
            pid: None,
        }
    }

    /// To `to`, for `reason` should that be a failure.
    pub fn failing(to: TaskStatus, reason: FailureReason) -> Change {
        Change {
            reason: Some(reason),
            ..Change::to(to)
        }
    }
}

/// The one path of every status change: checks the state machine, saves,
/// and applies the consequences of a terminal status to the dependents.
pub(super) fn transition(c: &mut Ctx<'_>, task: TaskRecord, change: Change) -> Res {
    let id = task.id.clone();
    let result = set_status(c, task, change)?;
    // A goal's next run may have rerun the task in this same commit: its
    // dependents follow what it is now, not the run that just ended.
    let now = match &result {
        Ok(ReplyBody::Task(t)) => t.status,
        _ => change.to,
    };
    cascade(c, &id, now)?;
    Ok(result)
}

/// One task's status change, checked against the state machine; no
/// consequences for other tasks (that is [`cascade`]).
pub(super) fn set_status(c: &mut Ctx<'_>, task: TaskRecord, change: Change) -> Res {
    check_transition(task.status, change.to)
        .map_err(|m| refused(ErrorCode::Conflict, format!("task {}: {m}", task.id)))?;
    let (id, parent) = (task.id.clone(), task.spec.parent_id.clone());
    // A run that ends, or leaves its slot to be queued again, ends the
    // loans of that slot (see docs/design.md, Slot loans).
    if change.to.is_terminal() || matches!(change.to, TaskStatus::Queued | TaskStatus::Pending) {
        super::slot_loans::run_left(c, &task)?;
    }
    let saved = save(c, with_status(task, change))?;
    if change.to == TaskStatus::Cancelled {
        super::awaits::parent_gone(c, &id)?;
    }
    // A goal decides in the commit of its task's end: over, or the next
    // run. Before the parent's await looks: a run its goal follows with
    // another has not ended the child (the await fired at a CLI goal's
    // first iteration).
    if change.to.is_terminal()
        && let Ok(ReplyBody::Task(task)) = &saved
        && let Some(rerun) = super::goals::task_ended(c, task)?
    {
        return ok(rerun);
    }
    // A durable await sees every child's end in the child's own commit,
    // an idle kept session's included (see `awaits::ended`).
    if (change.to.is_terminal() || change.to == TaskStatus::Idle)
        && let Some(parent) = parent
    {
        super::awaits::child_ended(c, &parent, &id)?;
    }
    Ok(saved)
}

/// Applies a status change and its side fields (timestamps, exit code).
fn with_status(mut task: TaskRecord, change: Change) -> TaskRecord {
    let now = now_ms();
    let status = change.to;
    if status == TaskStatus::Running && task.started_at.is_none() {
        task.started_at = Some(now);
    }
    if status.is_terminal() {
        task.finished_at = Some(now);
    }
    if status == TaskStatus::Failed {
        task.failure_reason = change.reason.or(Some(FailureReason::ExitCode));
    }
    // A task that ended without a run's conclusion (cancelled or failed
    // before it ran, lost) concludes from its status alone: a parent always
    // gets one, and nothing here reads a log.
    let wants = task.spec.want_conclusion || task.spec.parent_id.is_some();
    if status.is_terminal() && wants && task.conclusion.is_none() {
        task.conclusion = Some(crate::protocol::Conclusion::from_status(
            status,
            task.failure_reason,
            task.progress_text.as_deref(),
        ));
    }
    if change.exit_code.is_some() {
        task.exit_code = change.exit_code;
    }
    if change.pid.is_some() {
        task.pid = change.pid;
    }
    task.status = status;
    task
}

/// Writes back a changed task and appends `task.updated`.
pub(super) fn save(c: &mut Ctx<'_>, mut task: TaskRecord) -> Res {
    task.updated_at = now_ms();
    task.bound_texts();
    rows::update(c.tx, &task)?;
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskUpdated { task: task.clone() },
    )?);
    ok(task)
}
