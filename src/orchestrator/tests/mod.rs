//! In-process tests of the orchestrator's decisions (`decide::decide`): no
//! processes, no store, microseconds each. The real-process tests
//! (`tests/orchestrator.rs`, `tests/supervision.rs`, `tests/cascade.rs`)
//! stay the proof that observing and executing carry them out.
//!
//! - `schedule`: priority, FIFO, `max_parallel`, a paused task with a run
//!   keeps its slot, unstarted dependents, an unreadable store, a lent
//!   slot kept for the lender's children.
//! - `runs`: finalizing a finished or lost run, adoption and the start
//!   grace, killing unwanted runs (cancel cascades, deletes, superseded
//!   runs), pause and resume, the agent's pid.

mod runs;
mod schedule;

use super::decide::{
    Action, Decision, Facts, Queued, Reserved, Row, RowFact, RunFacts, Slots, Trace, Unconfirmed,
    decide,
};
use crate::protocol::{ExitOutcome, TaskStatus};
use crate::runs::{ExitRecord, RunRecord};
use std::time::{Duration, Instant};

/// An idle workspace: no runs, nothing queued, `max_parallel` 2.
fn facts() -> Facts {
    Facts {
        now: Instant::now(),
        max_parallel: 2,
        runs: Vec::new(),
        unconfirmed: Vec::new(),
        slots: Some(Slots::default()),
    }
}

fn queued(id: &str, priority: i64) -> Queued {
    Queued {
        id: id.into(),
        priority,
        parent: None,
    }
}

/// A live run of `task` (run `r-<task>`) whose row says `status`.
fn run(task: &str, status: TaskStatus) -> RunFacts {
    RunFacts {
        task_id: task.into(),
        run_id: format!("r-{task}"),
        shim_pid: 4242,
        alive: true,
        exit: None,
        row: RowFact::Present(Row {
            status,
            run_id: Some(format!("r-{task}")),
            pid: Some(7),
        }),
        record: Some(record(task, Some(7))),
        told_paused: Some(false),
        kill_sent: false,
    }
}

fn record(task: &str, agent: Option<u32>) -> RunRecord {
    RunRecord {
        run_id: format!("r-{task}"),
        shim_pid: 4242,
        shim_start: 99,
        agent_pid: agent,
        agent_start: agent.map(|_| 100),
        pauses_itself: true,
    }
}

fn exit(task: &str, code: i32) -> ExitRecord {
    ExitRecord {
        run_id: format!("r-{task}"),
        outcome: ExitOutcome::Exited,
        exit_code: Some(code),
        signal: None,
        message: None,
        finished_at: 1,
        conclusion: None,
        warm: None,
    }
}

fn unconfirmed(task: &str, trace: Trace, give_up: Instant) -> Unconfirmed {
    Unconfirmed {
        task_id: task.into(),
        run_id: format!("r-{task}"),
        give_up,
        trace,
    }
}

/// The task ids the decision starts, in order.
fn started(d: &Decision) -> Vec<&str> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { task_id } => Some(task_id.as_str()),
            _ => None,
        })
        .collect()
}

/// The actions other than starts.
fn others(d: &Decision) -> Vec<&Action> {
    d.actions
        .iter()
        .filter(|a| !matches!(a, Action::Start { .. }))
        .collect()
}

const SECOND: Duration = Duration::from_secs(1);
