//! What a task's runs do to it: a run's end as its supervisor reports it
//! (or as `task.update_status` sets it), a run that never started, and a
//! resume (which may rerun it with new instructions).

use super::change::{Change, save, transition};
use super::graph::ready_status;
use super::{Ctx, Res, existing, ok};
use crate::protocol::{Conclusion, ConclusionSource, TaskChanges};
use crate::protocol::{
    ErrorCode, ExitOutcome, FailureReason, ReplyBody, TaskExit, TaskRecord, TaskStatus,
};
use crate::store::rows;
use crate::store::txn::refused;

/// The low-level form: a final status, checked against the state machine.
pub(super) fn update_status(
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
    // Completed or failed, a live run would go on with its slot freed and
    // nobody to stop it (the orchestrator takes those for a run that
    // ended by itself): they are its end's to write. Cancelled stops it.
    let live = matches!(
        task.status,
        TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Idle
    ) || (task.status == TaskStatus::Paused && started(&task));
    if live && status != TaskStatus::Cancelled {
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "task {id} is {} and its run goes on; {} (completed or failed is set when its run ends)",
                task.status.as_str(),
                if task.status == TaskStatus::Idle {
                    format!("`grove close {id}` ends its session, `grove cancel {id}` stops it")
                } else {
                    format!("`grove cancel {id}` stops it")
                }
            ),
        ));
    }
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
    let change = Change {
        to: status,
        reason,
        exit_code,
        pid,
    };
    transition(c, task, change)
}

/// A task has started when it has a run: running, waiting or idle, or
/// paused mid-run (its process stopped, not gone).
fn started(task: &TaskRecord) -> bool {
    match task.status {
        TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Idle => true,
        TaskStatus::Paused => task.run_id.is_some(),
        _ => false,
    }
}

/// A run whose supervisor never started: the task waits again, as if it had
/// never been started — queued, or still paused when it was paused
/// meanwhile (otherwise the phantom run would keep its slot and nobody
/// would ever finalize it). Waiting, it fails like any waiting task when a
/// dependency has failed since (one relaunched after it started).
pub(super) fn requeue(c: &mut Ctx<'_>, id: &str, run_id: &str) -> Res {
    let mut task = existing(c.tx, id)?;
    if task.run_id.as_deref() != Some(run_id) || !started(&task) {
        return ok(task);
    }
    super::slot_loans::run_left(c, &task)?;
    task.run_id = None;
    task.started_at = None;
    task.pid = None;
    match (task.status, ready_status(c.tx, &task)?) {
        (_, TaskStatus::Failed) => {
            let change = Change::failing(TaskStatus::Failed, FailureReason::DependencyFailed);
            transition(c, task, change)
        }
        (TaskStatus::Paused, _) => save(c, task),
        _ => transition(c, task, Change::to(TaskStatus::Queued)),
    }
}

/// A supervisor's report. Reports about another run, or a task already
/// finished (cancelled, deleted), are acknowledged and ignored.
pub(super) fn finished(c: &mut Ctx<'_>, exit: &TaskExit) -> Res {
    let Some(task) = rows::get(c.tx, &exit.id)? else {
        return Ok(Ok(ReplyBody::Deleted {
            id: exit.id.clone(),
        }));
    };
    // Counted for the run's own report even when the task ended already
    // (a cancel ends it before the shim reports): the ledger applies each
    // report once, so each run counts once.
    if let Some(warm) = exit.warm
        && task.run_id.as_deref() == Some(exit.run_id.as_str())
    {
        crate::store::counters::count_warm(c.tx, warm)?;
    }
    let live = matches!(
        task.status,
        TaskStatus::Running | TaskStatus::Paused | TaskStatus::Waiting | TaskStatus::Idle
    );
    if task.run_id.as_deref() != Some(exit.run_id.as_str()) || !live {
        return ok(task);
    }
    let (status, reason) = match (exit.outcome, exit.exit_code) {
        (ExitOutcome::Exited, Some(0)) => (TaskStatus::Completed, None),
        (ExitOutcome::Exited, _) => (TaskStatus::Failed, Some(FailureReason::ExitCode)),
        (ExitOutcome::Timeout, _) => (TaskStatus::Failed, Some(FailureReason::Timeout)),
        (ExitOutcome::Cancelled, _) => (TaskStatus::Cancelled, None),
        (ExitOutcome::SpawnError, _) => (TaskStatus::Failed, Some(FailureReason::SpawnError)),
        (ExitOutcome::EndTurn, _) => (TaskStatus::Completed, None),
        (ExitOutcome::Refusal, _) => (TaskStatus::Failed, Some(FailureReason::Refusal)),
        (ExitOutcome::MaxTokens, _) => (TaskStatus::Failed, Some(FailureReason::MaxTokens)),
        (ExitOutcome::MaxTurnRequests, _) => {
            (TaskStatus::Failed, Some(FailureReason::MaxTurnRequests))
        }
        (ExitOutcome::AgentError, _) => (TaskStatus::Failed, Some(FailureReason::AgentError)),
    };
    let mut task = task;
    if let Some(m) = &exit.message {
        task.progress_text = Some(m.clone());
    }
    if task.spec.want_conclusion || task.spec.parent_id.is_some() {
        // A block in the output wins; grove's own guess does not replace
        // what the agent reported through `task.conclude`.
        let guessed = |c: &Conclusion| c.source != ConclusionSource::Reported;
        match (&task.conclusion, &exit.conclusion) {
            (Some(own), Some(c)) if own.source == ConclusionSource::Reported && guessed(c) => {}
            (_, Some(c)) => task.conclusion = Some(c.clone()),
            (_, None) => {}
        }
    }
    // A signal death has no exit code; record it shell-style (128 + n).
    let code = exit.exit_code.or(exit.signal.map(|s| 128 + s));
    // Paused → terminal is allowed: the process ended while stopped.
    let change = Change {
        to: status,
        reason,
        exit_code: code,
        pid: None,
    };
    transition(c, task, change)
}

