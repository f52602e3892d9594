//! Wire types of the grove bus (see docs/design.md, Wire protocol) and their MessagePack codec.
//!
//! Everything that crosses a socket is defined here and nowhere else, so the
//! language-neutral contract in `ipc-schema/` has exactly one Rust
//! counterpart (the drift test in `tests/schema.rs` compares them).
//!
//! Encoding rules, chosen so that old and new peers can read each other:
//! - MessagePack with **named** fields (`rmp_serde::to_vec_named`);
//! - every field added after protocol v1 is `#[serde(default)]`;
//! - enums are externally tagged only (`{"task.create": {...}}`): rmp-serde
//!   has known bugs with untagged/adjacent tagging and `flatten`, and
//!   `flatten` is slow besides. A record's shape (its spec's fields and
//!   its own in one map, in `task.rs`) is written out by hand and read
//!   through a flat twin; its golden vectors and requiredness probes
//!   (`tests/schema.rs`) check both ways.

use serde::{Deserialize, Serialize};

mod agent;
mod awaits;
mod codec;
mod conclusion;
mod error;
mod event;
mod goal;
mod route;
mod task;
mod wire_form;

pub use agent::{
    AgentUpdate, AgentUpdates, ControlKind, INTERRUPT_RUNNING, PermissionPolicy, TaskControl,
};
pub use awaits::{AWAIT_POLICIES, AWAIT_STATES, AwaitPolicy, AwaitRecord, AwaitSpec, AwaitState};
pub use codec::{
    RequestHead, decode, decode_request, decode_stored, encode, encode_event_from,
    encode_reply_from, oversized_request_id, request_digest,
};
pub use conclusion::{
    CONCLUSION_SOURCES, CONCLUSION_STATUSES, Conclusion, ConclusionSource, ConclusionStatus,
};
pub use error::{DecodeError, ERROR_CODES, ErrorCode, WireError};
pub use event::{Event, EventData, StoredData, TOPICS};
pub use goal::{GOAL_EXAMPLE, GOAL_STATUSES, GoalRecord, GoalSpec, GoalStatus, goal_brief};
pub use route::{AgentOp, AwaitOp, Local, Route, TaskOp};
pub use task::{
    DEPTH_ENV, ExitOutcome, FAILURE_REASONS, FailureReason, MAX_PROMPT_BYTES, NewTask,
    PARENT_REF_ENV, TASK_STATUSES, TaskChanges, TaskExit, TaskRecord, TaskSpec, TaskStatus,
    WarmUse, Worktree, WorktreeAsk, finished_request_id,
};
pub use wire_form::FormError;

/// Version of the wire protocol carried in every request and reply (`v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request frame the primary decodes. Anything bigger is answered
/// with `too_large` (addressed to the request's id when it can be read) and
/// never decoded; clients refuse to send such a request in the first place.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Longest accepted request id (idempotency key).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request from any client to the primary's ROUTER socket: one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Client-generated unique id (a UUID in text form). For writes it is the
    /// idempotency key: a retry with the same id is never applied twice.
    pub id: String,
    /// Instance id of the sender (a UUID string, or any name for tools).
    pub from: String,
    /// Highest primary epoch the sender has seen; a primary older than that
    /// refuses the request with `stale_epoch`.
    pub epoch_seen: u64,
    pub method: Method,
}

/// A [`Request`] borrowed for encoding: the same bytes, without cloning the
/// method (a whole task spec) to send it.
#[derive(Debug, Serialize)]
pub struct RequestRef<'a> {
    pub v: u32,
    pub id: &'a str,
    pub from: &'a str,
    pub epoch_seen: u64,
    pub method: &'a Method,
}

