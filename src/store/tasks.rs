//! Task transitions as the store thread applies them (see docs/design.md, Tasks). Every
//! change of a task happens here, inside the caller's transaction, together
//! with its `task.*` event and its consequences for dependents — so a
//! terminal transition and the waking of every waiter are one commit.
//!
//! This module changes rows only. Processes are the orchestrator's: it
//! watches the committed events and makes the processes match the rows
//! (start, stop, continue, kill).

use super::get_task;
use super::txn::{Applied, WriteResult, append_event, refused};
use crate::lifecycle::check_transition;
use crate::protocol::{
    ErrorCode, Event, EventData, ExitOutcome, FailureReason, Method, NewTask, ReplyBody, TaskExit,
    TaskRecord, TaskStatus, now_ms,
};
use rusqlite::{Connection, params};

/// The open transaction, the primary's epoch and the events to publish.
pub(super) struct Ctx<'a> {
    pub tx: &'a Connection,
    pub epoch: u64,
    pub events: &'a mut Vec<Event>,
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
        }
    }
}

type Res = Result<WriteResult, Applied>;

fn ok(task: TaskRecord) -> Res {
    Ok(Ok(ReplyBody::Task(Box::new(task))))
}

pub(super) fn apply(c: &mut Ctx<'_>, method: &Method) -> Res {
    match method {
        Method::TaskCreate(new) => {
            let task = new_task(c.tx, new, None, 1)?;
            create(c, task)
        }
        Method::TaskSetProgress { id, percent, text } => {
            let mut task = existing(c.tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is {}; progress is closed", task.status.as_str()),
                ));
            }
            if let Some(p) = percent {
                if *p > 100 {
                    return Err(refused(
                        ErrorCode::InvalidParams,
                        format!("progress must be 0..=100, got {p}"),
                    ));
                }
                task.progress_pct = Some(*p);
            }
            if let Some(t) = text {
                task.progress_text = Some(t.clone());
            }
            save(c, task)
        }
        Method::TaskUpdateStatus {
            id,
            status,
            reason,
            exit_code,
            pid,
        } => update_status(c, id, *status, *reason, *exit_code, *pid),
        Method::TaskDelete { id, force } => {
            let task = existing(c.tx, id)?;
            if task.status == TaskStatus::Running && !force {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is running; cancel it first, or delete with force"),
                ));
            }
            delete(c, &task)
        }
        Method::TaskPurge { id } => match get_task(c.tx, id)? {
            None => Ok(Ok(ReplyBody::Deleted { id: id.clone() })),
            Some(task) if !task.status.is_terminal() => Err(refused(
                ErrorCode::Conflict,
                format!(
                    "task {id} is {}; only finished tasks are purged (cancel it first)",
                    task.status.as_str()
                ),
            )),
            Some(task) => delete(c, &task),
        },
        Method::TaskCancel { id } => {
            let task = existing(c.tx, id)?;
            if task.status.is_terminal() {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is already {}", task.status.as_str()),
                ));
            }
            transition(c, task, TaskStatus::Cancelled, None, None, None)
        }
        Method::TaskPause { id } => {
            let task = existing(c.tx, id)?;
            transition(c, task, TaskStatus::Paused, None, None, None)
        }
        Method::TaskResume { id, instructions } => resume(c, id, instructions.as_deref()),
        Method::TaskRetry { id } => retry(c, id),
        Method::TaskRelaunch { id } => relaunch(c, id),
        Method::TaskFinished(exit) => finished(c, exit),
        Method::Hello(_) | Method::SessionCreate { .. } | Method::Ping {} => {
            Err(refused(ErrorCode::Internal, "not a task operation"))
        }
        #[cfg(feature = "test-hooks")]
        Method::DebugStall { .. } => Err(refused(ErrorCode::Internal, "not a task operation")),
    }
}