pub(super) fn resume(
    c: &mut Ctx<'_>,
    id: &str,
    instructions: Option<&str>,
    changes: &TaskChanges,
) -> Res {
    let mut task = existing(c.tx, id)?;
    if task.status != TaskStatus::Paused {
        return Err(refused(
            ErrorCode::Conflict,
            format!("task {id} is {}, not paused", task.status.as_str()),
        ));
    }
    if changes.prompt.is_some() || changes.engine.is_some() {
        return Err(refused(
            ErrorCode::InvalidParams,
            "resume takes new instructions, a model, a timeout and tags; to change the prompt or the engine, relaunch",
        ));
    }
    super::lineage::check_changes(changes)?;
    let had_run = task.run_id.is_some();
    if had_run && super::super::agent::has_conversation(c.tx, id)? {
        // An ACP agent's session is kept across a pause (its turn was
        // cancelled): the instructions are its next turn, not a rerun.
        // The tags are the record's; a new model or timeout takes effect
        // at the task's next run.
        changes.apply(&mut task.spec);
        return super::super::agent::resume_session(c, task, instructions);
    }
    let extra = instructions.filter(|s| !s.trim().is_empty());
    // The agent took its prompt, model and timeout at start: new ones
    // need a new run. Tags are only the record's.
    let rerun = extra.is_some() || changes.model.is_some() || changes.timeout_ms.is_some();
    changes.apply(&mut task.spec);
    if let Some(extra) = extra {
        super::lineage::refuse_instructions_for_shell(&task.spec, id)?;
        super::lineage::no_nul(extra, "the instructions")?;
        task.spec.prompt = super::lineage::fit_prompt(&task.spec.prompt, extra);
    }
    if rerun && had_run {
        // The orchestrator kills the old run, whose id no longer matches.
        task.run_id = None;
        task.pid = None;
        let status = ready_status(c.tx, &task)?;
        let change = Change::failing(status, FailureReason::DependencyFailed);
        return transition(c, task, change);
    }
    let status = if had_run {
        TaskStatus::Running
    } else {
        ready_status(c.tx, &task)?
    };
    transition(
        c,
        task,
        Change::failing(status, FailureReason::DependencyFailed),
    )
}

/// queued → running as run `run_id`, refused when `max_parallel` tasks
/// already hold a slot (running, or paused mid-run; not a running task
/// that lent its slot while it waits, see `slot_loans`), or when the free
/// slots are kept for the children of lenders (`slot_loans::may_start`),
/// counted inside the transaction so that two starts can never both take
/// the last slot.
pub(super) fn start(c: &mut Ctx<'_>, id: &str, run_id: &str, max_parallel: usize) -> Res {
    let mut task = existing(c.tx, id)?;
    if task.status != TaskStatus::Queued {
        return Err(refused(
            ErrorCode::Conflict,
            format!("task {id} is {}, not queued", task.status.as_str()),
        ));
    }
    let now = crate::protocol::now_ms();
    let held = super::slot_loans::held(c.tx, now)?;
    if held >= max_parallel {
        return Err(refused(
            ErrorCode::Conflict,
            format!("{held} tasks already run or are paused mid-run (max_parallel {max_parallel})"),
        ));
    }
    let reserved = super::slot_loans::reserving(c.tx, now)?;
    if !super::slot_loans::may_start(
        task.spec.parent_id.as_deref(),
        held,
        &reserved,
        max_parallel,
    ) {
        return Err(refused(
            ErrorCode::Conflict,
            format!(
                "the free slots are kept for the children of {} task(s) that lent theirs while they wait",
                reserved.len()
            ),
        ));
    }
    task.run_id = Some(run_id.to_string());
    task.exit_code = None;
    task.pid = None;
    task.failure_reason = None;
    task.started_at = None;
    task.finished_at = None;
    transition(c, task, Change::to(TaskStatus::Running))
}
