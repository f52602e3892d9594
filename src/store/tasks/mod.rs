//! Task transitions as the store thread applies them (see docs/design.md, Tasks). Every
//! change of a task happens here, inside the caller's transaction, together
//! with its `task.*` event and its consequences for dependents — so a
//! terminal transition and the waking of every waiter are one commit.
//!
//! This module changes rows only. Processes are the orchestrator's: it
//! watches the committed events and makes the processes match the rows
//! (start, stop, continue, kill).

//!
//! - `lineage`: create, retry, relaunch, delete;
//! - `runs`: what runs do to a task (start, end, requeue, resume);
//! - `graph`: dependencies and the cascade down to the dependents;
//! - `change`: one task's change checked and saved (the only writer of
//!   `task.updated`).

pub mod awaits;
mod change;
pub mod goals;
mod graph;
mod lineage;
mod next_turn;
mod runs;
pub mod slot_loans;

use super::rows;
use super::txn::{Applied, WriteResult, refused};
use crate::protocol::{ErrorCode, Event, FailureReason, ReplyBody, TaskOp, TaskRecord, TaskStatus};
use change::{Change, save, transition};
pub(crate) use lineage::level;
#[cfg(test)]
pub(crate) use lineage::spec_size_bound;
use rusqlite::Connection;

/// The open transaction, the primary's epoch and the events to publish.
pub(super) struct Ctx<'a> {
    pub tx: &'a Connection,
    pub epoch: u64,
    pub events: &'a mut Vec<Event>,
    pub limits: Limits,
    /// The first three hex digits of the ids of the tasks this write
    /// creates, shared by its batch; `None`: random
    /// (`writer::batch_id_prefix`).
    pub id_prefix: Option<u16>,
}

/// What the configuration allows a new task, as the admission read it
/// (the store thread has no configuration of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How deep tasks may spawn tasks: a task without a parent is at depth
    /// 0, its children at 1.
    pub max_depth: u32,
    /// Most children one task may have, finished ones included.
    pub max_children: u32,
    /// `retry` prepends a notice of why the last attempt failed.
    pub retry_notice: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 4,
            max_children: 16,
            retry_notice: true,
        }
    }
}

/// Orchestrator-only operations: never accepted from the wire.
#[derive(Debug, Clone)]
pub enum InternalOp {
    /// queued → running, refused when `max_parallel` tasks already hold a
    /// slot: running, or paused with a live run (it keeps its slot, so
    /// resuming it never exceeds the limit).
    Start {
        id: String,
        run_id: String,
        max_parallel: usize,
    },
    /// Records the agent's pid once the supervisor reports it.
    SetPid {
        id: String,
        run_id: String,
        pid: u32,
    },
    /// The run vanished without an exit record: failed, reason `lost`.
    Lost { id: String, run_id: String },
    /// The run's supervisor never started: back to the queue.
    Requeue { id: String, run_id: String },
    /// Fires the pending awaits that are satisfied or past their deadline
    /// (at a deadline, and once after each promotion).
    SettleAwaits { now: u64 },
}

impl InternalOp {
    /// A stable name for the crash guard. `Start` carries a fresh run id on
    /// every attempt, so it is named by its task alone.
    pub fn key(&self) -> String {
        let prefix = super::crash_guard::INTERNAL_PREFIX;
        match self {
            InternalOp::Start { id, .. } => format!("{prefix}start:{id}"),
            InternalOp::SetPid { id, run_id, .. } => format!("{prefix}set_pid:{id}:{run_id}"),
            InternalOp::Lost { id, run_id } => format!("{prefix}lost:{id}:{run_id}"),
            InternalOp::Requeue { id, run_id } => format!("{prefix}requeue:{id}:{run_id}"),
            InternalOp::SettleAwaits { .. } => format!("{prefix}settle_awaits"),
        }
    }
}

pub(super) type Res = Result<WriteResult, Applied>;

pub(super) fn ok(task: TaskRecord) -> Res {
    Ok(Ok(ReplyBody::Task(Box::new(task))))
}