pub(super) fn apply_internal(c: &mut Ctx<'_>, op: &InternalOp) -> Res {
    match op {
        InternalOp::Start {
            id,
            run_id,
            max_parallel,
        } => {
            let mut task = existing(c.tx, id)?;
            if task.status != TaskStatus::Queued {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!("task {id} is {}, not queued", task.status.as_str()),
                ));
            }
            let held: i64 =
                c.tx.prepare_cached(
                    "SELECT COUNT(*) FROM tasks WHERE status = 'running'
                        OR (status = 'paused' AND run_id IS NOT NULL)",
                )?
                .query_row([], |r| r.get(0))?;
            if held as usize >= *max_parallel {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!(
                        "{held} tasks already run or are paused mid-run (max_parallel {max_parallel})"
                    ),
                ));
            }
            task.run_id = Some(run_id.clone());
            task.exit_code = None;
            task.pid = None;
            task.failure_reason = None;
            task.started_at = None;
            task.finished_at = None;
            transition(c, task, TaskStatus::Running, None, None, None)
        }
        InternalOp::SetPid { id, run_id, pid } => {
            let mut task = existing(c.tx, id)?;
            if task.run_id.as_deref() != Some(run_id) || task.status.is_terminal() {
                return ok(task);
            }
            task.pid = Some(*pid);
            save(c, task)
        }
        InternalOp::Requeue { id, run_id } => requeue(c, id, run_id),
        InternalOp::Lost { id, run_id } => {
            let task = existing(c.tx, id)?;
            if task.run_id.as_deref() != Some(run_id) || task.status.is_terminal() {
                return ok(task);
            }
            transition(
                c,
                task,
                TaskStatus::Failed,
                Some(FailureReason::Lost),
                None,
                None,
            )
        }
    }
}

/// The low-level form: a final status, checked against the state machine.
fn update_status(
    c: &mut Ctx<'_>,
    id: &str,
    status: TaskStatus,
    reason: Option<FailureReason>,
    exit_code: Option<i32>,
    pid: Option<u32>,
) -> Res {
    if !status.is_terminal() {
        return Err(refused(
            ErrorCode::InvalidParams,
            format!(
                "task.update_status sets a final status only (completed, failed, cancelled), not {}; use pause/resume/relaunch",
                status.as_str()
            ),
        ));
    }
    let task = existing(c.tx, id)?;
    // The state machine lets a paused task complete because its
    // stopped process may still exit; one paused before it started
    // has no process, and is no more done than a queued task.
    let paused_unstarted = task.status == TaskStatus::Paused && !started(&task);
    if status == TaskStatus::Completed && paused_unstarted {
        return Err(refused(
            ErrorCode::Conflict,
            format!("task {id} is paused and never started; it cannot have completed"),
        ));
    }
    transition(c, task, status, reason, exit_code, pid)
}

/// A new task from a finished one (`retry_of`, `attempt + 1`).
fn retry(c: &mut Ctx<'_>, id: &str) -> Res {
    let old = finished_task(c.tx, id, "retry")?;
    // A completed dependency purged since stays satisfied: the new
    // attempt does not wait for it (nor could it name it).
    let waits_on = edges_of(c.tx, &old.id)?;
    let dependencies = old
        .dependencies
        .iter()
        .filter(|d| waits_on.contains(*d))
        .cloned()
        .collect();
    let spec = NewTask {
        prompt: old.prompt.clone(),
        engine: Some(old.engine.clone()),
        model: old.model.clone(),
        work_dir: old.work_dir.clone(),
        persona: old.persona.clone(),
        dependencies,
        tags: old.tags.clone(),
        priority: old.priority,
        timeout_ms: old.timeout_ms,
        session_id: old.session_id.clone(),
        extra_args: old.extra_args.clone(),
        env: old.env.clone(),
    };
    let task = new_task(c.tx, &spec, Some(old.id.clone()), old.attempt + 1)?;
    create(c, task)
}

