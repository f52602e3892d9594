//! The conversations of ACP agents on the wire: the session updates a
//! task's supervisor reports (`task.agent_updates`) and the controls that
//! steer it from any window (`task.control`).

use serde::{Deserialize, Serialize};

/// What a `task.control` asks of an ACP task's shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// Allow the pending permission request (`option`, else the agent's
    /// narrowest allow option).
    Approve,
    /// Reject the pending permission request (`option`, else the agent's
    /// narrowest reject option).
    Deny,
    /// A follow-up prompt (`text`) in the same agent session: sent when
    /// the current turn ends, in order; the task ends after its last turn.
    Say,
    /// Switch the agent session to mode `text` (`session/set_mode`).
    Mode,
    /// End a kept session (`--session`): after the current turn, if one
    /// runs; the task completes.
    Close,
    /// An editor's cancel of its prompt `text`: withdrawn while it is a
    /// queued follow-up; its turn cut short once it runs (`option`
    /// [`INTERRUPT_RUNNING`]: the editor saw it begin, so only the running
    /// turn of that text is cut, never a queued one of another window). The
    /// session stays open (idle, or on to its next queued follow-up) and
    /// holds no slot, unlike a pause. Nothing to interrupt is no error.
    Interrupt,
}

/// The `option` of an interrupt whose prompt's turn has begun.
pub const INTERRUPT_RUNNING: &str = "running";

/// How an ACP agent's permission requests are answered: an engine's
/// setting, or a task's own (`grove spawn --permissions`, `--yolo`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PermissionPolicy {
    /// Every request waits for a human (`grove approve` / `grove deny`).
    #[default]
    Ask,
    /// Tool kinds that only look (read, search, fetch, think) are allowed;
    /// the rest wait for a human.
    AllowReads,
    /// Every request is allowed.
    AllowAll,
}

impl PermissionPolicy {
    pub const NAMES: &[&str] = &["ask", "allow_reads", "allow_all"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ask" => Some(Self::Ask),
            "allow_reads" => Some(Self::AllowReads),
            "allow_all" => Some(Self::AllowAll),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::AllowReads => "allow_reads",
            Self::AllowAll => "allow_all",
        }
    }
}

/// Parameters of `task.control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskControl {
    pub id: String,
    pub kind: ControlKind,
    /// A permission option id the agent offered.
    #[serde(default)]
    pub option: Option<String>,
    /// The follow-up prompt of `say`, the mode id of `mode`.
    #[serde(default)]
    pub text: Option<String>,
    /// The permission request an answer is for: the `ask` number of its
    /// `permission_request` update. Given, the answer is refused unless
    /// that request is the one pending (a late answer never lands on the
    /// next request); `None` answers whichever is pending.
    #[serde(default)]
    pub ask: Option<u64>,
}

/// Parameters of `task.agent_updates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdates {
    pub id: String,
    /// The run the updates belong to; a batch of another run is
    /// acknowledged and dropped.
    pub run_id: String,
    /// The batch's number in its run, from 1 (for the reader; the request id
    /// is what makes a resend harmless).
    pub batch: u64,
    pub updates: Vec<AgentUpdate>,
}

/// One update of an ACP agent's session, as the shim coalesced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdate {
    /// The ACP `sessionUpdate` kind (`agent_message_chunk`, `tool_call`,
    /// `plan`, ...), or one of grove's own: `prompt` (what the turn was
    /// asked), `turn_end` (its stop reason), `idle` (a kept session waits
    /// for a follow-up), `permission_request` and `permission` (a request
    /// the agent made and how it was answered), `note` (what grove did on
    /// the session's behalf: a model chosen, an MCP server left out).
    pub kind: String,
    /// The update as ACP JSON (consecutive text chunks merged into one).
    pub acp: String,
}
