//! Goals: an objective an agent pursues over many iterations until it
//! reports success, is blocked, stalls, runs out of iterations or time (see
//! docs/design.md, Runs and goals). A goal is a row of the store beside its
//! task, advanced in the commit of each iteration's end — never by a loop
//! in some process's memory — so a new primary continues it at the next
//! iteration and no finished iteration is run twice.

use super::NewTask;
use serde::{Deserialize, Serialize};

/// Where a goal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalStatus {
    /// Iterating.
    Running,
    /// An iteration concluded `success`.
    Completed,
    /// An iteration concluded `blocked` (its `blocked_reason` says why).
    Blocked,
    /// `progress` did not pass its best for `stall_after` iterations in a
    /// row.
    Stalled,
    /// `max_duration_ms` passed (the running iteration was cancelled).
    Timeout,
    /// An iteration concluded `failed`, the agent failed, or
    /// `max_iterations` ended without success.
    Failed,
    /// Its task was cancelled (`grove cancel`, Ctrl-C) or deleted.
    Cancelled,
}

pub const GOAL_STATUSES: &[GoalStatus] = &[
    GoalStatus::Running,
    GoalStatus::Completed,
    GoalStatus::Blocked,
    GoalStatus::Stalled,
    GoalStatus::Timeout,
    GoalStatus::Failed,
    GoalStatus::Cancelled,
];

impl GoalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GoalStatus::Running => "running",
            GoalStatus::Completed => "completed",
            GoalStatus::Blocked => "blocked",
            GoalStatus::Stalled => "stalled",
            GoalStatus::Timeout => "timeout",
            GoalStatus::Failed => "failed",
            GoalStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        GOAL_STATUSES.iter().copied().find(|g| g.as_str() == s)
    }
}

/// Parameters of `goal.create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalSpec {
    /// The goal's task: its prompt is the objective; the primary adds the
    /// goal's brief, asks for a conclusion, and keeps an ACP engine's
    /// session open (iterations are its turns).
    pub task: NewTask,
    /// Most iterations (1..=1000).
    pub max_iterations: u32,
    /// The goal's whole duration from its creation (1 s .. 7 days).
    pub max_duration_ms: u64,
    /// Iterations in a row whose `progress` does not pass the best so far
    /// before the goal is `stalled` (>= 1).
    pub stall_after: u32,
}

/// A goal as stored (`goals` table), the reply of `goal.create` and the
/// payload of `goal.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalRecord {
    /// The goal's id: the id of its task (cancel, show and delete it by
    /// that id).
    pub id: String,
    pub objective: String,
    pub status: GoalStatus,
    /// The iteration running now, or the last one (1-based).
    pub iteration: u32,
    pub max_iterations: u32,
    pub max_duration_ms: u64,
    pub stall_after: u32,
    /// Iterations in a row that did not advance `progress`.
    pub stalls: u32,
    /// Iterations are turns of one kept ACP session (else successive runs
    /// of a CLI engine, each given the previous conclusion).
    pub session: bool,
    /// The last iteration's conclusion: `progress` (0..=100), its summary
    /// as `response`, `next_step`, `blocked_reason`.
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub next_step: Option<String>,
    #[serde(default)]
    pub blocked_reason: Option<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds: `created_at + max_duration_ms`.
    pub deadline: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
}

/// The conclusion block a goal's brief shows: never taken for the agent's
/// own (a transcript repeats the prompt).
pub const GOAL_EXAMPLE: &str = "{\"status\": \"partial\", \"summary\": \"what this iteration did and found\", \
\"progress\": 40, \"next_step\": \"what the next iteration will do\", \"blocked_reason\": null}";

/// What an agent pursuing a goal is told after the objective: how the
/// iterations work and the block each must end with.
pub fn goal_brief(max_iterations: u32, session: bool) -> String {
    let unit = if session {
        "each iteration is one turn of this conversation"
    } else {
        "each iteration is a fresh run that is given the previous iteration's conclusion"
    };
    format!(
        "\n\n---\ngrove runs this as a goal: you work toward the objective above over at most \
{max_iterations} iterations; {unit}. End the final message of every iteration with one \
conclusion block in this form:\n<grove:conclusion>{GOAL_EXAMPLE}</grove:conclusion>\n\
status: success when the objective is reached (the goal ends); partial when you made progress \
and more iterations are needed; blocked when you cannot go on without a human (say why in \
blocked_reason); failed when it cannot be done. progress: how much of the objective is reached, \
from 0 to 100 (the goal stops as stalled when it stops rising). next_step: what the next \
iteration will do."
    )
}
