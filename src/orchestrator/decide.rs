//! The orchestrator's decisions, as a pure function: given what was seen
//! of the runs, the rows and the clock ([`Facts`]), what to do
//! ([`Action`]s). No I/O here — `observe.rs` gathers the facts off the
//! event loop and `mod.rs` carries the actions out — so every rule below
//! is tested in-process in microseconds (`tests/`).

use crate::protocol::{TaskExit, TaskStatus};
use crate::runs::{ExitRecord, RunRecord};
use std::time::Instant;

/// Everything one pass decides on.
#[derive(Debug, Clone)]
pub struct Facts {
    pub now: Instant,
    pub max_parallel: usize,
    /// The runs this primary supervises.
    pub runs: Vec<RunFacts>,
    /// Runs recorded as started whose supervisor has not shown itself to
    /// this primary yet (all of them right after a promotion).
    pub unconfirmed: Vec<Unconfirmed>,
    /// `None` when the store could not be read.
    pub slots: Option<Slots>,
}

/// A supervised run as observed now.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub task_id: String,
    pub run_id: String,
    pub shim_pid: u32,
    /// The shim runs (pid and, when known, start time match).
    pub alive: bool,
    /// How the run ended, read after the shim was seen gone (it writes
    /// the record before it exits).
    pub exit: Option<ExitRecord>,
    pub row: RowFact,
    /// The shim's run record (agent pid, whether it pauses itself).
    pub record: Option<RunRecord>,
    /// What the shim was last told (`None`: not yet, e.g. adopted).
    pub told_paused: Option<bool>,
    pub kill_sent: bool,
}

/// A task's row, as far as the orchestrator cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub status: TaskStatus,
    pub run_id: Option<String>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowFact {
    Present(Row),
    /// Deleted (or purged).
    Gone,
    /// The store could not be read: do nothing to the run this pass.
    Unreadable,
}

/// A run its supervisor has not confirmed to this primary.
#[derive(Debug, Clone)]
pub struct Unconfirmed {
    pub task_id: String,
    pub run_id: String,
    /// When to stop waiting for its supervisor and requeue the task.
    pub give_up: Instant,
    pub trace: Trace,
}

/// What a run left on disk, checked in this order.
// A pass makes a handful of these and drops them: boxing the exit
// record would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Trace {
    /// Its shim runs (pid *and* start time of the run record match).
    Alive { shim_pid: u32, shim_start: u64 },
    /// It ended: the run record's shim is gone (`shim_pid` 0 when there
    /// is only an exit record).
    Ended {
        shim_pid: u32,
        exit: Option<ExitRecord>,
    },
    /// Neither a run record nor an exit record (yet).
    Nothing,
}

/// Slot use and the queue, from the store.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    /// Running and waiting tasks plus paused tasks with a run: a paused task
    /// keeps its slot, so that resuming it never exceeds `max_parallel`.
    pub held: usize,
    /// Queued tasks in creation order.
    pub queued: Vec<Queued>,
    /// Running tasks whose slot is lent while they wait for their
    /// children (`store::tasks::slot_loans`): not in `held`.
    pub lent: Vec<String>,
    /// The lenders whose slot is kept for their children, each with the
    /// child to start in it first (which `queued` may not list).
    pub reserved: Vec<Reserved>,
}

pub use crate::store::QueuedTask as Queued;
pub use crate::store::tasks::slot_loans::Reserved;