/// Reruns a finished task under its id (see [`rearm`]).
fn relaunch(c: &mut Ctx<'_>, id: &str) -> Res {
    let task = finished_task(c.tx, id, "relaunch")?;
    let task = rearm(c, task)?;
    if task.status == TaskStatus::Failed {
        // Failed again at once (a dependency failed or is gone):
        // dependents that were released when it completed, and
        // still wait, can never run either.
        cascade(c, &task.id, TaskStatus::Failed)?;
    } else {
        rearm_dependents(c, &task.id)?;
    }
    ok(task)
}

/// A task has started when it has a run: running, or paused mid-run (its
/// process stopped, not gone).
fn started(task: &TaskRecord) -> bool {
    match task.status {
        TaskStatus::Running => true,
        TaskStatus::Paused => task.run_id.is_some(),
        _ => false,
    }
}

/// A run whose supervisor never started: the task waits again, as if it had
/// never been started — queued, or still paused when it was paused
/// meanwhile (otherwise the phantom run would keep its slot and nobody
/// would ever finalize it). Waiting, it fails like any waiting task when a
/// dependency has failed since (one relaunched after it started).
fn requeue(c: &mut Ctx<'_>, id: &str, run_id: &str) -> Res {
    let mut task = existing(c.tx, id)?;
    if task.run_id.as_deref() != Some(run_id) || !started(&task) {
        return ok(task);
    }
    task.run_id = None;
    task.started_at = None;
    task.pid = None;
    let reason = Some(FailureReason::DependencyFailed);
    match (task.status, ready_status(c.tx, &task)?) {
        (_, TaskStatus::Failed) => transition(c, task, TaskStatus::Failed, reason, None, None),
        (TaskStatus::Paused, _) => save(c, task),
        _ => transition(c, task, TaskStatus::Queued, None, None, None),
    }
}

/// A supervisor's report. Reports about another run, or a task already
/// finished (cancelled, deleted), are acknowledged and ignored.
fn finished(c: &mut Ctx<'_>, exit: &TaskExit) -> Res {
    let Some(task) = get_task(c.tx, &exit.id)? else {
        return Ok(Ok(ReplyBody::Deleted {
            id: exit.id.clone(),
        }));
    };
    let live = matches!(task.status, TaskStatus::Running | TaskStatus::Paused);
    if task.run_id.as_deref() != Some(exit.run_id.as_str()) || !live {
        return ok(task);
    }
    let (status, reason) = match (exit.outcome, exit.exit_code) {
        (ExitOutcome::Exited, Some(0)) => (TaskStatus::Completed, None),
        (ExitOutcome::Exited, _) => (TaskStatus::Failed, Some(FailureReason::ExitCode)),
        (ExitOutcome::Timeout, _) => (TaskStatus::Failed, Some(FailureReason::Timeout)),
        (ExitOutcome::Cancelled, _) => (TaskStatus::Cancelled, None),
        (ExitOutcome::SpawnError, _) => (TaskStatus::Failed, Some(FailureReason::SpawnError)),
    };
    let mut task = task;
    if let Some(m) = &exit.message {
        task.progress_text = Some(m.clone());
    }
    // A signal death has no exit code; record it shell-style (128 + n).
    let code = exit.exit_code.or(exit.signal.map(|s| 128 + s));
    // Paused → terminal is allowed: the process ended while stopped.
    transition(c, task, status, reason, code, None)
}

fn resume(c: &mut Ctx<'_>, id: &str, instructions: Option<&str>) -> Res {
    let mut task = existing(c.tx, id)?;
    if task.status != TaskStatus::Paused {
        return Err(refused(
            ErrorCode::Conflict,
            format!("task {id} is {}, not paused", task.status.as_str()),
        ));
    }
    let had_run = task.run_id.is_some();
    if let Some(extra) = instructions.filter(|s| !s.trim().is_empty()) {
        task.prompt = format!("{}\n\n{}", task.prompt, extra);
        if had_run {
            // The agent took its prompt at start: rerun it with the new
            // instructions. The orchestrator kills the old run, whose id no
            // longer matches.
            task.run_id = None;
            task.pid = None;
            let status = ready_status(c.tx, &task)?;
            return transition(
                c,
                task,
                status,
                Some(FailureReason::DependencyFailed),
                None,
                None,
            );
        }
    }
    let status = if had_run {
        TaskStatus::Running
    } else {
        ready_status(c.tx, &task)?
    };
    transition(
        c,
        task,
        status,
        Some(FailureReason::DependencyFailed),
        None,
        None,
    )
}

