//! Durable awaits: a parent task's intent to be resumed with the results of
//! its children (see docs/design.md, Delegation). The intent is a row of the
//! store, not a promise in some process's memory: the primary that fires it
//! may be a different one from the primary that recorded it, and firing
//! (the parent's next turn written as a follow-up) and retiring the intent
//! are one commit, so the parent is resumed exactly once.

use serde::{Deserialize, Serialize};

/// How many of the awaited children must have ended (whatever their
/// status: a failed child counts) before the parent is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwaitPolicy {
    All,
    Any,
    /// `quorum` of them.
    Quorum,
}

pub const AWAIT_POLICIES: &[AwaitPolicy] =
    &[AwaitPolicy::All, AwaitPolicy::Any, AwaitPolicy::Quorum];

impl AwaitPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AwaitPolicy::All => "all",
            AwaitPolicy::Any => "any",
            AwaitPolicy::Quorum => "quorum",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        AWAIT_POLICIES.iter().copied().find(|p| p.as_str() == s)
    }
}

/// Parameters of `task.await`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitSpec {
    /// The task that awaits (the caller's own task).
    pub parent_id: String,
    /// Its children to await; empty: every child of it not ended yet.
    #[serde(default)]
    pub children: Vec<String>,
    pub policy: AwaitPolicy,
    /// For `quorum`: how many children must end (1..=children).
    #[serde(default)]
    pub quorum: Option<u32>,
    /// Resume the parent with what has arrived after this long (default
    /// one hour).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What became of an await.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwaitState {
    /// Waiting for its children or its deadline.
    Pending,
    /// Enough children ended: the parent was resumed with their results.
    Satisfied,
    /// The deadline passed: the parent was resumed with what had arrived.
    Expired,
    /// Cancelled (`grove awaits --cancel`, the `await_cancel` tool).
    Cancelled,
    /// Replaced by the parent's next await.
    Replaced,
    /// The parent was cancelled or deleted first.
    Dropped,
}

pub const AWAIT_STATES: &[AwaitState] = &[
    AwaitState::Pending,
    AwaitState::Satisfied,
    AwaitState::Expired,
    AwaitState::Cancelled,
    AwaitState::Replaced,
    AwaitState::Dropped,
];

impl AwaitState {
    pub fn as_str(self) -> &'static str {
        match self {
            AwaitState::Pending => "pending",
            AwaitState::Satisfied => "satisfied",
            AwaitState::Expired => "expired",
            AwaitState::Cancelled => "cancelled",
            AwaitState::Replaced => "replaced",
            AwaitState::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        AWAIT_STATES.iter().copied().find(|p| p.as_str() == s)
    }
}

/// An await as stored (`awaits` table), the reply of `task.await` and
/// `task.await_cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitRecord {
    /// Opaque id of this await.
    pub id: String,
    pub parent_id: String,
    /// The children awaited (resolved: never empty).
    pub children: Vec<String>,
    pub policy: AwaitPolicy,
    /// How many of `children` must end.
    pub quorum: u32,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds: resumed with what has arrived by then.
    pub deadline: u64,
    pub state: AwaitState,
    /// Unix milliseconds, when it left `pending`.
    #[serde(default)]
    pub settled_at: Option<u64>,
}