pub(super) fn apply(c: &mut Ctx<'_>, op: TaskOp<'_>) -> Res {
    match op {
        TaskOp::Create(new) => lineage::create_new(c, new),
        TaskOp::SetProgress { id, percent, text } => {
            let mut task = existing(c.tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is {}; progress is closed", task.status.as_str()),
                ));
            }
            if let Some(p) = percent {
                if p > 100 {
                    return Err(refused(
                        ErrorCode::InvalidParams,
                        format!("progress must be 0..=100, got {p}"),
                    ));
                }
                task.progress_pct = Some(p);
            }
            if let Some(t) = text {
                task.progress_text = Some(t.to_string());
            }
            save(c, task)
        }
        TaskOp::UpdateStatus {
            id,
            status,
            reason,
            exit_code,
            pid,
        } => runs::update_status(c, id, status, reason, exit_code, pid),
        TaskOp::Delete { id, force } => {
            let task = existing(c.tx, id)?;
            if matches!(
                task.status,
                TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Idle
            ) && !force
            {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is running; cancel it first, or delete with force"),
                ));
            }
            lineage::delete(c, &task)
        }
        TaskOp::Purge { id } => match rows::get(c.tx, id)? {
            None => Ok(Ok(ReplyBody::Deleted { id: id.to_string() })),
            Some(task) if !task.status.is_terminal() => Err(refused(
                ErrorCode::Conflict,
                format!(
                    "task {id} is {}; only finished tasks are purged (cancel it first)",
                    task.status.as_str()
                ),
            )),
            Some(task) => lineage::delete(c, &task),
        },
        TaskOp::Cancel { id } => {
            let task = existing(c.tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is already {}", task.status.as_str()),
                ));
            }
            transition(c, task, Change::to(TaskStatus::Cancelled))
        }
        TaskOp::Pause { id } => {
            let task = existing(c.tx, id)?;
            transition(c, task, Change::to(TaskStatus::Paused))
        }
        TaskOp::Resume {
            id,
            instructions,
            changes,
        } => {
            lineage::check_sent_prompt(c.tx, id, instructions, changes)?;
            runs::resume(c, id, instructions, changes)
        }
        TaskOp::Retry { id } => lineage::retry(c, id),
        TaskOp::Relaunch {
            id,
            instructions,
            changes,
        } => {
            lineage::check_sent_prompt(c.tx, id, instructions, changes)?;
            let task = existing(c.tx, id)?;
            if let Some(parent) = task.spec.parent_id.as_deref()
                && let Some(parent) = rows::get(c.tx, parent)?
            {
                lineage::refuse_below_cancelled(&parent)?;
            }
            lineage::relaunch(c, id, instructions, changes)
        }
        TaskOp::Conclude { id, conclusion } => {
            let mut task = existing(c.tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!(
                        "task {id} is {}; a task concludes while it runs",
                        task.status.as_str()
                    ),
                ));
            }
            task.conclusion = Some(conclusion.clone());
            save(c, task)
        }
        TaskOp::Finished(exit) => runs::finished(c, exit),
        TaskOp::LendSlot {
            id,
            run_id,
            waiter,
            lend,
        } => slot_loans::lend(
            c,
            slot_loans::LendSlot {
                id,
                run_id,
                waiter,
                lend,
            },
        ),
    }
}

pub(super) fn apply_internal(c: &mut Ctx<'_>, op: &InternalOp) -> Res {
    match op {
        InternalOp::Start {
            id,
            run_id,
            max_parallel,
        } => runs::start(c, id, run_id, *max_parallel),
        InternalOp::SetPid { id, run_id, pid } => {
            let mut task = existing(c.tx, id)?;
            if task.run_id.as_deref() != Some(run_id) || task.status.is_terminal() {
                return ok(task);
            }
            task.pid = Some(*pid);
            save(c, task)
        }
        InternalOp::Requeue { id, run_id } => runs::requeue(c, id, run_id),
        InternalOp::Lost { id, run_id } => {
            let task = existing(c.tx, id)?;
            if task.run_id.as_deref() != Some(run_id) || task.status.is_terminal() {
                return ok(task);
            }
            transition(
                c,
                task,
                Change::failing(TaskStatus::Failed, FailureReason::Lost),
            )
        }
        InternalOp::SettleAwaits { now } => {
            awaits::settle_due(c, *now, 1000)?;
            goals::settle_due(c, *now, 1000)?;
            Ok(Ok(ReplyBody::Done {}))
        }
    }
}

/// A new goal and its task (`goal.create`).
pub(super) fn apply_goal(c: &mut Ctx<'_>, spec: &crate::protocol::GoalSpec) -> Res {
    goals::create(c, spec)
}

/// A parent's await (`task.await`, `task.await_cancel`).
pub(super) fn apply_await(c: &mut Ctx<'_>, op: crate::protocol::AwaitOp<'_>) -> Res {
    awaits::apply(c, op)
}

/// The task, which must have finished for `verb` to apply to it.
pub(super) fn finished_task(tx: &Connection, id: &str, verb: &str) -> Result<TaskRecord, Applied> {
    let task = existing(tx, id)?;
    if !task.status.is_terminal() {
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "task {id} is {}; {verb} a finished task",
                task.status.as_str()
            ),
        ));
    }
    Ok(task)
}

/// A status change of `task` to `to` and its consequences, for the ACP
/// conversation operations (`store/agent.rs`): running ⇄ waiting.
pub(super) fn move_to(c: &mut Ctx<'_>, task: TaskRecord, to: TaskStatus) -> Res {
    transition(c, task, Change::to(to))
}

/// Writes back a task changed outside the state machine (its conclusion).
pub(super) fn save_task(c: &mut Ctx<'_>, task: TaskRecord) -> Res {
    save(c, task)
}

pub(super) fn existing(tx: &Connection, id: &str) -> Result<TaskRecord, Applied> {
    rows::get(tx, id)?.ok_or_else(|| refused(ErrorCode::NotFound, format!("no task {id}")))
}