/// Queued when every dependency completed, pending while some still may;
/// failed (`dependency_failed`) when one failed, was cancelled or deleted
/// before completing. Read from the dependency edges, not the task's own
/// list: a completed dependency that was purged since has no edge left and
/// stays satisfied.
fn ready_status(tx: &Connection, task: &TaskRecord) -> Result<TaskStatus, Applied> {
    let mut stmt = tx.prepare_cached(
        "SELECT t.status FROM task_deps d LEFT JOIN tasks t ON t.id = d.dep_id
         WHERE d.task_id = ?1",
    )?;
    let statuses = stmt
        .query_map([&task.id], |r| r.get::<_, Option<String>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(status_from_deps(
        statuses
            .iter()
            .map(|s| s.as_deref().and_then(TaskStatus::parse)),
    ))
}

/// The status a task's dependencies call for; `None` is a dependency that
/// no longer exists.
fn status_from_deps(deps: impl Iterator<Item = Option<TaskStatus>>) -> TaskStatus {
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

/// Resets a finished task for another run under the same id.
fn rearm(c: &mut Ctx<'_>, mut task: TaskRecord) -> Result<TaskRecord, Applied> {
    task.status = ready_status(c.tx, &task)?;
    task.failure_reason =
        (task.status == TaskStatus::Failed).then_some(FailureReason::DependencyFailed);
    task.exit_code = None;
    task.pid = None;
    task.run_id = None;
    task.progress_pct = None;
    task.progress_text = None;
    task.started_at = None;
    task.finished_at = (task.status == TaskStatus::Failed).then(now_ms);
    match save(c, task)? {
        Ok(ReplyBody::Task(t)) => Ok(*t),
        Ok(_) => unreachable!("save returns the task"),
        Err(e) => Err(Applied::Refused(e)),
    }
}

/// Dependents that failed only because of `root` get another chance, and
/// so on down the graph. One that another dependency still fails is left
/// alone: rearming it would only rewrite its failure (and wake its waiters)
/// for nothing. A work list, not recursion: a chain of 10,000 dependents
/// must not take 10,000 stack frames of the store thread.
fn rearm_dependents(c: &mut Ctx<'_>, root: &str) -> Result<(), Applied> {
    let mut work = vec![root.to_string()];
    while let Some(id) = work.pop() {
        for dep_id in dependents(c.tx, &id)? {
            let Some(t) = get_task(c.tx, &dep_id)? else {
                continue;
            };
            if t.status == TaskStatus::Failed
                && t.failure_reason == Some(FailureReason::DependencyFailed)
                && ready_status(c.tx, &t)? != TaskStatus::Failed
            {
                work.push(rearm(c, t)?.id);
            }
        }
    }
    Ok(())
}

fn delete(c: &mut Ctx<'_>, task: &TaskRecord) -> Res {
    c.tx.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
        .execute([&task.id])?;
    // Edges from this task go. Edges to it stay when it had not completed,
    // so that its waiting dependents can still be found (and failed) below;
    // a completed task's edges go too: what it produced stays produced, so
    // its dependents stay satisfied (purging history must not fail work).
    c.tx.prepare_cached("DELETE FROM task_deps WHERE task_id = ?1")?
        .execute([&task.id])?;
    if task.status == TaskStatus::Completed {
        c.tx.prepare_cached("DELETE FROM task_deps WHERE dep_id = ?1")?
            .execute([&task.id])?;
    }
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskDeleted {
            id: task.id.clone(),
        },
    )?);
    // Waiting dependents of an unfinished task can never run now.
    if task.status != TaskStatus::Completed {
        cascade(c, &task.id, TaskStatus::Failed)?;
    }
    Ok(Ok(ReplyBody::Deleted {
        id: task.id.clone(),
    }))
}