/// Every RPC method. The variant name on the wire is the method name.
// `task.create` carries a whole task spec and is the largest by far; a
// request is decoded once and moved a few times, so boxing it would only
// add an allocation per create.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Method {
    /// Liveness probe, answered by the event loop without touching the store.
    #[serde(rename = "ping")]
    Ping {},
    /// A member (secondary or front end) registers itself with the primary.
    #[serde(rename = "hello")]
    Hello(MemberInfo),
    #[serde(rename = "task.create")]
    TaskCreate(NewTask),
    #[serde(rename = "task.set_progress")]
    TaskSetProgress {
        id: String,
        /// 0..=100; `None` leaves the percentage unchanged.
        #[serde(default)]
        percent: Option<u8>,
        #[serde(default)]
        text: Option<String>,
    },
    #[serde(rename = "task.update_status")]
    TaskUpdateStatus {
        id: String,
        status: TaskStatus,
        #[serde(default)]
        reason: Option<FailureReason>,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        pid: Option<u32>,
    },
    /// Deletes a task. A running task is refused unless `force`, which
    /// kills it first.
    #[serde(rename = "task.delete")]
    TaskDelete {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// Cancels a task: a running one has its whole process group killed.
    #[serde(rename = "task.cancel")]
    TaskCancel { id: String },
    /// Pauses a task: a running one is stopped (SIGSTOP to its processes;
    /// it keeps its slot and its timeout clock stops), a waiting one is held
    /// back by the scheduler.
    #[serde(rename = "task.pause")]
    TaskPause { id: String },
    /// Continues a paused task. New instructions are appended to the prompt;
    /// a task that had started is then rerun with them (agent CLIs take
    /// instructions only at start).
    #[serde(rename = "task.resume")]
    TaskResume {
        id: String,
        #[serde(default)]
        instructions: Option<String>,
        /// A new model, timeout or tags (a new prompt is `instructions`); a
        /// task that had started reruns with a new model or timeout.
        #[serde(default)]
        changes: TaskChanges,
    },
    /// Creates a new task from a finished one (`retry_of`, `attempt + 1`).
    #[serde(rename = "task.retry")]
    TaskRetry { id: String },
    /// Reruns a finished task under the same id; dependents that failed
    /// because of it are rearmed. Instructions are appended to the prompt
    /// first (`grove review` of a CLI-engine task).
    #[serde(rename = "task.relaunch")]
    TaskRelaunch {
        id: String,
        #[serde(default)]
        instructions: Option<String>,
        /// What the rerun does differently: a new prompt, engine, model,
        /// timeout or tags, checked like a spawn's.
        #[serde(default)]
        changes: TaskChanges,
    },
    /// A task's own conclusion, reported while it runs (the `conclude`
    /// tool of `grove mcp`): kept when the run ends, unless the run's
    /// output holds a conclusion block of its own.
    #[serde(rename = "task.conclude")]
    TaskConclude { id: String, conclusion: Conclusion },
    /// Records a parent task's durable await of its children (replacing
    /// its pending one); the parent is resumed exactly once when enough of
    /// them ended or the deadline passed.
    #[serde(rename = "task.await")]
    TaskAwait(AwaitSpec),
    /// Cancels a parent's pending await.
    #[serde(rename = "task.await_cancel")]
    TaskAwaitCancel { parent_id: String },
    /// A running task blocked in a wait for its children lends its
    /// `max_parallel` slot (`lend`), renewing the loan while it waits, or
    /// takes it back; each waiter (`waiter`) has its own loan, for the run
    /// it waits in. A loan not renewed lapses
    /// (see docs/design.md, Slot loans).
    #[serde(rename = "task.lend_slot")]
    TaskLendSlot {
        id: String,
        run_id: String,
        waiter: String,
        lend: bool,
    },
    /// Creates a goal and its task in one commit: the task's iterations
    /// run until the goal ends (see [`GoalRecord`]). Cancel it by
    /// cancelling its task.
    #[serde(rename = "goal.create")]
    GoalCreate(GoalSpec),
    /// Deletes a finished task and its log files; purging a missing task
    /// succeeds (idempotent).
    #[serde(rename = "task.purge")]
    TaskPurge { id: String },
    /// Sent by a task's supervisor (`grove shim`) when the agent ended.
    #[serde(rename = "task.finished")]
    TaskFinished(TaskExit),
    /// Sent by the shim of an `acp` engine: the next batch of its agent's
    /// session updates, in order; each becomes a durable
    /// `task.agent_update` event. The shim resends a batch with the same
    /// request id until it is acknowledged, so each is stored once.
    #[serde(rename = "task.agent_updates")]
    TaskAgentUpdates(AgentUpdates),
    /// Steers an ACP task from any window (a permission answer, a
    /// follow-up, a mode). Recorded as a durable `task.control` event
    /// first; the task's shim applies it.
    #[serde(rename = "task.control")]
    TaskControl(TaskControl),
    /// Records an ACP session so that any member can load it later.
    /// Creating an existing session is a no-op.
    #[serde(rename = "session.create")]
    SessionCreate { id: String, cwd: String },
    /// Test builds only (the `test-hooks` feature), not part of the
    /// protocol: blocks the primary's event loop for `ms` so the watchdog
    /// can be tested.
    #[cfg(feature = "test-hooks")]
    #[serde(rename = "debug.stall")]
    DebugStall { ms: u64 },
}