/// One thing to do. The executor carries them out in order: every store
/// write goes through the one store thread, in this order.
// A pass makes a handful of these and drops them: boxing the exit
// record would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Supervise a run whose live shim a predecessor started.
    Adopt {
        task_id: String,
        run_id: String,
        shim_pid: u32,
        shim_start: u64,
    },
    /// Record how a run ended, from its exit record (same request id as
    /// the shim's own report: applied once).
    Finish { task_id: String, exit: TaskExit },
    /// The run ended without an exit record: kill what it left and fail
    /// the task as `lost`.
    Lost {
        task_id: String,
        run_id: String,
        shim_pid: u32,
    },
    /// The supervisor never started within the grace: back to the queue.
    Requeue { task_id: String, run_id: String },
    /// Record the agent's pid the shim reported in its run record.
    SetPid {
        task_id: String,
        run_id: String,
        pid: u32,
    },
    /// Tell the shim to read its row (pause or resume, on its own clock).
    Sync { task_id: String, pause: bool },
    /// An older shim: stop or continue its agent's group directly.
    SignalAgent {
        task_id: String,
        pgid: u32,
        pause: bool,
    },
    /// The run is no longer wanted (cancelled, deleted, superseded): the
    /// shim kills every process of it.
    Kill { task_id: String, shim_pid: u32 },
    /// Start a queued task, highest priority first, then oldest.
    Start { task_id: String },
}

/// What one pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Unconfirmed runs to keep waiting for (task ids).
    pub still_unconfirmed: Vec<String>,
    /// Look again on the tick even without a change (the store was
    /// unreadable).
    pub retry: bool,
}

/// The whole pass: unconfirmed runs, then supervised runs, then starts.
pub fn decide(facts: &Facts) -> Decision {
    let mut d = Decision::default();
    for u in &facts.unconfirmed {
        confirm(u, facts.now, &mut d);
    }
    for run in &facts.runs {
        supervise(run, &mut d.actions);
    }
    match &facts.slots {
        Some(slots) => {
            let free = facts.max_parallel + ending(&facts.runs, &slots.lent);
            d.actions.extend(starts(slots, free))
        }
        None => d.retry = true,
    }
    d
}

/// Runs whose shim is gone while their row still holds a slot. This pass
/// commits their end before it asks for any start (the store thread
/// applies writes in order), so their slots count as free now rather than
/// one pass later; the store thread still checks the limit in the start's
/// own transaction. A task whose slot is lent holds none to free.
pub fn ending(runs: &[RunFacts], lent: &[String]) -> usize {
    runs.iter()
        .filter(|r| !r.alive && !lent.contains(&r.task_id))
        .filter(|r| match &r.row {
            RowFact::Present(row) => {
                row.run_id.as_deref() == Some(r.run_id.as_str())
                    && matches!(
                        row.status,
                        TaskStatus::Running | TaskStatus::Waiting | TaskStatus::Paused
                    )
            }
            _ => false,
        })
        .count()
}

/// An unconfirmed run: adopted once its shim shows, finalized when it
/// ended, requeued when nothing showed within the grace.
fn confirm(u: &Unconfirmed, now: Instant, d: &mut Decision) {
    let (task_id, run_id) = (u.task_id.clone(), u.run_id.clone());
    match &u.trace {
        Trace::Alive {
            shim_pid,
            shim_start,
        } => d.actions.push(Action::Adopt {
            task_id,
            run_id,
            shim_pid: *shim_pid,
            shim_start: *shim_start,
        }),
        Trace::Ended { shim_pid, exit } => {
            let action = finalize(&u.task_id, &u.run_id, *shim_pid, exit.as_ref());
            d.actions.push(action)
        }
        Trace::Nothing if now >= u.give_up => d.actions.push(Action::Requeue { task_id, run_id }),
        Trace::Nothing => d.still_unconfirmed.push(task_id),
    }
}

/// The end of a run whose shim is gone.
fn finalize(task_id: &str, run_id: &str, shim_pid: u32, exit: Option<&ExitRecord>) -> Action {
    match exit {
        Some(exit) => Action::Finish {
            task_id: task_id.to_string(),
            exit: exit.to_exit(task_id),
        },
        None => Action::Lost {
            task_id: task_id.to_string(),
            run_id: run_id.to_string(),
            shim_pid,
        },
    }
}