/// The one path of every status change: checks the state machine, saves,
/// and applies the consequences of a terminal status to the dependents.
fn transition(
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
fn set_status(
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

/// Follows a status change down the dependency graph, breadth first, as a
/// work list: a completed task releases its pending dependents whose
/// dependencies all completed; a failed, cancelled or deleted one fails the
/// dependents that have not started (`dependency_failed`), and so on down.
/// Each changed dependent appends its own event, which wakes its waiters.
/// Never recursion: user data decides the depth (a chain of 10,000 tasks
/// once overflowed the store thread's stack and killed every member).
fn cascade(c: &mut Ctx<'_>, root: &str, root_status: TaskStatus) -> Result<(), Applied> {
    let mut work = std::collections::VecDeque::from([(root.to_string(), root_status)]);
    while let Some((id, status)) = work.pop_front() {
        let failing = match status {
            TaskStatus::Completed => false,
            TaskStatus::Failed | TaskStatus::Cancelled => true,
            _ => continue,
        };
        for dep_id in dependents(c.tx, &id)? {
            let Some(t) = get_task(c.tx, &dep_id)? else {
                continue;
            };
            if failing {
                let waiting = matches!(t.status, TaskStatus::Pending | TaskStatus::Queued)
                    || (t.status == TaskStatus::Paused && t.run_id.is_none());
                if waiting {
                    let reason = Some(FailureReason::DependencyFailed);
                    let _ = set_status(c, t, TaskStatus::Failed, reason, None, None)?;
                    work.push_back((dep_id, TaskStatus::Failed));
                }
            } else if t.status == TaskStatus::Pending
                && ready_status(c.tx, &t)? == TaskStatus::Queued
            {
                // Allowed by the state machine by construction; a refusal
                // would leave the dependent pending, never half-applied.
                // Queued has no consequences downstream.
                let _ = set_status(c, t, TaskStatus::Queued, None, None, None)?;
            }
        }
    }
    Ok(())
}

/// The dependencies `id` still waits on (see [`delete`] for which edges
/// stay).
fn edges_of(tx: &Connection, id: &str) -> Result<std::collections::HashSet<String>, Applied> {
    let mut stmt = tx.prepare_cached("SELECT dep_id FROM task_deps WHERE task_id = ?1")?;
    let ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

fn dependents(tx: &Connection, id: &str) -> Result<Vec<String>, Applied> {
    let mut stmt = tx.prepare_cached(
        "SELECT t.id FROM task_deps d JOIN tasks t ON t.id = d.task_id
         WHERE d.dep_id = ?1 ORDER BY t.rowid",
    )?;
    let ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

fn new_task(
    tx: &Connection,
    new: &NewTask,
    retry_of: Option<String>,
    attempt: u32,
) -> Result<TaskRecord, Applied> {
    if new.prompt.trim().is_empty() {
        return Err(refused(ErrorCode::InvalidParams, "the prompt is empty"));
    }
    if new.timeout_ms == Some(0) {
        return Err(refused(ErrorCode::InvalidParams, "timeout must be > 0"));
    }
    let mut seen = std::collections::HashSet::new();
    for dep in &new.dependencies {
        if !seen.insert(dep) {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!("dependency {dep} is listed twice"),
            ));
        }
        if get_task(tx, dep)?.is_none() {
            return Err(refused(
                ErrorCode::InvalidParams,
                format!("unknown dependency {dep}"),
            ));
        }
    }
    let now = now_ms();
    let mut task = TaskRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        prompt: new.prompt.clone(),
        engine: new.engine.clone().unwrap_or_else(|| "shell".to_string()),
        model: new.model.clone(),
        work_dir: new.work_dir.clone(),
        persona: new.persona.clone(),
        status: TaskStatus::Pending,
        failure_reason: None,
        dependencies: new.dependencies.clone(),
        tags: new.tags.clone(),
        priority: new.priority,
        timeout_ms: new.timeout_ms,
        progress_pct: None,
        progress_text: None,
        exit_code: None,
        pid: None,
        session_id: new.session_id.clone(),
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        retry_of,
        attempt,
        extra_args: new.extra_args.clone(),
        env: new.env.clone(),
        run_id: None,
    };
    // Not inserted yet, so no edges: read the listed dependencies (each was
    // checked to exist above).
    let mut deps = Vec::with_capacity(task.dependencies.len());
    for dep in &task.dependencies {
        deps.push(get_task(tx, dep)?.map(|t| t.status));
    }
    task.status = status_from_deps(deps.into_iter());
    if task.status == TaskStatus::Failed {
        // A dependency that already failed dooms the new task at once.
        task.failure_reason = Some(FailureReason::DependencyFailed);
        task.finished_at = Some(now);
    }
    Ok(task)
}

/// The task, which must have finished for `verb` to apply to it.
fn finished_task(tx: &Connection, id: &str, verb: &str) -> Result<TaskRecord, Applied> {
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

/// Inserts a new task and appends its `task.created`.
fn create(c: &mut Ctx<'_>, task: TaskRecord) -> Res {
    insert_task(c.tx, &task)?;
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskCreated { task: task.clone() },
    )?);
    ok(task)
}

