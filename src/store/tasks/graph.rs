//! The dependency graph: the status a task's dependencies call for, and a
//! status change followed down to the dependents it releases or fails.

use super::Ctx;
use super::change::{Change, set_status};
use crate::protocol::{FailureReason, TaskRecord, TaskStatus};
use crate::store::rows::{self, edge_key};
use crate::store::txn::Applied;
use rusqlite::Connection;

/// Queued when every dependency completed, pending while some still may;
/// failed (`dependency_failed`) when one failed, was cancelled or deleted
/// before completing. Read from the dependency edges, not the task's own
/// list: a completed dependency that was purged since has no edge left and
/// stays satisfied.
pub(super) fn ready_status(tx: &Connection, task: &TaskRecord) -> Result<TaskStatus, Applied> {
    let mut stmt = tx.prepare_cached(
        "SELECT t.status FROM task_deps d LEFT JOIN tasks t ON t.id = d.dep_id
         WHERE d.task_at = ?1 AND d.task_id = ?2",
    )?;
    let statuses = stmt
        .query_map(edge_key(task), |r| r.get::<_, Option<String>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(status_from_deps(
        statuses
            .iter()
            .map(|s| s.as_deref().and_then(TaskStatus::parse)),
    ))
}

/// The status a task's dependencies call for; `None` is a dependency that
/// no longer exists.
pub(super) fn status_from_deps(deps: impl Iterator<Item = Option<TaskStatus>>) -> TaskStatus {
    let mut waiting = false;
    for status in deps {
        match status {
            Some(TaskStatus::Completed) => {}
            None | Some(TaskStatus::Failed | TaskStatus::Cancelled) => return TaskStatus::Failed,
            Some(_) => waiting = true,
        }
    }
    if waiting {
        TaskStatus::Pending
    } else {
        TaskStatus::Queued
    }
}

/// Follows a status change down the dependency graph, breadth first, as a
/// work list: a completed task releases its pending dependents whose
/// dependencies all completed; a failed, cancelled or deleted one fails the
/// dependents that have not started (`dependency_failed`), and so on down.
/// Each changed dependent appends its own event, which wakes its waiters.
/// Never recursion: user data decides the depth (a chain of 10,000 tasks
/// once overflowed the store thread's stack and killed every member).
pub(super) fn cascade(c: &mut Ctx<'_>, root: &str, root_status: TaskStatus) -> Result<(), Applied> {
    let mut work = std::collections::VecDeque::from([(root.to_string(), root_status)]);
    while let Some((id, status)) = work.pop_front() {
        let failing = match status {
            TaskStatus::Completed => false,
            TaskStatus::Failed | TaskStatus::Cancelled => true,
            _ => continue,
        };
        for dep_id in dependents(c.tx, &id)? {
            let Some(t) = rows::get(c.tx, &dep_id)? else {
                continue;
            };
            if failing {
                let waiting = matches!(t.status, TaskStatus::Pending | TaskStatus::Queued)
                    || (t.status == TaskStatus::Paused && t.run_id.is_none());
                if waiting {
                    let change =
                        Change::failing(TaskStatus::Failed, FailureReason::DependencyFailed);
                    let _ = set_status(c, t, change)?;
                    work.push_back((dep_id, TaskStatus::Failed));
                }
            } else if t.status == TaskStatus::Pending
                && ready_status(c.tx, &t)? == TaskStatus::Queued
            {
                // Allowed by the state machine by construction; a refusal
                // would leave the dependent pending, never half-applied.
                // Queued has no consequences downstream.
                let _ = set_status(c, t, Change::to(TaskStatus::Queued))?;
            }
        }
    }
    Ok(())
}

/// The dependencies `id` still waits on (see [`delete`] for which edges
/// stay).
pub(super) fn edges_of(
    tx: &Connection,
    task: &TaskRecord,
) -> Result<std::collections::HashSet<String>, Applied> {
    let mut stmt =
        tx.prepare_cached("SELECT dep_id FROM task_deps WHERE task_at = ?1 AND task_id = ?2")?;
    let ids = stmt
        .query_map(edge_key(task), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub(super) fn dependents(tx: &Connection, id: &str) -> Result<Vec<String>, Applied> {
    let mut stmt = tx.prepare_cached(
        "SELECT t.id FROM task_deps d JOIN tasks t ON t.id = d.task_id
         WHERE d.dep_id = ?1 ORDER BY t.rowid",
    )?;
    let ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}