/// A supervised run: finalized when its shim is gone, else made to match
/// its task's row.
fn supervise(run: &RunFacts, out: &mut Vec<Action>) {
    if !run.alive {
        out.push(finalize(
            &run.task_id,
            &run.run_id,
            run.shim_pid,
            run.exit.as_ref(),
        ));
        return;
    }
    let row = match &run.row {
        RowFact::Unreadable => return,
        RowFact::Gone => None,
        RowFact::Present(row) => Some(row),
    };
    let current = row.filter(|r| r.run_id.as_deref() == Some(run.run_id.as_str()));
    let agent = run.record.as_ref().and_then(|r| r.agent_pid);
    if let (Some(row), Some(pid)) = (current, agent)
        && row.pid != Some(pid)
        && !row.status.is_terminal()
    {
        out.push(Action::SetPid {
            task_id: run.task_id.clone(),
            run_id: run.run_id.clone(),
            pid,
        });
    }
    match current.map(|r| r.status) {
        Some(s @ (TaskStatus::Running | TaskStatus::Paused)) => {
            let pause = s == TaskStatus::Paused;
            if run.told_paused != Some(pause) {
                out.extend(tell(run, pause, agent));
            }
        }
        // Its agent waits for a permission answer, or its kept session for
        // a follow-up: the shim holds it and is woken by each control.
        Some(TaskStatus::Waiting | TaskStatus::Idle) => {
            if run.told_paused != Some(false) {
                out.extend(tell(run, false, agent));
            }
        }
        // Ended by itself: the shim is on its way out already.
        Some(TaskStatus::Completed | TaskStatus::Failed) => {}
        _ if run.kill_sent => {}
        _ => out.push(Action::Kill {
            task_id: run.task_id.clone(),
            shim_pid: run.shim_pid,
        }),
    }
}

/// How to tell a run's shim to pause or resume; nothing while it cannot
/// be told yet (an older shim whose agent has not started).
fn tell(run: &RunFacts, pause: bool, agent: Option<u32>) -> Option<Action> {
    let task_id = run.task_id.clone();
    // The shim reads the row itself, so a signal that coalesces with an
    // earlier one still ends in the latest state.
    if run.record.as_ref().is_some_and(|r| r.pauses_itself) {
        return Some(Action::Sync { task_id, pause });
    }
    Some(Action::SignalAgent {
        task_id,
        pgid: agent?,
        pause,
    })
}

/// Queued tasks to start: priority first, then FIFO, while slots are free
/// (`limit`: `max_parallel` plus the slots this pass frees). A slot a
/// waiting parent lent is kept for its children (`slot_loans::may_start`,
/// the same rule the store thread applies). The store thread checks the
/// limit again inside the start's transaction, so a stale count can never
/// start more than the limit.
fn starts(slots: &Slots, limit: usize) -> Vec<Action> {
    let mut free = limit.saturating_sub(slots.held);
    let mut kept: Vec<&str> = slots.reserved.iter().map(|r| r.lender.as_str()).collect();
    let mut queued: Vec<&Queued> = slots.queued.iter().collect();
    // The list comes in creation order and the sort is stable.
    queued.sort_by_key(|q| std::cmp::Reverse(q.priority));
    let mut out = Vec::new();
    let start = |id: &str| Action::Start {
        task_id: id.to_string(),
    };
    for q in queued {
        if free == 0 {
            break;
        }
        let parent_keeps = q
            .parent
            .as_deref()
            .and_then(|p| kept.iter().position(|k| *k == p));
        if let Some(at) = parent_keeps {
            kept.remove(at);
        } else if free <= kept.len() {
            continue;
        }
        out.push(start(&q.id));
        free -= 1;
    }
    // The lenders' first children that the queue's head did not list (a
    // child listed there took its parent's slot out of `kept`).
    for r in &slots.reserved {
        if free > 0 && kept.contains(&r.lender.as_str()) {
            out.push(start(&r.child));
            free -= 1;
        }
    }
    out
}