fn existing(tx: &Connection, id: &str) -> Result<TaskRecord, Applied> {
    get_task(tx, id)?.ok_or_else(|| refused(ErrorCode::NotFound, format!("no task {id}")))
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

pub(crate) fn insert_task(tx: &Connection, t: &TaskRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tasks (id, prompt, engine, model, work_dir, persona, status, failure_reason,
            dependencies, tags, priority, timeout_ms, progress_pct, progress_text, exit_code, pid,
            session_id, created_at, updated_at, started_at, finished_at, retry_of, attempt,
            extra_args, env, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
    )?
    .execute(params![
        t.id,
        t.prompt,
        t.engine,
        t.model,
        t.work_dir,
        t.persona,
        t.status.as_str(),
        t.failure_reason.map(|r| r.as_str()),
        json(&t.dependencies),
        json(&t.tags),
        t.priority,
        t.timeout_ms.map(|v| v as i64),
        t.progress_pct,
        t.progress_text,
        t.exit_code,
        t.pid,
        t.session_id,
        t.created_at as i64,
        t.updated_at as i64,
        t.started_at.map(|v| v as i64),
        t.finished_at.map(|v| v as i64),
        t.retry_of,
        t.attempt,
        json(&t.extra_args),
        json(&t.env),
        t.run_id,
    ])?;
    for dep in &t.dependencies {
        tx.prepare_cached("INSERT OR IGNORE INTO task_deps (task_id, dep_id) VALUES (?1, ?2)")?
            .execute([&t.id, dep])?;
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Writes back a changed task and appends `task.updated`.
fn save(c: &mut Ctx<'_>, mut task: TaskRecord) -> Res {
    task.updated_at = now_ms();
    c.tx.prepare_cached(
        "UPDATE tasks SET prompt = ?2, status = ?3, failure_reason = ?4, progress_pct = ?5,
                progress_text = ?6, exit_code = ?7, pid = ?8, updated_at = ?9, started_at = ?10,
                finished_at = ?11, run_id = ?12
             WHERE id = ?1",
    )?
    .execute(params![
        task.id,
        task.prompt,
        task.status.as_str(),
        task.failure_reason.map(|r| r.as_str()),
        task.progress_pct,
        task.progress_text,
        task.exit_code,
        task.pid,
        task.updated_at as i64,
        task.started_at.map(|v| v as i64),
        task.finished_at.map(|v| v as i64),
        task.run_id,
    ])?;
    c.events.push(append_event(
        c.tx,
        c.epoch,
        EventData::TaskUpdated { task: task.clone() },
    )?);
    ok(task)
}