/// Names of every method, as they appear on the wire (in a test build, with
/// the [`TEST_HOOK_METHODS`]).
pub const METHOD_NAMES: &[&str] = &[
    "ping",
    "hello",
    "task.create",
    "task.set_progress",
    "task.update_status",
    "task.delete",
    "task.cancel",
    "task.pause",
    "task.resume",
    "task.retry",
    "task.relaunch",
    "task.conclude",
    "task.await",
    "task.await_cancel",
    "task.lend_slot",
    "goal.create",
    "task.purge",
    "task.finished",
    "task.agent_updates",
    "task.control",
    "session.create",
    #[cfg(feature = "test-hooks")]
    "debug.stall",
];

/// Methods that only test builds know (the `test-hooks` feature): not part
/// of the protocol that `ipc-schema/` describes.
pub const TEST_HOOK_METHODS: &[&str] = &[
    #[cfg(feature = "test-hooks")]
    "debug.stall",
];

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ping {} => "ping",
            Method::Hello(_) => "hello",
            Method::TaskCreate(_) => "task.create",
            Method::TaskSetProgress { .. } => "task.set_progress",
            Method::TaskUpdateStatus { .. } => "task.update_status",
            Method::TaskDelete { .. } => "task.delete",
            Method::TaskCancel { .. } => "task.cancel",
            Method::TaskPause { .. } => "task.pause",
            Method::TaskResume { .. } => "task.resume",
            Method::TaskRetry { .. } => "task.retry",
            Method::TaskRelaunch { .. } => "task.relaunch",
            Method::TaskConclude { .. } => "task.conclude",
            Method::TaskAwait(_) => "task.await",
            Method::TaskAwaitCancel { .. } => "task.await_cancel",
            Method::TaskLendSlot { .. } => "task.lend_slot",
            Method::GoalCreate(_) => "goal.create",
            Method::TaskPurge { .. } => "task.purge",
            Method::TaskFinished(_) => "task.finished",
            Method::TaskAgentUpdates(_) => "task.agent_updates",
            Method::TaskControl(_) => "task.control",
            Method::SessionCreate { .. } => "session.create",
            #[cfg(feature = "test-hooks")]
            Method::DebugStall { .. } => "debug.stall",
        }
    }
}

/// A reply to one request: exactly one of `ok` and `err` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    /// The id of the request this answers (empty if the request was unreadable).
    pub id: String,
    /// Epoch of the primary that produced this reply.
    pub epoch: u64,
    #[serde(default)]
    pub ok: Option<ReplyBody>,
    #[serde(default)]
    pub err: Option<WireError>,
}

impl Reply {
    pub fn ok(id: String, epoch: u64, body: ReplyBody) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            epoch,
            ok: Some(body),
            err: None,
        }
    }

    pub fn err(id: String, epoch: u64, err: WireError) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            epoch,
            ok: None,
            err: Some(err),
        }
    }

    pub fn into_result(self) -> Result<ReplyBody, WireError> {
        match (self.ok, self.err) {
            (_, Some(e)) => Err(e),
            (Some(b), None) => Ok(b),
            (None, None) => Err(WireError::new(
                ErrorCode::Internal,
                "reply carries neither ok nor err",
            )),
        }
    }
}

/// The successful result of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplyBody {
    #[serde(rename = "pong")]
    Pong(PrimaryInfo),
    #[serde(rename = "welcome")]
    Welcome { epoch: u64, last_seq: u64 },
    #[serde(rename = "task")]
    Task(Box<TaskRecord>),
    #[serde(rename = "deleted")]
    Deleted { id: String },
    #[serde(rename = "done")]
    Done {},
    #[serde(rename = "await")]
    Await(Box<AwaitRecord>),
    #[serde(rename = "goal")]
    Goal(Box<GoalRecord>),
}

/// Who the primary is, as answered to `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryInfo {
    pub instance_id: String,
    pub pid: u32,
    pub epoch: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    pub uptime_ms: u64,
    pub pub_endpoint: String,
    pub rpc_endpoint: String,
    pub last_seq: u64,
    /// The longest single poll of the primary's event loop so far, in
    /// microseconds: every request waits behind a long one. Absent from
    /// primaries older than this field.
    #[serde(default)]
    pub longest_poll_us: u64,
    /// Group commits by this primary's store thread so far, and the client
    /// writes they carried: their ratio is the mean batch size.
    #[serde(default)]
    pub commits: u64,
    #[serde(default)]
    pub writes_committed: u64,
    /// Pages the commits appended to the WAL: per write, what group commit
    /// shares and what each write's own B-tree pages cost.
    #[serde(default)]
    pub wal_pages: u64,
    /// Syncs of the WAL made after commits that recorded run ends (one
    /// covers every end committed before it).
    #[serde(default)]
    pub wal_syncs: u64,
}

/// A member of the grove, as announced by `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub instance_id: String,
    pub pid: u32,
    /// `serve`, `acp`, `cli`, ...
    pub kind: String,
    /// Unix milliseconds.
    pub started_at: u64,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
