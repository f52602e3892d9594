//! The task state machine: the one place that says which status may follow
//! which (see docs/design.md, Tasks). The store thread asks it for every
//! status change of an existing task (`store/tasks/change.rs::transition`). Two
//! paths do not: creation derives a task's first status from its
//! dependencies, and relaunch (`store/tasks/lineage.rs::rearm`) re-arms a terminal
//! task, which this table forbids for every other operation. The
//! orchestrator never asks it: it only requests changes from the store
//! thread.
//!
//! ```text
//! pending ──► queued ──► running ──► completed | failed | cancelled
//!    │           │ ◄────────┤ (requeue: its supervisor never started)
//!    └───────────┴──────────┴──► paused ──► pending | queued | running,
//!                                           or a final status
//! ```
//! Pending and queued tasks may also fail (`dependency_failed`) or be
//! cancelled directly. An ACP task goes running ⇄ waiting while a
//! permission request waits for a human; from waiting it may also end or
//! be paused (the turn is cancelled, the session kept). An ACP task that
//! keeps its session goes running ⇄ idle between turns; from idle it may
//! end (closed, cancelled, its agent died) but not pause: nothing runs.

use crate::protocol::TaskStatus::{self, *};

/// A status change the state machine forbids; its text is the `conflict`
/// error's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    #[error("task is already {} (terminal); relaunch or retry it instead", .from.as_str())]
    Terminal { from: TaskStatus },
    #[error("a task cannot go from {} to {}", .from.as_str(), .to.as_str())]
    Forbidden { from: TaskStatus, to: TaskStatus },
}

/// Whether a task may go from `from` to `to`.
pub fn check_transition(from: TaskStatus, to: TaskStatus) -> Result<(), IllegalTransition> {
    let allowed = match from {
        Pending => matches!(to, Queued | Paused | Cancelled | Failed),
        Queued => matches!(to, Running | Paused | Cancelled | Failed),
        // running → running lets the supervisor record a new pid;
        // running → queued requeues a run whose supervisor never started
        // (its primary died between recording the start and spawning).
        Running => matches!(
            to,
            Running | Queued | Completed | Failed | Cancelled | Paused | Waiting | Idle
        ),
        // waiting → running: the permission request was answered.
        Waiting => matches!(to, Running | Completed | Failed | Cancelled | Paused),
        // idle → running: a follow-up started the next turn.
        Idle => matches!(to, Running | Completed | Failed | Cancelled),
        // paused → completed: a stopped agent can still be reported done
        // (e.g. it exited between the shim's SIGSTOP and its delivery).
        Paused => matches!(
            to,
            Pending | Queued | Running | Completed | Cancelled | Failed
        ),
        Completed | Failed | Cancelled => false,
    };
    if allowed {
        Ok(())
    } else if from.is_terminal() {
        Err(IllegalTransition::Terminal { from })
    } else {
        Err(IllegalTransition::Forbidden { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TASK_STATUSES;

    #[test]
    fn terminal_states_are_final() {
        for from in [Completed, Failed, Cancelled] {
            for to in TASK_STATUSES {
                assert!(check_transition(from, *to).is_err());
            }
        }
    }

    #[test]
    fn happy_path() {
        assert!(check_transition(Pending, Queued).is_ok());
        assert!(check_transition(Queued, Running).is_ok());
        assert!(check_transition(Running, Completed).is_ok());
        assert!(check_transition(Queued, Completed).is_err());
    }

    #[test]
    fn refusals_say_why() {
        let terminal = check_transition(Failed, Queued).unwrap_err();
        assert_eq!(
            terminal.to_string(),
            "task is already failed (terminal); relaunch or retry it instead"
        );
        let forbidden = check_transition(Pending, Completed).unwrap_err();
        assert_eq!(
            forbidden.to_string(),
            "a task cannot go from pending to completed"
        );
    }
}
